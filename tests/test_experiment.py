"""The reproducible experiment: config checks, a tiny end-to-end run, resume, curation, budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cellsynth.cli import main
from cellsynth.errors import CellsynthInputError
from cellsynth.experiment import (
    Experiment,
    config_from_dict,
    load_config,
    paired_difference,
    results_markdown,
    run_experiment,
)
from cellsynth.samples import sample_dataset_path

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "src" / "cellsynth" / "data" / "bundle_dsb2018"


def _frames() -> list[str]:
    return sorted(p.stem for p in (Path(sample_dataset_path()) / "images").glob("*.tif"))


def tiny_config(**over) -> dict:
    f = _frames()
    cfg = {
        "name": "tiny",
        "data": str(sample_dataset_path()),
        "train": f[:2],
        "test": f[2:3],
        "bundle": str(BUNDLE),
        "synthetic": {"n": 3, "size": [64, 64], "steps": 2},
        "training": {"epochs": 1, "nimg_per_epoch": 2, "bsize": 64, "batch_size": 2},
        "curation": {"score_with": "real"},
        "rows": [
            {"name": "real"},
            {"name": "synthetic", "real": [], "synthetic": 2},
            {"name": "both curated", "synthetic": 2, "p_real": 0.5, "curated": True},
        ],
    }
    cfg.update(over)
    return cfg


def _write(tmp_path, cfg) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny experiment run through the CLI (all rows)."""
    tmp = tmp_path_factory.mktemp("exp")
    cfg = _write(tmp, tiny_config())
    out = tmp / "out"
    assert main(["-q", "experiment", str(cfg), "-o", str(out), "--device", "cpu"]) == 0
    return cfg, out


def test_experiment_writes_every_row_traceable_to_its_config(finished):
    cfg, out = finished
    res = json.loads((out / "results.json").read_text())
    assert set(res["rows"]) == {"real", "synthetic", "both curated"}
    for name, rec in res["rows"].items():
        assert 0.0 <= rec["SEG"] <= 1.0 and 0.0 <= rec["AP50"] <= 1.0, name
        assert rec["epochs"] == 1 and rec["nimg_per_epoch"] == 2
        assert rec["command"][0] == "cellsynth" and "experiment" in rec["command"]
        assert str(cfg) in rec["command"]
        assert rec["machine"]["cpu_count"] >= 1 and rec["machine"]["device"] == "cpu"
        assert Path(rec["model"]).is_file()
    assert res["rows"]["real"]["n_synthetic_images"] == 0
    assert res["rows"]["synthetic"]["n_real_images"] == 0
    assert res["rows"]["synthetic"]["synthetic_used"] == ["synth_0000", "synth_0001"]
    # the synthetic set was written once, three pairs with their seeds, for all rows
    ds = json.loads((out / "synthetic" / "dataset.json").read_text())
    assert sorted(ds["samples"]) == ["synth_0000", "synth_0001", "synth_0002"]
    assert [ds["samples"][n]["seed"] for n in sorted(ds["samples"])] == [0, 1, 2]
    # curation scored every synthetic pair with the real-only model
    assert all("quality" in s for s in ds["samples"].values())
    md = (out / "results.md").read_text()
    assert "| both curated |" in md and "2 (curated)" in md
    assert f"Bundle: `{BUNDLE}`" in md


def test_rows_side_by_side_on_several_devices_give_the_same_rows(finished, tmp_path):
    """``--devices cpu cpu``: one process per row, two at a time; the same records."""
    cfg, seq = finished
    out = tmp_path / "par"
    argv = ["-q", "experiment", str(cfg), "-o", str(out), "--devices", "cpu", "cpu"]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    ref = json.loads((seq / "results.json").read_text())
    assert set(res["rows"]) == set(ref["rows"]) == {"real", "synthetic", "both curated"}
    for name, rec in res["rows"].items():
        for key in ("SEG", "AP50", "bPQ", "synthetic_used", "epochs", "key"):
            assert rec[key] == ref["rows"][name][key], (name, key)
        assert (out / "logs" / f"{rec['row']['name'].replace(' ', '_')}.log").is_file()


