"""A PPO-family training run: the loop that ties the algorithm to the runner's pieces.

collect → learn → log → checkpoint/evaluate, until the step budget, a stop request (Ctrl-C,
SIGTERM) or the target clear rate. Algorithm internals stay in ``algos/ppo.py``; run-directory,
logging, progress, signals, checkpoints and the evaluation process come from ``runner``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any

from .algos.ppo import PPO
from .checkpoint import load_checkpoint
from .config import RunConfig
from .config.ppo import PPOConfig
from .envs import EnvConfig, make_vector_env, parse_stages
from .evaluation.policy import evaluate_checkpoint
from .runner import (
    CheckpointSchedule,
    EvalProcess,
    Logger,
    NonFiniteError,
    PhaseTimer,
    Progress,
    RunDir,
    SignalGuard,
    check_finite,
)

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


def _resume_job(job: TrainJob, run: RunDir, total_steps: int | None) -> TrainJob:
    """The saved job of a run being resumed (a new --total-steps may extend it)."""
    saved = run.saved_config()
    env = EnvConfig.from_dict(saved["env"])
    ppo = PPOConfig.from_dict(saved["ppo"])
    if total_steps is not None:
        ppo.total_steps = total_steps
    runc = dataclasses.replace(
        job.run, **{k: v for k, v in saved["run"].items() if k not in ("resume", "run_dir")}
    )
    return TrainJob(env, ppo, runc, int(saved.get("workers", job.workers)), job.command)


def train(job: TrainJob, total_steps_given: int | None = None, out=sys.stdout) -> int:
    """Run (or resume) a training job; returns the process exit code."""
    job.env.validate()
    job.ppo.validate()
    job.run.validate()
    parse_stages(job.env.stages)
    run = RunDir.open(
        job.run.run_dir or None,
        algo=job.ppo.algo,
        stages=job.env.stages,
        resume=job.run.resume,
        config=None if job.run.resume else job.to_dict(),
    )
    latest = None
    if job.run.resume:
        job = _resume_job(job, run, total_steps_given)
        job.ppo.validate()
        latest = run.latest_checkpoint()
    cfg, env_cfg, rc = job.ppo, job.env, job.run

    envs = make_vector_env(env_cfg, num_envs=cfg.num_envs, workers=job.workers, seed=cfg.seed)
    ppo = PPO(cfg, envs)
    flags = 0
    best_x = 0
    if latest is not None:
        tensors, meta = load_checkpoint(latest)
        ppo.load_state_dict(tensors, meta)
        flags = int(meta.get("stats", {}).get("flags", 0))
        best_x = int(meta.get("stats", {}).get("best_x", 0))
        # Fresh episodes after a resume: a seed that the run has not used yet.
        ppo.reset_envs(cfg.seed + 7919 * ppo.update)
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
    ckpts = CheckpointSchedule(
        run.checkpoints, every=rc.checkpoint_every, keep=rc.keep_checkpoints, start_step=start_step
    )
    next_eval = (start_step // rc.eval_every + 1) * rc.eval_every if rc.eval_every else None
    timer = PhaseTimer()
    code = 0
    stop_reason = "step budget reached"
    eval_kwargs = {
        "stages": env_cfg.stages,
        "episodes": rc.eval_episodes,
        "seed": EVAL_SEED,
        "workers": 1,
    }
    t_start = time.perf_counter()
    with (
        Logger(run, purge_step=start_step if job.run.resume else None) as log,
        Progress(
            cfg.total_steps,
            start_step=start_step,
            timer=timer,
            title=f"{cfg.algo} {env_cfg.stages}",
            stream=out,
        ) as prog,
        SignalGuard() as guard,
        EvalProcess(evaluate_checkpoint, kwargs=eval_kwargs, schedule=ckpts) as ev,
    ):
        while ppo.global_step < cfg.total_steps:
            if guard.stop_requested:
                stop_reason = "stop requested (signal)"
                break
            metrics = ppo.collect()
            timer.add("env", metrics.get("time/env", 0.0))
            timer.add(
                "inference", metrics.get("time/inference", 0.0) + metrics.get("time/rnd", 0.0)
            )
            t0 = time.perf_counter()
            metrics |= ppo.learn()
            timer.add("learn", time.perf_counter() - t0)
            step = ppo.global_step
            for ep in ppo.episodes:
                flags += bool(ep.get("flag"))
                best_x = max(best_x, int(ep.get("x_max", 0)))
            elapsed = time.perf_counter() - t_start
            metrics["charts/SPS"] = (step - start_step) / max(elapsed, 1e-9)
            metrics["charts/flags_total"] = flags
            metrics["charts/best_x"] = best_x
            try:
                check_finite(metrics, step)
            except NonFiniteError as e:
                print(
                    f"mario-rl: error: {e}; stopped, the last good checkpoint is kept",
                    file=sys.stderr,
                )
                code = 1
                stop_reason = "non-finite loss"
                break
            if ppo.update % rc.log_every == 0:
                log.log(step, metrics)
            prog.update(step, best_x=best_x, flags=flags)
            path = ckpts.maybe_save(step, make_state)
            if next_eval is not None and step >= next_eval:
                next_eval = (step // rc.eval_every + 1) * rc.eval_every
                if path is None:
                    path = ckpts.save(step, *make_state())
                ev.submit(path, step)
            stop = False
            for r in ev.poll():
                if r.ok:
                    log.log(r.step, {f"eval/{k}": v for k, v in (r.metrics or {}).items()})
                    rate = (r.metrics or {}).get("flag_rate", 0.0)
                    print(
                        f"eval @ {r.step}: flag_rate {rate:.2f} mean_x {(r.metrics or {}).get('mean_x', 0):.0f}"
                        + (" (best)" if r.is_best else ""),
                        file=out,
                    )
                    if rc.stop_at_clear_rate and rate >= rc.stop_at_clear_rate:
                        stop, stop_reason = True, f"evaluation clear rate {rate:.2f} reached"
                else:
                    print(f"evaluation failed: {r.error}", file=sys.stderr)
            if stop:
                break
        if code == 0:
            final = ckpts.save_final(ppo.global_step, *make_state())
            for r in ev.wait(60.0):
                if r.ok:
                    log.log(r.step, {f"eval/{k}": v for k, v in (r.metrics or {}).items()})
            print(f"{stop_reason}: final checkpoint {final}", file=out)
    ppo.close()
    envs.close()
    print(f"run directory: {run.path}", file=out)
    return code
