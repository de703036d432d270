"""Cellpose fine-tuning, segmentation, scoring and subprocess jobs (tiny runs on the CPU)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import tifffile

from cellsynth.cli import main
from cellsynth.errors import CellsynthInputError
from cellsynth.io import read_dataset
from cellsynth.jobs import SubprocessJob
from cellsynth.segment import (
    FinetuneSettings,
    check_model_file,
    finetune,
    load_model,
    mixing_probabilities,
    pretrain_path,
    read_log,
)
from conftest import disks, image_for, shared_data

FAST = dict(bsize=64, batch_size=4, device="cpu")


def _folder(root, n, seed, shape=(96, 96)):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        centres = [tuple(c) for c in rng.integers(12, shape[0] - 12, (6, 2))]
        lab = disks(shape=shape, centres=centres, radius=6)
        tifffile.imwrite(root / "images" / f"s{seed}_{i}.tif", image_for(lab, i))
        tifffile.imwrite(root / "labels" / f"s{seed}_{i}.tif", lab)
    return root


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp("real"), 3, 0)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp("synth"), 5, 1)


@pytest.fixture(scope="module")
def tiny_model(real_dir, synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "tiny"
    real = read_dataset(real_dir).pairs
    synth = read_dataset(synth_dir).pairs
    for _ in finetune(real, synth, out, FinetuneSettings(epochs=2, **FAST)):
        pass
    return out


def test_mixing_probabilities_give_p_real_to_the_real_set():
    p = mixing_probabilities(3, 7, 0.6)
    assert p.sum() == pytest.approx(1.0)
    assert p[:3].sum() == pytest.approx(0.6)
    assert np.allclose(mixing_probabilities(4, 0, 0.6), 0.25)


@pytest.mark.parametrize("p_real", [0.9, 0.2])
def test_p_real_changes_which_images_are_drawn(real_dir, synth_dir, tmp_path, monkeypatch, p_real):
    from cellpose import train

    drawn: list[int] = []
    original = train._get_batch

    def counting(inds, *args, **kwargs):
        drawn.extend(int(i) for i in inds)
        return original(inds, *args, **kwargs)

    monkeypatch.setattr(train, "_get_batch", counting)
    real, synth = read_dataset(real_dir).pairs, read_dataset(synth_dir).pairs
    settings = FinetuneSettings(
        epochs=3, nimg_per_epoch=40, bsize=32, batch_size=20, p_real=p_real, device="cpu"
    )
    for _ in finetune(real, synth, tmp_path / "m", settings):
        pass
    share_real = np.mean(np.asarray(drawn) < len(real))  # real images come first
    assert len(drawn) == 120
    assert share_real == pytest.approx(p_real, abs=0.12)


def test_finetuned_model_loads_in_plain_cellpose_and_segments(tiny_model, real_dir):
    from cellpose import models

    m = models.CellposeModel(pretrained_model=str(tiny_model))
    assert m.diam_labels > 0
    assert tiny_model.with_name("tiny.safetensors").exists()
    log = read_log(tiny_model)
    assert log["n_real"] == 3 and log["n_synthetic"] == 5
    assert len(log["epoch_losses"]) == 2
    assert log["p_real_effective"] == pytest.approx(0.6)
    labels = load_model(tiny_model.with_name("tiny.safetensors"), "cpu")
    assert labels.diam_labels == pytest.approx(m.diam_labels)


def test_training_seed_fixes_the_initial_weights_whatever_ran_before(real_dir, tmp_path):
    """Two runs with one seed start from the same weights even when something else drew from
    torch's generator in between (a previous row, a bundle); another seed starts elsewhere.
    Cellpose's first epochs have a learning rate of 0, so the first epoch's loss is the
    initial weights' loss on the same crops."""
    import torch

    real = read_dataset(real_dir).pairs

    def first_loss(name, seed, draws):
        torch.rand(draws)  # whatever came before in the process
        settings = FinetuneSettings(epochs=1, nimg_per_epoch=4, seed=seed, **FAST)
        for _ in finetune(real, [], tmp_path / name, settings):
            pass
        return read_log(tmp_path / name)["batch_losses"][0]

    a, b, other = first_loss("a", 0, 3), first_loss("b", 0, 1000), first_loss("c", 1, 3)
    assert a == pytest.approx(b, rel=1e-6)
    assert abs(a - other) > 1e-4


