"""Experiment configs: their sections become the settings dataclasses, and the shipped configs
still mean the same rows (the same row keys, so finished rows are kept on a rerun)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cellsynth.errors import CellsynthInputError
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
            "synthetic": {
                "cluster_prob": 0,
                "density_factor": 4,
                "touching": 0.1,
                "divisions": 0.5,
            },
            "training": {"learning_rate": 1},
        }
    )
    assert cfg.learn_3d_settings.voxel_size == (2.0, 1.0, 1.0)
    assert cfg.learn_3d_settings.calibration_side == 32  # tiny
    assert cfg.learn_settings.mask_widths == (8, 16, 16)  # tiny
    assert isinstance(cfg.synthesis_params.cluster_prob, float)
    assert cfg.synthesis_params.density_factor == 4.0  # denser frames than the training ones
    assert cfg.synthesis_params.touching == 0.1  # more touching nuclei than the training frames
    with pytest.raises(CellsynthInputError, match=r"'touching' must be a number in"):
        config_from_dict(frames | {"synthetic": {"touching": 2}})
    assert cfg.synthesis_params.divisions == 0.5  # dividing cells the training frame lacks
    with pytest.raises(CellsynthInputError, match=r"'divisions' must be a number in"):
        config_from_dict(frames | {"synthetic": {"divisions": -0.1}})
    with pytest.raises(CellsynthInputError, match=r"'density_factor' must be a number in"):
        config_from_dict(frames | {"synthetic": {"density_factor": 0}})
    assert cfg.finetune_settings.learning_rate == 1.0


def _config_file(path: Path, d: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(d))
    return path


BASE_CONFIG = {
    "name": "base",
    "description": "the base",
    "data": "data",  # relative to the base file
    "bundle": "bundles/b",
    "train": ["a", "b"],
    "test": ["c"],
    "learn": {"mask_steps": 10, "texture_steps": 20},
    "synthetic": {"n": 4, "size": [64, 64], "blur": 0.6},
    "training": {"epochs": 100, "seed": 0, "learning_rate": 0.0025},
    "convergence": {"row": "real", "start_epochs": 50},
    "rows": [{"name": "real"}, {"name": "synthetic", "real": [], "synthetic": 4}],
}


def test_a_config_extends_another_with_what_differs(tmp_path):
    """A second-seed config holds its seed and rows; sections merge key by key, paths stay the
    base's, and the config (and its row keys) is the one written out in full."""
    _config_file(tmp_path / "base" / "gowt1.json", BASE_CONFIG)
    child = _config_file(
        tmp_path / "seeds" / "gowt1_seed1.json",
        {
            "description": "seed 1",
            "extends": "../base/gowt1.json",
            "training": {"seed": 1},
            "convergence": None,
            "rows": [{"name": "real seed 1"}],
        },
    )
    cfg = load_config(child)
    assert cfg.name == "gowt1_seed1"  # its own (file) name, never the base's
    assert cfg.description == "seed 1"
    assert cfg.data == (tmp_path / "base" / "data").resolve()
    assert cfg.bundle == (tmp_path / "base" / "bundles" / "b").resolve()
    assert cfg.training == {"epochs": 100, "seed": 1, "learning_rate": 0.0025}
    assert cfg.synthetic == BASE_CONFIG["synthetic"] and cfg.learn == BASE_CONFIG["learn"]
    assert cfg.convergence == {}  # null drops the base's section
    assert [r.name for r in cfg.rows] == ["real seed 1"]  # rows replace the base's
    full = dict(BASE_CONFIG, name="gowt1_seed1", description="seed 1",
                training={"epochs": 100, "seed": 1, "learning_rate": 0.0025},
                rows=[{"name": "real seed 1"}])  # fmt: skip
    full.pop("convergence")
    written = load_config(_config_file(tmp_path / "base" / "gowt1_seed1.json", full))
    assert cfg.to_dict() == written.to_dict()
    k1, k2 = (RowKeys(c, lambda: [64, 64]) for c in (cfg, written))
    assert k1.row(cfg.rows[0], 100) == k2.row(written.rows[0], 100)
    # a chain: a config extending the seed-1 config keeps what each link set
    grand = _config_file(
        tmp_path / "seeds" / "gowt1_seed1_400.json",
        {"extends": "gowt1_seed1.json", "training": {"epochs": 400}, "data": "/elsewhere"},
    )
    g = load_config(grand)
    assert g.training == {"epochs": 400, "seed": 1, "learning_rate": 0.0025}
    assert g.data == Path("/elsewhere") and g.description == "seed 1"


def test_shipped_configs_that_extend_another_name_an_existing_base():
    extending = [
        p for p in (ROOT / "experiments").glob("*.json") if "extends" in json.loads(p.read_text())
    ]
    assert extending, "no shipped config uses 'extends'"
    for p in extending:
        base = ROOT / "experiments" / json.loads(p.read_text())["extends"]
        assert base.is_file(), p
        assert load_config(p).data == load_config(base).data


@pytest.mark.parametrize(
    ("extends", "message"),
    [
        ("missing.json", r"'extends': .*missing\.json \(named by child\.json\) not found"),
        ("child.json", r"'extends' loops: child\.json -> child\.json"),
        ("loop.json", r"'extends' loops: child\.json -> loop\.json -> child\.json"),
        (3, r"'extends' must be the path of another config, got 3"),
        ("broken.json", r"not a valid JSON file"),
    ],
)
def test_a_bad_extends_is_named(tmp_path, extends, message):
    child = _config_file(tmp_path / "child.json", {"extends": extends, "rows": []})
    _config_file(tmp_path / "loop.json", dict(BASE_CONFIG, extends="child.json"))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(CellsynthInputError, match=message) as err:
        load_config(child)
    assert err.value.path in (child, tmp_path / "broken.json")
    with pytest.raises(CellsynthInputError, match="resolved when a config is read from a file"):
        config_from_dict(dict(BASE_CONFIG, extends="x.json"))
