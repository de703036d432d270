"""The ``cellsynth`` command line: the same core functions the napari widgets call.

Bad input ends with one line on stderr naming the file and the problem, and exit code 2;
``--debug`` shows the full traceback instead. Every long command drives its core generator
through :func:`run_job`: one progress bar on stderr, and Ctrl-C closes the generator (the core
keeps its checkpoint), prints one line saying what was kept and exits with 130.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from cellsynth import __version__
from cellsynth.errors import CellsynthInputError

log = logging.getLogger("cellsynth")
T = TypeVar("T")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    if isinstance(v, (list, tuple)):
        return "×".join(str(x) for x in v) if all(isinstance(x, int) for x in v) else str(v)
    return "-" if v is None else str(v)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], out: Any = None) -> None:
    """A plain aligned text table (no dependency), for humans; JSON is printed separately."""
    out = out or sys.stdout
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)), file=out)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- sub-commands


def cmd_info(args: argparse.Namespace) -> int:
    from cellsynth.io import read_dataset

    if args.path is None:
        from cellsynth.samples import sample_dataset_path

        args.path = sample_dataset_path()
        log.info("no PATH given: describing the built-in sample data set")
    _check_json_output(args, [args.path])
    ds = read_dataset(args.path)
    rows = [p.describe() for p in ds.pairs]
    print(f"{ds.root}  ({ds.kind}, {len(rows)} item{'s' if len(rows) != 1 else ''})")
    cols = ["name", "shape", "axes", "dtype", "labels_dtype", "cells", "voxel_size"]
    if any(r.get("annotated_slices") for r in rows):
        cols.append("annotated_slices")
    print_table(rows, [c for c in cols if any(c in r for r in rows)])
    total = sum(r.get("cells", 0) for r in rows)
    summary = {
        "path": str(ds.root),
        "kind": ds.kind,
        "n_items": len(rows),
        "n_labelled": sum("cells" in r for r in rows),
        "n_cells": total,
        "items": rows,
    }
    if args.json:
        from cellsynth.io import write_json

        write_json(args.json, _json_safe(summary), overwrite=args.overwrite)
    print(json.dumps(_json_safe({k: v for k, v in summary.items() if k != "items"})))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cellsynth.io import read_dataset
    from cellsynth.metrics import evaluate_datasets

    if args.model is not None:
        if args.gt is not None:
            raise CellsynthInputError("give either PRED GT or --model MODEL DATA, not both")
        return _evaluate_model(args)
    if args.gt is None:
        raise CellsynthInputError("evaluate needs PRED and GT (or --model MODEL DATA)")
    _check_json_output(args, [args.pred, args.gt])
    pred = read_dataset(args.pred, labels_only=True)
    ref = read_dataset(args.gt, labels_only=True)
    for ds, what in ((pred, "PRED"), (ref, "GT")):
        if not ds.labelled():
            raise CellsynthInputError(f"{what} holds no label images", ds.root)
    ev = evaluate_datasets(pred, ref)
    if ev.unmatched_predictions:
        log.warning(
            "predictions without a reference frame (ignored): %s",
            ", ".join(ev.unmatched_predictions[:10]),
        )
    if ev.unmatched_references:
        log.warning(
            "reference frames without a prediction (not scored): %s",
            ", ".join(ev.unmatched_references[:10]),
        )
    return _report_evaluation(ev, args)


def _report_evaluation(ev: Any, args: argparse.Namespace) -> int:
    from cellsynth.io import write_json

    print_table(
        ev.rows(), ["name", "n_reference", "n_predicted", "SEG", "AP50", "AP75", "AP90", "bPQ"]
    )
    summary = ev.summary()
    if args.json:
        write_json(
            args.json,
            _json_safe({"summary": summary, "frames": ev.rows()}),
            overwrite=args.overwrite,
        )
    print(json.dumps(_json_safe(summary)))
    return 0


def _evaluate_model(args: argparse.Namespace) -> int:
    """Segment DATA with MODEL, then score against DATA's labels."""
    from cellsynth.io import read_dataset
    from cellsynth.metrics import Evaluation
    from cellsynth.segment import check_stitch_threshold, evaluating, load_model

    _check_json_output(args, [args.pred, args.model])
    check_stitch_threshold(args.stitch_threshold)
    model = load_model(args.model, args.device, args.backend)
    ds = read_dataset(args.pred, require_labels=True, require_images=True)
    last = run_job(
        evaluating(model, ds.pairs, args.stitch_threshold),
        total=len(ds.pairs),
        desc="segmenting",
        unit="image",
        update=_count,
        kept="nothing was written",
    )
    return _report_evaluation(last[2] if last else Evaluation(), args)


