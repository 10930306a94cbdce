"""The one training loop, whatever the algorithm: ask the trainer for a step, then log, show
progress, checkpoint and evaluate when due, and stop on the step budget, a signal, a failure,
a non-finite value or the clear-rate target.

An algorithm plugs in through :class:`Trainer` (a step returning a :class:`Step`, its state to
save, and what it still has to say once stopped). Under torchrun every rank runs this loop;
only rank 0 (``collective.is_main``) owns the run directory, and every rank leaves at the same
step because the stop decision is agreed through the collective.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Protocol

from mario_rl.config.run import RunConfig
from mario_rl.errors import NonFiniteError
from mario_rl.parallel.collective import Collective
from mario_rl.run.checkpoints import CheckpointSchedule
from mario_rl.run.evaluator import EvalProcess
from mario_rl.run.guards import SignalGuard, check_finite
from mario_rl.run.logger import Logger
from mario_rl.run.progress import PhaseTimer, Progress
from mario_rl.run.rundir import RunDir
from mario_rl.seeding import EVAL_SEED

__all__ = ["Failure", "RunStats", "Step", "Trainer", "run_loop"]

State = tuple[dict[str, Any], dict[str, Any]]


@dataclasses.dataclass
class Failure:
    """Why a run must stop with exit code 1."""

    reason: str
    """Short, for the end-of-run line (e.g. "worker 0 failed")."""
    message: str
    """One line for stderr: what went wrong."""
    keep_weights: bool = True
    """Whether the weights are still good for a final checkpoint (not after a NaN)."""


@dataclasses.dataclass
class Step:
    """What one trainer step produced."""

    metrics: dict[str, float] | None = None
    """A metric row (None: nothing new this step); checked for NaN/inf on rank 0."""
    episodes: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """Finished episodes, counted into the run's flags and best x."""
    log: bool = True
    """Whether ``metrics`` are written this step (PPO logs every ``log_every`` updates)."""
    failure: Failure | None = None


class Trainer(Protocol):
    """An algorithm as the loop drives it."""

    @property
    def global_step(self) -> int:
        """Agent steps so far, over every env, worker and rank."""
        ...

    def start(self) -> None:
        """Begin (e.g. start worker processes); called inside the run's session."""
        ...

    def step(self, stopping: Callable[[], bool]) -> Step:
        """One unit of training; ``stopping()`` says whether a stop signal has arrived."""
        ...

    def stop(self) -> None:
        """Stop whatever runs in the background (called whatever happened)."""
        ...

    def finish(self) -> Step:
        """What the trainer still has to report once stopped (e.g. workers' last messages)."""
        ...

    def state_dict(self) -> State:
        """(tensors, meta) for a checkpoint."""
        ...


@dataclasses.dataclass
class RunStats:
    """Counters that survive a resume: flags reached, the best x over all episodes, and the
    wall-clock seconds spent training in all legs so far (a campaign's hours, without the time
    between sessions)."""

    flags: int = 0
    best_x: int = 0
    train_seconds: float = 0.0

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any] | None) -> RunStats:
        stats = (meta or {}).get("stats", {})
        return cls(
            int(stats.get("flags", 0)),
            int(stats.get("best_x", 0)),
            float(stats.get("train_seconds", 0.0)),
        )

    def add(self, episodes: list[dict[str, Any]]) -> None:
        for ep in episodes:
            self.flags += bool(ep.get("flag"))
            self.best_x = max(self.best_x, int(ep.get("x_max", 0)))


