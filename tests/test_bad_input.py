"""The bad-input corpus: careless and hostile inputs against every command of the CLI.

Each case runs ``cellsynth.cli.main`` on tiny data and asserts what issue #17 asks of every
failure: the expected exit code, exactly one error line on stderr naming the file and the
problem, no traceback, and every input file byte-for-byte unchanged (nothing added, replaced or
deleted in the input folders).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cellsynth.cli import main
from conftest import disks, image_for

ERROR_LINE = re.compile(r"^cellsynth [\w-]+: error: ")


def _pair(root: Path, name: str, shape=(32, 32)) -> None:
    lab = disks(shape=shape, centres=((10, 10), (22, 22)), radius=5)
    for d, arr in (("images", image_for(lab)), ("labels", lab)):
        (root / d).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(root / d / f"{name}.tif", arr)


def _dataset(root: Path, n: int = 2, meta: str | None = None) -> Path:
    for i in range(n):
        _pair(root, f"img{i}")
    if meta is not None:
        (root / "dataset.json").write_text(meta)
    return root


def _config(path: Path, data: Path, **changes) -> Path:
    cfg = {
        "name": "bad",
        "data": str(data),
        "train": ["img0"],
        "test": ["img1"],
        "training": {"epochs": 1},
        "rows": [{"name": "real"}],
    }
    cfg.update(changes)
    path.write_text(json.dumps(cfg))
    return path


class _Evil:
    """Unpickling this would create the marker file: the loaders must never unpickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """The inputs: a real data set and everything a careless user or a hostile file brings."""
    import torch

    from cellsynth.segment import load_model

    root = tmp_path_factory.mktemp("corpus")
    c: dict[str, Path] = {"root": root}
    c["ds"] = _dataset(root / "real")
    c["ds_origin_real"] = _dataset(root / "origin_real", meta='{"origin": "real", "samples": {}}')
    masks = root / "with_masks"
    _pair(masks, "a")
    (masks / "labels").rename(masks / "masks")
    c["ds_masks"] = masks
    c["labels_tif"] = c["ds"] / "labels" / "img0.tif"
    c["image_tif"] = c["ds"] / "images" / "img0.tif"
    for key, meta in (
        ("ds_voxel5", '{"voxel_size": 5}'),
        ("ds_samples_list", '{"samples": []}'),
        ("ds_toplevel_list", "[1, 2, 3]"),
        ("ds_bad_json", "{broken"),
    ):
        c[key] = _dataset(root / key, meta=meta)
    c["corrupt_tif"] = root / "corrupt.tif"
    c["corrupt_tif"].write_bytes(b"II*\x00" + os.urandom(200))
    c["five_d"] = root / "five_d.tif"
    tifffile.imwrite(c["five_d"], np.zeros((2, 3, 5, 8, 8), np.uint16))
    c["tiny_img"] = root / "tiny" / "one_pixel.tif"
    c["tiny_img"].parent.mkdir()
    tifffile.imwrite(c["tiny_img"], np.ones((1, 1), np.uint16))
    c["float_labels"] = root / "float_labels" / "labels" / "img0.tif"
    c["float_labels"].parent.mkdir(parents=True)
    tifffile.imwrite(c["float_labels"], np.random.default_rng(0).random((32, 32), np.float32))
    c["negative_labels"] = root / "negative_labels" / "img0.tif"
    c["negative_labels"].parent.mkdir()
    tifffile.imwrite(c["negative_labels"], -disks(shape=(32, 32)).astype(np.int32))
    c["text"] = root / "notes.txt"
    c["text"].write_text("not an image")
    c["empty_dir"] = root / "empty"
    c["empty_dir"].mkdir()
    c["unlabelled"] = root / "unlabelled"
    (c["unlabelled"] / "images").mkdir(parents=True)
    tifffile.imwrite(c["unlabelled"] / "images" / "a.tif", image_for(disks(shape=(32, 32))))
    c["file"] = root / "a_file"
    c["file"].write_text("a file where a folder is expected")
    c["report"] = root / "report.json"
    c["report"].write_text('{"mine": true}')
    # a user's models folder: the finetune sidecars and work folder of three names exist
    models = root / "models"
    models.mkdir()
    (models / "m1.safetensors").write_bytes(b"user data")
    (models / "m2.log.json").write_text('{"user": 1}')
    (models / ".m3.training").mkdir()
    (models / ".m3.training" / "keep.txt").write_text("user data")
    (models / "m4").write_bytes(b"an existing model")
    c["models"] = models
    c["model"] = models / "untrained.pt"
    load_model(None, "cpu").net.save_model(str(c["model"]))
    c["marker"] = tmp_path_factory.mktemp("marker") / "pwned"
    c["evil_pt"] = root / "evil.pt"
    torch.save({"w": _Evil(c["marker"])}, c["evil_pt"])
    c["evil_bundle"] = root / "evil_bundle"
    c["evil_bundle"].mkdir()
    (c["evil_bundle"] / "bundle.json").write_text('{"format": "cellsynth-bundle/1"}')
    torch.save({"w": _Evil(c["marker"])}, c["evil_bundle"] / "mask_model.pt")
    cfgs = root / "configs"
    cfgs.mkdir()
    c["cfg_epochs"] = _config(cfgs / "epochs.json", c["ds"], training={"epochs": "many"})
    c["cfg_dot_row"] = _config(cfgs / "dot.json", c["ds"], rows=[{"name": "."}])
    c["cfg_list"] = cfgs / "list.json"
    c["cfg_list"].write_text("[]")
    c["cfg_size"] = _config(cfgs / "size.json", c["ds"], synthetic={"size": [0, "a"]})
    c["cfg_p_real"] = _config(
        cfgs / "p_real.json", c["ds"], rows=[{"name": "x", "synthetic": 2, "p_real": "half"}]
    )
    c["cfg_ok"] = _config(cfgs / "ok.json", c["ds"])
    c["cfg_unknown"] = _config(cfgs / "unknown.json", c["ds"], trainnig={"epochs": 1})
    return c