def _check_json_output(args: argparse.Namespace, inputs: Sequence[Path]) -> None:
    """``--json FILE``: never an input, never an existing file without ``--overwrite``."""
    if args.json is not None:
        from cellsynth.outputs import check_new_file

        check_new_file(args.json, overwrite=args.overwrite, inputs=inputs)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a long job, which kept what it could; ``str()`` says what was kept."""


def run_job(
    job: Iterator[T],
    *,
    total: float,
    desc: str,
    unit: str = "it",
    update: Callable[[Any, T], None] | None = None,
    kept: str | Callable[[], str] = "",
) -> T | None:
    """Run a core generator to its end behind one progress bar; return its last record.

    Every long command runs here. ``update(bar, record)`` shows a record on the tqdm ``bar``
    (default: one more ``unit`` per record). On Ctrl-C the generator is closed, so that the core
    saves its checkpoint or model, and :class:`Interrupted` carries what was kept: ``kept``, or
    what it returns when it is a callable (called after the close, e.g. to save a model). ``main``
    prints it as one line and exits with 130.
    """
    from tqdm import tqdm

    from cellsynth.jobs import remembered_sigint

    bar = tqdm(
        total=total,
        desc=desc,
        unit=unit,
        dynamic_ncols=True,
        file=sys.stderr,
        disable=None if is_main_process() else True,  # one bar under accelerate launch
    )
    last = None
    try:
        with remembered_sigint() as asked:
            for last in job:
                if update is None:
                    bar.update(1)
                else:
                    update(bar, last)
                if asked.is_set():  # a Ctrl-C that a library swallowed
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        job.close()  # the core's cleanup: a checkpoint, the weights so far, the lock released
        raise Interrupted(kept() if callable(kept) else kept) from None
    finally:
        bar.close()
    return last


def _advance(bar: Any, position: float, **postfix: str) -> None:
    """Move ``bar`` to ``position`` with ``postfix`` (tqdm redraws it a few times a second)."""
    if postfix:
        bar.set_postfix(postfix, refresh=False)
    bar.update(position - bar.n)


def _count(bar: Any, record: tuple[int, int, Any]) -> None:
    """Show an ``(i, n, ...)`` record of a core generator: ``i`` of ``n`` done."""
    _advance(bar, record[0])


def _collect(items: list[Any]) -> Callable[[Any, tuple[int, int, Any]], None]:
    """An ``update`` for ``(i, n, item)`` records that also keeps each ``item`` in ``items``."""

    def update(bar: Any, record: tuple[int, int, Any]) -> None:
        items.append(record[2])
        _count(bar, record)

    return update


def learn_settings(args: argparse.Namespace) -> Any:
    """The ``LearnSettings`` of a ``learn`` command line: the defaults (or the ``--quality``
    preset's), then every option given."""
    from cellsynth.bundle import builtin_bundle_path
    from cellsynth.settings import LearnSettings

    settings = LearnSettings.quality() if args.quality else LearnSettings()
    given = {
        "minutes": args.minutes,
        "mask_steps": args.mask_steps,
        "texture_steps": args.texture_steps,
        "checkpoint_minutes": args.checkpoint_minutes,
        "lr_schedule": args.lr_schedule,
        "texture_batch": args.texture_batch,
        "lr": args.lr,
    }
    for name, value in given.items():
        if value is not None:
            setattr(settings, name, value)
    if args.minutes is not None and args.minutes <= 0:
        settings.minutes = None  # 0: until the step targets
    settings.seed, settings.device, settings.tile = args.seed, args.device, args.tile
    settings.brightness_condition = not args.no_brightness_condition
    settings.preview = not args.no_preview
    if args.init_from is not None:
        builtin = str(args.init_from) == "builtin"
        settings.init_from = str(builtin_bundle_path() if builtin else args.init_from)
    return settings


def cmd_learn(args: argparse.Namespace) -> int:
    from cellsynth.io import read_pairs
    from cellsynth.learn import learn
    from cellsynth.outputs import check_writable

    check_writable(args.output)  # before any training, not after the whole budget
    pairs = read_pairs(args.data, require_labels=True)
    if args.three_d:
        from cellsynth.learn3d import check_3d_pairs

        check_3d_pairs(pairs)
    elif args.voxel_size is not None:
        raise CellsynthInputError("--voxel-size is for --3d (3D stacks)")
    settings = learn_settings(args)
    if args.tiny:
        settings.use_tiny_models()
    if args.three_d:
        from cellsynth.learn3d import Learn3DSettings, learn_3d

        s3 = Learn3DSettings(
            multiview_steps=args.multiview_steps,
            voxel_size=tuple(args.voxel_size) if args.voxel_size else None,
        )
        if args.tiny:
            s3.use_tiny_models()
        job = learn_3d(pairs, args.output, settings, s3, resume=args.resume)
    else:
        job = learn(pairs, args.output, settings, resume=args.resume)
    last = run_job(
        job,
        total=100,
        desc="learning",
        unit="%",
        update=_show_learning,
        kept=f"the last checkpoint is in {args.output}; continue with --resume",
    )
    assert last is not None
    summary = {
        "bundle": str(args.output),
        "mask_steps": last.mask_step,
        "texture_steps": last.texture_step,
        "seconds": round(last.elapsed, 1),
    }
    if not is_main_process():  # process 0 wrote the bundle and reports it
        return 0
    print(f"bundle written to {args.output}")
    print(json.dumps(summary))
    return 0


def _show_learning(bar: Any, p: Any) -> None:
    """A :class:`cellsynth.learn.Progress` on the bar: percent done, steps, loss."""
    _advance(
        bar,
        round(100 * p.fraction, 1),
        mask=f"{p.mask_step}",
        texture=f"{p.texture_step}",
        **({"stage": "3D shapes"} if p.model == "multiview_model" else {}),
        loss=f"{p.loss:.4f}",
    )


def _synthesis_params(args: argparse.Namespace) -> Any:
    from cellsynth.synthesize import SynthesisParams

    return SynthesisParams(
        size=tuple(args.size),
        cells=args.cells,
        cluster_prob=args.cluster_prob,
        touching=args.touching,
        divisions=args.divisions,
        density_factor=args.density_factor,
        steps=args.steps,
        seed=args.seed,
        size_factor=args.size_factor,
        brightness=args.brightness,
        exemplar_strength=getattr(args, "exemplar_strength", None),
        blur=getattr(args, "blur", None),
        edge_blur=getattr(args, "edge_blur", None),
        rho=getattr(args, "rho", None),
        voxel_size=tuple(args.voxel_size) if getattr(args, "voxel_size", None) else None,
    )


def is_main_process() -> bool:
    """False in every process but the first of an ``accelerate launch`` (``RANK`` > 0): those
    neither print nor save what process 0 prints and saves."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def leave_process_group() -> None:
    """Under ``accelerate launch`` (several processes): wait until every process is done, then
    close the process group. Without it a process that finishes first (process 0 still writing
    the bundle, or the others while process 0 does) may exit while its peers still hold open
    connections to it, and gloo aborts the process left behind (SIGABRT, seen once under load)."""
    from cellsynth.device import launched_processes

    if launched_processes() <= 1:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def cmd_synthesize(args: argparse.Namespace) -> int:
    from cellsynth.synthesize import synthesize

    params = _synthesis_params(args)
    names: list[str] = []
    run_job(
        synthesize(args.output, args.n, params, bundle=args.bundle, device=args.device),
        total=args.n,
        desc="synthesizing",
        unit="pair",
        update=_collect(names),
        kept=f"the pairs written so far are in {args.output}; run the same command to add "
        "the others",
    )
    if not is_main_process():  # process 0 reports every process's pairs
        return 0
    print(f"{len(names)} pairs written to {args.output} (images/, labels/, dataset.json)")
    print(json.dumps({"output": str(args.output), "n": len(names), "names": names}))
    return 0


def cmd_train_multiview(args: argparse.Namespace) -> int:
    from cellsynth.outputs import check_writable
    from cellsynth.shapes.harmonics import ShapePriorConfig
    from cellsynth.shapes.multiview import MultiviewModel, train_multiview

    check_writable(args.output)
    if args.output.exists() and any(args.output.iterdir()):
        raise CellsynthInputError(
            "output folder exists and is not empty; choose a new one", args.output
        )
    if args.init is not None:
        model = MultiviewModel.load(args.init)
    else:
        model = MultiviewModel.new(ShapePriorConfig(), widths=tuple(args.widths))
    if args.z_ratio is not None:
        model.prior.z_ratio = args.z_ratio
    model.prior.validate()
    job = train_multiview(
        model,
        args.steps,
        batch_size=args.batch,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
    )

    def save_so_far() -> str:
        if is_main_process():  # the processes hold the same model: process 0 saves it
            model.save(args.output)
        return f"the model so far is in {args.output}"

    last = run_job(
        job,
        total=args.steps,
        desc="multiview model",
        unit="step",
        update=lambda bar, p: _advance(bar, p.step, loss=f"{p.loss:.4f}"),
        kept=save_so_far,
    )
    if not is_main_process():  # the processes hold the same model: process 0 saves it
        return 0
    model.save(args.output)
    print(f"multiview model written to {args.output}")
    print(
        json.dumps(
            {
                "output": str(args.output),
                "steps": args.steps,
                "loss": None if last is None else round(last.loss, 5),
            }
        )
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from cellsynth.demo import run_demo

    report = run_demo(
        args.output, n=args.n, size=tuple(args.size), seed=args.seed, device=args.device
    )
    print(f"demo data written to {report['output']}")
    print(f"  synthetic pairs: {report['output']}/images, {report['output']}/labels")
    print(f"  realism report:  {report['figure']}")
    print(json.dumps(_json_safe(report["summary"])))
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from cellsynth.io import read_dataset
    from cellsynth.segment import FinetuneSettings, check_finetune_output, finetune

    check_finetune_output(args.output, args.backend)  # before reading or training
    real = [p for d in args.real for p in read_dataset(d, require_labels=True).pairs]
    synthetic = []
    for d in args.synthetic or []:
        ds = read_dataset(d, require_labels=True)
        synthetic.extend(ds.pairs)
    settings = FinetuneSettings(
        epochs=args.epochs,
        p_real=args.p_real,
        learning_rate=args.learning_rate,
        pretrained=str(args.pretrained) if args.pretrained else None,
        pretrain_epochs=args.pretrain_epochs,
        device=args.device,
        seed=args.seed,
        nimg_per_epoch=args.images_per_epoch,
    )
    last = run_job(
        finetune(real, synthetic, args.output, settings, args.backend),
        total=args.pretrain_epochs + args.epochs,
        desc="fine-tuning",
        unit="epoch",
        update=lambda bar, p: _advance(bar, p.epochs if p.done else p.epoch, loss=f"{p.loss:.4f}"),
        kept=f"the last weights are in {args.output}",
    )
    print(f"{args.backend} model written to {args.output} (+ training log .log.json)")
    print(
        json.dumps(
            _json_safe(
                {
                    "model": str(args.output),
                    "epochs": args.epochs,
                    "pretrain_epochs": args.pretrain_epochs,
                    "final_loss": last.loss if last else None,
                    "seconds": round(last.elapsed, 1) if last else None,
                }
            )
        )
    )
    return 0


def _backend_arg(p: argparse.ArgumentParser, *, for_model: bool) -> None:
    """``--backend NAME``: the segmenter backend (a model file's own by default)."""
    from cellsynth.segmenters import DEFAULT_BACKEND, backend_names

    names = ", ".join(backend_names())
    p.add_argument(
        "--backend",
        default=None if for_model else DEFAULT_BACKEND,
        metavar="NAME",
        help=f"segmenter backend ({names}; default: "
        + ("the one that reads the model file)" if for_model else f"{DEFAULT_BACKEND})"),
    )


def cmd_segment(args: argparse.Namespace) -> int:
    from cellsynth.io import read_pairs
    from cellsynth.outputs import check_output_folder
    from cellsynth.segment import check_stitch_threshold, load_model

    check_stitch_threshold(args.stitch_threshold)
    pairs = read_pairs(args.inputs)
    pairs = [p for p in pairs if p.has_image]
    if not pairs:
        raise CellsynthInputError("no images to segment", args.inputs[0])
    names = [f"{p.name}.tif" for p in pairs]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise CellsynthInputError(
            f"two inputs would both be written as {dup}; segment them into separate folders",
            args.output,
        )
    check_output_folder(args.output, names, inputs=[*args.inputs, args.model])
    model = load_model(args.model, args.device, args.backend)
    args.output.mkdir(parents=True, exist_ok=True)
    run_job(
        _segment_into(args.output, model, pairs, args.diameter, args.stitch_threshold),
        total=len(pairs),
        desc="segmenting",
        unit="image",
        kept=f"the label images written so far are in {args.output}",
    )
    print(f"{len(pairs)} label images written to {args.output}")
    print(json.dumps({"output": str(args.output), "n": len(pairs)}))
    return 0


def _segment_into(
    out: Path,
    model: Any,
    pairs: Sequence[Any],
    diameter: float | None,
    stitch_threshold: float | None = None,
) -> Iterator[Path]:
    """Segment each pair's image and write its labels as ``out/NAME.tif``; yields each file."""
    from cellsynth.io import write_tiff
    from cellsynth.segment import segment

    for p in pairs:
        labels = segment(
            model,
            p.image,
            diameter=diameter,
            path=p.image_path,
            stitch_threshold=stitch_threshold,
        )
        yield write_tiff(out / f"{p.name}.tif", labels, voxel_size=p.voxel_size)


def cmd_score(args: argparse.Namespace) -> int:
    from cellsynth.io import DatasetWriter, read_dataset
    from cellsynth.outputs import dataset_origin, is_synthetic_origin
    from cellsynth.segment import check_stitch_threshold, load_model, record_quality, scoring

    check_stitch_threshold(args.stitch_threshold)
    origin = dataset_origin(args.dataset) if args.dataset.is_dir() else None
    if origin is not None and not is_synthetic_origin(origin):  # scores go into dataset.json
        raise CellsynthInputError(
            f"is a data set of origin {origin!r} (dataset.json); score rates synthetic pairs and "
            "never writes into a real data set's records",
            args.dataset,
        )
    ds = read_dataset(args.dataset, require_labels=True, require_images=True)
    if ds.kind != "dataset":
        raise CellsynthInputError("score needs a dataset folder (images/, labels/)", args.dataset)
    model = load_model(args.model, args.device, args.backend)
    rows: list[dict[str, Any]] = []
    run_job(
        scoring(model, ds.pairs, args.stitch_threshold),
        total=len(ds.pairs),
        desc="scoring",
        unit="image",
        update=_collect(rows),
        kept="no scores were written",
    )
    extra = {} if args.stitch_threshold is None else {"stitch_threshold": args.stitch_threshold}
    record_quality(DatasetWriter(args.dataset), rows, args.model, **extra)
    rows.sort(key=lambda r: r["SEG"] if r["SEG"] == r["SEG"] else -1)
    print_table(rows, ["name", "SEG", "IoU", "n_labels", "n_predicted"])
    segs = [r["SEG"] for r in rows if r["SEG"] == r["SEG"]]
    print(
        json.dumps(
            _json_safe(
                {
                    "dataset": str(args.dataset),
                    "n": len(rows),
                    "mean_SEG": sum(segs) / len(segs) if segs else None,
                }
            )
        )
    )
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from cellsynth.experiment import (
        load_config,
        row_devices,
        run_experiment,
        run_rows_in_parallel,
    )
    from cellsynth.outputs import check_writable

    config = load_config(args.config)
    check_writable(args.output)
    devices = row_devices(args.devices) if args.devices else []
    if len(devices) > 1 and (args.budget_hours is not None or args.prepare):
        raise CellsynthInputError(
            "--devices runs rows side by side: not with --budget-hours or --prepare"
        )
    if len(devices) > 1:
        job = run_rows_in_parallel(config, args.output, devices, only=args.only)
    else:
        job = run_experiment(
            config,
            args.output,
            device=devices[0] if devices else args.device,
            only=args.only,
            budget_hours=args.budget_hours,
            command=["cellsynth", *args.argv],
            prepare_only=args.prepare,
            rung=None if args.rung is None else (args.rung, args.rung_lr),
        )
    stage = None

    def update(bar: Any, p: Any) -> None:  # an ExperimentProgress
        nonlocal stage
        if (p.stage, p.row) != stage:
            stage = (p.stage, p.row)
            bar.set_description(f"{p.stage}{f' [{p.row}]' if p.row else ''}", refresh=False)
            if p.stage == "evaluation" or p.stage == "done":
                log.info("%s%s", f"{p.row}: " if p.row else "", p.message)
        bar.set_postfix_str(p.message, refresh=False)
        _advance(bar, round(100 * p.fraction, 1))

    run_job(
        job,
        total=100,
        desc="experiment",
        unit="%",
        update=update,
        kept=f"finished rows are kept in {args.output}; run the same command to continue",
    )
    res = json.loads((args.output / "results.json").read_text())
    print((args.output / "results.md").read_text())
    summary = {
        name: {k: rec.get(k) for k in ("SEG", "AP50", "bPQ", "train_seconds", "epochs")}
        for name, rec in res["rows"].items()
    }
    print(json.dumps({"results": str(args.output / "results.json"), "rows": summary}))
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cellsynth",
        description="Learn cells from a few annotated microscopy images, synthesize annotated "
        "2D/3D data and fine-tune Cellpose.",
    )
    parser.add_argument("--version", action="version", version=f"cellsynth {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per process (default: the free cores, shared among processes)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_command in (
        _info_parser,
        _evaluate_parser,
        _learn_parser,
        _synthesize_parser,
        _train_multiview_parser,
        _demo_parser,
        _finetune_parser,
        _segment_parser,
        _score_parser,
        _experiment_parser,
    ):
        add_command(sub)
    return parser


def _info_parser(sub: Any) -> None:
    p = sub.add_parser(
        "info",
        help="describe what cellsynth reads from a file or folder",
        description="Read a TIFF/PNG file, a dataset folder (images/ + labels/) or a Cell "
        "Tracking Challenge folder and list shapes, dtypes, cell counts and voxel size. The last "
        "line of output is a JSON summary.",
    )
    p.add_argument(
        "path",
        type=Path,
        nargs="?",
        help="file or folder (default: the built-in CC0 nuclei data set)",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the full report here")
    p.add_argument("--overwrite", action="store_true", help="let --json replace an existing file")
    p.set_defaults(func=cmd_info)


def _evaluate_parser(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score predicted labels against reference labels (SEG, AP, bPQ)",
        description="Compare predicted instance labels with reference labels. PRED and GT are "
        "each a TIFF, a dataset folder or a CTC folder; frames are paired by name, then by frame "
        "number (t013.tif <-> man_seg013.tif). Prints a per-image table and, as the last line, "
        "a JSON object with SEG, AP50, AP75, AP90, bPQ, n_images, n_reference.",
    )
    p.add_argument(
        "pred",
        type=Path,
        help="predicted labels (file or folder); with --model: the data to segment",
    )
    p.add_argument("gt", type=Path, nargs="?", help="reference labels (file or folder)")
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        help="segment PRED's images with this Cellpose model, score against its labels",
    )
    p.add_argument("--device", default="auto", help="with --model: auto, cpu, cuda or mps")
    _stitch_arg(p, "with --model: ")
    _backend_arg(p, for_model=True)
    p.add_argument(
        "--json", type=Path, metavar="FILE", help="also write summary and per-image rows here"
    )
    p.add_argument("--overwrite", action="store_true", help="let --json replace an existing file")
    p.set_defaults(func=cmd_evaluate)


def _learn_parser(sub: Any) -> None:
    p = sub.add_parser(
        "learn",
        help="train a generator bundle (mask + texture models) on annotated images",
        description="Train the mask diffusion model and the mask-conditioned texture model on "
        "images with instance labels (files, dataset folders or CTC folders) and save them as a "
        "generator bundle. Checkpoints are written every few minutes and on Ctrl-C; --resume "
        "continues.",
    )
    p.add_argument("data", type=Path, nargs="+", help="annotated data: files or folders")
    p.add_argument("-o", "--output", type=Path, required=True, help="bundle folder to create")
    from cellsynth.settings import LR_SCHEDULES, Learn3DSettings, LearnSettings

    d, q, d3 = LearnSettings(), LearnSettings.quality(), Learn3DSettings()
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        help=f"time budget in minutes (default {d.minutes:g}; 0 = until the step targets)",
    )
    p.add_argument(
        "--mask-steps",
        type=int,
        default=None,
        help=f"mask model steps (max; default {d.mask_steps}, --quality {q.mask_steps})",
    )
    p.add_argument(
        "--texture-steps",
        type=int,
        default=None,
        help=f"texture model steps (max; default {d.texture_steps}, --quality {q.texture_steps})",
    )
    p.add_argument(
        "--checkpoint-minutes",
        type=float,
        default=None,
        help=f"minutes between checkpoints and previews (default {d.checkpoint_minutes:g}, "
        f"--quality {q.checkpoint_minutes:g})",
    )
    p.add_argument(
        "--quality",
        action="store_true",
        help="long run to a flat loss: no time budget, 10x the steps, checkpoints every "
        f"{q.checkpoint_minutes:g} min (hours on a CPU; Ctrl-C and --resume at any time)",
    )
    p.add_argument(
        "--init-from",
        type=Path,
        default=None,
        metavar="BUNDLE",
        help="start from this bundle's models ('builtin': the built-in one) instead of "
        "random weights; --mask-steps 0 keeps its mask model",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"learning rate (default {d.lr:g}; lower to continue a trained bundle)",
    )
    p.add_argument(
        "--lr-schedule",
        default=None,
        choices=LR_SCHEDULES,
        help=f"learning-rate schedule (default {d.lr_schedule}; cosine decays to 0 at the "
        "step targets, e.g. to finish a run started with --init-from)",
    )
    p.add_argument(
        "--no-brightness-condition",
        action="store_true",
        help="texture model without the per-cell brightness channel (like older bundles)",
    )
    p.add_argument(
        "--no-preview",
        action="store_true",
        help="do not write BUNDLE/progress/step-N.png (samples + loss) at checkpoints",
    )
    p.add_argument(
        "--tile",
        type=int,
        default=None,
        help="texture training tile in px (default: about twice the cell diameter)",
    )
    p.add_argument(
        "--texture-batch",
        type=int,
        default=None,
        help=f"texture tiles per step (default {d.texture_batch} of 64 px, fewer for larger "
        "tiles chosen from the cells' size)",
    )
    p.add_argument("--resume", action="store_true", help="continue training an existing bundle")
    p.add_argument(
        "--3d",
        dest="three_d",
        action="store_true",
        help="3D stacks: also fit the 3D shape prior, refine the multiview model and "
        "calibrate rho (slice correlation) on the data",
    )
    p.add_argument(
        "--voxel-size",
        type=float,
        nargs=3,
        default=None,
        metavar=("Z", "Y", "X"),
        help="--3d: voxel size when the stacks do not record it (default: from the files)",
    )
    p.add_argument(
        "--multiview-steps",
        type=int,
        default=d3.multiview_steps,
        help="--3d: steps refining the multiview model on the fitted prior "
        f"(default {d3.multiview_steps})",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests only
    p.set_defaults(func=cmd_learn)


def _synthesize_parser(sub: Any) -> None:
    def add_synthesis_args(p: argparse.ArgumentParser, n: int, size: list[int]) -> None:
        p.add_argument("-n", type=int, default=n, help=f"number of pairs (default {n})")
        p.add_argument(
            "--size",
            type=int,
            nargs="+",
            default=size,
            metavar="N",
            help=f"canvas size H W, or Z Y X for 3D stacks (default {' '.join(map(str, size))})",
        )
        p.add_argument(
            "--rho",
            type=float,
            default=None,
            help="3D: correlation of the slices' initial noise (paper 001 eq. 2; default: the "
            "bundle's, calibrated on its 3D data, else 2)",
        )
        p.add_argument(
            "--voxel-size",
            type=float,
            nargs=3,
            default=None,
            metavar=("Z", "Y", "X"),
            help="3D: voxel size of the stack (default: the bundle's, else cubic)",
        )
        p.add_argument(
            "--cells",
            type=int,
            default=None,
            help="cells per image (default: the training data's density)",
        )
        p.add_argument(
            "--cluster-prob",
            type=float,
            default=None,
            help="probability that a cell is placed next to others (default: the bundle's, "
            "fitted to the training frames' nearest-neighbour distances; 0.3 for bundles "
            "that do not record it)",
        )
        p.add_argument(
            "--touching",
            type=float,
            default=None,
            help="fraction of cells touching another (default: the training data's, where the "
            "bundle records it)",
        )
        p.add_argument(
            "--divisions",
            type=float,
            default=0.0,
            help="fraction of cells drawn as daughters of a recent division: touching pairs of "
            "sisters of one size, shape and brightness, each with two thirds of a cell's area "
            "(default 0)",
        )
        p.add_argument(
            "--density-factor",
            type=float,
            default=1.0,
            help="multiply the training data's cell density (default 1; ignored with --cells)",
        )
        p.add_argument(
            "--steps",
            type=int,
            default=None,
            help="texture DDIM steps (default: the bundle's, usually 10)",
        )
        p.add_argument(
            "--exemplar-strength",
            type=float,
            default=None,
            help="bundles holding exemplar cells (2D, and 3D bundles since December 2026): how "
            "much of the diffusion schedule the "
            "texture model repaints over real training cells warped onto the new masks (0-1; "
            "1 = the model alone, from noise; default: the bundle's)",
        )
        p.add_argument(
            "--blur",
            type=float,
            default=None,
            help="2D: Gaussian sigma (px) of the optical blur put on the painted image before "
            "the camera noise (default: the bundle's, fitted to its training cells' boundary "
            "gradient; 0 for bundles that do not record it)",
        )
        p.add_argument(
            "--edge-blur",
            type=float,
            default=None,
            help="2D: Gaussian sigma (px) of the softening of the cells' boundaries only, "
            "before the optical blur (default: the bundle's, fitted with the blur; 0 for "
            "bundles that do not record it)",
        )
        p.add_argument(
            "--size-factor",
            type=float,
            default=1.0,
            help="scale the cell sizes learnt from the data (default 1)",
        )
        p.add_argument(
            "--brightness",
            choices=["data", "model"],
            default="data",
            help="data (default): each cell's mean brightness drawn from the training cells "
            "(bundles that record them); model: as the texture model paints it",
        )
        p.add_argument("--seed", type=int, default=0, help="pair i uses seed+i (default 0)")
        p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")

    p = sub.add_parser(
        "synthesize",
        help="synthesize annotated image/label pairs with a generator bundle",
        description="Synthesize fully annotated image/label pairs and write them as a dataset "
        "folder (images/, labels/, dataset.json recording the bundle, seed and every "
        "parameter). Without --bundle the built-in bundle is used. The same seed gives the "
        "same output.",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="dataset folder to write")
    p.add_argument(
        "--bundle", type=Path, default=None, help="generator bundle folder (default: built-in)"
    )
    add_synthesis_args(p, 4, [256, 256])
    p.set_defaults(func=cmd_synthesize)


def _train_multiview_parser(sub: Any) -> None:
    p = sub.add_parser(
        "train-multiview",
        help="train the 3D multiview shape model on the spherical-harmonic prior",
        description="Train (or, with --init, refine) the multiview model that turns a 2D cell "
        "mask into the silhouettes of a 3D shape. It learns from procedural spherical-harmonic "
        "shapes only, so it needs no data; cellsynth ships one "
        "(scripts/train_builtin_multiview.sh) and 'learn --3d' refines it on your cells.",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="model folder to write")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument(
        "--z-ratio",
        type=float,
        default=None,
        help="mean z extent / in-plane diameter of the prior's cells (default 0.8)",
    )
    p.add_argument("--init", type=Path, default=None, help="start from this multiview model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_train_multiview)


def _demo_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="synthesize a few pairs with the built-in bundle and a realism report",
        description="Run the whole 2D cascade on the built-in bundle (trained on the shipped "
        "CC0 nuclei): write a few synthetic pairs and a PNG comparing their cell morphology "
        "with the real data.",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("cellsynth-demo"),
        help="output folder (default ./cellsynth-demo, a new name if it exists)",
    )
    # the built-in images' size, and cells enough (~150) for the layout figures to compare
    p.add_argument("-n", type=int, default=6, help="number of pairs (default 6)")
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=[360, 360],
        metavar=("H", "W"),
        help="pair size (default 360 360, the built-in real images' size)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_demo)


def _finetune_parser(sub: Any) -> None:
    from cellsynth.segmenters import FinetuneSettings  # defaults (light: no torch)

    p = sub.add_parser(
        "finetune",
        help="train a Cellpose model on real (+ synthetic) data",
        description="Train Cellpose 3 from scratch or from a local model file on real and "
        "synthetic pairs, drawing real images with probability --p-real. 3D stacks train on "
        "their annotated slices. Writes a Cellpose model file (loadable by Cellpose's CLI/GUI), "
        "a .safetensors copy and a .log.json training log.",
    )
    p.add_argument("--real", type=Path, nargs="+", required=True, help="real annotated data")
    p.add_argument(
        "--synthetic", type=Path, nargs="*", default=[], help="synthetic (curated) dataset folders"
    )
    p.add_argument(
        "--p-real",
        type=float,
        default=0.6,
        help="probability that a training image is real (default 0.6)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=FinetuneSettings.epochs,
        help=f"epochs (default {FinetuneSettings.epochs})",
    )
    p.add_argument(
        "--images-per-epoch",
        type=int,
        default=None,
        help="images drawn per epoch (default: max(8, number of images))",
    )
    p.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="default 0.005 from scratch, 1e-4 from --pretrained",
    )
    p.add_argument(
        "--pretrained",
        type=Path,
        default=None,
        help="start from this local Cellpose model file (default: from scratch)",
    )
    p.add_argument(
        "--pretrain-epochs",
        type=int,
        default=0,
        help="first train this many epochs on the synthetic pairs alone (that model is kept as "
        "OUTPUT_synthetic_pretrain), then --epochs on real (+ synthetic, by --p-real) from "
        "those weights at the same learning rate (default 0: one stage). On GOWT1 at a "
        "converged budget, with --p-real 1, this beat real only by +0.014 and +0.016 SEG in "
        "two runs where mixing did not (docs/results.md)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")
    p.add_argument("-o", "--output", type=Path, required=True, help="model file to write")
    _backend_arg(p, for_model=False)
    p.set_defaults(func=cmd_finetune)


