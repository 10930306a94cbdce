"""Evaluating checkpoints in a child process while training goes on, and promoting the best."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import pickle
import queue
import shutil
import signal
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mario_rl.errors import one_line
from mario_rl.io.checkpoint import snapshot_checkpoint
from mario_rl.run.checkpoints import CheckpointSchedule

__all__ = ["EvalProcess", "EvalResult", "one_line"]


@dataclass
class EvalResult:
    """The outcome of evaluating one checkpoint in the evaluation process."""

    step: int
    checkpoint: Path
    """The checkpoint as submitted (it may since have been removed by retention)."""
    metrics: dict[str, Any] | None
    error: str | None = None
    """One line: what went wrong (the function raised, the process died, a timeout)."""
    seconds: float = 0.0
    is_best: bool = False
    traceback: str | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None


def _eval_worker(
    fn: Callable[..., Mapping[str, Any]],
    kwargs: dict[str, Any],
    jobs: Any,
    results: Any,
    parent: int,
) -> None:
    # The terminal's Ctrl+C reaches the whole process group; the trainer decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            job = jobs.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:  # the trainer died without closing us
                return
            continue
        if job is None:
            return
        job_id, path = job
        results.put(("started", job_id, None, 0.0))
        start = time.monotonic()
        try:
            out = dict(fn(path, **kwargs))
            pickle.dumps(out)  # fail here, with a message, rather than in the queue's thread
            results.put(("ok", job_id, out, time.monotonic() - start))
        except BaseException as e:  # report everything; the trainer must never wait forever
            tb = traceback.format_exc()
            summary = one_line(e)
            results.put(("error", job_id, (summary, tb), time.monotonic() - start))


@dataclass
class _Job:
    job_id: int
    step: int
    source: Path
    snapshot: Path
    started: float = 0.0
    """When the child began the job; until it says so, when the job was handed over."""
    confirmed: bool = False


class EvalProcess:
    """Evaluate checkpoints in a child process so training never waits for evaluation.

    ``fn(checkpoint_path: Path, **kwargs) -> dict`` must be picklable (a module-level function)
    and runs in a ``spawn``-ed child. :meth:`submit` hands over a checkpoint (a hard-linked
    snapshot, so retention cannot delete it mid-evaluation); at most one runs at a time and
    only the newest waiting one is kept. :meth:`poll` never blocks. With a ``schedule``, each
    good result is offered to :meth:`CheckpointSchedule.consider_best`. A child that dies or
    exceeds ``timeout_s`` is reported as an error result and replaced on the next job, up to
    ``max_restarts`` times. The timeout counts from when the child starts the job, so a fresh
    child's start-up (imports) gets an extra ``startup_s``.
    """

    def __init__(
        self,
        fn: Callable[..., Mapping[str, Any]],
        *,
        kwargs: Mapping[str, Any] | None = None,
        schedule: CheckpointSchedule | None = None,
        timeout_s: float | None = None,
        max_restarts: int = 3,
        startup_s: float = 120.0,
    ) -> None:
        self.fn = fn
        self.startup_s = startup_s
        self.kwargs = dict(kwargs or {})
        self.schedule = schedule
        self.timeout_s = timeout_s
        self.max_restarts = max_restarts
        self.restarts = 0
        self.disabled_reason: str | None = None
        self._ctx = mp.get_context("spawn")
        self._proc: Any = None
        self._jobs: Any = None
        self._results: Any = None
        self._running: _Job | None = None
        self._waiting: _Job | None = None
        self._next_id = 0
        self._snapshots: set[Path] = set()
        self._closed = False

    @property
    def busy(self) -> bool:
        """True while an evaluation runs or waits."""
        return self._running is not None or self._waiting is not None

    def _start(self) -> None:
        self._jobs = self._ctx.Queue()
        self._results = self._ctx.Queue()
        self._proc = self._ctx.Process(
            target=_eval_worker,
            args=(self.fn, self.kwargs, self._jobs, self._results, os.getpid()),
            name="mario-rl-eval",
            daemon=True,
        )
        try:
            self._proc.start()
        except (pickle.PicklingError, AttributeError, TypeError) as e:
            self._proc = None
            raise TypeError(
                f"evaluation function {self.fn!r} or its kwargs cannot be sent to the evaluation process ({e}); "
                "use a module-level function and picklable kwargs"
            ) from None

    def submit(self, checkpoint: str | os.PathLike[str], step: int) -> bool:
        """Queue ``checkpoint`` for evaluation; replaces an older one still waiting.

        Returns False (and does nothing) once evaluation was disabled after repeated crashes.
        """
        if self._closed:
            raise RuntimeError("EvalProcess is closed")
        if self.disabled_reason is not None:
            return False
        source = Path(checkpoint)
        self._next_id += 1
        snapshot = source.parent / ".eval" / f"{source.name}-{self._next_id}"
        snapshot_checkpoint(source, snapshot)
        self._snapshots.add(snapshot)
        if self._waiting is not None:
            self._drop(self._waiting)
        self._waiting = _Job(self._next_id, int(step), source, snapshot)
        self._dispatch()
        return True

    def _dispatch(self) -> None:
        if self._running is not None or self._waiting is None:
            return
        if self._proc is None or not self._proc.is_alive():
            self._stop_process()
            self._start()
        job, self._waiting = self._waiting, None
        job.started = time.monotonic()
        self._jobs.put((job.job_id, job.snapshot))
        self._running = job

    def _drop(self, job: _Job) -> None:
        shutil.rmtree(job.snapshot, ignore_errors=True)
        self._snapshots.discard(job.snapshot)

    def _failed(self, job: _Job, error: str, tb: str | None = None) -> EvalResult:
        return EvalResult(
            job.step, job.source, None, error, time.monotonic() - job.started, traceback=tb
        )

    def _crashed(self, why: str) -> EvalResult:
        job = self._running
        assert job is not None
        self._running = None
        self._stop_process(graceful=False)
        self.restarts += 1
        if self.restarts > self.max_restarts:
            self.disabled_reason = (
                f"evaluation disabled after {self.restarts} failures of the evaluation process"
            )
            why += f"; {self.disabled_reason}"
            if self._waiting is not None:
                self._drop(self._waiting)
                self._waiting = None
        else:
            why += "; a new evaluation process starts with the next checkpoint"
        self._drop(job)
        return self._failed(job, why)

    def poll(self) -> list[EvalResult]:
        """Results that arrived since the last call (never blocks)."""
        out: list[EvalResult] = []
        if self._results is not None:
            while True:
                try:
                    kind, job_id, payload, seconds = self._results.get_nowait()
                except (queue.Empty, EOFError, OSError):
                    break
                if kind == "started":
                    if self._running is not None and self._running.job_id == job_id:
                        self._running.started, self._running.confirmed = time.monotonic(), True
                    continue
                out.extend(self._finish(kind, job_id, payload, seconds))
        job = self._running
        if job is not None and (self._proc is None or not self._proc.is_alive()):
            code = None if self._proc is None else self._proc.exitcode
            out.append(
                self._crashed(
                    f"evaluation process died (exit code {code}) while evaluating {job.source.name} at step {job.step}"
                )
            )
        elif (
            job is not None
            and self.timeout_s is not None
            and time.monotonic() - job.started
            > self.timeout_s + (0.0 if job.confirmed else self.startup_s)
        ):
            out.append(
                self._crashed(
                    f"evaluation of {job.source.name} at step {job.step} exceeded {self.timeout_s:g}s and was stopped"
                )
            )
        self._dispatch()
        return out

    def _finish(self, kind: str, job_id: int, payload: Any, seconds: float) -> list[EvalResult]:
        job = self._running
        if job is None or job.job_id != job_id:
            return []  # a late answer from a process already replaced
        self._running = None
        try:
            if kind == "ok":
                result = EvalResult(job.step, job.source, payload, None, seconds)
                if self.schedule is not None:
                    result.is_best = self.schedule.consider_best(job.snapshot, payload, job.step)
                return [result]
            summary, tb = payload
            return [
                EvalResult(
                    job.step,
                    job.source,
                    None,
                    f"evaluation raised {summary}",
                    seconds,
                    traceback=tb,
                )
            ]
        finally:
            self._drop(job)

    def wait(self, timeout_s: float) -> list[EvalResult]:
        """Poll until nothing is pending or ``timeout_s`` passed (for the end of a run)."""
        deadline = time.monotonic() + timeout_s
        out = self.poll()
        while self.busy and time.monotonic() < deadline:
            time.sleep(0.05)
            out += self.poll()
        return out

    def _stop_process(self, timeout_s: float = 3.0, *, graceful: bool = True) -> None:
        proc, jobs, results = self._proc, self._jobs, self._results
        self._proc = self._jobs = self._results = None
        if proc is not None:
            # Only an idle child reads the stop sentinel; a busy or hung one is terminated.
            if graceful and proc.is_alive() and jobs is not None:
                with contextlib.suppress(Exception):
                    jobs.put(None)
                proc.join(timeout_s / 2)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout_s / 4)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout_s / 4)
            with contextlib.suppress(Exception):
                proc.close()
        for q in (jobs, results):
            if q is not None:
                # Never let interpreter exit wait on a queue whose reader is gone.
                q.cancel_join_thread()
                q.close()

    def close(self, timeout_s: float = 3.0) -> None:
        """Stop the child (gracefully, then terminate, then kill) within about ``timeout_s``."""
        if self._closed:
            return
        self._closed = True
        busy = self._running is not None
        self._running = self._waiting = None
        self._stop_process(timeout_s, graceful=not busy)
        for snap in list(self._snapshots):
            shutil.rmtree(snap, ignore_errors=True)
        self._snapshots.clear()

    def __enter__(self) -> EvalProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