def test_one_device_runs_rows_in_this_process(finished, monkeypatch):
    """On a machine with one device, ``--devices auto`` is today's sequential run."""
    import torch

    from cellsynth import experiment

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine: auto means its GPUs")
    cfg, out = finished
    monkeypatch.setattr(experiment, "run_rows_in_parallel", None)  # would fail if called
    assert experiment.row_devices(["auto"]) == ["cpu"]
    assert main(["-q", "experiment", str(cfg), "-o", str(out), "--devices", "auto"]) == 0
    with pytest.raises(CellsynthInputError, match="unknown device"):
        experiment.row_devices(["gpu7"])


def test_rerunning_keeps_finished_rows_and_a_changed_budget_retrains(finished, tmp_path):
    cfg, out = finished
    models = {p: p.stat().st_mtime_ns for p in (out / "models").iterdir()}
    # a row written before per-cell scores were kept gets them on the next run (not retrained)
    rec = json.loads((out / "rows" / "synthetic.json").read_text())
    cells = rec.pop("cell_jaccards")
    (out / "rows" / "synthetic.json").write_text(json.dumps(rec))
    assert main(["-q", "experiment", str(cfg), "-o", str(out), "--device", "cpu"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "models").iterdir()} == models
    rec = json.loads((out / "rows" / "synthetic.json").read_text())
    assert rec["cell_jaccards"] == cells
    # two epochs instead of one: a different key, so the row trains again
    c = json.loads(cfg.read_text())
    c["training"]["epochs"] = 2
    cfg2 = _write(tmp_path, c)
    assert main(["-q", "experiment", str(cfg2), "-o", str(out), "--only", "real"]) == 0
    rec = json.loads((out / "rows" / "real.json").read_text())
    assert rec["epochs"] == 2
    assert any(p.name.startswith("real.old-") for p in (out / "models").iterdir())


