"""One training loop for every diffusion model of cellsynth (mask, texture, multiview).

Shaped like diffusers' training examples: an ``accelerate.Accelerator`` places the models
(CPU, CUDA, MPS; data-parallel under ``accelerate launch``; bf16/fp16 mixed precision on CUDA
only), an ``AdamW`` optimiser with a learning-rate schedule from
``diffusers.optimization.get_scheduler``, diffusers' ``EMAModel`` for the weights that are
saved, gradient accumulation and clipping. Several models can train interleaved in one loop
(the one furthest behind its target goes next), which is how ``cellsynth learn`` keeps a bundle
whose two models are always from the same moment.

Checkpoints resume exactly (model, EMA, optimiser, LR schedule and random state) and are
crash-safe: each is a folder ``checkpoint-<step>`` written under a temporary name in the same
parent and swapped in by one rename, so a folder with the final name is always complete. Tensors
are stored as safetensors and everything else as JSON; nothing is ever pickled.

Every step yields one :class:`TrainReport`, the one progress/loss record that the CLI, the
widgets and the logs render.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from cellsynth.diffusion.core import DiffusionConfig, diffusion_loss, make_train_scheduler
from cellsynth.errors import CellsynthInputError

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "cellsynth-checkpoint/1"
_CKPT = re.compile(r"^checkpoint-(\d+)$")
_TMP_PREFIX = ".tmp-checkpoint-"


# --------------------------------------------------------------------------- settings, reports


@dataclass
class OptimSettings:
    """How one model is optimised (the same knobs as diffusers' training scripts)."""

    lr: float = 1e-3
    warmup: int = 50
    lr_schedule: str = "constant_with_warmup"  # any name of diffusers.optimization.get_scheduler
    weight_decay: float = 0.0
    ema_decay: float = 0.995
    max_grad_norm: float | None = 1.0
    grad_accumulation: int = 1


@dataclass
class TrainReport:
    """One training step: what a progress bar, a loss curve and a log line show."""

    model: str  # the model that just took a step ("" once the loop has ended)
    step: int  # that model's step count
    loss: float  # this step's loss (mean over processes)
    running: float  # its exponential moving average
    elapsed: float  # seconds, including earlier runs that this one resumes
    steps: dict[str, int] = field(default_factory=dict)
    targets: dict[str, int] = field(default_factory=dict)
    checkpoint: str | None = None  # set when a checkpoint was written after this step
    done: bool = False

    @property
    def total_steps(self) -> int:
        return sum(self.steps.values())

    @property
    def fraction(self) -> float:
        """Mean fraction of the step targets reached (0..1)."""
        if not self.targets:
            return 1.0 if self.done else 0.0
        return sum(min(self.steps[n] / max(t, 1), 1.0) for n, t in self.targets.items()) / len(
            self.targets
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- accelerator


def make_accelerator(device: Any = "auto", mixed_precision: str = "no") -> Any:
    """An ``Accelerator`` on ``device`` (auto, cpu, cuda, mps); mixed precision on CUDA only.

    Under ``accelerate launch`` the process group set up by the launcher is used as is.
    """
    from accelerate import Accelerator

    from cellsynth.device import select_device

    if mixed_precision not in ("no", "bf16", "fp16"):
        raise CellsynthInputError(
            f"mixed precision must be no, bf16 or fp16, got {mixed_precision!r}"
        )
    dev = select_device(device)
    mp = mixed_precision if dev.type == "cuda" else "no"
    if mp != mixed_precision:
        log.info("mixed precision %s needs CUDA; training in fp32 on %s", mixed_precision, dev)
    return Accelerator(cpu=dev.type == "cpu", mixed_precision=mp)


# --------------------------------------------------------------------------- safe files


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> Path:
    """safetensors written to a unique temporary name beside ``path``, then renamed."""
    from safetensors.torch import save_file

    from cellsynth.io import atomic_path

    with atomic_path(path, overwrite=True) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    return Path(path)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def optimizer_state(optimizer: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimiser's state as (tensors for safetensors, JSON-able rest)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(optimizer: Any, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    for key, v in meta["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# --------------------------------------------------------------------------- one model


class ModelTrainer:
    """One diffusers ``UNet2DModel`` under training: optimiser, LR schedule, EMA, step count."""

    def __init__(
        self,
        name: str,
        cfg: DiffusionConfig,
        unet: Any,
        accelerator: Any,
        optim: OptimSettings,
        *,
        target: int,
        batch: Callable[[], tuple[torch.Tensor, torch.Tensor | None]],
    ) -> None:
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel

        self.name, self.cfg, self.optim, self.target = name, cfg, optim, target
        self.accelerator = accelerator
        self.batch = batch
        self.noise = make_train_scheduler(cfg)
        unet.train().requires_grad_(True)
        opt = torch.optim.AdamW(unet.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
        # stepped by hand, once per optimiser step: the schedule does not depend on the number
        # of processes (accelerate would step a prepared scheduler once per process)
        self.lr_scheduler = get_scheduler(
            optim.lr_schedule, opt, num_warmup_steps=optim.warmup, num_training_steps=target
        )
        self.model, self.optimizer = accelerator.prepare(unet, opt)
        raw = accelerator.unwrap_model(self.model)
        self.ema = EMAModel(raw.parameters(), decay=optim.ema_decay)
        self.ema_unet = copy.deepcopy(raw).eval().requires_grad_(False)
        self.step = 0
        self.running = float("nan")
        self.losses: list[tuple[int, float]] = []

    @property
    def unet(self) -> Any:
        return self.accelerator.unwrap_model(self.model)

    def fraction(self) -> float:
        return self.step / max(self.target, 1)

    def train_step(self, generator: torch.Generator) -> float:
        """One optimiser step over ``grad_accumulation`` batches; the loss (process mean)."""
        acc = self.accelerator
        n = max(1, self.optim.grad_accumulation)
        total = torch.zeros((), device=acc.device)
        for i in range(n):
            x0, cond = self.batch()
            x0 = x0.to(acc.device)
            cond = None if cond is None else cond.to(acc.device)
            sync = contextlib.nullcontext() if i == n - 1 else acc.no_sync(self.model)
            with sync:
                with acc.autocast():
                    loss = diffusion_loss(self.model, self.noise, x0, cond, generator=generator)
                acc.backward(loss / n)  # outside autocast, as torch recommends
            total += loss.detach().float() / n
        if self.optim.max_grad_norm:
            acc.clip_grad_norm_(self.model.parameters(), self.optim.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.step(self.unet.parameters())
        self.step += 1
        if acc.num_processes > 1:
            total = acc.reduce(total, reduction="mean")
        value = float(total)
        if not math.isfinite(value):
            raise CellsynthInputError(
                f"training diverged ({self.name} loss is {value}); try a smaller learning rate"
            )
        self.running = value if math.isnan(self.running) else 0.98 * self.running + 0.02 * value
        if self.step % 10 == 0:
            self.losses.append((self.step, round(self.running, 5)))
        return value

    def averaged(self) -> Any:
        """The EMA weights, as the UNet that goes into a bundle (the same object every call)."""
        self.ema.copy_to(self.ema_unet.parameters())
        return self.ema_unet

    # -- checkpoint state (safetensors + JSON)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        opt_tensors, opt_meta = optimizer_state(self.optimizer)
        tensors = {f"optimizer.{k}": v for k, v in opt_tensors.items()}
        ema_sd = self.ema.state_dict()
        for i, p in enumerate(ema_sd.pop("shadow_params")):
            tensors[f"ema.{i}"] = p
        for k, v in self.unet.state_dict().items():
            tensors[f"model.{k}"] = v
        meta = {
            "step": self.step,
            "running": None if math.isnan(self.running) else self.running,
            "losses": self.losses,
            "optimizer": opt_meta,
            "lr_scheduler": _jsonable(self.lr_scheduler.state_dict()),
            "ema": ema_sd,
            "config": self.cfg.to_dict(),
        }
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        dev = self.accelerator.device
        model_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        self.unet.load_state_dict(model_sd, strict=True)
        opt = {k[10:]: v.to(dev) for k, v in tensors.items() if k.startswith("optimizer.")}
        load_optimizer_state(self.optimizer, opt, meta["optimizer"])
        shadow = [tensors[f"ema.{i}"].to(dev) for i in range(len(self.ema.shadow_params))]
        self.ema.load_state_dict({**meta["ema"], "shadow_params": shadow})
        self.lr_scheduler.load_state_dict(meta["lr_scheduler"])
        self.step = int(meta["step"])
        self.running = float("nan") if meta["running"] is None else float(meta["running"])
        self.losses = [(int(s), float(v)) for s, v in meta["losses"]]


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    """A scheduler's state without its lambdas (functions are rebuilt by get_scheduler)."""
    out = {}
    for k, v in d.items():
        try:
            json.dumps(v)
        except TypeError:
            continue
        out[k] = v
    return out


# --------------------------------------------------------------------------- checkpoints


class Checkpoints:
    """Checkpoint folders ``ROOT/checkpoint-<step>``, each swapped in by one rename.

    A folder is written as ``ROOT/.tmp-checkpoint-*`` and renamed when its last file is on disk,
    so every folder with the final name is complete; temporary folders left by a killed run are
    orphans and are removed by :meth:`clean_orphans`. ``ROOT/state.json`` names the newest one
    (for tools that only need to know that there is something to resume).
    """

    def __init__(self, root: str | Path, keep: int = 2) -> None:
        self.root = Path(root)
        self.keep = keep

    def complete(self) -> list[Path]:
        """Complete checkpoints, newest first."""
        if not self.root.is_dir():
            return []
        found = [
            (int(m.group(1)), p)
            for p in self.root.iterdir()
            if p.is_dir() and (m := _CKPT.match(p.name))
        ]
        return [p for _, p in sorted(found, reverse=True)]

    def latest(self) -> Path | None:
        found = self.complete()
        return found[0] if found else None

    def clean_orphans(self) -> list[Path]:
        gone = []
        if self.root.is_dir():
            for p in self.root.iterdir():
                if p.name.startswith(_TMP_PREFIX):
                    shutil.rmtree(p, ignore_errors=True)
                    gone.append(p)
        return gone

    def save(self, step: int, write: Callable[[Path], None]) -> Path:
        """``write(folder)`` fills a temporary folder that then becomes ``checkpoint-<step>``."""
        from cellsynth.io import _umask, write_json

        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=self.root))
        final = self.root / f"checkpoint-{step:09d}"
        try:
            write(tmp)
            tmp.chmod(0o777 & ~_umask())
            if final.exists():  # the same step saved again (e.g. resumed and stopped at once)
                old = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=self.root))
                old.rmdir()
                final.rename(old)
                shutil.rmtree(old, ignore_errors=True)
            tmp.rename(final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        for old in self.complete()[self.keep :]:
            shutil.rmtree(old, ignore_errors=True)
        write_json(self.root / "state.json", {"format": CHECKPOINT_FORMAT, "latest": final.name})
        return final


def generator_states(accelerator: Any, generator: torch.Generator) -> list[torch.Tensor]:
    """Every process's data-generator state (a collective call: all processes take part)."""
    state = generator.get_state()
    if accelerator.num_processes == 1:
        return [state]
    from accelerate.utils import gather_object

    return [torch.as_tensor(s, dtype=torch.uint8) for s in gather_object([state.tolist()])]


def write_checkpoint(
    folder: Path,
    trainers: dict[str, ModelTrainer],
    rng_states: list[torch.Tensor],
    extra: dict[str, Any],
) -> None:
    """The state of ``trainers`` and each process's data generator (:func:`generator_states`)
    into ``folder`` (safetensors + JSON)."""
    from cellsynth.io import write_json

    models = {}
    for name, tr in trainers.items():
        tensors, meta = tr.state()
        save_tensors(folder / f"{name}.safetensors", tensors)
        models[name] = meta
    rng = {f"data.{rank}": st for rank, st in enumerate(rng_states)}
    save_tensors(folder / "rng.safetensors", rng)
    write_json(
        folder / "checkpoint.json",
        {"format": CHECKPOINT_FORMAT, "models": models, **extra},
    )


def read_checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    """checkpoint.json and the tensors of each model; a damaged checkpoint raises a one-line
    :class:`CellsynthInputError` naming it."""
    try:
        meta = json.loads((folder / "checkpoint.json").read_text())
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"unknown format {meta.get('format')!r}")
        tensors = {name: load_tensors(folder / f"{name}.safetensors") for name in meta["models"]}
        tensors["rng"] = load_tensors(folder / "rng.safetensors")
    except Exception as exc:  # json, OSError, safetensors' own error: all mean "damaged"
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CellsynthInputError(f"damaged training checkpoint ({msg})", folder) from None
    return meta, tensors


def restore(
    folder: Path,
    trainers: dict[str, ModelTrainer],
    generator: torch.Generator,
    meta: dict[str, Any],
    tensors: dict[str, dict[str, torch.Tensor]],
) -> None:
    try:
        for name, tr in trainers.items():
            tr.load_state(tensors[name], meta["models"][name])
        rank = trainers[next(iter(trainers))].accelerator.process_index
        key = f"data.{rank}"
        if key in tensors["rng"]:
            generator.set_state(tensors["rng"][key])
        else:  # resumed on more processes than the checkpoint was written by
            generator.set_state(tensors["rng"]["data.0"])
            generator.manual_seed(int(torch.randint(2**62, (1,), generator=generator)) + rank)
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CellsynthInputError(f"damaged training checkpoint ({msg})", folder) from None


# --------------------------------------------------------------------------- the loop


def train_loop(
    trainers: dict[str, ModelTrainer],
    generator: torch.Generator,
    *,
    budget_s: float | None = None,
    checkpoint_s: float | None = None,
    save: Callable[[bool], str | None] | None = None,
    elapsed0: float = 0.0,
) -> Iterator[TrainReport]:
    """Train ``trainers`` interleaved until every target is reached or ``budget_s`` runs out.

    ``save(interrupted)`` (called every ``checkpoint_s`` seconds and whenever the loop ends:
    finished, or interrupted/closed by its consumer, ``interrupted`` True — then the user is
    waiting, so only what resuming needs should be written) writes a checkpoint and returns its
    path. Under
    several processes the stop and checkpoint decisions are taken by process 0 and broadcast,
    so every process takes the same steps.
    """
    acc = next(iter(trainers.values())).accelerator
    t_start = time.monotonic()
    last_ckpt = t_start
    dirty = False

    def report(tr: ModelTrainer | None, loss: float, ckpt: str | None, done: bool) -> TrainReport:
        return TrainReport(
            model=tr.name if tr else "",
            step=tr.step if tr else 0,
            loss=loss,
            running=tr.running if tr else float("nan"),
            elapsed=elapsed0 + time.monotonic() - t_start,
            steps={n: t.step for n, t in trainers.items()},
            targets={n: t.target for n, t in trainers.items()},
            checkpoint=ckpt,
            done=done,
        )

    def decide() -> tuple[bool, bool]:
        now = time.monotonic()
        stop = not any(t.step < t.target for t in trainers.values())
        stop = stop or (budget_s is not None and now - t_start >= budget_s)
        ckpt = checkpoint_s is not None and now - last_ckpt > checkpoint_s
        if acc.num_processes > 1:
            from accelerate.utils import broadcast

            flags = broadcast(torch.tensor([stop, ckpt], device=acc.device), from_process=0)
            stop, ckpt = bool(flags[0]), bool(flags[1])
        return stop, ckpt

    completed = False
    try:
        stop, _ = decide()
        while not stop:
            tr = min((t for t in trainers.values() if t.step < t.target), key=ModelTrainer.fraction)
            loss = tr.train_step(generator)
            dirty = True
            stop, want_ckpt = decide()
            ckpt = None
            if want_ckpt and save is not None:
                ckpt = save(False)
                last_ckpt = time.monotonic()
                dirty = False
            yield report(tr, loss, ckpt, False)
        completed = True
    finally:
        if dirty and save is not None:
            save(not completed)
    yield report(None, float("nan"), None, True)
