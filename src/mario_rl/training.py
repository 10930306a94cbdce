"""Training jobs: what a PPO-family or A3G run is made of, how a resumed run gets its saved job
back, and how each algorithm plugs into the one loop (:func:`mario_rl.run.loop.run_loop`).

PPO family: each step is collect → learn, in this process (under torchrun, one data-parallel
rank). A3G: the worker processes train; each step folds their messages for one log interval.
Algorithm internals stay in ``algos/``; logging, progress, signals, checkpoints, evaluation and
the stop decision live once, in :mod:`mario_rl.run`.
"""

from __future__ import annotations

import contextlib
import sys
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from .algos.a3g_worker import EpisodeMsg, ErrorMsg, ExitMsg, NonFiniteMsg, UpdateMsg, WorkerMessage
from .algos.ppo import PPO
from .algos.ppo_family import make_ppo
from .algos.teachers import Teachers, load_teachers
from .config.a3g import A3GConfig
from .config.jobs import A3GJob, TrainJob, with_last_guidance
from .devices import check_device, set_threads
from .envs import EnvConfig, make_vector_env, parse_stages
from .envs.actions import action_meanings
from .envs.demos import demo_pairs, demo_paths
from .errors import one_line
from .io.checkpoint import load_checkpoint, policy_weights
from .models import ModelSpec, build_model, model_spec
from .parallel.collective import LOCAL, Collective
from .rl.stats import episode_metrics
from .run.loop import Failure, RunStats, Step, Trainer, run_loop
from .run.progress import PhaseTimer
from .run.rundir import RunDir
from .seeding import resume_seed

ResumeFlags = Mapping[str, Mapping[str, Any]] | None
"""The options set on a resuming command line, by part (see ``TrainJob.resumed``)."""


def _open_run(
    job: Any, total_steps_given: int | None, given: ResumeFlags = None
) -> tuple[RunDir, Any, Path | None]:
    """The run directory (new, or resumed with its saved job and the options ``given`` on the
    command line that may change, see ``TrainJob.resumed``) and the checkpoint to resume from."""
    run = RunDir.open(
        job.run.run_dir or None,
        algo=job.algo,
        stages=job.env.stages,
        resume=job.run.resume,
        config=None if job.run.resume else job.to_dict(),
    )
    latest = None
    if job.run.resume:
        given = with_last_guidance(given, run.last_config())
        job = job.resumed(run.path, run.saved_config(), total_steps_given, given)
        latest = run.latest_checkpoint()
    return run, job, latest


def _open_and_load(
    job: Any, total_steps_given: int | None, given: ResumeFlags = None
) -> tuple[tuple, tuple]:
    """((run dir, latest checkpoint path), (job, loaded checkpoint or None))."""
    run, job, latest = _open_run(job, total_steps_given, given)
    return (run, latest), (job, load_checkpoint(latest) if latest is not None else None)


def _resumed(
    run: RunDir | None, latest: Path | None, step: int, out: IO[str] | None, job: Any
) -> None:
    """Once a checkpoint has been restored: record this leg's settings (config.resume-N.json when
    they differ from the original; nothing is written for a resume refused before this) and say
    where the run continues."""
    if run is not None and latest is not None:
        run.write_config(job.to_dict())
        print(f"resumed {run.path} from {latest.name} at step {step}", file=out)


def _initial_weights(job: Any, cfg: Any) -> dict[str, Any] | None:
    """The network weights ``--init-from`` names, checked against the model this job builds
    (a one-line ValueError otherwise, raised before any file is written); None without it."""
    path = job.run.init_from
    if not path:
        return None
    # A CheckpointError (one line) for anything that is not a checkpoint; never runs code.
    tensors, meta = load_checkpoint(path)
    env = job.env
    need = model_spec(cfg, (env.frame_stack, env.size, env.size), len(action_meanings(env.actions)))
    try:
        need.check_compatible(ModelSpec.from_dict(meta.get("model_spec") or {}))
        weights = policy_weights(tensors)
        build_model(need).load_state_dict(weights, strict=True)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        first = " ".join(str(e).split())[:300] or type(e).__name__
        raise ValueError(
            f"--init-from {path}: its network does not fit this run ({first}); start from a"
            " checkpoint trained with the same --algo family, --network, --size, --actions and"
            " --lstm-hidden"
        ) from None
    return weights