def test_progress_reports_every_batch(real_dir, tmp_path):
    reports = list(
        finetune(
            read_dataset(real_dir).pairs,
            [],
            tmp_path / "m",
            FinetuneSettings(epochs=2, nimg_per_epoch=8, **FAST),
        )
    )
    assert [r.batch for r in reports[:-1]] == [1, 2, 3, 4]
    assert reports[-1].done and reports[-1].model == str(tmp_path / "m")
    assert reports[-1].fraction == 1.0


def test_cancelling_keeps_the_last_weights_loadable(real_dir, tmp_path):
    gen = finetune(
        read_dataset(real_dir).pairs,
        [],
        tmp_path / "m",
        FinetuneSettings(epochs=50, nimg_per_epoch=8, **FAST),
    )
    next(gen)
    gen.close()
    assert read_log(tmp_path / "m")["cancelled"] is True
    load_model(tmp_path / "m", "cpu")


def test_pretrain_epochs_train_on_synthetic_first_then_on_real_from_those_weights(
    real_dir, synth_dir, tmp_path
):
    real, synth = read_dataset(real_dir).pairs, read_dataset(synth_dir).pairs
    out = tmp_path / "m"
    settings = FinetuneSettings(epochs=2, pretrain_epochs=1, nimg_per_epoch=4, **FAST)
    progress = list(finetune(real, synth, out, settings))
    first = pretrain_path(out)
    assert first == tmp_path / "m_synthetic_pretrain" and first.is_file() and out.is_file()
    # one run of 3 epochs: the progress never goes back, and is done only at the end
    fractions = [p.fraction for p in progress]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert all(p.epochs == 3 for p in progress) and progress[-1].epoch == 3
    assert [p.done for p in progress].count(True) <= 1 and not any(p.done for p in progress[:-1])
    stage1, stage2 = read_log(first), read_log(out)
    assert stage1["n_real"] == 0 and stage1["n_synthetic"] == len(synth)
    assert stage2["n_real"] == len(real) and stage2["settings"]["pretrained"] == str(first)
    # the second stage keeps the first stage's rate (not Cellpose's 1e-4 for fine-tuning)
    assert stage2["learning_rate"] == stage1["learning_rate"] == pytest.approx(0.005)
    assert stage2["pretrain"] == {"model": str(first), "epochs": 1, "n_synthetic": len(synth)}
    # nothing is overwritten: the same output again is refused before any training
    with pytest.raises(CellsynthInputError, match="exists"):
        next(finetune(real, synth, tmp_path / "m", settings))
    (tmp_path / "n_synthetic_pretrain").write_bytes(b"mine")
    with pytest.raises(CellsynthInputError, match="exists"):
        next(finetune(real, synth, tmp_path / "n", settings))
    assert (tmp_path / "n_synthetic_pretrain").read_bytes() == b"mine"
    with pytest.raises(CellsynthInputError, match="synthetic pairs"):
        next(finetune(real, [], tmp_path / "o", settings))


def test_stopping_during_the_pretraining_keeps_its_weights_and_writes_no_model(
    real_dir, synth_dir, tmp_path
):
    real, synth = read_dataset(real_dir).pairs, read_dataset(synth_dir).pairs
    out = tmp_path / "m"
    settings = FinetuneSettings(epochs=3, pretrain_epochs=50, nimg_per_epoch=4, **FAST)
    run = finetune(real, synth, out, settings)
    first = next(run)
    assert first.epochs == 53 and not first.done
    run.close()  # what Cancel does
    assert pretrain_path(out).is_file() and read_log(pretrain_path(out))["cancelled"]
    assert not out.exists()


