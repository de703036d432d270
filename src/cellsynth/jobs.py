"""Long work in a subprocess: progress streamed as JSON lines, cancellable, errors reported.

A *job* is one of cellsynth's progress generators (``learn``, ``finetune`` …) run by
``python -m cellsynth.jobs`` in a child process. The child prints one JSON object per line:
``{"progress": {...}}`` for each report, then ``{"done": {...}}``, ``{"cancelled": true}`` or
``{"error": "one-line message"}``. Cancelling sends SIGINT: the child closes the generator,
which saves its last checkpoint, and exits. GPU memory is released with the process.

The napari widgets use :class:`SubprocessJob`; nothing here imports Qt.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cellsynth.errors import CellsynthInputError

log = logging.getLogger(__name__)


@dataclass
class JobMessage:
    kind: str  # "progress", "done", "cancelled", "error", "log"
    data: Any = None


def _settings(cls: type, values: dict[str, Any] | None) -> Any:
    """A settings dataclass from its JSON form (JSON lists back to the tuples the fields hold)."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in (values or {}).items()})


def _run_learn(spec: dict[str, Any]) -> Iterator[Any]:
    """``learn`` (2D), or ``learn_3d`` when the spec has ``settings_3d``."""
    from cellsynth.io import read_pairs
    from cellsynth.learn import learn
    from cellsynth.settings import LearnSettings

    pairs = read_pairs(spec["data"], require_labels=True)
    settings = _settings(LearnSettings, spec.get("settings"))
    resume = bool(spec.get("resume", False))
    if spec.get("settings_3d") is not None:
        from cellsynth.learn3d import Learn3DSettings, learn_3d

        s3 = _settings(Learn3DSettings, spec["settings_3d"])
        return learn_3d(pairs, spec["output"], settings, s3, resume=resume)
    return learn(pairs, spec["output"], settings, resume=resume)


def _run_finetune(spec: dict[str, Any]) -> Iterator[Any]:
    from cellsynth.io import read_pairs
    from cellsynth.segment import FinetuneSettings, finetune
    from cellsynth.segmenters import get_backend

    # a backend registered outside cellsynth is registered here by importing its module
    backend = get_backend(spec.get("backend"), spec.get("backend_module")).name
    real = read_pairs(spec.get("real", []), require_labels=True)
    synthetic = read_pairs(spec.get("synthetic", []), require_labels=True)
    settings = _settings(FinetuneSettings, spec.get("settings"))
    return finetune(real, synthetic, spec["output"], settings, backend)


def finetune_spec(backend: str | None = None, **spec: Any) -> dict[str, Any]:
    """A ``finetune`` job spec (real, synthetic, output, settings) for ``backend``, naming the
    module that registers it so that the child process finds it too."""
    from cellsynth.segmenters import get_backend

    cls = get_backend(backend)
    return {**spec, "backend": cls.name, "backend_module": cls.__module__}


RUNNERS = {"learn": _run_learn, "finetune": _run_finetune}


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


@contextlib.contextmanager
def remembered_sigint() -> Iterator[threading.Event]:
    """While inside, SIGINT raises KeyboardInterrupt as usual and also sets the event yielded.

    A bare ``except:`` in a library can swallow the exception (Cellpose 3 imports matplotlib
    inside one, which takes seconds on a busy machine or a fresh font cache), but not the
    request: a progress loop checks the event after each report. Outside the main thread
    (where no handler can be set) the event is never set.
    """
    asked = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield asked
        return

    def handler(signum: int, frame: Any) -> None:
        asked.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield asked
    finally:
        signal.signal(signal.SIGINT, previous)


def child_main(argv: list[str] | None = None) -> int:
    """Entry point of the child process: ``python -m cellsynth.jobs SPEC.json``."""
    with remembered_sigint() as cancel:
        return _child_main(argv, cancel)


def _child_main(argv: list[str] | None, cancel: threading.Event) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    gen = None
    try:
        from cellsynth.device import configure_threads

        configure_threads(spec.get("threads"))  # None: the cores other processes leave free
        gen = RUNNERS[spec["kind"]](spec)
        last = None
        if cancel.is_set():  # asked while the job was being set up (and swallowed there)
            raise KeyboardInterrupt
        for p in gen:
            last = p.to_dict() if hasattr(p, "to_dict") else p
            _emit({"progress": last})
            if cancel.is_set():
                raise KeyboardInterrupt
        _emit({"done": last})
        return 0
    except KeyboardInterrupt:
        if gen is not None:
            gen.close()  # the generator saves its checkpoint on close
        _emit({"cancelled": True})
        return 130
    except CellsynthInputError as exc:
        _emit({"error": str(exc)})
        return 2
    except Exception as exc:  # any other failure still reaches the caller as one line
        log.exception("job failed")
        _emit({"error": f"{exc.__class__.__name__}: {exc}"})
        return 1


class SubprocessJob:
    """Run a job in a child process; iterate :meth:`messages`; :meth:`cancel` at any time."""

    def __init__(self, kind: str, spec: dict[str, Any], workdir: str | Path | None = None):
        if kind not in RUNNERS:
            raise CellsynthInputError(f"unknown job kind {kind!r} (one of {', '.join(RUNNERS)})")
        import tempfile

        self.kind = kind
        self.spec = {"kind": kind, **spec}
        self._dir = Path(workdir or tempfile.mkdtemp(prefix="cellsynth-job-"))
        self._spec_path = self._dir / "job.json"
        self._spec_path.write_text(json.dumps(self.spec, default=str))
        self.proc: subprocess.Popen | None = None
        self.stderr_tail: list[str] = []
        self.result: JobMessage | None = None
        self._cancelled = False

    def start(self) -> SubprocessJob:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cellsynth.jobs", str(self._spec_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,  # a Ctrl-C in the terminal of napari does not reach it
        )
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        return self

    def _drain_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_tail.append(line.rstrip())
            del self.stderr_tail[:-50]

    def messages(self) -> Iterator[JobMessage]:
        """Progress messages until the job ends; the last one is done/cancelled/error."""
        if self.proc is None:
            self.start()
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            kind = next(iter(obj))
            if kind == "error" and self._cancelled:
                # interrupted while starting (e.g. inside an import): a cancellation, not a bug
                log.info("job cancelled: %s", obj[kind])
                kind, obj = "cancelled", {"cancelled": True}
            msg = JobMessage(kind, obj[kind])
            if kind != "progress":
                self.result = msg
            yield msg
        self.proc.wait()
        if self.result is None:
            tail = " | ".join(self.stderr_tail[-3:])
            self.result = JobMessage(
                "cancelled" if self._cancelled else "error",
                True
                if self._cancelled
                else f"job ended unexpectedly (exit code {self.proc.returncode}): {tail}",
            )
            yield self.result

    def cancel(self, timeout: float = 60.0) -> None:
        """Ask the child to stop (SIGINT: it saves its checkpoint); kill it after ``timeout``."""
        self._cancelled = True
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)

        def reaper() -> None:
            try:
                self.proc.wait(timeout)  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                self.proc.kill()  # type: ignore[union-attr]

        threading.Thread(target=reaper, daemon=True).start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


if __name__ == "__main__":
    sys.exit(child_main())