def test_a_config_extending_the_finished_one_keeps_its_rows(finished, tmp_path, capsys):
    """A copy that only renames the experiment (``extends`` the finished config, from another
    folder) means the same rows: the CLI keeps them instead of training again."""
    import os

    cfg, out = finished
    child = tmp_path / "variants" / "tiny_renamed.json"
    child.parent.mkdir()
    child.write_text(
        json.dumps({"description": "the same rows", "extends": os.path.relpath(cfg, child.parent)})
    )
    models = {p: p.stat().st_mtime_ns for p in (out / "models").glob("synthetic*")}
    assert models
    argv = ["experiment", str(child), "-o", str(out), "--only", "synthetic", "--device", "cpu"]
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "models").glob("synthetic*")} == models
    written = sorted(out.glob("config-*.json"))[-1]  # the renamed config, next to the first
    assert json.loads(written.read_text())["name"] == "tiny_renamed"
    assert "extends" not in json.loads(written.read_text())  # written out in full
    # a base that is not there is named, with the config that names it
    child.write_text(json.dumps({"extends": "nowhere.json"}))
    assert main(["experiment", str(child), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "nowhere.json (named by tiny_renamed.json) not found" in err
    assert "Traceback" not in err


def test_paired_difference_over_the_same_cells():
    a = {"cell_jaccards": {"f1": [0.9, 0.8, 0.0], "f2": [0.7]}}
    b = {"cell_jaccards": {"f1": [0.8, 0.8, 0.5], "f2": [0.6]}}
    d = paired_difference(a, b)
    assert d["cells"] == 4 and abs(d["difference"] - (-0.3 / 4)) < 1e-9
    assert d["low"] <= d["difference"] <= d["high"]
    same = paired_difference(a, a)
    assert same["difference"] == same["low"] == same["high"] == 0.0
    assert paired_difference(a, {"cell_jaccards": {"other": [1.0]}}) is None
    assert paired_difference(a, {}) is None


def test_curated_rows_take_the_best_scored_pairs(tmp_path, monkeypatch):
    exp = Experiment(config_from_dict(tiny_config()), tmp_path / "out", device="cpu")
    list(exp._ensure_synthetic(None))
    row = next(r for r in exp.config.rows if r.curated)
    scores = {"synth_0000": 0.1, "synth_0001": 0.2, "synth_0002": 0.9}
    monkeypatch.setattr(exp, "_quality", lambda path, pairs: scores)
    assert [p.name for p in exp.synthetic_pairs(row)] == ["synth_0002", "synth_0001"]
    plain = next(r for r in exp.config.rows if r.name == "synthetic")
    assert [p.name for p in exp.synthetic_pairs(plain)] == ["synth_0000", "synth_0001"]


def test_only_a_curated_row_also_trains_its_scorer(tmp_path):
    out = tmp_path / "out"
    cfg = config_from_dict(tiny_config())
    list(run_experiment(cfg, out, device="cpu", only=["both curated"]))
    assert sorted(p.stem for p in (out / "rows").glob("*.json")) == ["both_curated", "real"]


def test_a_row_starts_from_another_rows_model(tmp_path):
    """Pretrain on synthetic data, then fine-tune on the real frames: --only the second row
    trains the first too, and the second starts from its weights (Cellpose's fine-tuning
    rate, 1e-4, where the config sets none; 0.005 from scratch)."""
    rows = [
        {"name": "real"},
        {"name": "synthetic", "real": [], "synthetic": 2},
        {"name": "synthetic, then real", "start_from": "synthetic"},
    ]
    cfg = config_from_dict(tiny_config(rows=rows))
    out = tmp_path / "out"
    list(run_experiment(cfg, out, device="cpu", only=["synthetic, then real"]))
    assert sorted(p.stem for p in (out / "rows").glob("*.json")) == [
        "synthetic",
        "synthetic_then_real",
    ]
    first = json.loads((out / "rows" / "synthetic.json").read_text())
    second = json.loads((out / "rows" / "synthetic_then_real.json").read_text())
    assert first["learning_rate"] == pytest.approx(0.005)
    assert second["learning_rate"] == pytest.approx(1e-4)
    assert second["n_synthetic_images"] in (0, None) and second["row"]["start_from"] == "synthetic"
    exp = Experiment(cfg, out, device="cpu")
    start, row = cfg.row_named("synthetic"), cfg.row_named("synthetic, then real")
    assert exp._settings(row, 1).pretrained == str(exp.model_path(start))
    # the pretrained row's key is part of the second row's: another start, another key
    other = config_from_dict(tiny_config(rows=[*rows[:1], {**rows[1], "synthetic": 1}, rows[2]]))
    e2 = Experiment(other, tmp_path / "o2", device="cpu")
    assert e2.row_key(other.row_named("synthetic, then real"), 1) != exp.row_key(row, 1)
    assert (
        "Row 'synthetic, then real' starts from the model of row 'synthetic'"
        in (out / "results.md").read_text()
    )


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"name": "real", "start_from": "nope"}], "must name another row"),
        ([{"name": "real", "start_from": "real"}], "must name another row"),
        (
            [
                {"name": "real"},
                {"name": "a", "start_from": "real"},
                {"name": "b", "start_from": "a"},
            ],
            "itself starts from",
        ),
    ],
)
def test_start_from_must_name_a_row_trained_from_scratch(rows, message):
    with pytest.raises(CellsynthInputError, match=message):
        config_from_dict(tiny_config(rows=rows))


def test_a_budget_lowers_epochs_and_a_hopeless_budget_is_refused(tmp_path):
    c = tiny_config(rows=[{"name": "real"}])
    c["training"]["epochs"] = 40
    cfg = config_from_dict(c)
    with pytest.raises(CellsynthInputError, match=r"time budget of 0\.0001 h allows"):
        list(run_experiment(cfg, tmp_path / "a", device="cpu", budget_hours=0.0001))
    list(run_experiment(cfg, tmp_path / "b", device="cpu", budget_hours=0.25))
    rec = json.loads((tmp_path / "b" / "rows" / "real.json").read_text())
    assert 10 <= rec["epochs"] <= 40


