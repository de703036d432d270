"""The one diffusion training loop: exact resume, crash-safe checkpoints, one writer per bundle."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import signal
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import test_learn_synthesize as tls
from cellsynth.bundle import GeneratorBundle
from cellsynth.diffusion.training import Checkpoints
from cellsynth.errors import CellsynthInputError
from cellsynth.io import read_dataset
from cellsynth.learn import CHECKPOINTS, learn
from cellsynth.locks import folder_lock

_settings = tls._settings
train_folder = tls.train_folder  # the same small annotated data set (module fixture)


def _weights(folder, name):
    return load_file(str(folder / name / "diffusion_pytorch_model.safetensors"))


def _run(pairs, out, resume=False, **kw):
    return list(learn(pairs, out, _settings(**kw), resume=resume))


def test_a_resumed_run_gives_the_same_weights_as_an_uninterrupted_one(train_folder, tmp_path):
    pairs = read_dataset(train_folder).pairs
    _run(pairs, tmp_path / "straight", mask_steps=4, texture_steps=4)
    _run(pairs, tmp_path / "split", mask_steps=2, texture_steps=2)
    last = _run(pairs, tmp_path / "split", resume=True, mask_steps=4, texture_steps=4)[-1]
    assert last.done and last.mask_step == 4 and last.texture_step == 4
    for name in ("mask_model", "texture_model"):  # EMA weights: the bundle's models
        a, b = _weights(tmp_path / "straight", name), _weights(tmp_path / "split", name)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    # and the raw weights, optimiser and EMA state in the newest checkpoints
    ca = Checkpoints(tmp_path / "straight" / CHECKPOINTS).latest()
    cb = Checkpoints(tmp_path / "split" / CHECKPOINTS).latest()
    assert ca.name == cb.name == "checkpoint-000000008"
    for name in ("mask_model", "texture_model"):
        a, b = (
            load_file(str(ca / f"{name}.safetensors")),
            load_file(str(cb / f"{name}.safetensors")),
        )
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    meta = json.loads((cb / "checkpoint.json").read_text())
    assert meta["models"]["mask_model"]["lr_scheduler"]["last_epoch"] == 4
    assert meta["models"]["mask_model"]["ema"]["optimization_step"] == 4


def test_checkpoints_are_safetensors_and_json_only_and_only_the_newest_are_kept(
    train_folder, tmp_path
):
    out = tmp_path / "b"
    _run(read_dataset(train_folder).pairs, out, mask_steps=3, texture_steps=3, checkpoint_minutes=0)
    ckpts = Checkpoints(out / CHECKPOINTS).complete()
    assert [p.name for p in ckpts] == ["checkpoint-000000006", "checkpoint-000000005"]
    suffixes = {p.suffix for p in (out / CHECKPOINTS).rglob("*") if p.is_file()}
    assert suffixes <= {".json", ".safetensors"}
    assert not [p for p in out.rglob("*.tmp")]
    state = json.loads((out / CHECKPOINTS / "state.json").read_text())
    assert state["latest"] == "checkpoint-000000006"


def test_a_damaged_checkpoint_is_one_line_naming_it_and_the_previous_one(train_folder, tmp_path):
    pairs = read_dataset(train_folder).pairs
    out = tmp_path / "b"
    _run(pairs, out, mask_steps=2, texture_steps=2, checkpoint_minutes=0)
    newest, previous = Checkpoints(out / CHECKPOINTS).complete()[:2]
    (newest / "texture_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CellsynthInputError) as err:
        _run(pairs, out, resume=True, mask_steps=3, texture_steps=3)
    msg = str(err.value)
    assert "\n" not in msg and newest.name in msg and previous.name in msg
    (newest / "checkpoint.json").write_text("{")
    with pytest.raises(CellsynthInputError, match="damaged training checkpoint"):
        _run(pairs, out, resume=True, mask_steps=3, texture_steps=3)


def test_resume_cleans_orphans_and_a_second_writer_is_refused(train_folder, tmp_path):
    pairs = read_dataset(train_folder).pairs
    out = tmp_path / "b"
    _run(pairs, out, mask_steps=1, texture_steps=1)
    orphan = out / CHECKPOINTS / ".tmp-checkpoint-abc"
    orphan.mkdir()
    (orphan / "mask_model.safetensors").write_bytes(b"half")
    with folder_lock(out, "bundle folder"):
        with pytest.raises(CellsynthInputError, match="another cellsynth run"):
            _run(pairs, out, resume=True, mask_steps=2, texture_steps=2)
    last = _run(pairs, out, resume=True, mask_steps=2, texture_steps=2)[-1]
    assert last.mask_step == 2
    assert not orphan.exists()


def _learn_forever(folder, out, resume):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    pairs = read_dataset(folder).pairs
    for _ in learn(
        pairs,
        out,
        _settings(mask_steps=10**6, texture_steps=10**6, checkpoint_minutes=0),
        resume=resume,
    ):
        pass


def test_killing_learn_at_random_moments_always_leaves_a_checkpoint_to_resume(
    train_folder, tmp_path
):
    """SIGKILL 20 times at random moments; each resume starts from a complete checkpoint."""
    ctx = mp.get_context("fork")  # the parent has imported torch and diffusers once
    out = tmp_path / "b"
    rnd = random.Random(0)
    pairs = read_dataset(train_folder).pairs
    _run(pairs, out, mask_steps=1, texture_steps=1, checkpoint_minutes=0)
    steps_seen = []
    for _ in range(20):
        proc = ctx.Process(target=_learn_forever, args=(train_folder, out, True))
        proc.start()
        time.sleep(rnd.uniform(0.5, 2.5))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        latest = Checkpoints(out / CHECKPOINTS).latest()
        assert latest is not None
        meta = json.loads((latest / "checkpoint.json").read_text())  # complete: readable
        steps_seen.append(sum(m["step"] for m in meta["models"].values()))
        GeneratorBundle.load(out)  # the bundle loads after every kill
    assert steps_seen == sorted(steps_seen) and steps_seen[-1] > steps_seen[0]
    prev = steps_seen[-1]
    last = _run(pairs, out, resume=True, mask_steps=10**6, texture_steps=10**6, minutes=1e-6)[-1]
    assert last.step >= prev  # continued from the newest complete checkpoint, not from zero
    assert not [p for p in (out / CHECKPOINTS).iterdir() if p.name.startswith(".tmp")]


def test_tiny_learning_on_the_builtin_data_still_converges(tmp_path):
    from cellsynth.samples import sample_dataset_path

    pairs = read_dataset(sample_dataset_path()).pairs[:4]
    s = _settings(mask_steps=60, texture_steps=1, mask_batch=8, lr=2e-3, warmup=5)
    reports = list(learn(pairs, tmp_path / "b", s))
    mask = [r.loss for r in reports if r.model == "mask_model"]
    assert np.mean(mask[-10:]) < 0.8 * np.mean(mask[:10])


def _tiny_trainer(target, batch, optim=None):
    """A 16 px UNet trained on ``batch()`` for ``target`` steps."""
    from cellsynth.diffusion.core import DiffusionConfig, build_unet
    from cellsynth.diffusion.training import ModelTrainer, OptimSettings, make_accelerator

    cfg = DiffusionConfig(
        sample_size=16, widths=(8, 16), attention=(False, False), norm_num_groups=4
    )
    acc = make_accelerator("cpu")
    optim = optim or OptimSettings()
    return ModelTrainer("m", cfg, build_unet(cfg), acc, optim, target=target, batch=batch)


def test_gradient_accumulation_takes_several_batches_per_optimiser_step():
    from cellsynth.diffusion.training import OptimSettings, make_accelerator, train_loop

    calls = []

    def batch():
        calls.append(1)
        return torch.randn(2, 1, 16, 16), None

    tr = _tiny_trainer(4, batch, OptimSettings(grad_accumulation=3, warmup=2))
    reports = list(train_loop({"m": tr}, torch.Generator().manual_seed(0)))
    assert len(calls) == 12 and tr.step == 4
    assert reports[-1].done and reports[-1].fraction == 1.0 and len(reports) == 5
    assert tr.lr_scheduler.get_last_lr()[0] == pytest.approx(1e-3)  # warm-up over
    assert tr.ema.optimization_step == 4
    with pytest.raises(CellsynthInputError, match="mixed precision"):
        make_accelerator("cpu", "fp8")


def test_the_closing_checkpoint_says_whether_the_loop_was_interrupted():
    """Finished: the last save may draw a preview; closed (Ctrl-C, Cancel): ``save(True)``,
    so ``learn`` writes the checkpoint without keeping the user waiting for a preview."""
    from cellsynth.diffusion.training import train_loop

    def trainer(target):
        return _tiny_trainer(target, lambda: (torch.randn(2, 1, 16, 16), None))

    saves = []
    gen = torch.Generator().manual_seed(0)
    list(train_loop({"m": trainer(3)}, gen, save=lambda i: saves.append(i)))
    assert saves == [False]
    saves.clear()
    job = train_loop({"m": trainer(100)}, gen, save=lambda i: saves.append(i))
    next(job), next(job)
    job.close()
    assert saves == [True]


def test_a_resumed_run_keeps_the_clustering_its_first_run_fitted(train_folder, tmp_path):
    """The placement's clustering is fitted once, when learning starts; a resume reads it from
    the interrupted run's bundle rather than fitting it again (seconds of every restart)."""
    pairs = read_dataset(train_folder).pairs
    out = tmp_path / "b"
    _run(pairs, out, mask_steps=1, texture_steps=1)
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["cells"]["cluster_prob"] is not None
    meta["cells"]["cluster_prob"], meta["cells"]["cluster_band"] = 0.55, 2.5  # off the grid
    (out / "bundle.json").write_text(json.dumps(meta))
    _run(pairs, out, resume=True, mask_steps=2, texture_steps=2)
    cells = json.loads((out / "bundle.json").read_text())["cells"]
    assert (cells["cluster_prob"], cells["cluster_band"]) == (0.55, 2.5)