def _segment_parser(sub: Any) -> None:
    p = sub.add_parser(
        "segment",
        help="segment images with a Cellpose model, write label TIFFs",
        description="Segment 2D images or 3D stacks (files or folders) with a Cellpose model and "
        "write one label TIFF per image into OUT (never next to your images).",
    )
    p.add_argument("inputs", type=Path, nargs="+", help="images or folders")
    p.add_argument("--model", type=Path, required=True, help="Cellpose model file")
    p.add_argument(
        "--diameter",
        type=float,
        default=None,
        help="cell diameter in px (default: the model's training diameter)",
    )
    p.add_argument("--device", default="auto")
    _stitch_arg(p)
    _backend_arg(p, for_model=True)
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    p.set_defaults(func=cmd_segment)


def _stitch_arg(p: Any, prefix: str = "") -> None:
    p.add_argument(
        "--stitch-threshold",
        type=float,
        default=None,
        metavar="IOU",
        help=prefix + "3D stacks: segment each XY slice in 2D and join nuclei of consecutive "
        "slices that overlap by this IoU (e.g. 0.25), instead of Cellpose's 3D mode; better "
        "for stacks of few, coarse slices (default: 3D mode)",
    )


def _score_parser(sub: Any) -> None:
    p = sub.add_parser(
        "score",
        help="quality score of synthetic pairs: does a segmenter agree with the labels?",
        description="Segment each image of a (synthetic) dataset folder with MODEL and score the "
        "agreement with its labels (SEG and foreground IoU, paper 003). The scores are written "
        "into dataset.json, for curation to sort by.",
    )
    p.add_argument("dataset", type=Path, help="dataset folder")
    p.add_argument("--model", type=Path, required=True, help="Cellpose model file")
    p.add_argument("--device", default="auto")
    _stitch_arg(p)
    _backend_arg(p, for_model=True)
    p.set_defaults(func=cmd_score)


