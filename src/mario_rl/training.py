"""Training runs: the loops that tie an algorithm to :mod:`mario_rl.run`'s pieces.

PPO family: collect → learn → log → checkpoint/evaluate, in this process. A3G: the worker
processes train; this process reads their messages, logs, checkpoints the shared model and
evaluates it. Both stop at the step budget, a stop request (Ctrl-C, SIGTERM) or the target clear
rate. Algorithm internals stay in ``algos/``; run directory, logging, progress, signals,
checkpoints and the evaluation process come from :mod:`mario_rl.run`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from . import distributed
from .algos.ppo import PPO
from .config import RunConfig
from .config.a3g import A3GConfig
from .config.ppo import PPOConfig
from .devices import check_device
from .envs import EnvConfig, make_vector_env, parse_stages
from .evaluation.policy import evaluate_checkpoint
from .io.checkpoint import load_checkpoint
from .rl.stats import episode_metrics
from .run.checkpoints import CheckpointSchedule
from .run.evaluator import EvalProcess, one_line
from .run.guards import NonFiniteError, SignalGuard, check_finite
from .run.logger import Logger
from .run.progress import PhaseTimer, Progress
from .run.rundir import RunDir

EVAL_SEED = 1_000_003
"""Seed of the evaluation episodes' no-op starts (a stream training never draws from)."""


@dataclasses.dataclass
class TrainJob:
    """Everything a PPO-family run is made of."""

    env: EnvConfig
    ppo: PPOConfig
    run: RunConfig
    workers: int = 2
    """Env threads stepping the emulators."""
    command: str = ""

    @property
    def algo(self) -> str:
        return self.ppo.algo

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record (config.json and checkpoints)."""
        return {
            "algo": self.ppo.algo,
            "command": self.command,
            "workers": self.workers,
            "env": self.env.to_dict(),
            "ppo": self.ppo.to_dict(),
            "run": dataclasses.asdict(self.run),
        }


@dataclasses.dataclass
class A3GJob:
    """Everything an A3G run is made of."""

    env: EnvConfig
    a3g: A3GConfig
    run: RunConfig
    command: str = ""

    @property
    def algo(self) -> str:
        return "a3g"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record (config.json and checkpoints)."""
        return {
            "algo": "a3g",
            "command": self.command,
            "env": self.env.to_dict(),
            "a3g": self.a3g.to_dict(),
            "run": dataclasses.asdict(self.run),
        }


def _resume_job(job: Any, run: RunDir, total_steps: int | None) -> Any:
    """The saved job of a run being resumed (a new --total-steps may extend it)."""
    saved = run.saved_config()
    if saved.get("algo", "ppo") != job.algo and "a3g" in (saved.get("algo"), job.algo):
        raise ValueError(
            f"{run.path} is a {saved.get('algo')!r} run; resume it with --algo {saved.get('algo')}"
        )
    env = EnvConfig.from_dict(saved["env"])
    runc = dataclasses.replace(
        job.run, **{k: v for k, v in saved["run"].items() if k not in ("resume", "run_dir")}
    )
    if isinstance(job, A3GJob):
        a3g = A3GConfig.from_dict(saved["a3g"])
        if total_steps is not None:
            a3g.total_steps = total_steps
        return A3GJob(env, a3g, runc, job.command)
    ppo = PPOConfig.from_dict(saved["ppo"])
    if total_steps is not None:
        ppo.total_steps = total_steps
    return TrainJob(env, ppo, runc, int(saved.get("workers", job.workers)), job.command)


def _open_run(job: Any, total_steps_given: int | None) -> tuple[RunDir, Any, Path | None]:
    """The run directory (new, or resumed with its saved job) and the checkpoint to resume from."""
    run = RunDir.open(
        job.run.run_dir or None,
        algo=job.algo,
        stages=job.env.stages,
        resume=job.run.resume,
        config=None if job.run.resume else job.to_dict(),
    )
    latest = None
    if job.run.resume:
        job = _resume_job(job, run, total_steps_given)
        latest = run.latest_checkpoint()
    return run, job, latest


class _Evaluations:
    """Evaluation on a step schedule: hand a checkpoint to the evaluation process every
    ``eval_every`` steps, log the results, and say when the clear-rate target is reached."""

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

    def after_step(
        self, step: int, saved: Path | None, make_state: Callable[[], tuple[dict, dict]]
    ) -> None:
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
            if self.rc.stop_at_clear_rate and rate >= self.rc.stop_at_clear_rate:
                stop = f"evaluation clear rate {rate:.2f} reached"
        return stop


