"""Each setting's default lives in its settings dataclass; the CLI and experiment configs that
leave a setting out get that default. (The napari widgets' initial values are not checked here:
building them needs a viewer.)"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cellsynth.cli import build_parser
from cellsynth.experiment import Experiment, config_from_dict
from cellsynth.learn import LearnSettings
from cellsynth.learn3d import Learn3DSettings
from cellsynth.samples import sample_dataset_path
from cellsynth.segmenters import FinetuneSettings
from cellsynth.synthesize import SynthesisParams


def default(cls: type, name: str):
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


LEARN = ["learn", "data", "-o", "bundle"]
FINETUNE = ["finetune", "--real", "data", "-o", "model"]
SYNTHESIZE = ["synthesize", "-o", "out"]


@pytest.mark.parametrize(
    ("argv", "dest", "cls", "name"),
    [
        (LEARN, "tile", LearnSettings, "tile"),
        (LEARN, "seed", LearnSettings, "seed"),
        (LEARN, "device", LearnSettings, "device"),
        (LEARN, "multiview_steps", Learn3DSettings, "multiview_steps"),
        (LEARN, "voxel_size", Learn3DSettings, "voxel_size"),
        (FINETUNE, "epochs", FinetuneSettings, "epochs"),
        (FINETUNE, "p_real", FinetuneSettings, "p_real"),
        (FINETUNE, "learning_rate", FinetuneSettings, "learning_rate"),
        (FINETUNE, "images_per_epoch", FinetuneSettings, "nimg_per_epoch"),
        (FINETUNE, "pretrained", FinetuneSettings, "pretrained"),
        (FINETUNE, "seed", FinetuneSettings, "seed"),
        (FINETUNE, "device", FinetuneSettings, "device"),
        (SYNTHESIZE, "cells", SynthesisParams, "cells"),
        (SYNTHESIZE, "density_factor", SynthesisParams, "density_factor"),
        (SYNTHESIZE, "cluster_prob", SynthesisParams, "cluster_prob"),
        (SYNTHESIZE, "touching", SynthesisParams, "touching"),
        (SYNTHESIZE, "steps", SynthesisParams, "steps"),
        (SYNTHESIZE, "seed", SynthesisParams, "seed"),
        (SYNTHESIZE, "size_factor", SynthesisParams, "size_factor"),
        (SYNTHESIZE, "rho", SynthesisParams, "rho"),
        (SYNTHESIZE, "voxel_size", SynthesisParams, "voxel_size"),
        (SYNTHESIZE, "brightness", SynthesisParams, "brightness"),
    ],
)
def test_the_cli_defaults_are_the_settings_defaults(argv, dest, cls, name):
    args = build_parser().parse_args(argv)
    assert getattr(args, dest) == default(cls, name), f"cellsynth {argv[0]} --{dest}"


@pytest.mark.parametrize(
    "name",
    [f.name for f in dataclasses.fields(LearnSettings)],
)
def test_cellsynth_learn_trains_with_the_learn_defaults(name):
    from cellsynth.cli import learn_settings

    settings = learn_settings(build_parser().parse_args(LEARN))
    assert getattr(settings, name) == default(LearnSettings, name)


def test_the_demo_defaults_are_run_demos():
    import inspect

    from cellsynth.demo import run_demo

    args = build_parser().parse_args(["demo"])
    sig = inspect.signature(run_demo).parameters
    assert args.n == sig["n"].default == 6
    assert tuple(args.size) == sig["size"].default == (360, 360)


def test_learn_quality_preset_and_explicit_options():
    from cellsynth.cli import learn_settings

    q = learn_settings(build_parser().parse_args([*LEARN, "--quality"]))
    assert q == LearnSettings.quality()
    argv = [*LEARN, "--quality", "--texture-steps", "7", "--minutes", "0", "--init-from", "builtin"]
    s = learn_settings(build_parser().parse_args(argv))
    assert s.texture_steps == 7 and s.mask_steps == LearnSettings.quality().mask_steps
    assert s.minutes is None
    assert s.init_from.endswith("bundle_dsb2018")
    s = learn_settings(build_parser().parse_args([*LEARN, "--minutes", "3", "--no-preview"]))
    assert s.minutes == 3 and not s.preview and s.brightness_condition


def test_the_cli_synthesizes_the_default_canvas():
    args = build_parser().parse_args(SYNTHESIZE)
    assert tuple(args.size) == default(SynthesisParams, "size")


class Called(Exception):
    """Raised by a stand-in for a long job: the test only needs what it was called with."""


@pytest.fixture
def bare(tmp_path):
    """An experiment whose config gives no settings at all: every one is a default."""

    def make(**sections) -> Experiment:
        frames = sorted(p.stem for p in (sample_dataset_path() / "images").glob("*.tif"))
        raw = {
            "data": str(sample_dataset_path()),
            "train": frames[:2],
            "test": frames[2:3],
            "rows": [{"name": "real"}, {"name": "both", "synthetic": 1, "p_real": 0.5}],
            **sections,
        }
        out = tmp_path / "out"
        out.mkdir(exist_ok=True)
        return Experiment(config_from_dict(raw), out, device="cpu")

    return make


def _called_with(monkeypatch, module: str, function: str, run) -> list:
    calls: list = []

    def stand_in(*args, **kwargs):
        calls.append(args)
        raise Called

    monkeypatch.setattr(f"cellsynth.{module}.{function}", stand_in)
    with pytest.raises(Called):
        list(run())
    return calls[0]


def test_an_experiment_learns_with_the_learn_defaults(bare, monkeypatch):
    exp = bare()
    _pairs, _path, settings = _called_with(monkeypatch, "learn", "learn", exp._ensure_bundle)
    for name in ("minutes", "mask_steps", "texture_steps", "seed", "mask_widths", "lr"):
        assert getattr(settings, name) == default(LearnSettings, name), name


def test_a_3d_experiment_learns_with_the_3d_defaults(bare, monkeypatch):
    exp = bare(learn={"3d": True})
    monkeypatch.setattr("cellsynth.learn3d.check_3d_pairs", lambda pairs: None)
    args = _called_with(monkeypatch, "learn3d", "learn_3d", exp._ensure_bundle)
    settings, s3 = args[2], args[3]
    assert settings.minutes == default(LearnSettings, "minutes")
    assert s3.multiview_steps == default(Learn3DSettings, "multiview_steps")


def test_an_experiment_synthesizes_with_the_synthesis_defaults(bare, monkeypatch):
    exp = bare(synthetic={"size": [64, 64]})
    _path, _n, params = _called_with(
        monkeypatch, "synthesize", "synthesize", lambda: exp._ensure_synthetic(None)
    )
    for name in ("seed", "steps", "cluster_prob", "brightness", "cells", "size_factor"):
        assert getattr(params, name) == default(SynthesisParams, name), name
    assert params.size == (64, 64)


def test_an_experiment_trains_with_the_finetune_defaults(bare):
    exp = bare()
    assert exp.config.epochs == default(FinetuneSettings, "epochs")
    s = exp._settings(exp.config.rows[0], exp.config.epochs)
    for name in ("epochs", "seed", "batch_size", "bsize", "learning_rate", "weight_decay"):
        assert getattr(s, name) == default(FinetuneSettings, name), name
    # the one experiment default of its own: every row draws the same number of crops
    assert s.nimg_per_epoch == 8 and default(FinetuneSettings, "nimg_per_epoch") is None


def test_null_means_the_default_and_no_time_limit_for_minutes(bare):
    cfg = bare(
        learn={"minutes": None, "mask_steps": None},
        training={"epochs": None, "seed": None},
        synthetic={"cluster_prob": None},
    ).config
    assert cfg.learn_settings.minutes is None  # learn until the step targets
    assert cfg.learn_settings.mask_steps == default(LearnSettings, "mask_steps")
    assert cfg.epochs == default(FinetuneSettings, "epochs")
    assert cfg.synthesis_params.cluster_prob == default(SynthesisParams, "cluster_prob")


def test_the_docs_name_the_defaults():
    text = (Path(__file__).resolve().parents[1] / "docs" / "experiments.md").read_text()
    assert f"`epochs` ({default(FinetuneSettings, 'epochs')})" in text
    assert f"`minutes` ({default(LearnSettings, 'minutes'):g})" in text