class _Evaluations:
    """When to evaluate (every ``eval_every`` steps: hand a checkpoint to the evaluation
    process), logging the results, and saying when the clear-rate target is reached."""

    def __init__(
        self,
        ev: EvalProcess,
        ckpts: CheckpointSchedule,
        rc: RunConfig,
        start_step: int,
        log: Logger,
        out: IO[str],
    ) -> None:
        self.ev, self.ckpts, self.rc, self.log, self.out = ev, ckpts, rc, log, out
        every = rc.eval_every
        self.next = (start_step // every + 1) * every if every else None
        self.last: str | None = None
        """The latest evaluation's clear rate and step, for the progress line."""
        self.cleared: str | None = None
        """What to say when an evaluation reached the clear-rate target."""

    def after_step(self, step: int, saved: Path | None, make_state: Callable[[], State]) -> None:
        """Submit the checkpoint of ``step`` if an evaluation is due (saving one if need be)."""
        if self.next is None or step < self.next:
            return
        self.next = (step // self.rc.eval_every + 1) * self.rc.eval_every
        path = saved if saved is not None else self.ckpts.save(step, *make_state())
        self.ev.submit(path, step)

    def poll(self) -> str | None:
        """Log finished evaluations; the stop reason once the clear-rate target is reached."""
        return self._handle(self.ev.poll())

    def finish(self, timeout_s: float = 60.0) -> None:
        """Wait for the evaluation in flight (the end of a run) and log it."""
        self._handle(self.ev.wait(timeout_s), quiet=True)

    def _handle(self, results: list, quiet: bool = False) -> str | None:
        stop = None
        for r in results:
            if not r.ok:
                print(f"evaluation failed: {r.error}", file=sys.stderr)
                continue
            metrics: Mapping[str, Any] = r.metrics or {}
            self.log.log(r.step, {f"eval/{k}": v for k, v in metrics.items()})
            if quiet:
                continue
            rate = metrics.get("flag_rate", 0.0)
            print(
                f"eval @ {r.step}: flag_rate {rate:.2f} mean_x {metrics.get('mean_x', 0):.0f}"
                + (" (best)" if r.is_best else ""),
                file=self.out,
            )
            self.last = f"{rate:.0%} @ {r.step:,}"
            if self.rc.stop_at_clear_rate and rate >= self.rc.stop_at_clear_rate:
                # The clearing evaluation is the best one so far unless an earlier one was as good.
                best = self.ckpts.best_path
                kept = f"; best checkpoint {best}" if best.exists() else ""
                self.cleared = (
                    f"cleared: the evaluation of step {r.step:,} reached the flag in {rate:.0%} of"
                    f" its episodes (target {self.rc.stop_at_clear_rate:.0%}){kept}"
                    " (--stop-at-clear-rate 0 trains on past a clear)"
                )
                stop = "stage cleared"
        return stop


def eval_kwargs(stages: str, rc: RunConfig) -> dict[str, Any]:
    """The keyword arguments of the evaluation process's evaluate_checkpoint call."""
    return {
        "stages": stages,
        "episodes": rc.eval_episodes,
        "seed": EVAL_SEED,
        "workers": 1,
        "sample": rc.eval_sample,
    }


@dataclasses.dataclass
class _Rank0:
    """What only rank 0 has: the run directory's writers and the evaluation process."""

    run: RunDir
    ckpts: CheckpointSchedule
    log: Logger
    prog: Progress
    evals: _Evaluations


@contextlib.contextmanager
def _session(
    run: RunDir | None,
    rc: RunConfig,
    stages: str,
    timer: PhaseTimer,
    start_step: int,
    total_steps: int,
    title: str,
    out: IO[str],
) -> Iterator[tuple[SignalGuard, _Rank0 | None]]:
    """The signal guard, and on rank 0 the logger, progress display and evaluation process
    (closed in reverse order whatever happens)."""
    if run is None:
        # torchrun passes a stop on to every rank as SIGTERM: each needs its own guard.
        with SignalGuard(quiet=True) as guard:
            yield guard, None
        return
    from mario_rl.evaluation.policy import evaluate_checkpoint

    ckpts = CheckpointSchedule(
        run.checkpoints, every=rc.checkpoint_every, keep=rc.keep_checkpoints, start_step=start_step
    )
    # The rows at the checkpoint's own step were logged before that checkpoint was written:
    # keep them, drop only what the stopped process logged after it.
    purge = start_step + 1 if rc.resume else None
    with (
        Logger(run, purge_step=purge) as log,
        Progress(
            total_steps,
            start_step=start_step,
            timer=timer,
            title=title,
            stream=out,
            eta_is_bound=bool(rc.stop_at_clear_rate and rc.eval_every),
        ) as prog,
        SignalGuard() as guard,
        EvalProcess(evaluate_checkpoint, kwargs=eval_kwargs(stages, rc), schedule=ckpts) as ev,
    ):
        yield (
            guard,
            _Rank0(run, ckpts, log, prog, _Evaluations(ev, ckpts, rc, start_step, log, out)),
        )


def _final_or_why(main: _Rank0, step: int, make_state: Callable[[], State]) -> str:
    """Write ``final``; say where it is, or why it could not be written."""
    try:
        return f"final checkpoint {main.ckpts.save_final(step, *make_state())}"
    except Exception as e:  # e.g. out of memory: the periodic checkpoints remain
        return f"the final checkpoint could not be written ({e}); the periodic ones remain"


def run_loop(
    trainer: Trainer,
    *,
    run: RunDir | None,
    rc: RunConfig,
    job_record: Mapping[str, Any],
    env_record: Mapping[str, Any],
    stages: str,
    total_steps: int,
    stats: RunStats,
    title: str,
    timer: PhaseTimer,
    collective: Collective,
    out: IO[str] | None = None,
) -> int:
    """Train until done; returns the process exit code (0, or 1 after a failure).

    ``run`` is None on ranks other than 0 (they own nothing on disk).
    """
    # sys.stdout is looked up now, not when this module was imported (tests swap it per test).
    if run is None:
        out = open(os.devnull, "w")  # noqa: SIM115 - the process ends with the run
    elif out is None:
        out = sys.stdout

    start_step = trainer.global_step
    t_start = time.perf_counter()
    earlier_seconds = stats.train_seconds

    def trained_seconds() -> float:
        return earlier_seconds + time.perf_counter() - t_start

    def make_state() -> State:
        tensors, meta = trainer.state_dict()
        meta |= {
            "env_config": dict(env_record),
            "job": dict(job_record),
            "stats": {
                "flags": stats.flags,
                "best_x": stats.best_x,
                "train_seconds": round(trained_seconds(), 1),
            },
        }
        return tensors, meta

    stop_reason = "step budget reached"
    failure: Failure | None = None

    def with_charts(metrics: dict[str, float]) -> dict[str, float]:
        elapsed = time.perf_counter() - t_start
        metrics["charts/SPS"] = (trainer.global_step - start_step) / max(elapsed, 1e-9)
        metrics["charts/flags_total"] = stats.flags
        metrics["charts/best_x"] = stats.best_x
        metrics["charts/train_hours"] = trained_seconds() / 3600
        return metrics

    def checked(step: int, metrics: dict[str, float]) -> Failure | None:
        if run is None:
            return None  # rank 0 checks the merged metrics for everyone
        try:
            check_finite(metrics, step)
        except NonFiniteError as e:
            return Failure("non-finite loss", str(e), keep_weights=False)
        return None

    with _session(run, rc, stages, timer, start_step, total_steps, title, out) as (guard, main):
        trainer.start()
        try:
            while trainer.global_step < total_steps:
                result = trainer.step(lambda: guard.stop_requested)
                if result.failure is not None:
                    failure = result.failure
                    break
                stats.add(result.episodes)
                step = trainer.global_step
                reason = None
                code = 0
                if result.metrics is not None:
                    metrics = with_charts(result.metrics)
                    failure = checked(step, metrics)
                    if failure is None and result.log and main is not None:
                        main.log.log(step, metrics)
                if failure is not None:
                    reason, code = failure.reason, 1
                elif main is not None:
                    main.evals.after_step(step, main.ckpts.maybe_save(step, make_state), make_state)
                    reason = main.evals.poll()
                    evaluated = {"eval": main.evals.last} if main.evals.last else {}
                    main.prog.update(step, best_x=stats.best_x, flags=stats.flags, **evaluated)
                if reason is None and guard.stop_requested:
                    reason = "stop requested (signal)"
                # Every rank leaves the loop at the same step, or the collectives would hang.
                reason, code = collective.agree_stop(reason, code)
                if code and failure is None:
                    failure = Failure(reason or "another rank failed", "", keep_weights=False)
                if reason:
                    stop_reason = reason
                    break
        finally:
            trainer.stop()
        last = trainer.finish()
        if last.failure is not None and (failure is None or not last.failure.keep_weights):
            failure = last.failure
        stats.add(last.episodes)
        step = trainer.global_step
        if last.metrics is not None and (failure is None or failure.keep_weights):
            metrics = with_charts(last.metrics)
            late = checked(step, metrics)
            if late is not None:
                failure = late
            elif main is not None:
                main.log.log(step, metrics)
        if main is not None:
            main.prog.update(step, best_x=stats.best_x, flags=stats.flags)
        if main is None:
            return 1 if failure is not None else 0
        # Said once the live display has closed, so that no line is cut or redrawn over.
        said: list[tuple[str, IO[str]]] = []
        if failure is None:
            final = main.ckpts.save_final(step, *make_state())
            main.evals.finish()
            if main.evals.cleared:
                said.append((main.evals.cleared, out))
            said.append((f"{stop_reason}: final checkpoint {final}", out))
        elif failure.message:
            kept = (
                _final_or_why(main, step, make_state)
                if failure.keep_weights
                else "the last good checkpoint is kept"
            )
            said.append((f"mario-rl: error: {failure.message}; stopped, {kept}", sys.stderr))
    for line, stream in said:
        print(line, file=stream)
    print(f"run directory: {main.run.path}", file=out)
    return 1 if failure is not None else 0