# -- PPO family ------------------------------------------------------------------------------------
class _PPOSteps:
    """PPO as the loop drives it: one step is collect → learn, merged over the ranks."""

    def __init__(self, ppo: PPO, timer: PhaseTimer, log_every: int) -> None:
        self.ppo, self.timer, self.log_every = ppo, timer, log_every

    @property
    def global_step(self) -> int:
        return self.ppo.global_step

    def start(self) -> None:
        pass

    def step(self, stopping: Callable[[], bool]) -> Step:
        ppo = self.ppo
        try:
            metrics = ppo.collect()
        except Exception as e:  # an env worker thread raised: stop now, never hang
            # The failed rollout never reached learn(): the model is the last update's, keep it.
            traceback.print_exception(e, file=sys.stderr)
            return Step(
                failure=Failure(
                    "environment worker failed", f"an environment worker failed: {one_line(e)}"
                )
            )
        self.timer.add("env", metrics.get("time/env", 0.0))
        self.timer.add(
            "inference", metrics.get("time/inference", 0.0) + metrics.get("time/rnd", 0.0)
        )
        t0 = time.perf_counter()
        metrics |= ppo.learn()
        self.timer.add("learn", time.perf_counter() - t0)
        # Rank 0 logs every rank's episodes and the metrics averaged over the ranks.
        metrics, episodes = ppo.collective.merge_update(
            metrics, ppo.episodes, ppo.restored_episodes
        )
        return Step(metrics, episodes, log=ppo.update % self.log_every == 0)

    def stop(self) -> None:
        pass

    def finish(self) -> Step:
        return Step()

    def state_dict(self) -> tuple[dict, dict]:
        return self.ppo.state_dict()


def _teachers(job: TrainJob) -> Teachers | None:
    """The frozen teachers ``job`` names, checked against its stages and model (one-line
    ValueError otherwise); None without any."""
    env = job.env
    return load_teachers(
        job.ppo.teachers,
        env,
        (env.frame_stack, env.size, env.size),
        len(action_meanings(env.actions)),
    )


def _demo_pairs(env: EnvConfig) -> tuple[np.ndarray, np.ndarray]:
    """Every demo's (observation, action) pairs, for behaviour cloning (``PPOConfig.demo_bc``)."""
    pairs = [demo_pairs(path, env) for path in demo_paths(env.demos, env.stages)]
    return np.concatenate([o for o, _ in pairs]), np.concatenate([a for _, a in pairs])


def train(
    job: TrainJob,
    total_steps_given: int | None = None,
    out: IO[str] | None = None,
    collective: Collective = LOCAL,
    given: ResumeFlags = None,
) -> int:
    """Run (or resume) a PPO-family training job; returns the process exit code.

    Under torchrun (``collective`` a :class:`mario_rl.parallel.distributed.Distributed`) this is
    one data-parallel rank: rank 0 alone opens the run directory, logs, evaluates and
    checkpoints; the others train with its job and checkpoint. ``job`` is validated where it was
    built (:func:`mario_rl.cli.train_job`); a resumed run's saved job by ``TrainJob.resumed``."""
    check_device(job.ppo.device)  # before the run directory exists
    _check_obs_fits(job.ppo, job.env)
    init = None if job.run.resume else _initial_weights(job, job.ppo)
    # A new run's teachers are checked before its directory exists; a resumed run's against its
    # saved stages and the teachers it keeps or is given (opening it to resume writes nothing).
    resuming = job.run.resume
    teachers = None if resuming else _teachers(job)
    kept, (job, checkpoint) = collective.from_main(
        lambda: _open_and_load(job, total_steps_given, given)
    )
    if resuming:
        teachers = _teachers(job)
    run, latest = kept if kept is not None else (None, None)  # ranks other than 0: no run dir
    cfg = collective.rank_config(job.ppo)

    set_threads(cfg.torch_threads)  # this process's learner threads (collection sets its own)
    envs = make_vector_env(job.env, num_envs=cfg.num_envs, workers=job.workers, seed=cfg.seed)
    ppo = make_ppo(cfg, envs, collective=collective)
    ppo.set_teachers(teachers)
    if job.ppo.demo_bc:
        ppo.set_demos(*_demo_pairs(job.env))
    meta = None
    if checkpoint is not None:
        tensors, meta = checkpoint
        ppo.load_state_dict(tensors, meta)
        # Fresh episodes after a resume: a seed that the run has not used yet.
        ppo.reset_envs(resume_seed(cfg.seed, ppo.update))
        _resumed(run, latest, ppo.global_step, out, job)
    else:
        # A resumed run that never saved a checkpoint starts over from its recorded --init-from.
        init = init if init is not None else _initial_weights(job, cfg)
        if init is not None:
            ppo.model.load_state_dict(init)
    timer = PhaseTimer()
    ranks = collective.world_size
    title = f"{cfg.algo} {job.env.stages}" + (f" x{ranks} ranks" if ranks > 1 else "")
    try:
        return _run(_PPOSteps(ppo, timer, job.run.log_every), job, cfg.total_steps, run, meta,
                    title, timer, collective, out)  # fmt: skip
    finally:
        ppo.close()
        envs.close()