def _experiment_parser(sub: Any) -> None:
    p = sub.add_parser(
        "experiment",
        help="does synthetic data help? train Cellpose on real / synthetic / both, score it",
        description="Run (or resume) a reproducible experiment from a JSON config "
        "(experiments/*.json, docs/experiments.md): learn a bundle on the training frames, "
        "synthesize pairs, train one Cellpose model per row with the same budget, score each "
        "on held-out frames (SEG, AP50, bPQ). Finished rows are kept; rerunning continues.",
    )
    p.add_argument("config", type=Path, help="experiment config (JSON)")
    p.add_argument("-o", "--output", type=Path, required=True, help="experiment folder")
    p.add_argument("--only", nargs="+", default=None, metavar="ROW", help="run only these rows")
    p.add_argument(
        "--budget-hours",
        type=float,
        default=None,
        help="fit the pending rows in this many hours: epochs are lowered (never raised) "
        "after timing a 2-epoch run; the epochs used are recorded per row",
    )
    p.add_argument(
        "--prepare",
        action="store_true",
        help="only learn the bundle and synthesize the pairs (look at them before training)",
    )
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")
    p.add_argument(
        "--devices",
        nargs="+",
        default=None,
        metavar="DEV",
        help="train rows side by side, one per device: 'auto' (every GPU) or names "
        "(cuda:0 cuda:1 ...); one process per row, logs in OUTPUT/logs/",
    )
    # one training of the convergence ladder: what each --devices process runs (internal)
    p.add_argument("--rung", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--rung-lr", type=float, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_experiment)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded by 'experiment'
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        from cellsynth.device import configure_threads

        configure_threads(args.threads)
        code = int(args.func(args) or 0)
        leave_process_group()
        return code
    except KeyboardInterrupt as exc:  # an Interrupted job says what it kept
        if is_main_process():
            kept = f": {exc}" if str(exc) else ""
            print(f"cellsynth {args.command}: interrupted{kept}", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        message, code = error_message(exc)
        print(f"cellsynth {args.command}: error: {message}", file=sys.stderr)
        return code


def error_message(exc: BaseException) -> tuple[str, int]:
    """One line for a failure, and the exit code: 2 for bad input or an environment the command
    cannot use (a file, permissions, memory), 1 for a bug (with a hint to report it)."""
    if isinstance(exc, CellsynthInputError):
        return _one_line(str(exc)), 2
    if isinstance(exc, OSError):
        names = [str(f) for f in (exc.filename, exc.filename2) if f is not None]
        what = exc.strerror or str(exc) or type(exc).__name__
        return _one_line(f"{' -> '.join(names)}: {what}" if names else what), 2
    if isinstance(exc, MemoryError):
        return (
            "out of memory"
            + (f" ({_one_line(str(exc))})" if str(exc) else "")
            + "; use smaller images, a smaller --size or fewer cells",
            2,
        )
    return (
        f"unexpected {type(exc).__name__}: {_one_line(str(exc))} (rerun with --debug for the "
        "traceback and report it)",
        1,
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