def _ladder_config(tmp_path, **convergence) -> Path:
    c = tiny_config(rows=[{"name": "real"}, {"name": "both", "synthetic": 2, "p_real": 0.5}])
    c["convergence"] = {"row": "real", **convergence}
    return _write(tmp_path, c)


@pytest.fixture(scope="module")
def laddered(tmp_path_factory):
    """A ladder with a tolerance no change meets, run through the CLI."""
    tmp = tmp_path_factory.mktemp("ladder")
    cfg = _ladder_config(tmp, start_epochs=1, max_epochs=5, tolerance=0.0)
    out = tmp / "out"
    assert main(["-q", "experiment", str(cfg), "-o", str(out), "--device", "cpu"]) == 0
    return cfg, out


def test_a_convergence_ladder_trains_every_row_at_the_baselines_budget(laddered):
    """The baseline doubles 1 → 2 → 4 epochs, is marked not converged, and every row trains
    at 4 epochs; the baseline's row is the ladder's model (a copy, not a fourth training); a
    rerun trains nothing."""
    cfg, out = laddered
    decision = json.loads((out / "convergence" / "decision.json").read_text())
    assert [r["epochs"] for r in decision["ladder"]] == [1, 2, 4]
    assert decision["epochs"] == 4 and decision["converged"] is False
    res = json.loads((out / "results.json").read_text())
    assert {n: r["epochs"] for n, r in res["rows"].items()} == {"real": 4, "both": 4}
    ladder_model = out / "convergence" / "models" / "real@4"
    assert (out / "models" / "real").read_bytes() == ladder_model.read_bytes()
    assert res["rows"]["real"]["SEG"] == decision["ladder"][-1]["SEG"]
    md = (out / "results.md").read_text()
    assert "**not converged**" in md and "| 4 |" in md and "Budget per row: 4 epochs" in md
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "models").iterdir()}
    assert main(["-q", "experiment", str(cfg), "-o", str(out), "--device", "cpu"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "models").iterdir()} == mtimes


def test_a_ladder_on_two_devices_trains_its_rungs_side_by_side(laddered, tmp_path, monkeypatch):
    """``--devices cpu cpu``: the doublings train at once, one process each, and the decision
    and the rows are the sequential run's."""
    from cellsynth.experiment import parallel

    cfg, seq = laddered
    out = tmp_path / "par"
    started, alive = [], []
    start = parallel._start

    def counting_start(*args, **kwargs):
        proc, log_file = start(*args, **kwargs)
        started.append(proc)
        alive.append(sum(p.poll() is None for p in started))
        return proc, log_file

    monkeypatch.setattr(parallel, "_start", counting_start)
    assert main(["-q", "experiment", str(cfg), "-o", str(out), "--devices", "cpu", "cpu"]) == 0
    assert max(alive) == 2, alive  # two processes at once on the one device named twice
    par = json.loads((out / "convergence" / "decision.json").read_text())
    ref = json.loads((seq / "convergence" / "decision.json").read_text())
    assert [(r["epochs"], r["SEG"]) for r in par["ladder"]] == [
        (r["epochs"], r["SEG"]) for r in ref["ladder"]
    ]
    assert (par["epochs"], par["converged"]) == (ref["epochs"], ref["converged"])
    assert {p.name for p in (out / "logs").glob("ladder_*.log")} == {
        "ladder_1.log", "ladder_2.log", "ladder_4.log"
    }  # fmt: skip
    res = json.loads((out / "results.json").read_text())
    assert {n: r["epochs"] for n, r in res["rows"].items()} == {"real": 4, "both": 4}