def _check_obs_fits(cfg: Any, env: Any) -> None:
    """ValueError (one line) before any file is written if the observations are too small for
    the encoder (building one is milliseconds)."""
    build_model(cfg, (env.frame_stack, env.size, env.size), 2)


def _run(
    trainer: Trainer,
    job: Any,
    total_steps: int,
    run: RunDir | None,
    meta: dict[str, Any] | None,
    title: str,
    timer: PhaseTimer,
    collective: Collective,
    out: IO[str] | None,
) -> int:
    """Hand a built trainer of ``job`` to the one loop."""
    return run_loop(
        trainer,
        run=run,
        rc=job.run,
        job_record=job.to_dict(),
        env_record=job.env.to_dict(),
        stages=job.env.stages,
        total_steps=total_steps,
        stats=RunStats.from_meta(meta),
        title=title,
        timer=timer,
        collective=collective,
        out=out,
    )


# -- A3G -------------------------------------------------------------------------------------------
class _A3GStats:
    """Worker messages folded into one metric row per log interval (means over the interval)."""

    def __init__(self) -> None:
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

    def add(self, messages: list[WorkerMessage], timer: PhaseTimer) -> None:
        for msg in messages:
            if isinstance(msg, EpisodeMsg) and msg.record.get("restored"):
                # Begun from a saved progress state (EnvConfig.progress_starts): counted apart,
                # so that they do not inflate the stage's flag rate and x.
                self.restored.append(msg.record)
            elif isinstance(msg, EpisodeMsg):
                self.episodes.append(msg.record)
            elif isinstance(msg, UpdateMsg):
                self.updates += 1
                for k, v in msg.metrics.items():
                    self.sums[k] += float(v)
                for phase in ("env", "inference", "learn", "sync"):
                    timer.add(phase, msg.metrics.get(f"time/{phase}", 0.0))
            elif isinstance(msg, ErrorMsg):
                self.errors.append((msg.rank, msg.summary, msg.traceback))
            elif isinstance(msg, NonFiniteMsg):
                self.nonfinite.append(msg.message)
            elif isinstance(msg, ExitMsg):
                self.exited.add(msg.rank)

    def has_news(self) -> bool:
        """Whether an update or an episode arrived since the last row."""
        return bool(self.updates or self.episodes or self.restored)

    def row(self) -> dict[str, float]:
        """The metrics of the interval since the last row (then start a new interval)."""
        m: dict[str, float] = {}
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