@contextlib.contextmanager
def _session(
    job: Any,
    run: RunDir,
    ckpts: CheckpointSchedule,
    timer: PhaseTimer,
    start_step: int,
    total_steps: int,
    title: str,
    out: IO[str],
) -> Iterator[tuple[Logger, Progress, SignalGuard, _Evaluations]]:
    """What every training loop runs inside: logger, progress display, signal guard and the
    evaluation process (closed in reverse order whatever happens)."""
    rc = job.run
    # The rows at the checkpoint's own step were logged before that checkpoint was written:
    # keep them, drop only what the stopped process logged after it.
    purge = start_step + 1 if rc.resume else None
    with (
        Logger(run, purge_step=purge) as log,
        Progress(total_steps, start_step=start_step, timer=timer, title=title, stream=out) as prog,
        SignalGuard() as guard,
        EvalProcess(
            evaluate_checkpoint, kwargs=_eval_kwargs(job.env.stages, rc), schedule=ckpts
        ) as ev,
    ):
        yield log, prog, guard, _Evaluations(ev, ckpts, rc, start_step, log, out)


def _open_and_load(job: Any, total_steps_given: int | None) -> tuple[tuple, tuple]:
    """((run dir, latest checkpoint path), (job, loaded checkpoint or None))."""
    run, job, latest = _open_run(job, total_steps_given)
    return (run, latest), (job, load_checkpoint(latest) if latest is not None else None)


def train(
    job: TrainJob,
    total_steps_given: int | None = None,
    out=sys.stdout,
    dist: distributed.Distributed | None = None,
) -> int:
    """Run (or resume) a PPO-family training job; returns the process exit code.

    With ``dist`` (under torchrun) this is one data-parallel rank: rank 0 alone opens the run
    directory, logs, evaluates and checkpoints; the others train with its job and checkpoint."""
    job.env.validate()
    job.ppo.validate()
    job.run.validate()
    parse_stages(job.env.stages)
    check_device(job.ppo.device)  # before the run directory exists
    opened = lambda: _open_and_load(job, total_steps_given)  # noqa: E731
    kept, (job, checkpoint) = opened() if dist is None else dist.from_main(opened)
    run, latest = kept if kept is not None else (None, None)  # ranks other than 0: no run dir
    main = dist is None or dist.is_main
    if not main:
        out = open(os.devnull, "w")  # noqa: SIM115 - the process ends with the run
    job.ppo.validate()
    cfg, env_cfg, rc = job.ppo, job.env, job.run
    if dist is not None:
        cfg = dist.rank_config(cfg)

    envs = make_vector_env(env_cfg, num_envs=cfg.num_envs, workers=job.workers, seed=cfg.seed)
    ppo = PPO(cfg, envs)
    if dist is not None:
        dist.attach(ppo)
    flags = 0
    best_x = 0
    if checkpoint is not None:
        tensors, meta = checkpoint
        ppo.load_state_dict(tensors, meta)
        if dist is not None:
            dist.after_resume(ppo)
        flags = int(meta.get("stats", {}).get("flags", 0))
        best_x = int(meta.get("stats", {}).get("best_x", 0))
        # Fresh episodes after a resume: a seed that the run has not used yet.
        ppo.reset_envs(cfg.seed + 7919 * ppo.update)
        if main:
            print(f"resumed {run.path} from {latest.name} at step {ppo.global_step}", file=out)

    def make_state() -> tuple[dict, dict]:
        tensors, meta = ppo.state_dict()
        meta |= {
            "env_config": env_cfg.to_dict(),
            "job": job.to_dict(),
            "stats": {"flags": flags, "best_x": best_x},
        }
        return tensors, meta

    start_step = ppo.global_step
    ckpts = (
        CheckpointSchedule(
            run.checkpoints,
            every=rc.checkpoint_every,
            keep=rc.keep_checkpoints,
            start_step=start_step,
        )
        if main
        else distributed.NOTHING
    )
    timer = PhaseTimer()
    code = 0
    stop_reason = "step budget reached"
    t_start = time.perf_counter()
    title = f"{cfg.algo} {env_cfg.stages}" + (f" x{dist.world_size} ranks" if dist else "")
    with (
        _session(job, run, ckpts, timer, start_step, cfg.total_steps, title, out)
        if main
        else distributed.follower_session()
    ) as (log, prog, guard, evals):
        while ppo.global_step < cfg.total_steps:
            if guard.stop_requested and dist is None:
                stop_reason = "stop requested (signal)"
                break
            try:
                metrics = ppo.collect()
            except Exception as e:  # an env worker thread raised: stop now, never hang
                code, stop_reason = 1, _env_failed(e, ckpts, ppo.global_step, make_state)
                break
            timer.add("env", metrics.get("time/env", 0.0))
            timer.add(
                "inference", metrics.get("time/inference", 0.0) + metrics.get("time/rnd", 0.0)
            )
            t0 = time.perf_counter()
            metrics |= ppo.learn()
            timer.add("learn", time.perf_counter() - t0)
            step = ppo.global_step
            episodes = ppo.episodes
            if dist is not None:
                # Rank 0 logs every rank's episodes and the metrics averaged over the ranks.
                metrics, episodes = dist.merge_update(metrics, episodes, ppo.restored_episodes)
            for ep in episodes:
                flags += bool(ep.get("flag"))
                best_x = max(best_x, int(ep.get("x_max", 0)))
            elapsed = time.perf_counter() - t_start
            metrics["charts/SPS"] = (step - start_step) / max(elapsed, 1e-9)
            metrics["charts/flags_total"] = flags
            metrics["charts/best_x"] = best_x
            reason = None
            try:
                if main:
                    check_finite(metrics, step)
            except NonFiniteError as e:
                _report_non_finite(e)
                code, reason = 1, "non-finite loss"
            if code == 0:
                if ppo.update % rc.log_every == 0:
                    log.log(step, metrics)
                prog.update(step, best_x=best_x, flags=flags)
                evals.after_step(step, ckpts.maybe_save(step, make_state), make_state)
                reason = evals.poll()
            if dist is not None:
                if reason is None and guard.stop_requested:
                    reason = "stop requested (signal)"
                # Every rank leaves the loop at the same update, or the collectives would hang.
                reason, code = dist.agree_stop(reason, code)
            if reason:
                stop_reason = reason
                break
        if code == 0:
            final = ckpts.save_final(ppo.global_step, *make_state())
            evals.finish()
            print(f"{stop_reason}: final checkpoint {final}", file=out)
    ppo.close()
    envs.close()
    if main:
        print(f"run directory: {run.path}", file=out)
    return code