def test_a_converged_ladder_stops_and_a_sweep_picks_the_learning_rate_for_every_row(tmp_path):
    """Any SEG change is below a tolerance of 1: the ladder stops at the first doubling and
    keeps the start budget; the learning rate of the sweep's best SEG trains every row."""
    cfg = _ladder_config(tmp_path, start_epochs=1, max_epochs=8, tolerance=1.0,
                         learning_rates=[0.002, 0.02])  # fmt: skip
    out = tmp_path / "out"
    assert main(["-q", "experiment", str(cfg), "-o", str(out), "--device", "cpu"]) == 0
    decision = json.loads((out / "convergence" / "decision.json").read_text())
    assert [r["learning_rate"] for r in decision["sweep"]] == [0.002, 0.02]
    best = max(decision["sweep"], key=lambda r: r["SEG"])["learning_rate"]
    assert decision["learning_rate"] == best and decision["converged"] is True
    assert [r["epochs"] for r in decision["ladder"]] == [1, 2] and decision["epochs"] == 1
    res = json.loads((out / "results.json").read_text())
    assert {r["learning_rate"] for r in res["rows"].values()} == {best}
    assert {r["epochs"] for r in res["rows"].values()} == {1}
    assert "Learning-rate sweep" in (out / "results.md").read_text()


@pytest.mark.parametrize(
    ("seg", "expected"),
    [
        ({50: 0.80, 100: 0.84, 200: 0.77, 400: 0.95}, (100, False, True)),  # past its peak
        ({50: 0.80, 100: 0.805, 200: 0.95}, (50, True, False)),  # flat: converged
        ({50: 0.70, 100: 0.75, 200: 0.80, 400: 0.85}, (400, False, False)),  # still rising
    ],
)
def test_the_ladder_stops_where_doubling_is_flat_or_makes_the_baseline_worse(
    tmp_path, monkeypatch, seg, expected
):
    """A doubling that lowers the held-out SEG by more than the tolerance means the baseline
    is past its peak: the rows train at the lower budget (not at the maximum, overtrained)."""
    cfg = load_config(_ladder_config(tmp_path, start_epochs=50, max_epochs=400))
    exp = Experiment(cfg, tmp_path / "out", device="cpu")

    def record(row, epochs, lr):
        return {"epochs": epochs, "SEG": seg[epochs]} if epochs in seg else None

    monkeypatch.setattr(exp, "_rung_record", record)
    walk = exp._walk()
    assert (walk.epochs, walk.converged, walk.peaked) == expected
    assert walk.missing == []


def test_a_changed_evaluation_scores_finished_rows_again_without_training(finished, tmp_path):
    """Adding ``evaluation.stitch_threshold`` to a finished experiment's config scores its
    models again (the former scores kept) and trains nothing — except a curated row, whose
    synthetic pairs are rated as the test frames are scored, so its selection may change."""
    import shutil

    cfg, done = finished
    out = tmp_path / "out"
    shutil.copytree(done, out)
    # other tests rerun the shared folder with other budgets: first bring it back to cfg's rows
    assert main(["-q", "experiment", str(cfg), "-o", str(out), "--device", "cpu"]) == 0
    c = json.loads(cfg.read_text()) | {"evaluation": {"stitch_threshold": 0.25}}
    new_cfg = _write(tmp_path, c)

    def mtimes(slug):
        return {p: p.stat().st_mtime_ns for p in (out / "models").glob(f"{slug}*")}

    before = {slug: mtimes(slug) for slug in ("real", "synthetic", "both_curated")}
    assert main(["-q", "experiment", str(new_cfg), "-o", str(out), "--device", "cpu"]) == 0
    assert mtimes("real") == before["real"] and mtimes("synthetic") == before["synthetic"]
    assert mtimes("both_curated") != before["both_curated"]  # retrained: a new key
    res = json.loads((out / "results.json").read_text())
    assert set(res["rows"]) == {"real", "synthetic", "both curated"}
    for name, rec in res["rows"].items():
        assert rec["evaluation"] == {"stitch_threshold": 0.25}
        if name != "both curated":
            assert rec["previous_scores"][-1]["evaluation"] == {}
            assert rec["previous_scores"][-1]["SEG"] == pytest.approx(rec["SEG"])  # 2D: same
    assert "IoU >= 0.25" in (out / "results.md").read_text()