def _checksums(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "/"
        for p in sorted(root.rglob("*"))
    }


@dataclass
class Case:
    id: str
    argv: Callable[[dict[str, Path], Path], list[str]]  # (corpus, fresh output folder) -> argv
    names: str  # what the error line must name (a file or folder name)
    says: str  # and the problem, as a substring
    code: int = 2


def _s(p: Path) -> str:
    return str(p)


SYN = ["-n", "1", "--size", "32", "32", "--steps", "1", "--device", "cpu"]
FT = ["--epochs", "1", "--device", "cpu"]

CASES = [
    # ---- info
    Case("info-missing", lambda c, o: ["info", _s(o / "nope")], "nope", "no such file"),
    Case("info-text-file", lambda c, o: ["info", _s(c["text"])], "notes.txt", "unsupported"),
    Case("info-corrupt-tiff", lambda c, o: ["info", _s(c["corrupt_tif"])], "corrupt.tif", "TIFF"),
    Case("info-5d", lambda c, o: ["info", _s(c["five_d"])], "five_d.tif", "cannot tell apart"),
    Case("info-empty-folder", lambda c, o: ["info", _s(c["empty_dir"])], "empty", "no images"),
    Case(
        "info-json-over-its-input",
        lambda c, o: ["info", _s(c["labels_tif"]), "--json", _s(c["labels_tif"])],
        "img0.tif",
        "input of this command",
    ),
    Case(
        "info-json-over-input-with-overwrite",
        lambda c, o: ["info", _s(c["ds"]), "--json", _s(c["labels_tif"]), "--overwrite"],
        "img0.tif",
        "input of this command",
    ),
    Case(
        "info-json-existing-file",
        lambda c, o: ["info", _s(c["ds"]), "--json", _s(c["report"])],
        "report.json",
        "--overwrite",
    ),
    Case(
        "info-json-is-a-folder",
        lambda c, o: ["info", _s(c["ds"]), "--json", _s(c["empty_dir"])],
        "empty",
        "folder",
    ),
    Case(
        "info-json-under-a-file",
        lambda c, o: ["info", _s(c["ds"]), "--json", _s(c["file"] / "r.json")],
        "a_file",
        "not a folder",
    ),
    Case(
        "info-dataset-json-voxel-5",
        lambda c, o: ["info", _s(c["ds_voxel5"])],
        "dataset.json",
        "'voxel_size'",
    ),
    Case(
        "info-dataset-json-samples-list",
        lambda c, o: ["info", _s(c["ds_samples_list"])],
        "dataset.json",
        "'samples'",
    ),
    Case(
        "info-dataset-json-top-level-list",
        lambda c, o: ["info", _s(c["ds_toplevel_list"])],
        "dataset.json",
        "JSON object",
    ),
    Case(
        "info-dataset-json-broken",
        lambda c, o: ["info", _s(c["ds_bad_json"])],
        "dataset.json",
        "not valid JSON",
    ),
    # ---- evaluate
    Case(
        "evaluate-json-over-gt",
        lambda c, o: ["evaluate", _s(c["ds"]), _s(c["labels_tif"]), "--json", _s(c["labels_tif"])],
        "img0.tif",
        "input of this command",
    ),
    Case(
        "evaluate-json-inside-gt-folder",
        lambda c, o: ["evaluate", _s(c["ds"]), _s(c["ds"]), "--json", _s(c["ds"] / "r.json")],
        "r.json",
        "input of this command",
    ),
    Case("evaluate-no-gt", lambda c, o: ["evaluate", _s(c["ds"])], "evaluate", "needs PRED"),
    Case(
        "evaluate-float-labels",
        lambda c, o: ["evaluate", _s(c["float_labels"]), _s(c["ds"])],
        "img0",
        "",
    ),
    Case(
        "evaluate-negative-labels",
        lambda c, o: ["evaluate", _s(c["negative_labels"]), _s(c["ds"])],
        "img0",
        "negative",
    ),
    Case(
        "evaluate-missing-model",
        lambda c, o: ["evaluate", _s(c["ds"]), "--model", _s(o / "none.pt")],
        "none.pt",
        "not found",
    ),
    Case(
        "evaluate-pickle-model",
        lambda c, o: ["evaluate", _s(c["ds"]), "--model", _s(c["evil_pt"])],
        "evil.pt",
        "not a Cellpose model",
    ),
    # ---- synthesize
    Case(
        "synthesize-into-real-dataset",
        lambda c, o: ["synthesize", "-o", _s(c["ds"]), *SYN],
        "real",
        "did not synthesize",
    ),
    Case(
        "synthesize-into-origin-real",
        lambda c, o: ["synthesize", "-o", _s(c["ds_origin_real"]), *SYN],
        "origin_real",
        "origin 'real'",
    ),
    Case(
        "synthesize-would-hide-masks",
        lambda c, o: ["synthesize", "-o", _s(c["ds_masks"]), *SYN],
        "with_masks",
        "masks/",
    ),
    Case(
        "synthesize-output-is-a-file",
        lambda c, o: ["synthesize", "-o", _s(c["file"]), *SYN],
        "a_file",
        "not a folder",
    ),
    Case(
        "synthesize-output-under-a-file",
        lambda c, o: ["synthesize", "-o", _s(c["file"] / "sub"), *SYN],
        "a_file",
        "not a folder",
    ),
    Case(
        "synthesize-huge-canvas",
        lambda c, o: ["synthesize", "-o", _s(o / "s"), *SYN[:2], "--size", "100000", "100000"],
        "",
        "GiB",
    ),
    Case(
        "synthesize-huge-cell-count",
        lambda c, o: ["synthesize", "-o", _s(o / "s"), *SYN, "--cells", "100000000"],
        "",
        "GiB",
    ),
    Case(
        "synthesize-tiny-canvas",
        lambda c, o: ["synthesize", "-o", _s(o / "s"), "--size", "4", "4"],
        "",
        "too small",
    ),
    Case(
        "synthesize-missing-bundle",
        lambda c, o: ["synthesize", "-o", _s(o / "s"), "--bundle", _s(o / "nb"), *SYN],
        "nb",
        "",
    ),
    Case(
        "synthesize-pickle-bundle",
        lambda c, o: ["synthesize", "-o", _s(o / "s"), "--bundle", _s(c["evil_bundle"]), *SYN],
        "evil_bundle",
        "",
    ),
    Case("synthesize-n-0", lambda c, o: ["synthesize", "-o", _s(o / "s"), "-n", "0"], "", "-n"),
    # ---- finetune: the model, its sidecars and its work folder are all outputs
    Case(
        "finetune-existing-safetensors",
        lambda c, o: ["finetune", "--real", _s(c["ds"]), "-o", _s(c["models"] / "m1"), *FT],
        "m1.safetensors",
        "already exists",
    ),
    Case(
        "finetune-existing-log",
        lambda c, o: ["finetune", "--real", _s(c["ds"]), "-o", _s(c["models"] / "m2"), *FT],
        "m2.log.json",
        "already exists",
    ),
    Case(
        "finetune-existing-work-folder",
        lambda c, o: ["finetune", "--real", _s(c["ds"]), "-o", _s(c["models"] / "m3"), *FT],
        ".m3.training",
        "already exists",
    ),
    Case(
        "finetune-existing-model",
        lambda c, o: ["finetune", "--real", _s(c["ds"]), "-o", _s(c["models"] / "m4"), *FT],
        "m4",
        "already exists",
    ),
    Case(
        "finetune-output-under-a-file",
        lambda c, o: ["finetune", "--real", _s(c["ds"]), "-o", _s(c["file"] / "m"), *FT],
        "a_file",
        "not a folder",
    ),
    Case(
        "finetune-unlabelled-data",
        lambda c, o: ["finetune", "--real", _s(c["unlabelled"]), "-o", _s(o / "m"), *FT],
        "unlabelled",
        "no labels",
    ),
    Case(
        "finetune-p-real-2",
        lambda c, o: ["finetune", "--real", _s(c["ds"]), "-o", _s(o / "m"), "--p-real", "2"],
        "",
        "p-real",
    ),
    Case(
        "finetune-epochs-0",
        lambda c, o: ["finetune", "--real", _s(c["ds"]), "-o", _s(o / "m"), "--epochs", "0"],
        "",
        "epochs",
    ),
    Case(
        "finetune-pickle-pretrained",
        lambda c, o: [
            "finetune",
            "--real",
            _s(c["ds"]),
            "-o",
            _s(o / "m"),
            "--pretrained",
            _s(c["evil_pt"]),
            *FT,
        ],
        "evil.pt",
        "not a Cellpose model",
    ),
    # ---- segment
    Case(
        "segment-one-pixel-image",
        lambda c, o: ["segment", _s(c["tiny_img"]), "--model", _s(c["model"]), "-o", _s(o / "s")],
        "one_pixel.tif",
        "too small",
    ),
    Case(
        "segment-into-its-input-folder",
        lambda c, o: [
            "segment",
            _s(c["ds"] / "images"),
            "--model",
            _s(c["model"]),
            "-o",
            _s(c["ds"] / "images"),
        ],
        "images",
        "input folder",
    ),
    Case(
        "segment-output-holds-a-result",
        lambda c, o: [
            "segment",
            _s(c["image_tif"]),
            "--model",
            _s(c["model"]),
            "-o",
            _s(c["ds"] / "labels"),
        ],
        "labels",
        "img0.tif",
    ),
    Case(
        "segment-pickle-model",
        lambda c, o: ["segment", _s(c["image_tif"]), "--model", _s(c["evil_pt"]), "-o", _s(o)],
        "evil.pt",
        "not a Cellpose model",
    ),
    Case(
        "segment-5d",
        lambda c, o: ["segment", _s(c["five_d"]), "--model", _s(c["model"]), "-o", _s(o / "s")],
        "five_d.tif",
        "cannot tell apart",
    ),
    Case(
        "score-a-real-dataset",
        lambda c, o: ["score", _s(c["ds_origin_real"]), "--model", _s(c["model"])],
        "origin_real",
        "never writes into a real data set",
    ),
    # ---- learn: refused before any training
    Case(
        "learn-output-under-a-file",
        lambda c, o: ["learn", _s(c["ds"]), "-o", _s(c["file"] / "b"), "--tiny"],
        "a_file",
        "not a folder",
    ),
    Case(
        "learn-unlabelled",
        lambda c, o: ["learn", _s(c["unlabelled"]), "-o", _s(o / "b"), "--tiny"],
        "unlabelled",
        "no labels",
    ),
    Case(
        "learn-dataset-json-samples-list",
        lambda c, o: ["learn", _s(c["ds_samples_list"]), "-o", _s(o / "b"), "--tiny"],
        "dataset.json",
        "'samples'",
    ),
    # ---- experiment configs
    Case(
        "experiment-epochs-many",
        lambda c, o: ["experiment", _s(c["cfg_epochs"]), "-o", _s(o / "e")],
        "epochs.json",
        "'epochs' must be an integer",
    ),
    Case(
        "experiment-row-named-dot",
        lambda c, o: ["experiment", _s(c["cfg_dot_row"]), "-o", _s(o / "e")],
        "dot.json",
        "cannot be a file name",
    ),
    Case(
        "experiment-config-is-a-list",
        lambda c, o: ["experiment", _s(c["cfg_list"]), "-o", _s(o / "e")],
        "list.json",
        "JSON object",
    ),
    Case(
        "experiment-bad-size",
        lambda c, o: ["experiment", _s(c["cfg_size"]), "-o", _s(o / "e")],
        "size.json",
        "'size'",
    ),
    Case(
        "experiment-p-real-string",
        lambda c, o: ["experiment", _s(c["cfg_p_real"]), "-o", _s(o / "e")],
        "p_real.json",
        "'p_real' must be a number",
    ),
    Case(
        "experiment-unknown-key",
        lambda c, o: ["experiment", _s(c["cfg_unknown"]), "-o", _s(o / "e")],
        "unknown.json",
        "unknown key",
    ),
    Case(
        "experiment-missing-config",
        lambda c, o: ["experiment", _s(o / "none.json"), "-o", _s(o / "e")],
        "none.json",
        "not found",
    ),
    Case(
        "experiment-output-under-a-file",
        lambda c, o: ["experiment", _s(c["cfg_ok"]), "-o", _s(c["file"] / "e")],
        "a_file",
        "not a folder",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_line_and_changes_nothing(case, corpus, tmp_path, capsys):
    before = _checksums(corpus["root"])
    code = main(case.argv(corpus, tmp_path))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if ERROR_LINE.match(line)]
    assert len(errors) == 1, err
    assert case.names in errors[0] and case.says in errors[0], errors[0]
    assert code == case.code, errors[0]
    assert _checksums(corpus["root"]) == before  # no input changed, added or removed
    assert not corpus["marker"].exists()  # no pickle ever ran


def test_json_report_replaces_a_file_only_with_overwrite(corpus, tmp_path, capsys):
    report = tmp_path / "report.json"
    report.write_text("{}")
    assert main(["info", str(corpus["ds"]), "--json", str(report)]) == 2
    assert report.read_text() == "{}"
    assert main(["info", str(corpus["ds"]), "--json", str(report), "--overwrite"]) == 0
    assert json.loads(report.read_text())["n_items"] == 2


def test_debug_shows_the_traceback(corpus, tmp_path):
    with pytest.raises(Exception, match="no such file"):
        main(["--debug", "info", str(tmp_path / "nope")])


def test_an_unexpected_error_is_one_line_with_exit_1(monkeypatch, corpus, capsys):
    import cellsynth.io

    def broken(*a, **k):
        raise TypeError("a bug")

    monkeypatch.setattr(cellsynth.io, "read_dataset", broken)
    assert main(["info", str(corpus["ds"])]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "unexpected TypeError: a bug" in err and "--debug" in err


def test_oserror_is_one_line_naming_the_file(monkeypatch, corpus, capsys):
    import cellsynth.io

    def read_only(*a, **k):
        raise PermissionError(13, "Permission denied", "/data/out/labels/x.tif")

    monkeypatch.setattr(cellsynth.io, "read_dataset", read_only)
    assert main(["info", str(corpus["ds"])]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == "cellsynth info: error: /data/out/labels/x.tif: Permission denied"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_is_refused_before_training(corpus, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code = main(["learn", str(corpus["ds"]), "-o", str(ro / "b"), "--tiny"])
    finally:
        ro.chmod(0o700)
    assert code == 2
    assert "cannot be written" in capsys.readouterr().err


def _read_only_folder() -> Path | None:
    """A folder where even root cannot create files (sysfs), or None."""
    import tempfile

    ro = Path("/sys")
    try:
        with tempfile.TemporaryFile(dir=ro):
            return None
    except OSError:
        return ro if ro.is_dir() else None


READ_ONLY = _read_only_folder()
RO_CASES = {
    "info-json": lambda c, o: ["info", _s(c["ds"]), "--json", _s(o / "r.json")],
    "evaluate-json": lambda c, o: ["evaluate", _s(c["ds"]), _s(c["ds"]), "--json", _s(o / "r")],
    "synthesize": lambda c, o: ["synthesize", "-o", _s(o / "s"), *SYN],
    "finetune": lambda c, o: ["finetune", "--real", _s(c["ds"]), "-o", _s(o / "m"), *FT],
    "segment": lambda c, o: [
        "segment",
        _s(c["image_tif"]),
        "--model",
        _s(c["model"]),
        "-o",
        _s(o / "s"),
    ],
    "learn": lambda c, o: ["learn", _s(c["ds"]), "-o", _s(o / "b"), "--tiny"],
    "experiment": lambda c, o: ["experiment", _s(c["cfg_ok"]), "-o", _s(o / "e")],
}


@pytest.mark.skipif(READ_ONLY is None, reason="no read-only folder on this system")
@pytest.mark.parametrize("command", sorted(RO_CASES))
def test_a_read_only_output_is_one_line_before_any_work(command, corpus, capsys):
    before = _checksums(corpus["root"])
    code = main(RO_CASES[command](corpus, READ_ONLY / "cellsynth-out"))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if ERROR_LINE.match(line)]
    assert len(errors) == 1 and "cellsynth-out" in errors[0] and "cannot be written" in errors[0]
    assert _checksums(corpus["root"]) == before
