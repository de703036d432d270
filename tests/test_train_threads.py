"""Threads per process: chosen deliberately, fewer when several processes share the cores."""

from __future__ import annotations

import pytest

from cellsynth import device
from cellsynth.cli import main
from cellsynth.device import choose_threads
from cellsynth.errors import CellsynthInputError


@pytest.fixture
def four_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(device, "available_cores", lambda: 4)


def test_a_quiet_machine_gives_one_process_every_core(four_cores):
    assert choose_threads(busy=0.0) == 4


def test_several_processes_share_the_cores(four_cores, monkeypatch):
    assert choose_threads(processes=2, busy=0.0) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # set by accelerate launch / torchrun
    assert choose_threads(busy=0.0) == 1


def test_busy_cores_are_left_to_their_owners(four_cores):
    assert choose_threads(busy=2.0) == 2
    assert choose_threads(busy=3.6) == 1
    assert choose_threads(busy=9.0) == 1  # never fewer than one


def test_the_option_and_omp_num_threads_win(four_cores, monkeypatch):
    assert choose_threads(3, busy=4.0) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert choose_threads(busy=0.0) == 2
    with pytest.raises(CellsynthInputError, match="at least 1"):
        choose_threads(0)


def test_cli_threads_option_sets_torch_threads(capsys):
    import torch

    from cellsynth.samples import sample_dataset_path

    before = torch.get_num_threads()
    try:
        assert main(["--threads", "1", "info", str(sample_dataset_path())]) == 0
        assert torch.get_num_threads() == 1
        capsys.readouterr()
        assert main(["--threads", "0", "info", str(sample_dataset_path())]) == 2
        err = capsys.readouterr().err
        assert "--threads must be at least 1" in err and len(err.strip().splitlines()) == 1
    finally:
        torch.set_num_threads(before)


def test_a_job_child_sets_torchs_threads_from_its_spec(tmp_path, monkeypatch, capsys):
    """The GUI's 'CPU threads' box reaches the training subprocess: the child sets torch's
    threads from the spec before it runs the job (None: automatic)."""
    import json

    import torch

    from cellsynth import jobs

    def report(spec):
        yield {"threads": torch.get_num_threads()}

    monkeypatch.setitem(jobs.RUNNERS, "learn", report)
    before = torch.get_num_threads()
    try:
        for n in (1, 2):
            spec = tmp_path / f"job{n}.json"
            spec.write_text(json.dumps({"kind": "learn", "threads": n}))
            assert jobs.child_main([str(spec)]) == 0
            lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
            assert lines[0] == {"progress": {"threads": n}}
    finally:
        torch.set_num_threads(before)
