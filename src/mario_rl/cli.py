"""The ``mario-rl`` command line: parse, validate, dispatch. Nothing imports this module.

Every bad input ends as one line on stderr (``mario-rl: error: …``) and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import NoReturn

from . import cliargs
from .envs import EnvConfig, RewardConfig

PROG = "mario-rl"


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (its default prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message.replace("\n", " "))


def _env_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("environment")
    cliargs.add_dataclass_args(g, EnvConfig, "env")
    r = p.add_argument_group("reward shaping (0 switches a component off)")
    cliargs.add_dataclass_args(r, RewardConfig, "reward", flag_prefix="reward-")


def env_config(ns: argparse.Namespace, base: EnvConfig | None = None) -> EnvConfig:
    """The EnvConfig from defaults (or ``base``) plus the flags given."""
    cfg = base or EnvConfig()
    cliargs.apply(cfg, cliargs.given(ns, "env"), "environment")
    cliargs.apply(cfg.reward, cliargs.given(ns, "reward"), "reward")
    cfg.validate()
    return cfg


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every subcommand."""
    parser = _Parser(prog=PROG, description="Train and watch RL agents playing Super Mario Bros.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    bench = sub.add_parser("bench", help="measure speed (env pipeline, training)")
    bsub = bench.add_subparsers(dest="what", required=True, parser_class=_Parser)
    be = bsub.add_parser("env", help="raw emulator vs full pipeline frame rate")
    be.add_argument("--envs", type=_positive_int("--envs"), default=8, help="number of envs")
    be.add_argument("--workers", type=_positive_int("--workers"), default=1, help="env threads")
    be.add_argument("--seconds", type=_positive_float("--seconds"), default=20.0)
    be.add_argument("--json", action="store_true", help="print JSON only")
    _env_args(be)

    tr = sub.add_parser("train", help="train an agent (PPO, recurrent PPO, PPO+RND)")
    _train_args(tr)
    bt = bsub.add_parser("train", help="env-only rate vs training rate, per-phase shares")
    _train_args(bt)
    bt.add_argument("--seconds", type=_positive_float("--seconds"), default=60.0)
    bt.add_argument("--json", action="store_true", help="print JSON only")

    sub.add_parser("presets", help="list the preset files shipped with mario-rl")

    ev = sub.add_parser("eval", help="per-stage clear rate and progress of a checkpoint")
    ev.add_argument(
        "--checkpoint", required=True, help="a checkpoint directory (e.g. runs/…/checkpoints/best)"
    )
    ev.add_argument(
        "--stages",
        default=None,
        help="1-1, a list, all or game (default: the stages it trained on)",
    )
    ev.add_argument(
        "--episodes", type=_positive_int("--episodes"), default=10, help="episodes per stage"
    )
    ev.add_argument(
        "--noop-max",
        type=_nonnegative_int("--noop-max"),
        default=30,
        help="episodes start after 0..N no-op frames (default 30)",
    )
    ev.add_argument(
        "--seed", type=int, default=0, help="seed of the no-op starts (never a training stream)"
    )
    ev.add_argument(
        "--sample", action="store_true", help="sample actions instead of the greedy argmax"
    )
    ev.add_argument("--workers", type=_positive_int("--workers"), default=2, help="env threads")
    ev.add_argument(
        "--json", default=None, metavar="FILE|-", help="write the JSON report (- for stdout)"
    )
    ev.add_argument("--csv", default=None, metavar="FILE", help="write a CSV table")
    return parser


# Flags named as the recurrent-PPO seed's table and the issue tracker name them.
_PPO_RENAME = {"num_envs": "envs"}


def _train_args(p: argparse.ArgumentParser) -> None:
    from .config.ppo import PPOConfig

    p.add_argument(
        "--algo",
        choices=["ppo", "ppo-lstm", "ppo-rnd"],
        default=argparse.SUPPRESS,
        help="algorithm (default: ppo)",
    )
    p.add_argument("--preset", default=None, help="a preset name (see `mario-rl presets`)")
    p.add_argument(
        "--workers",
        type=_positive_int("--workers"),
        default=None,
        help="env threads stepping the emulators (default: 2, at most --envs)",
    )
    g = p.add_argument_group("algorithm")
    cliargs.add_dataclass_args(g, PPOConfig, "ppo", rename=_PPO_RENAME, skip=("algo",))
    rg = p.add_argument_group("run")
    from .config import RunConfig

    cliargs.add_dataclass_args(rg, RunConfig, "run")
    _env_args(p)


def train_job(ns: argparse.Namespace, command: str = ""):
    """The TrainJob from defaults, then the preset, then the flags given."""
    from .config import RunConfig, preset_sections
    from .config.ppo import PPOConfig
    from .training import TrainJob

    env = EnvConfig()
    ppo = PPOConfig()
    run = RunConfig()
    env_flags = cliargs.given(ns, "env")
    stages = env_flags.get("stages", env.stages)
    if ns.preset:
        sections = preset_sections(ns.preset, list(_stage_list(stages)))
        cliargs.apply(env, sections["env"], "preset env")
        cliargs.apply(env.reward, sections["reward"], "preset reward")
        cliargs.apply(ppo, sections["ppo"], "preset ppo")
        cliargs.apply(run, sections["run"], "preset run")
    if hasattr(ns, "algo"):
        ppo.algo = ns.algo
    cliargs.apply(ppo, cliargs.given(ns, "ppo"), "algorithm")
    cliargs.apply(run, cliargs.given(ns, "run"), "run")
    env = env_config(ns, env)
    ppo.validate()
    run.validate()
    workers = ns.workers if ns.workers is not None else min(2, ppo.num_envs)
    if workers > ppo.num_envs:
        raise UsageError(f"--workers ({workers}) cannot exceed --envs ({ppo.num_envs})")
    return TrainJob(env, ppo, run, workers, command)


def _stage_list(stages: str) -> tuple[str, ...]:
    from .envs import parse_stages

    return parse_stages(stages).stages


def _train(ns: argparse.Namespace) -> int:
    from .training import train

    job = train_job(ns, "mario-rl " + " ".join(sys.argv[1:]))
    given_total = cliargs.given(ns, "ppo").get("total_steps")
    return train(job, total_steps_given=given_total)


def _bench_train(ns: argparse.Namespace) -> int:
    from .bench import bench_train

    job = train_job(ns)
    return _report(bench_train(job, seconds=ns.seconds), ns.json)


def _eval(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from .checkpoint import CheckpointError
    from .envs import parse_stages
    from .evaluation.evaluate import evaluate, summarise
    from .evaluation.policy import load_policy
    from .evaluation.report import as_csv, as_json, as_text

    for flag, target in (("--json", ns.json), ("--csv", ns.csv)):
        if target and target != "-" and not Path(target).parent.is_dir():
            raise UsageError(f"{flag}: directory {Path(target).parent} does not exist")
    try:
        policy = load_policy(ns.checkpoint, deterministic=not ns.sample)
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    env_config = policy.env_config
    stages = parse_stages(ns.stages or env_config.stages).spec
    env_config.noop_max = ns.noop_max
    table = summarise(
        evaluate(policy, env_config, stages, ns.episodes, seed=ns.seed, workers=ns.workers)
    )
    extra = {
        "stages_spec": stages,
        "seed": ns.seed,
        "noop_max": ns.noop_max,
        "greedy": not ns.sample,
    }
    doc = as_json(str(ns.checkpoint), ns.episodes, table, extra)
    if ns.json == "-":
        print(doc)
    else:
        print(as_text(table))
        if ns.json:
            Path(ns.json).write_text(doc + "\n")
    if ns.csv:
        Path(ns.csv).write_text(as_csv(table))
    return 0


def _presets(ns: argparse.Namespace) -> int:
    from .config import list_presets

    for name, desc in list_presets().items():
        print(f"{name:<12} {desc}")
    return 0


def _positive_int(flag: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} expects a whole number > 0, got {text!r}"
            ) from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{flag} expects a whole number > 0, got {text!r}")
        return value

    return parse


def _nonnegative_int(flag: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} expects a whole number >= 0, got {text!r}"
            ) from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{flag} expects a whole number >= 0, got {text!r}")
        return value

    return parse


def _positive_float(flag: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects a number > 0, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{flag} expects a number > 0, got {text!r}")
        return value

    return parse


def _bench_env(ns: argparse.Namespace) -> int:
    from .bench import bench_env

    if ns.workers > ns.envs:
        raise UsageError(f"--workers ({ns.workers}) cannot exceed --envs ({ns.envs})")
    return _report(
        bench_env(env_config(ns), envs=ns.envs, workers=ns.workers, seconds=ns.seconds), ns.json
    )


def _report(result: dict, as_json: bool) -> int:
    """Print a benchmark result (with the command that made it) as JSON or aligned lines."""
    result["command"] = "mario-rl " + " ".join(sys.argv[1:])
    if as_json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>24}: {v}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mario-rl`` console script; returns the exit code."""
    try:
        parser = build_parser()
        ns = parser.parse_args(argv)
        if ns.command == "bench":
            return _bench_env(ns) if ns.what == "env" else _bench_train(ns)
        handlers = {"train": _train, "presets": _presets, "eval": _eval}
        return handlers[ns.command](ns)
    except (UsageError, ValueError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
