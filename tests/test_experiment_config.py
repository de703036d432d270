"""Experiment configs: their sections become the settings dataclasses, and the shipped configs
still mean the same rows (the same row keys, so finished rows are kept on a rerun)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cellsynth.experiment import RowKeys, config_from_dict, load_config
from cellsynth.learn import LearnSettings
from cellsynth.learn3d import Learn3DSettings
from cellsynth.segmenters import DEFAULT_BACKEND, FinetuneSettings
from cellsynth.synthesize import SynthesisParams

ROOT = Path(__file__).resolve().parents[1]
#: where the configs are read from: their data paths resolve against it, and keys hash them
BASE = Path("/nonexistent-cellsynth-root/repo/experiments")

#: the keys of the shipped configs' rows and synthetic sets, computed at commit 65f9570 (before
#: experiment.py became a package and its sections settings dataclasses), with the configs read
#: from BASE. A change here retrains every finished row of an experiment folder.
KEYS = {
    "cho.json": {
        "row real": "0076fd2e991b7687",
        "row synthetic": "fce4db2998f95e79",
        "row both p_real=0.6": "10b523e8832949c5",
        "row both p_real=0.6 rho=0": "114be8c18d9f414d",
        "synthetic rho=0.0": "3f4bddae14e3ad2e",
        "synthetic rho=None": "98acac5b1186853e",
    },
    "gowt1.json": {
        "row real": "c6ff772df37da3a7",
        "row synthetic": "4a6cda5a6763c474",
        "row both p_real=0.6": "68a95a326c897644",
        "row both p_real=0.4": "b189a8718ca35dfa",
        "row both p_real=0.8": "bfe2278586637034",
        "row both N=4": "f932f7341ba07e8a",
        "row both N=8": "8d262ed60aed2ecb",
        "row both N=8 curated": "5c5159e6a15e2d0b",
        "synthetic rho=None": "31b49f39e98b5aba",
    },
    "gowt1_lowdata.json": {
        "row real": "a00310ab1f075088",
        "row t01 + synthetic": "b24fda4c495b5b49",
        "row real t01+t21": "88eae6619bf6622e",
        "synthetic rho=None": "85bff25ffda69b1b",
    },
    "hela.json": {
        "row real": "318638c7b3fb8bdf",
        "row synthetic": "fadbe50eb95fcce2",
        "row both p_real=0.6": "8eded80981eb5cee",
        "row both p_real=0.4": "2e02d265ef2612a1",
        "row both p_real=0.8": "d559187bfb702b84",
        "synthetic rho=None": "f4df97e3e068601e",
    },
}


def _keys(name: str) -> dict[str, str]:
    raw = json.loads((ROOT / "experiments" / name).read_text())
    cfg = config_from_dict(raw, base=BASE)
    keys = RowKeys(cfg, lambda: cfg.synthetic["size"])
    out = {f"row {r.name}": keys.row(r, cfg.epochs) for r in cfg.rows}
    for rho in sorted({r.rho for r in cfg.rows if r.synthetic}, key=str):
        out[f"synthetic rho={rho}"] = keys.synthetic(rho)
    return out


@pytest.mark.parametrize("name", sorted(KEYS))
def test_shipped_configs_keep_their_row_keys(name):
    assert _keys(name) == KEYS[name]


def test_config_sections_are_the_settings_dataclasses():
    cfg = load_config(ROOT / "experiments" / "gowt1.json")
    learn = cfg.learn_settings
    assert isinstance(learn, LearnSettings)
    assert (learn.minutes, learn.mask_steps, learn.texture_steps) == (None, 1400, 1400)
    assert cfg.learn_3d_settings is None  # a 2D bundle
    syn = cfg.synthesis_params
    assert isinstance(syn, SynthesisParams) and syn.seed == 0
    training = cfg.finetune_settings
    assert isinstance(training, FinetuneSettings)
    assert (training.epochs, training.nimg_per_epoch, training.seed) == (200, 8, 0)
    assert cfg.backend == DEFAULT_BACKEND
    # the sections as written stay what the row keys hash and config.json records
    assert cfg.to_dict()["learn"] == {"minutes": None, "mask_steps": 1400, "texture_steps": 1400,
                                      "seed": 0}  # fmt: skip


def test_a_3d_config_gives_the_3d_settings():
    cfg = load_config(ROOT / "experiments" / "cho.json")
    s3 = cfg.learn_3d_settings
    assert isinstance(s3, Learn3DSettings) and s3.multiview_steps == 300
    assert s3.voxel_size is None  # from the data (the config's top-level voxel_size)


def test_values_are_converted_to_the_settings_types():
    frames = {"data": "d", "train": ["a"], "test": ["b"], "rows": [{"name": "real"}]}
    cfg = config_from_dict(
        frames
        | {
            "learn": {"voxel_size": [2, 1, 1], "3d": True, "tiny": True},
            "synthetic": {"cluster_prob": 0},
            "training": {"learning_rate": 1},
        }
    )
    assert cfg.learn_3d_settings.voxel_size == (2.0, 1.0, 1.0)
    assert cfg.learn_3d_settings.calibration_side == 32  # tiny
    assert cfg.learn_settings.mask_widths == (8, 16, 16)  # tiny
    assert isinstance(cfg.synthesis_params.cluster_prob, float)
    assert cfg.finetune_settings.learning_rate == 1.0
