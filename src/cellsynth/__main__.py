"""``python -m cellsynth`` (and ``accelerate launch -m cellsynth``): the command line.

``accelerate launch --cpu --num_processes N`` without an MPI host file starts a single process
(accelerate's simple launcher sets ``MASTER_ADDR`` but starts no process group); here that
request is handed to ``torch.distributed.run`` (torchrun, which accelerate's multi-GPU launcher
uses too) so that N CPU processes train data-parallel as asked.
"""

from __future__ import annotations

import os
import sys


def _requested_cpu_processes() -> int:
    """N of an ``accelerate launch --cpu --num_processes N`` that started only this process."""
    env = os.environ
    if env.get("ACCELERATE_USE_CPU", "").lower() not in ("true", "1"):
        return 1
    if "WORLD_SIZE" in env or "MASTER_ADDR" not in env:  # already a process group / not asked
        return 1
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as fh:
            args = fh.read().decode(errors="replace").split("\0")
    except OSError:
        return 1
    for i, a in enumerate(args):
        if a.startswith("--num_processes="):
            return int(a.split("=", 1)[1])
        if a == "--num_processes" and i + 1 < len(args) and args[i + 1].isdigit():
            return int(args[i + 1])
    return 1


def run() -> int:
    n = _requested_cpu_processes()
    if n > 1:
        from torch.distributed.run import main as torchrun

        torchrun(
            [
                "--nproc_per_node",
                str(n),
                "--master_addr",
                os.environ["MASTER_ADDR"],
                "--master_port",
                os.environ.get("MASTER_PORT", "29500"),
                "-m",
                "cellsynth",
                *sys.argv[1:],
            ]
        )
        return 0
    from cellsynth.cli import main

    return main()


if __name__ == "__main__":
    sys.exit(run())
