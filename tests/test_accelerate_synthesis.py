"""``accelerate launch --cpu --num_processes 2 -m cellsynth synthesize``: sharded synthesis.

The seeds are split over the processes; every process writes its own pairs into one folder; the
pairs are byte for byte those of one process, ``dataset.json`` is one valid, complete record of
them, pairs already there (an interrupted run) are not drawn again, and process 0 alone reports.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from cellsynth.cli import main
from test_accelerate import launch

TINY = ["--size", "48", "48", "--steps", "2", "--seed", "5", "--device", "cpu"]
NAMES = [f"synth_{5 + i:04d}" for i in range(8)]


def _records(folder):
    meta = json.loads((folder / "dataset.json").read_text())
    samples = meta.pop("samples")
    return meta, {
        name: {k: v for k, v in r.items() if k != "timing"} for name, r in samples.items()
    }


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.tif"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard")
    one, two = root / "one", root / "two"
    assert main(["synthesize", "-n", "8", "-o", str(one), *TINY]) == 0
    # an interrupted run: the first three seeds are there already
    assert main(["synthesize", "-n", "3", "-o", str(two), *TINY]) == 0
    before = {name: (two / "images" / f"{name}.tif").stat().st_mtime_ns for name in NAMES[:3]}
    timing = {
        n: r["timing"] for n, r in json.loads((two / "dataset.json").read_text())["samples"].items()
    }
    done = launch(["synthesize", "-n", "8", "-o", str(two), *TINY], processes=2)
    return one, two, before, timing, done


def test_two_processes_write_the_same_pairs_byte_for_byte(runs):
    one, two, *_ = runs
    assert (
        _files(two)
        == _files(one)
        == sorted(f"{d}/{n}.tif" for d in ("images", "labels") for n in NAMES)
    )
    for rel in _files(one):
        assert (two / rel).read_bytes() == (one / rel).read_bytes(), rel


def test_one_complete_dataset_json(runs):
    one, two, *_ = runs
    meta_one, rec_one = _records(one)
    meta_two, rec_two = _records(two)
    assert meta_two == meta_one
    assert rec_two == rec_one
    assert sorted(rec_two) == NAMES
    assert [rec_two[n]["seed"] for n in NAMES] == list(range(5, 13))


def test_finished_pairs_are_not_drawn_again(runs):
    _one, two, before, timing, _done = runs
    for name, mtime in before.items():
        assert (two / "images" / f"{name}.tif").stat().st_mtime_ns == mtime
    after = json.loads((two / "dataset.json").read_text())["samples"]
    for name, t in timing.items():
        assert after[name]["timing"] == t


def test_process_0_alone_reports_every_pair(runs):
    *_, done = runs
    assert done.stdout.count("pairs written") == 1, done.stdout
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["n"] == 8 and summary["names"] == NAMES
    for rank in (0, 1):  # the seeds were split, not drawn twice
        assert f"process {rank} of 2 draws 4 of the 8 pairs" in done.stderr, done.stderr[-2000:]


def test_neus_fits_on_the_synthesizer_device(monkeypatch):
    """3D: the NeuS fit gets the synthesizer's device (a GPU when there is one)."""
    import torch

    from cellsynth.shapes import neus
    from cellsynth.synthesize import Synthesizer

    seen = []
    real = neus.fit_sdf

    def spy(*args, **kwargs):
        seen.append(kwargs.get("device"))
        return real(*args, **kwargs)

    monkeypatch.setattr(neus, "fit_sdf", spy)
    synth = Synthesizer(device="cpu")
    masks = [np.pad(np.ones((12, 12), bool), 4)]
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    vols, _ = synth.cell_volumes(masks, 1.0, rng, gen)
    assert seen == [synth.device] and len(vols) == 1 and vols[0].ndim == 3


def test_process_0_alone_saves_the_multiview_model(tmp_path):
    from cellsynth.shapes.multiview import MultiviewModel

    out = tmp_path / "mv"
    args = ["train-multiview", "-o", str(out), "--steps", "2", "--batch", "2"]
    done = launch([*args, "--widths", "8", "16", "--device", "cpu"], processes=2)
    assert done.stdout.count("multiview model written") == 1, done.stdout
    assert MultiviewModel.load(out).path is not None