def _eval_kwargs(stages: str, rc: RunConfig) -> dict[str, Any]:
    return {
        "stages": stages,
        "episodes": rc.eval_episodes,
        "seed": EVAL_SEED,
        "workers": 1,
        "sample": rc.eval_sample,
    }


def _env_failed(
    e: BaseException,
    ckpts: Any,
    step: int,
    make_state: Callable[[], tuple[dict, dict]],
) -> str:
    """Report an environment failure in one line (traceback first) and keep the weights:
    the failed rollout never reached learn(), so the model is the last update's."""
    import traceback

    traceback.print_exception(e, file=sys.stderr)
    summary = one_line(e)
    try:
        kept = f"final checkpoint {ckpts.save_final(step, *make_state())}"
    except Exception as save_error:  # e.g. out of memory: the periodic checkpoints remain
        kept = f"the final checkpoint could not be written ({save_error}); the periodic ones remain"
    print(
        f"mario-rl: error: an environment worker failed: {summary}; stopped, {kept}",
        file=sys.stderr,
    )
    return "environment worker failed"


def _report_non_finite(e: NonFiniteError) -> None:
    print(f"mario-rl: error: {e}; stopped, the last good checkpoint is kept", file=sys.stderr)


# -- A3G -------------------------------------------------------------------------------------------
class _A3GStats:
    """Worker messages folded into one metric row per log interval (means over the interval)."""

    def __init__(self, flags: int = 0, best_x: int = 0) -> None:
        self.flags = flags
        self.best_x = best_x
        self.errors: list[tuple[int, str, str]] = []
        self.nonfinite: list[str] = []
        """A worker's update gave NaN/inf (it did not apply it, and stopped)."""
        self.exited: set[int] = set()
        self._clear()

    def _clear(self) -> None:
        self.episodes: list[dict[str, Any]] = []
        self.restored: list[dict[str, Any]] = []
        self.sums: dict[str, float] = defaultdict(float)
        self.updates = 0

    def add(self, messages: list[tuple], timer: PhaseTimer) -> None:
        for msg in messages:
            kind, rank = msg[0], msg[1]
            if kind == "episode" and msg[2].get("restored"):
                # Begun from a saved progress state (EnvConfig.progress_starts): counted apart,
                # so that they do not inflate the stage's flag rate and x.
                self.restored.append(msg[2])
            elif kind == "episode":
                ep = msg[2]
                self.episodes.append(ep)
                self.flags += bool(ep.get("flag"))
                self.best_x = max(self.best_x, int(ep.get("x_max", 0)))
            elif kind == "update":
                self.updates += 1
                for k, v in msg[2].items():
                    self.sums[k] += float(v)
                for phase in ("env", "inference", "learn", "sync"):
                    timer.add(phase, msg[2].get(f"time/{phase}", 0.0))
            elif kind == "error":
                self.errors.append((rank, msg[2], msg[3]))
            elif kind == "nonfinite":
                self.nonfinite.append(msg[2])
            elif kind == "exit":
                self.exited.add(rank)

    def has_news(self) -> bool:
        """Whether an update or an episode arrived since the last row."""
        return bool(self.updates or self.episodes or self.restored)

    def row(self) -> dict[str, float]:
        """The metrics of the interval since the last row (then start a new interval)."""
        m: dict[str, float] = {"charts/flags_total": self.flags, "charts/best_x": self.best_x}
        if self.updates:
            n = self.updates
            for k in ("losses/policy", "losses/value", "losses/entropy", "losses/loss",
                      "debug/grad_norm", "charts/lr"):  # fmt: skip
                if k in self.sums:
                    m[k] = self.sums[k] / n
            steps = max(self.sums["steps"], 1.0)
            m["charts/reward_per_step"] = self.sums["reward_sum"] / steps
            for k, v in self.sums.items():
                if k.startswith("rewards/"):
                    m[k] = v / steps
            m["charts/updates"] = float(n)
        m |= episode_metrics(self.episodes, self.restored)
        self._clear()
        return m