def test_cli_finetune_segment_evaluate_and_score(real_dir, synth_dir, tiny_model, tmp_path, capsys):
    out = tmp_path / "seg"
    assert (
        main(
            [
                "segment",
                str(real_dir / "images"),
                "--model",
                str(tiny_model),
                "-o",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["s0_0.tif", "s0_1.tif", "s0_2.tif"]
    capsys.readouterr()
    assert main(["evaluate", "--model", str(tiny_model), str(real_dir), "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n_images"] == 3 and summary["n_reference"] > 0
    assert main(["score", str(synth_dir), "--model", str(tiny_model), "--device", "cpu"]) == 0
    meta = json.loads((synth_dir / "dataset.json").read_text())
    assert all("quality" in rec for rec in meta["samples"].values())


def test_a_file_that_is_not_a_cellpose_model_is_refused(tmp_path):
    bad = tmp_path / "model.pth"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(CellsynthInputError, match="not a Cellpose model"):
        check_model_file(bad)
    with pytest.raises(CellsynthInputError, match="not found"):
        check_model_file(tmp_path / "missing")


@pytest.mark.parametrize(
    "case", ["unlabelled", "mismatch", "empty_synthetic", "bad_model", "pretrain_alone"]
)
def test_cli_finetune_bad_input_is_one_line(real_dir, tmp_path, capsys, case):
    args = ["finetune", "--real", str(real_dir), "--epochs", "1", "-o", str(tmp_path / "m")]
    if case == "unlabelled":
        d = tmp_path / "u" / "images"
        d.mkdir(parents=True)
        (tmp_path / "u" / "labels").mkdir()
        tifffile.imwrite(d / "a.tif", np.zeros((32, 32), np.uint8))
        args[2] = str(tmp_path / "u")
        expected = "have no labels"
    elif case == "mismatch":
        d = _folder(tmp_path / "mm", 1, 5)
        tifffile.imwrite(d / "labels" / "s5_0.tif", disks(shape=(40, 40)))
        args[2] = str(d)
        expected = "does not match labels shape"
    elif case == "empty_synthetic":
        (tmp_path / "empty").mkdir()
        args += ["--synthetic", str(tmp_path / "empty")]
        expected = "holds no images"
    elif case == "bad_model":
        bad = tmp_path / "x.pth"
        bad.write_bytes(b"junk")
        args += ["--pretrained", str(bad)]
        expected = "not a Cellpose model"
    else:  # two stages without synthetic pairs to start with
        args += ["--pretrain-epochs", "2"]
        expected = "--pretrain-epochs trains on the synthetic pairs first"
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]
    assert not (tmp_path / "m").exists()


def test_subprocess_job_can_be_cancelled_and_keeps_its_checkpoint(real_dir, tmp_path):
    out = tmp_path / "m"
    job = SubprocessJob(
        "finetune",
        {
            "real": [str(real_dir)],
            "output": str(out),
            "settings": {"epochs": 500, "nimg_per_epoch": 8, **FAST},
        },
    ).start()
    seen = 0
    t0 = time.time()
    for msg in job.messages():
        if msg.kind == "progress":
            seen += 1
            if seen == 2:
                job.cancel()
        assert time.time() - t0 < 180
    assert job.result.kind == "cancelled"
    assert not job.running
    load_model(out, "cpu")
    assert read_log(out)["cancelled"] is True


def test_a_failing_subprocess_job_reports_its_error(tmp_path):
    job = SubprocessJob(
        "finetune", {"real": [str(tmp_path / "nowhere")], "output": str(tmp_path / "m")}
    )
    messages = list(job.start().messages())
    assert messages[-1].kind == "error"
    assert "no such file or folder" in messages[-1].data


@pytest.mark.shared_data
def test_finetune_on_gowt1_crops_then_evaluate(tmp_path, capsys):
    gowt1 = shared_data("ctc_Fluo-N2DH-GOWT1")
    crops = tmp_path / "gowt1_crops"
    (crops / "images").mkdir(parents=True)
    (crops / "labels").mkdir()
    for p in read_dataset(gowt1).pairs[:2]:
        tifffile.imwrite(crops / "images" / f"{p.name}.tif", p.image[256:768, 256:768])
        tifffile.imwrite(crops / "labels" / f"{p.name}.tif", p.labels[256:768, 256:768])
    model = tmp_path / "gowt1_model"
    assert (
        main(
            ["finetune", "--real", str(crops), "--epochs", "2", "-o", str(model), "--device", "cpu"]
        )
        == 0
    )
    from cellpose import models

    models.CellposeModel(pretrained_model=str(model))
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model), str(crops), "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n_images"] == 2
    assert set(summary) >= {"SEG", "AP50", "bPQ"}


@pytest.mark.parametrize("existing", ["m.safetensors", "m.log.json", ".m.training"])
def test_finetune_never_replaces_or_deletes_what_is_beside_its_output(
    dataset_folder, tmp_path, existing
):
    from cellsynth.segment import finetune

    there = tmp_path / existing
    if existing.endswith(".training"):
        there.mkdir()
        (there / "keep.txt").write_text("mine")
    else:
        there.write_text("mine")
    pairs = read_dataset(dataset_folder, require_labels=True).pairs
    with pytest.raises(CellsynthInputError, match="already exists"):
        next(finetune(pairs, [], tmp_path / "m"))
    assert not (tmp_path / "m").exists()
    kept = there / "keep.txt" if there.is_dir() else there
    assert kept.read_text() == "mine"


def test_segment_refuses_a_one_pixel_image_naming_it():
    from cellsynth.segment import segment

    with pytest.raises(CellsynthInputError, match=r"tiny\.tif: image of 1×1 px is too small"):
        segment(None, np.ones((1, 1), np.float32), path="tiny.tif")