class _A3GSteps:
    """A3G as the loop drives it: one step folds the workers' messages of about 0.2 s, and
    yields a metric row once per ``log_interval_s``."""

    def __init__(self, a3g: Any, cfg: A3GConfig, timer: PhaseTimer) -> None:
        self.a3g, self.cfg, self.timer = a3g, cfg, timer
        self.stats = _A3GStats()
        self.last_row = time.perf_counter()

    @property
    def global_step(self) -> int:
        return self.a3g.global_step

    def start(self) -> None:
        self.a3g.start()

    def _take(self, messages: list[WorkerMessage]) -> list[dict[str, Any]]:
        """Fold messages in; the episodes that finished among them."""
        before = len(self.stats.episodes)
        self.a3g.record(messages)
        self.stats.add(messages, self.timer)
        return self.stats.episodes[before:]

    def step(self, stopping: Callable[[], bool]) -> Step:
        stats = self.stats
        episodes = self._take(self.a3g.poll(0.2))
        # Before any checkpoint of this round: a NaN stops the run with the last good one.
        if stats.nonfinite:
            return Step(failure=Failure("non-finite loss", stats.nonfinite[0], keep_weights=False))
        # A stop signal sent to the whole process group may kill workers too: not a crash.
        dead = [] if stopping() else self.a3g.dead()
        if dead:
            rank, code = dead[0]
            return Step(failure=Failure(f"worker {rank} died", _dead_worker(rank, code)))
        if stats.errors:
            rank, summary, _tb = stats.errors[0]
            return Step(
                failure=Failure(f"worker {rank} failed", f"A3G worker {rank} failed: {summary}")
            )
        # A worker stuck in an env step sends nothing and never sees the stop event: end it.
        hung = [] if stopping() else self.a3g.hung()
        if hung:
            self.a3g.terminate([rank for rank, _s, _heard in hung])
            rank, silent, heard = hung[0]
            return Step(failure=Failure(f"worker {rank} hung", _hung_worker(rank, silent, heard)))
        # Workers exit on their own once the budget is reached: only earlier is that a failure.
        done = self.a3g.global_step >= self.cfg.total_steps
        if not done and (len(stats.exited) == self.cfg.workers or not self.a3g.alive()):
            return Step(failure=Failure("every worker exited", "every A3G worker exited early"))
        now = time.perf_counter()
        row = None
        if now - self.last_row >= self.cfg.log_interval_s and stats.has_news():
            row = self._row()
            self.last_row = now
        return Step(row, episodes)

    def _row(self) -> dict[str, float]:
        row = self.stats.row()
        if self.a3g.curriculum is not None:
            row |= {f"curriculum/{s}": w for s, w in self.a3g.curriculum.shares().items()}
            row["curriculum/stages_open"] = float(self.a3g.curriculum.opened)
        return row

    def stop(self) -> None:
        self.last = self.a3g.stop()

    def finish(self) -> Step:
        """The workers' last messages: their row, and any failure they reported meanwhile."""
        stats = self.stats
        episodes = self._take(self.last)
        failure = None
        for _rank, _summary, tb in stats.errors:
            print(tb, file=sys.stderr)
        if stats.nonfinite:
            failure = Failure("non-finite loss", stats.nonfinite[0], keep_weights=False)
        elif stats.errors:
            rank, summary, _tb = stats.errors[0]
            failure = Failure(f"worker {rank} failed", f"A3G worker {rank} failed: {summary}")
        return Step(self._row(), episodes, failure=failure)

    def state_dict(self) -> tuple[dict, dict]:
        return self.a3g.state_dict()


def train_a3g(
    job: A3GJob,
    total_steps_given: int | None = None,
    out: IO[str] | None = None,
    given: ResumeFlags = None,
) -> int:
    """Run (or resume) a validated A3G job (see :func:`train`); returns the process exit code."""
    from .algos.a3g import A3G
    from .algos.a3g_stages import plan_workers, train_stages_note, train_stages_spec
    from .devices import check_devices

    if job.a3g.train_stages:
        # The workers' stages are set per rank; the record and the evaluations use what they cover.
        job.env.stages = train_stages_spec(job.a3g.workers)
    parse_stages(job.env.stages)
    check_devices(job.a3g.gpu_ids)
    plan_workers(job.a3g, job.env.stages)  # refuse a curriculum with no worker before any file
    _check_obs_fits(job.a3g, job.env)
    init = None if job.run.resume else _initial_weights(job, job.a3g)
    run, job, latest = _open_run(job, total_steps_given, given)
    cfg = job.a3g
    if cfg.train_stages:
        # A run saved when fewer than 32 workers left stages out: its workers now cover them all.
        job.env.stages = train_stages_spec(cfg.workers)
    note = train_stages_note(cfg.workers, cfg.train_stages, cfg.curriculum)
    if note:
        print(f"mario-rl: note: {note}", file=sys.stderr)

    a3g = A3G(cfg, job.env)
    meta = None
    if latest is not None:
        tensors, meta = load_checkpoint(latest)
        a3g.load_state_dict(tensors, meta)
        _resumed(run, latest, a3g.global_step, out, job)
    else:
        init = init if init is not None else _initial_weights(job, cfg)
        if init is not None:
            a3g.model.load_state_dict(init)  # copied into the shared tensors the workers read
    timer = PhaseTimer()
    title = f"a3g {job.env.stages} x{cfg.workers}"
    return _run(_A3GSteps(a3g, cfg, timer), job, cfg.total_steps, run, meta, title, timer,
                LOCAL, out)  # fmt: skip


def _dead_worker(rank: int, exitcode: int) -> str:
    import signal

    how = f"exit code {exitcode}"
    if exitcode < 0:
        with contextlib.suppress(ValueError):
            how = f"killed by {signal.Signals(-exitcode).name}"
    return (
        f"A3G worker {rank} died ({how}) without reporting an error"
        " (out of memory? see the system log)"
    )


def _hung_worker(rank: int, silent: float, heard: bool) -> str:
    if heard:
        return f"A3G worker {rank} sent nothing for {silent:.0f} s (a hung env?)"
    return f"A3G worker {rank} sent nothing in the {silent:.0f} s since it started (a hung env?)"