def train_a3g(job: A3GJob, total_steps_given: int | None = None, out=sys.stdout) -> int:
    """Run (or resume) an A3G job; returns the process exit code."""
    from .algos.a3g import A3G, check_devices, plan_workers, train_stages_spec, train_stages_warning

    job.env.validate()
    job.a3g.validate()
    job.run.validate()
    if job.a3g.train_stages:
        # The workers' stages are set per rank; the record and the evaluations use what they cover.
        job.env.stages = train_stages_spec(job.a3g.workers)
    parse_stages(job.env.stages)
    check_devices(job.a3g.gpu_ids)
    plan_workers(job.a3g, job.env.stages)  # refuse a curriculum with no worker before any file
    run, job, latest = _open_run(job, total_steps_given)
    job.a3g.validate()
    cfg, env_cfg, rc = job.a3g, job.env, job.run
    warning = train_stages_warning(cfg.workers, cfg.train_stages)
    if warning:
        print(f"mario-rl: warning: {warning}", file=sys.stderr)

    a3g = A3G(cfg, env_cfg)
    stats = _A3GStats()
    if latest is not None:
        tensors, meta = load_checkpoint(latest)
        a3g.load_state_dict(tensors, meta)
        stats.flags = int(meta.get("stats", {}).get("flags", 0))
        stats.best_x = int(meta.get("stats", {}).get("best_x", 0))
        print(f"resumed {run.path} from {latest.name} at step {a3g.global_step}", file=out)

    def make_state() -> tuple[dict, dict]:
        tensors, meta = a3g.state_dict()
        meta |= {
            "env_config": env_cfg.to_dict(),
            "job": job.to_dict(),
            "stats": {"flags": stats.flags, "best_x": stats.best_x},
        }
        return tensors, meta

    start_step = a3g.global_step
    ckpts = CheckpointSchedule(
        run.checkpoints, every=rc.checkpoint_every, keep=rc.keep_checkpoints, start_step=start_step
    )
    timer = PhaseTimer()
    code = 0
    stop_reason = "step budget reached"
    t_start = time.perf_counter()
    last_row = t_start
    with _session(
        job,
        run,
        ckpts,
        timer,
        start_step,
        cfg.total_steps,
        f"a3g {env_cfg.stages} x{cfg.workers}",
        out,
    ) as (log, prog, guard, evals):
        a3g.start()
        try:
            while True:
                messages = a3g.poll(0.2)
                a3g.record(messages)
                stats.add(messages, timer)
                # Before any checkpoint of this round: a NaN stops the run with the last good one.
                if stats.nonfinite:
                    _report_a3g_non_finite(stats.nonfinite[0])
                    code, stop_reason = 1, "non-finite loss"
                    break
                # A stop signal sent to the whole process group may kill workers too: not a crash.
                dead = [] if guard.stop_requested else a3g.dead()
                if dead:
                    _report_dead_worker(*dead[0])
                    code, stop_reason = 1, f"worker {dead[0][0]} died"
                    break
                step = a3g.global_step
                now = time.perf_counter()
                if now - last_row >= cfg.log_interval_s and stats.has_news():
                    if not _log_a3g_row(log, stats, a3g, step, start_step, now - t_start):
                        code, stop_reason = 1, "non-finite loss"
                        break
                    last_row = now
                prog.update(step, best_x=stats.best_x, flags=stats.flags)
                evals.after_step(step, ckpts.maybe_save(step, make_state), make_state)
                reason = evals.poll()
                if reason:
                    stop_reason = reason
                    break
                if stats.errors:
                    rank, summary, _tb = stats.errors[0]
                    print(f"mario-rl: error: A3G worker {rank} failed: {summary}", file=sys.stderr)
                    code, stop_reason = 1, f"worker {rank} failed"
                    break
                if guard.stop_requested:
                    stop_reason = "stop requested (signal)"
                    break
                if a3g.global_step >= cfg.total_steps:
                    break
                if len(stats.exited) == cfg.workers or not a3g.alive():
                    code, stop_reason = 1, "every worker exited"
                    print("mario-rl: error: every A3G worker exited early", file=sys.stderr)
                    break
        finally:
            last = a3g.stop()
        stats.add(last, timer)
        for rank, summary, tb in stats.errors:
            if code == 0:
                print(f"mario-rl: error: A3G worker {rank} failed: {summary}", file=sys.stderr)
                code = 1
            print(tb, file=sys.stderr)
        if stats.nonfinite and stop_reason != "non-finite loss":
            _report_a3g_non_finite(stats.nonfinite[0])
            stop_reason = "non-finite loss"
        step = a3g.global_step
        finite = _log_a3g_row(log, stats, a3g, step, start_step, time.perf_counter() - t_start)
        prog.update(step, best_x=stats.best_x, flags=stats.flags)
        if finite and stop_reason != "non-finite loss":
            # A crashed worker leaves the shared weights intact: keep them as well.
            final = ckpts.save_final(step, *make_state())
            evals.finish()
            print(f"{stop_reason}: final checkpoint {final}", file=out)
        else:
            code = 1
    print(f"run directory: {run.path}", file=out)
    return code


def _report_a3g_non_finite(message: str) -> None:
    print(f"mario-rl: error: {message}; stopped, the last good checkpoint is kept", file=sys.stderr)


def _report_dead_worker(rank: int, exitcode: int) -> None:
    import signal

    how = f"exit code {exitcode}"
    if exitcode < 0:
        with contextlib.suppress(ValueError):
            how = f"killed by {signal.Signals(-exitcode).name}"
    print(
        f"mario-rl: error: A3G worker {rank} died ({how}) without reporting an error; "
        "stopped the others (out of memory? see the system log); the shared weights are kept",
        file=sys.stderr,
    )


def _log_a3g_row(
    log: Logger, stats: _A3GStats, a3g: Any, step: int, start_step: int, elapsed: float
) -> bool:
    """Write one metric row; False (and nothing written) when a value is not finite."""
    row = stats.row()
    row["charts/SPS"] = (step - start_step) / max(elapsed, 1e-9)
    if a3g.curriculum is not None:
        weights = a3g.curriculum.weights()
        total = sum(weights.values())
        row |= {f"curriculum/{s}": w / total for s, w in weights.items()}
    try:
        check_finite(row, step)
    except NonFiniteError as e:
        _report_non_finite(e)
        return False
    log.log(step, row)
    return True
