"""A job: everything one training run is made of (env, algorithm and run options), as the command
line builds it, as config.json records it, and as a resumed run reads it back — validated in one
place, :meth:`validate`, wherever a job enters the program."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from mario_rl.config.a3g import A3GConfig
from mario_rl.config.ppo import PPOConfig
from mario_rl.config.run import RunConfig
from mario_rl.envs import EnvConfig, parse_stages
from mario_rl.envs.stages import check_curriculum_stages

__all__ = ["A3GJob", "TrainJob"]


def _validate(env: EnvConfig, algo: PPOConfig | A3GConfig, run: RunConfig) -> None:
    env.validate()
    algo.validate()
    run.validate()
    parse_stages(env.stages)


RESUME_MACHINE_FIELDS = frozenset(
    {"total_steps", "torch_threads", "collect_threads", "device", "gpu_ids", "log_interval_s"}
)
"""Algorithm options a resumed run takes from its command line: the step budget and how the
machine runs it (threads, devices, log cadence), which change nothing the model learns from."""

RESUME_GUIDANCE_FIELDS = frozenset(
    {
        "teachers",
        "teacher_coef",
        "teacher_steps",
        "demo_bc",
        "demo_bc_steps",
        "demo_bc_batch",
        "lr",
        "curriculum_floor",
        "ema_decay",
    }
)
"""Options a resumed run may also change: the kickstarting teachers, the weight of demo
cloning, the learning rate, how far the curriculum may turn away from stages it clears and the
weight average it plays with, so that a run going on across sessions takes in the teachers
trained since, eases off the demos (they guide the model, they are not in it) and can be
steadied when it forgets. Of the env options, :data:`RESUME_ENV_GUIDANCE_FIELDS` may change too."""

RESUME_ENV_GUIDANCE_FIELDS = ("stages", "jump_unblock")
"""Env options a resumed PPO run may change: the stages it trains on (a long run takes in stages
as their teachers come) and ``jump_unblock`` (a rule that only differs where a held A would
stall, so a run may take it on midway)."""


def with_last_guidance(
    given: Mapping[str, Mapping[str, Any]] | None, last: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """``given`` plus, for each of :data:`RESUME_GUIDANCE_FIELDS` the command does not set, the
    value of the run's latest leg (``last``, its newest config): a plain ``--resume`` goes on with
    the teachers the run last had, not those it started with."""
    out = {part: dict(opts) for part, opts in (given or {}).items()}
    algo = out.setdefault("algo", {})
    recorded = last.get("ppo") or {}
    for name in RESUME_GUIDANCE_FIELDS:
        if name not in algo and name in recorded:
            algo[name] = recorded[name]
    env = out.setdefault("env", {})
    for name in RESUME_ENV_GUIDANCE_FIELDS:
        if name not in env and name in (last.get("env") or {}) and "ppo" in last:
            env[name] = last["env"][name]
    return out


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _refuse_change(path: str | os.PathLike[str], name: str, given: Any, saved: Any) -> None:
    if given != saved:
        raise ValueError(
            f"{_flag(name)} {given} differs from the {saved!r} that run {path} was trained with:"
            " a resumed run keeps its training settings (the step budget, threads, devices and"
            " the run options such as --eval-every may change); use a new --run-dir to change it"
        )


def _saved(
    path: str | os.PathLike[str],
    saved: Mapping[str, Any],
    algo: str,
    cls: type[PPOConfig] | type[A3GConfig],
    rc: RunConfig,
    total_steps: int | None,
    given: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[EnvConfig, Any, RunConfig]:
    """(env, algorithm, run) configs of the job a run directory recorded in ``saved``.

    ``given`` holds the options set on the resuming command line, by part ("algo", "env",
    "reward", "run"): run options, ``--emulator`` and :data:`RESUME_MACHINE_FIELDS` replace the
    recorded ones; any other that differs from the record is refused in one line (it would be
    silently ignored otherwise).
    """
    if saved.get("algo", "ppo") != algo and "a3g" in (saved.get("algo"), algo):
        raise ValueError(
            f"{path} is a {saved.get('algo')!r} run; resume it with --algo {saved.get('algo')}"
        )
    given = given or {}
    cfg = cls.from_dict(saved["a3g" if algo == "a3g" else "ppo"])
    for name, value in given.get("algo", {}).items():
        if name in RESUME_MACHINE_FIELDS or name in RESUME_GUIDANCE_FIELDS:
            setattr(cfg, name, value)
        else:
            _refuse_change(path, name, value, getattr(cfg, name))
    if total_steps is not None:
        cfg.total_steps = total_steps
    env = EnvConfig.from_dict(saved["env"])
    recorded_env = env.to_dict()
    for name, value in given.get("env", {}).items():
        if name == "emulator":  # both backends play the same game, frame for frame
            env.emulator = value
        elif name == "stages" and algo != "a3g":
            env.stages = parse_stages(str(value)).spec  # the teachers are checked against it
        elif name == "jump_unblock" and algo != "a3g":
            env.jump_unblock = bool(value)
        elif name == "stages":
            _refuse_change(path, name, parse_stages(str(value)).spec, env.stages)
        else:
            _refuse_change(path, name, value, recorded_env[name])
    for name, value in given.get("reward", {}).items():
        _refuse_change(path, f"reward_{name}", value, recorded_env["reward"][name])
    # Where the run lives and that it resumes come from this command; the other run options from
    # the record unless this command sets them.
    if given.get("run", {}).get("init_from"):
        raise ValueError(
            f"{path} is resumed from its own checkpoint; --init-from only starts a new run"
            " (drop --init-from, or give a new --run-dir without --resume)"
        )
    kept = {k: v for k, v in saved["run"].items() if k not in ("resume", "run_dir")}
    kept |= {k: v for k, v in given.get("run", {}).items() if k not in ("resume", "run_dir")}
    return env, cfg, dataclasses.replace(rc, **kept)


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

    def validate(self, parts_only: bool = False) -> None:
        """ValueError (one line) on a bad option of any part, or (unless ``parts_only``: a resuming
        command's job, whose env is the run's record, checked by :meth:`resumed`) demo cloning
        without demos or a curriculum without a set of stages to weigh."""
        _validate(self.env, self.ppo, self.run)
        if parts_only:
            return
        if self.ppo.demo_bc and not self.env.demos:
            raise ValueError(
                "demo_bc needs demos to clone (e.g. --demos demos/1-3.json --demo-starts 0.25)"
            )
        if self.ppo.curriculum:
            check_curriculum_stages(parse_stages(self.env.stages))

    def resumed(
        self,
        path: str | os.PathLike[str],
        saved: Mapping[str, Any],
        total_steps: int | None,
        given: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> TrainJob:
        """The job recorded in run directory ``path`` (a new ``total_steps`` may extend it; see
        :func:`_saved` for the options ``given`` on the command line); env threads (--workers)
        come from the command when it sets them."""
        env, ppo, run = _saved(path, saved, self.algo, PPOConfig, self.run, total_steps, given)
        workers = (given or {}).get("job", {}).get("workers", saved.get("workers", self.workers))
        job = TrainJob(env, ppo, run, int(workers), self.command)
        job.validate()
        return job

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

    def validate(self) -> None:
        """ValueError (one line) on a bad option of any part."""
        _validate(self.env, self.a3g, self.run)

    def resumed(
        self,
        path: str | os.PathLike[str],
        saved: Mapping[str, Any],
        total_steps: int | None,
        given: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> A3GJob:
        """The job recorded in run directory ``path`` (a new ``total_steps`` may extend it; see
        :func:`_saved` for the options ``given``). The number of workers is part of the
        training (each its own model copy and stages), so a different --workers is refused."""
        job = A3GJob(
            *_saved(path, saved, self.algo, A3GConfig, self.run, total_steps, given), self.command
        )
        job.validate()
        return job

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record (config.json and checkpoints)."""
        return {
            "algo": "a3g",
            "command": self.command,
            "env": self.env.to_dict(),
            "a3g": self.a3g.to_dict(),
            "run": dataclasses.asdict(self.run),
        }