def test_rescoring_scores_a_rung_and_the_row_adopted_from_it_once(tmp_path, monkeypatch):
    """The row a ladder adopts holds a copy of the rung's model: one scoring serves both."""
    import cellsynth.segment

    cfg = load_config(_ladder_config(tmp_path, start_epochs=1, max_epochs=2))
    exp = Experiment(cfg, tmp_path / "out", device="cpu")
    rung = exp.convergence_path / "models" / "real@2"
    for folder in (exp.convergence_path / "models", exp.out / "models", exp.out / "rows"):
        folder.mkdir(parents=True, exist_ok=True)
    old = {"SEG": 0.5, "evaluation": {"stitch_threshold": 0.5}}
    rung.write_bytes(b"the same weights")
    (exp.convergence_path / "real@2.json").write_text(json.dumps(old))
    real = cfg.rows[0]
    exp.model_path(real).write_bytes(b"the same weights")
    exp.row_path(real).write_text(json.dumps(old))
    calls = []
    monkeypatch.setattr(cellsynth.segment, "load_model", lambda path, *a, **k: path)
    monkeypatch.setattr(exp, "_scores", lambda m: calls.append(m) or {"SEG": 0.7, "evaluation": {}})
    list(exp.rescore())
    assert len(calls) == 1
    for record in (exp.convergence_path / "real@2.json", exp.row_path(real)):
        rec = json.loads(record.read_text())
        assert rec["SEG"] == 0.7 and rec["previous_scores"] == [
            {**dict.fromkeys(("AP50", "bPQ", "n_predicted")), **old}
        ]
    exp.model_path(real).write_bytes(b"other weights")  # a row of its own is scored itself
    exp.row_path(real).write_text(json.dumps(old))
    list(exp.rescore())
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("evaluation", "expected"),
    [
        ({"stitch_threshold": 0}, "'stitch_threshold' must be a number in [0.001, 1]"),
        ({"stitch_threshold": "yes"}, "'stitch_threshold' must be a number"),
        ({"stitch": 0.2}, "unknown key(s) ['stitch'] in 'evaluation'"),
    ],
)
def test_bad_evaluation_sections_get_one_line_errors(tmp_path, capsys, evaluation, expected):
    path = _write(tmp_path, tiny_config(evaluation=evaluation))
    assert main(["experiment", str(path), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


@pytest.mark.parametrize(
    ("convergence", "expected"),
    [
        ({"row": "both"}, "'row' 'both' must name a row that trains on real data only"),
        ({}, "'convergence' needs 'row'"),
        ({"row": "real", "start_epochs": 4, "max_epochs": 2}, "max_epochs 2 is below"),
        ({"row": "real", "learning_rates": [2]}, "'learning_rates' must be a list of numbers"),
        ({"row": "real", "tolerance": -1}, "'tolerance' must be a number in [0, 1]"),
        ({"row": "real", "patience": 3}, "unknown key(s) ['patience'] in 'convergence'"),
    ],
)
def test_bad_convergence_sections_get_one_line_errors(tmp_path, capsys, convergence, expected):
    c = tiny_config(rows=[{"name": "real"}, {"name": "both", "synthetic": 2, "p_real": 0.5}])
    c["convergence"] = convergence or {"start_epochs": 2}
    path = _write(tmp_path, c)
    assert main(["experiment", str(path), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


def test_a_time_budget_and_a_convergence_ladder_exclude_each_other(tmp_path, capsys):
    cfg = _ladder_config(tmp_path)
    argv = ["experiment", str(cfg), "-o", str(tmp_path / "out"), "--budget-hours", "1"]
    assert main(argv) == 2
    assert "exclude each other" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"typo": 1}, "unknown key(s) ['typo']"),
        ({"test": None}, "the config needs 'test'"),
        ({"rows": [{"name": "r", "real": ["nope"]}]}, "are not training frames"),
        ({"rows": [{"name": "r", "real": [], "synthetic": 0}]}, "trains on nothing"),
        ({"rows": [{"name": "r", "synthetic": 9}]}, "more synthetic pairs than synthetic.n"),
        (
            {"rows": [{"name": "r", "p_real": 1.5, "synthetic": 1}]},
            "'p_real' must be a number in [0, 1], got 1.5",
        ),
        ({"training": {"epochs": "many"}}, "'training': 'epochs' must be an integer >= 1"),
        ({"training": {"epochs": 0}}, "'epochs' must be an integer >= 1, got 0"),
        ({"synthetic": {"cluster_prob": 2}}, "'cluster_prob' must be a number in [0, 1]"),
        ({"rows": [{"name": "."}]}, "name '.' cannot be a file name"),
        ({"rows": [{"name": "r", "curated": "yes"}]}, "'curated' must be true or false"),
        ({"train": "t01"}, "'train' must be a list of frame names"),
        ({"rows": [{"name": "r"}, {"name": "r"}]}, "row names must be unique"),
        (
            {"rows": [{"name": "c", "synthetic": 1, "curated": True}]},
            "curation.score_with = a row name",
        ),
        ({"training": {"epoch": 3}}, "unknown key(s) ['epoch'] in 'training'"),
        ({"learn": {"frames": ["nope"]}}, "'learn' frames ['nope'] must be a non-empty subset"),
        ({"learn": {"frames": []}}, "'learn' frames [] must be a non-empty subset"),
        ({"training": {"backend": "nope"}}, "'training': 'backend' must be one of cellpose3"),
        ({"synthetic": {"brightness": "x"}}, "'brightness' must be one of data, model"),
        ({"learn": {"voxel_size": [1, 0]}}, "'learn': 'voxel_size' must be three positive"),
        ({"learn": {"lr_schedule": "step"}}, "'lr_schedule' must be one of constant_with_warmup"),
        ({"learn": {"checkpoint_minutes": 0}}, "'checkpoint_minutes' must be a number >= 0.1"),
    ],
)
def test_bad_configs_get_one_line_errors(tmp_path, capsys, change, expected):
    c = tiny_config()
    for k, v in change.items():
        if v is None:
            c.pop(k)
        else:
            c[k] = v
    path = _write(tmp_path, c)
    assert main(["experiment", str(path), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0] and str(path) in err[0]
    assert not (tmp_path / "out").exists()


def test_a_real_row_does_not_wait_for_another_runs_bundle(tmp_path):
    """A second ``cellsynth experiment`` on the same folder, for a row of real frames alone,
    trains at once while the first run holds the folder for its bundle and synthesis (it used
    to wait for the bundle: hours)."""
    import subprocess
    import sys
    import textwrap

    cfg = _write(tmp_path, tiny_config())
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from cellsynth.locks import folder_lock
            with folder_lock({str(out)!r}, "experiment folder"):
                print("held", flush=True)
                sys.stdin.read()
            """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        run = [sys.executable, "-m", "cellsynth", "-q", "experiment", str(cfg), "-o", str(out)]
        done = subprocess.run([*run, "--only", "real"], timeout=300, capture_output=True)
        assert done.returncode == 0, done.stderr
        assert json.loads((out / "rows" / "real.json").read_text())["SEG"] is not None
        assert not (out / "synthetic").exists()
    finally:
        holder.communicate("")
    assert holder.returncode == 0


def test_missing_frames_files_and_bad_json_are_named(tmp_path, capsys):
    with pytest.raises(CellsynthInputError, match="not found"):
        load_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CellsynthInputError, match="not a valid JSON file"):
        load_config(bad)
    c = tiny_config(test=["no_such_frame"])
    path = _write(tmp_path, c)
    assert main(["experiment", str(path), "-o", str(tmp_path / "out")]) == 2
    assert "frames ['no_such_frame'] not found" in capsys.readouterr().err


def test_shipped_configs_are_valid():
    configs = sorted((ROOT / "experiments").glob("*.json"))
    assert configs, "experiments/*.json missing"
    for path in configs:
        cfg = load_config(path)
        assert cfg.rows and cfg.epochs >= 50, path
        assert not set(cfg.train) & set(cfg.test)
        names = [r.name for r in cfg.rows]
        assert len(names) == len(set(names))


def test_the_bundle_can_learn_from_fewer_frames_than_the_rows_train_on(tmp_path):
    """The low-data setting: learn on one frame, still train a row on all training frames."""
    f = _frames()
    exp = Experiment(config_from_dict(tiny_config(learn={"frames": f[:1]})), tmp_path / "o")
    assert [p.name for p in exp.learn_pairs] == f[:1]
    assert [p.name for p in exp.train_pairs] == f[:2]
    default = Experiment(config_from_dict(tiny_config()), tmp_path / "d")
    assert [p.name for p in default.learn_pairs] == f[:2]
    c = tiny_config(learn={"frames": f[:1]})
    c.pop("bundle")
    md = results_markdown({"config": config_from_dict(c).to_dict(), "rows": {}})
    assert f"Bundle: learnt on {f[0]} (" in md


def test_rows_are_compared_with_the_first_real_only_row_when_none_is_called_real():
    """A second-seed config names its rows 'real seed 1' …: the paired differences are still
    shown, against that row."""
    c = tiny_config(rows=[{"name": "real seed 1"}, {"name": "both seed 1", "synthetic": 2}])
    cfg = config_from_dict(c).to_dict()

    def rec(cells):
        return {"SEG": sum(cells) / len(cells), "AP50": 1.0, "bPQ": 0.5, "train_seconds": 60,
                "epochs": 1, "cell_jaccards": {"t": cells}}  # fmt: skip

    rows = {"real seed 1": rec([0.5, 0.6, 0.7]), "both seed 1": rec([0.6, 0.7, 0.8])}
    md = results_markdown({"config": cfg, "rows": rows})
    assert "SEG difference to the 'real seed 1' row" in md
    assert "| both seed 1 | +0.100 |" in md


def test_a_3d_experiment_trains_on_slices_and_scores_stacks(tmp_path):
    import tifffile

    from conftest import disks, image_for

    root = tmp_path / "stacks"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(3):
        lab = disks(shape=(6, 64, 64), centres=((4 + 10 * i, 20), (40, 44 - 5 * i)), radius=9)
        tifffile.imwrite(root / "images" / f"s{i}.tif", image_for(lab, i))
        tifffile.imwrite(root / "labels" / f"s{i}.tif", lab)
    c = tiny_config(
        data=str(root),
        train=["s0", "s1"],
        test=["s2"],
        voxel_size=[2.0, 0.5, 0.5],
        synthetic={"n": 1, "size": [6, 64, 64], "steps": 2},
        rows=[{"name": "real"}, {"name": "both", "synthetic": 1, "p_real": 0.5}],
    )
    out = tmp_path / "out"
    list(run_experiment(config_from_dict(c), out, device="cpu"))
    res = json.loads((out / "results.json").read_text())
    both = res["rows"]["both"]
    assert both["n_real_images"] == 12 and both["n_synthetic_images"] >= 1  # slices
    assert both["frames"][0]["name"] == "s2"  # the whole stack, segmented in 3D
    ds = json.loads((out / "synthetic" / "dataset.json").read_text())
    assert ds["voxel_size"] is not None


def test_an_experiment_trains_its_rows_with_the_backend_it_names(tmp_path):
    """``training.backend``: every row is fine-tuned, saved, loaded and scored by that backend
    (here the threshold + watershed test backend, registered by importing its test module)."""
    from cellsynth.segmenters import get_backend
    from test_segmenter_backend import NAME

    c = tiny_config(training={"epochs": 1, "backend": NAME}, rows=[{"name": "real"}])
    out = tmp_path / "out"
    list(run_experiment(config_from_dict(c), out, device="cpu"))
    rec = json.loads((out / "rows" / "real.json").read_text())
    assert rec["backend"] == NAME and rec["epochs"] == 1
    assert get_backend(NAME).is_model_file(Path(rec["model"]))
    assert 0.0 < rec["SEG"] <= 1.0  # thresholding finds the sample nuclei
    assert rec["n_real_images"] is None  # not in this backend's log: recorded as unknown
    assert (out / "results.md").read_text().startswith(f"# tiny: {NAME} trained on")
    # another backend is another row: its key differs, so it would train again
    c.update(training={"epochs": 1})
    plain = Experiment(config_from_dict(c), out)
    row = plain.config.rows[0]
    assert plain.row_key(row, 1) != rec["key"]
