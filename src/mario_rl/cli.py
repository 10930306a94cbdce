"""The ``mario-rl`` command line: parse, validate, dispatch. Nothing imports this module.

Here: the parser, ``train`` and ``bench`` (flags + preset → a job, validated once, where it is
built: :func:`train_job`) and ``presets``; the commands that use a trained checkpoint (``eval``,
``record``, ``plot``, ``play``) are in :mod:`mario_rl.cli_media`. Every bad input ends as one
line on stderr (``mario-rl: error: …``) and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from . import cli_media, cliargs
from .cliargs import (
    Parser,
    UsageError,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    stage_list,
    stage_spec,
)
from .envs import EnvConfig, RewardConfig

PROG = "mario-rl"
DEFAULT_PPO_PRESET = "cpu-1-1"
"""The preset plain ``mario-rl train`` uses when none is given (docs/results.md)."""


def _env_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("environment")
    cliargs.add_dataclass_args(g, EnvConfig, "env")
    r = p.add_argument_group("reward shaping (0 switches a component off)")
    cliargs.add_dataclass_args(r, RewardConfig, "reward", flag_prefix="reward-")


def env_config(ns: argparse.Namespace, base: EnvConfig | None = None) -> EnvConfig:
    """The EnvConfig from defaults (or ``base``) plus the flags given (validated by the caller,
    with the job it is part of)."""
    cfg = base or EnvConfig()
    cliargs.apply(cfg, cliargs.given(ns, "env"), "environment")
    cliargs.apply(cfg.reward, cliargs.given(ns, "reward"), "reward")
    return cfg


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every subcommand."""
    parser = Parser(prog=PROG, description="Train and watch RL agents playing Super Mario Bros.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    bench = sub.add_parser("bench", help="measure speed (env pipeline, training)")
    bsub = bench.add_subparsers(dest="what", required=True, parser_class=Parser)
    be = bsub.add_parser("env", help="raw emulator vs full pipeline frame rate")
    be.add_argument("--envs", type=positive_int("--envs"), default=8, help="number of envs")
    be.add_argument("--workers", type=positive_int("--workers"), default=1, help="env threads")
    be.add_argument("--seconds", type=positive_float("--seconds"), default=20.0)
    be.add_argument("--json", action="store_true", help="print JSON only")
    _env_args(be)

    tr = sub.add_parser("train", help="train an agent (PPO, recurrent PPO, PPO+RND, A3G)")
    _train_args(tr)
    bt = bsub.add_parser("train", help="env-only rate vs training rate, per-phase shares")
    _train_args(bt)
    bt.add_argument("--seconds", type=positive_float("--seconds"), default=60.0)
    bt.add_argument("--json", action="store_true", help="print JSON only")

    bl = bsub.add_parser(
        "learn", help="the learner alone: samples/s by observation size and precision"
    )
    _train_args(bl)
    bl.add_argument("--sizes", type=_int_list, default=[84, 64, 42],
                    help="observation sizes to measure (the first with the first precision is the reference)")  # fmt: skip
    bl.add_argument("--precisions", type=_precision_list, default=["fp32", "bf16"],
                    help="learner precisions to measure: fp32, bf16, auto")  # fmt: skip
    bl.add_argument("--repeats", type=positive_int("--repeats"), default=3)
    bl.add_argument("--json", action="store_true", help="print JSON only")

    sub.add_parser("presets", help="list the preset files shipped with mario-rl")

    xp = sub.add_parser(
        "explore",
        help="find a route to a stage's flag by random play from saved states (a demo for --demos)",
    )
    xp.add_argument("--stage", required=True, help="the stage to clear, e.g. 1-3")
    xp.add_argument(
        "--out", required=True, help="the demo file to write (JSON), e.g. demos/1-3.json"
    )
    xp.add_argument("--preset", default=DEFAULT_PPO_PRESET,
                    help=f"the environment settings of this preset (default {DEFAULT_PPO_PRESET}); env flags override them")  # fmt: skip
    xp.add_argument("--seed", type=int, default=0, help="seed of the random play")
    xp.add_argument("--budget", type=positive_int("--budget"), default=2_000_000,
                    help="agent steps to explore before giving up (default 2000000)")  # fmt: skip
    xp.add_argument("--x-bias", type=nonnegative_float("--x-bias"), default=3.0,
                    help="favour cells farther right: weight (1 + x / farthest x) ** X-BIAS (default 3; 0 = count-based only)")  # fmt: skip
    xp.add_argument("--noops", type=nonnegative_int("--noops"), default=0,
                    help="no-op frames before play starts, for a route at other enemy timings (0-255, default 0)")  # fmt: skip
    xp.add_argument("--starts", type=positive_int("--starts"), default=1,
                    help="play this many no-op starts (--noops, --noops + 1, ...) in lockstep: the route must clear them all, so it holds at other enemy timings (default 1; 2 covers both frame parities)")  # fmt: skip
    xp.add_argument("--cover", action="store_true",
                    help="also find routes for the no-op starts (0..--noop-max) the first one does not clear: OUT's name + -nNN.json beside it")  # fmt: skip
    _env_args(xp)

    cli_media.add_parsers(sub)  # eval, record, export, plot, play
    return parser


# Flags named as the recurrent-PPO seed's table and the issue tracker name them.
_PPO_RENAME = {"num_envs": "envs"}


class _RenamedFlag(argparse.Action):
    """An old spelling of a renamed knob: refused in one line naming the new flag."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        raise UsageError(
            f"{option_string} was renamed {self.new} (one name per knob for every algorithm);"
            f" use {self.new}"
        )


def _renamed_flags(p: argparse.ArgumentParser) -> None:
    """The old spellings of renamed knobs, hidden from --help, each with its hint."""
    from .config.records import RENAMED

    for old, new in RENAMED.items():
        action = p.add_argument(
            "--" + old.replace("_", "-"), nargs="?", action=_RenamedFlag, help=argparse.SUPPRESS
        )
        action.new = _flag(new)  # type: ignore[attr-defined]


def _shared_fields() -> set[str]:
    """Fields PPO and A3G both have: one flag each (parsed as PPO's, read by either)."""
    import dataclasses

    from .config.a3g import A3GConfig
    from .config.ppo import PPOConfig

    ppo = {f.name for f in dataclasses.fields(PPOConfig)}
    return {f.name for f in dataclasses.fields(A3GConfig)} & ppo


def _train_args(p: argparse.ArgumentParser) -> None:
    import dataclasses

    from .config.a3g import A3GConfig
    from .config.ppo import PPOConfig

    p.add_argument(
        "--algo",
        choices=["ppo", "ppo-lstm", "ppo-rnd", "a3g"],
        default=argparse.SUPPRESS,
        help="algorithm (default: ppo)",
    )
    p.add_argument(
        "--preset",
        default=None,
        help=f"a preset name (see `mario-rl presets`); plain PPO defaults to {DEFAULT_PPO_PRESET}",
    )
    p.add_argument(
        "--workers",
        type=positive_int("--workers"),
        default=None,
        help="PPO: env threads stepping the emulators (default: 2, at most --envs); "
        "a3g: worker processes (default: 2)",
    )
    shared = _shared_fields()
    a3g_defaults = {f.name: f.default for f in dataclasses.fields(A3GConfig)}
    notes = {name: f"a3g: {a3g_defaults[name]}" for name in shared}
    g = p.add_argument_group("algorithm (PPO family; those marked a3g also apply to A3G)")
    cliargs.add_dataclass_args(g, PPOConfig, "ppo", rename=_PPO_RENAME, skip=("algo",), notes=notes)
    ag = p.add_argument_group("A3G (--algo a3g)")
    cliargs.add_dataclass_args(ag, A3GConfig, "a3g", skip=(*shared, "workers", "gpu_ids"))
    _renamed_flags(p)
    ag.add_argument(
        "--gpu-ids",
        dest="a3g.gpu_ids",
        nargs="+",
        type=_gpu_id,
        default=argparse.SUPPRESS,
        metavar="ID",
        help="devices of the workers' model copies, round-robin: -1 = CPU, 0 1 2 = cuda:0 … "
        "(default: -1)",
    )
    rg = p.add_argument_group("run")
    from .config import RunConfig

    cliargs.add_dataclass_args(rg, RunConfig, "run")
    _env_args(p)


def _gpu_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--gpu-ids expects -1 (CPU) or GPU indices like 0 1, got {text!r}"
        ) from None
    if value < -1:
        raise argparse.ArgumentTypeError(
            f"--gpu-ids expects -1 (CPU) or GPU indices >= 0, got {text!r}"
        )
    return value


def _flag(name: str) -> str:
    return "--" + _PPO_RENAME.get(name, name).replace("_", "-")


def train_job(ns: argparse.Namespace, command: str = ""):
    """The TrainJob (A3GJob for --algo a3g) from defaults, then the preset, then the flags given."""
    from .config import RunConfig, load_preset, preset_sections
    from .config.jobs import TrainJob
    from .config.ppo import PPOConfig

    env = EnvConfig()
    ppo = PPOConfig()
    run = RunConfig()
    env_flags = cliargs.given(ns, "env")
    stages = env_flags.get("stages", env.stages)
    algo = getattr(ns, "algo", None)
    if algo is None and ns.preset:
        # A preset with an [a3g] table is an A3G preset.
        algo = "a3g" if load_preset(ns.preset).get("a3g") else None
    if algo == "a3g":
        return _a3g_job(ns, command, stages)
    ppo_flags = cliargs.given(ns, "ppo")
    a3g_flags = cliargs.given(ns, "a3g")
    if a3g_flags:
        name = sorted(a3g_flags)[0]
        raise UsageError(f"{_flag(name)} is an A3G option; use it with --algo a3g")
    # Plain PPO without a preset gets the settings that cleared 1-1 fastest on the 2-core CPU.
    preset = ns.preset or (DEFAULT_PPO_PRESET if algo in (None, "ppo") else None)
    if preset:
        sections = preset_sections(preset, list(stage_list(stages)))
        if sections["a3g"] and not sections["ppo"]:
            raise UsageError(f"preset {preset!r} is for A3G; use it with --algo a3g")
        cliargs.apply(env, sections["env"], "preset env")
        cliargs.apply(env.reward, sections["reward"], "preset reward")
        cliargs.apply(ppo, sections["ppo"], "preset ppo")
        cliargs.apply(run, sections["run"], "preset run")
    if algo is not None:
        ppo.algo = algo
    cliargs.apply(ppo, ppo_flags, "algorithm")
    cliargs.apply(run, cliargs.given(ns, "run"), "run")
    env = env_config(ns, env)
    job = TrainJob(env, ppo, run, 2, command)
    job.validate(parts_only=run.resume)
    job.workers = ns.workers if ns.workers is not None else min(2, ppo.num_envs)
    if job.workers > ppo.num_envs:
        raise UsageError(f"--workers ({job.workers}) cannot exceed --envs ({ppo.num_envs})")
    return job


def _a3g_job(ns: argparse.Namespace, command: str, stages: str):
    """The A3GJob: A3G defaults, then the preset's [a3g] table, then the flags given."""
    from .config import RunConfig, preset_sections
    from .config.a3g import A3GConfig
    from .config.jobs import A3GJob

    env, a3g, run = EnvConfig(), A3GConfig(), RunConfig()
    if ns.preset:
        sections = preset_sections(ns.preset, list(stage_list(stages)), algo_section="a3g")
        if sections["ppo"] and not sections["a3g"]:
            raise UsageError(
                f"preset {ns.preset!r} is for the PPO family; it has no [a3g] table for --algo a3g"
            )
        cliargs.apply(env, sections["env"], "preset env")
        cliargs.apply(env.reward, sections["reward"], "preset reward")
        cliargs.apply(a3g, sections["a3g"], "preset a3g")
        cliargs.apply(run, sections["run"], "preset run")
    shared = _shared_fields()
    values: dict = {}
    for name, value in cliargs.given(ns, "ppo").items():
        if name in shared:
            values[name] = value
        else:
            raise UsageError(
                f"{_flag(name)} is a PPO option; --algo a3g does not use it"
                " (see the A3G options in `mario-rl train --help`)"
            )
    values |= cliargs.given(ns, "a3g")
    if ns.workers is not None:
        values["workers"] = ns.workers
    cliargs.apply(a3g, values, "a3g")
    run_flags = cliargs.given(ns, "run")
    if "log_every" in run_flags:
        raise UsageError(
            "--log-every counts PPO updates; A3G writes metric rows by time: use --log-interval-s"
        )
    cliargs.apply(run, run_flags, "run")
    if a3g.train_stages and stage_spec(cliargs.given(ns, "env").get("stages")) not in (
        None,
        "all",
    ):
        raise UsageError(
            "--train-stages shares all 32 stages among the workers (worker r plays stages r, r+W, …"
            " with W < 32 workers; stage r with 32 or more); drop --stages"
        )
    job = A3GJob(env_config(ns, env), a3g, run, command)
    job.validate()
    return job


def _train(ns: argparse.Namespace) -> int:
    from .config.jobs import A3GJob
    from .parallel import distributed
    from .parallel.collective import LOCAL
    from .training import train, train_a3g

    job = train_job(ns, ns.command_line)
    given_total = cliargs.given(ns, "ppo").get("total_steps")
    # What a resumed run may take from this command line (TrainJob.resumed decides).
    algo_part = cliargs.given(ns, "a3g" if isinstance(job, A3GJob) else "ppo")
    algo_part |= cliargs.given(ns, "ppo" if isinstance(job, A3GJob) else "a3g")
    given = {
        "algo": algo_part,
        "env": cliargs.given(ns, "env"),
        "reward": cliargs.given(ns, "reward"),
        "run": cliargs.given(ns, "run"),
        "job": {"workers": ns.workers} if ns.workers is not None else {},
    }
    if isinstance(job, A3GJob):
        if ns.workers is not None:
            given["algo"]["workers"] = ns.workers
        if distributed.launch_from_env() is not None:
            raise UsageError(
                "A3G runs in one process: spread it with --workers and --gpu-ids, not torchrun"
            )
        return train_a3g(job, total_steps_given=given_total, given=given)
    with distributed.from_env() as dist:
        return train(job, total_steps_given=given_total, collective=dist or LOCAL, given=given)


def _bench_train(ns: argparse.Namespace) -> int:
    from .bench import bench_a3g, bench_train
    from .config.jobs import A3GJob

    job = train_job(ns)
    if isinstance(job, A3GJob):
        from .devices import check_devices

        check_devices(job.a3g.gpu_ids)
        return _report(bench_a3g(job, seconds=ns.seconds), ns)
    return _report(bench_train(job, seconds=ns.seconds), ns)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or any(v < 8 for v in values):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give sizes >= 8 separated by commas, e.g. 84,64,42"
        )
    return values


def _precision_list(text: str) -> list[str]:
    values = text.split(",")
    bad = [v for v in values if v not in ("fp32", "bf16", "auto")]
    if bad:
        raise argparse.ArgumentTypeError(
            f"{bad[0]!r}: precisions are fp32, bf16 and auto, e.g. fp32,bf16"
        )
    return values


def _bench_learn(ns: argparse.Namespace) -> int:
    from .bench import bench_learn
    from .config.jobs import A3GJob
    from .devices import set_threads

    job = train_job(ns)
    if isinstance(job, A3GJob):
        raise UsageError(
            "bench learn measures the PPO family's learner; use --algo ppo, ppo-lstm or ppo-rnd"
        )
    set_threads(job.ppo.torch_threads)
    return _report(bench_learn(job, ns.sizes, ns.precisions, ns.repeats), ns)


def _presets(ns: argparse.Namespace) -> int:
    from .config import list_presets

    for name, desc in list_presets().items():
        print(f"{name:<12} {desc}")
    return 0


def _explore(ns: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from .config import load_preset, preset_sections
    from .envs.demos import MAX_NOOPS, demo_coverage, explore
    from .envs.stages import STAGES

    if ns.stage not in STAGES:
        raise UsageError(f"--stage: {ns.stage!r} is not a stage; give one such as 1-3 (1-1 … 8-4)")
    if ns.noops > MAX_NOOPS:
        raise UsageError(f"--noops: {ns.noops} is too many; give 0-{MAX_NOOPS} no-op frames")
    if ns.noops + ns.starts - 1 > MAX_NOOPS:
        raise UsageError(
            f"--starts: {ns.starts} starts from --noops {ns.noops} go past {MAX_NOOPS} no-op"
            f" frames; give at most {MAX_NOOPS - ns.noops + 1}"
        )
    out = Path(ns.out)
    if out.exists():
        raise UsageError(f"--out: {out} already exists; name a new file (nothing is replaced)")
    if not out.parent.is_dir():
        raise UsageError(f"--out: directory {out.parent} does not exist")
    if ns.cover:
        taken = sorted(out.parent.glob(f"{out.stem}-n[0-9]*.json"))
        if taken:
            raise UsageError(
                f"--cover: {taken[0]} already exists and would be one of the routes written;"
                " name a new --out (nothing is replaced)"
            )
    load_preset(ns.preset)  # a one-line error for an unknown name
    sections = preset_sections(ns.preset, [ns.stage])
    cfg = EnvConfig()
    cliargs.apply(cfg, sections["env"], "preset env")
    cliargs.apply(cfg.reward, sections["reward"], "preset reward")
    cfg = env_config(ns, cfg)
    cfg.stages = ns.stage
    cfg.validate()
    starts = set(range(cfg.noop_max + 1))
    covered: set[int] = set()
    noops, path = ns.noops, out
    while True:
        start = time.monotonic()

        def progress(
            steps: int, cells: int, x_max: int, start: float = start, noops: int = noops
        ) -> None:
            rate = steps / max(time.monotonic() - start, 1e-9)
            print(f"[explore {ns.stage} after {noops} no-ops] {steps:,} steps | {cells} cells | best x {x_max:,} | {rate:,.0f} steps/s", flush=True)  # fmt: skip

        result = explore(
            cfg,
            ns.stage,
            seed=ns.seed,
            max_steps=ns.budget,
            x_bias=ns.x_bias,
            noops=noops,
            on_progress=progress,
            starts=ns.starts,
        )
        took = time.monotonic() - start
        if result.demo is None:
            print(
                f"no flag after {noops} no-ops in {result.steps:,} steps ({took:.0f} s,"
                f" {result.cells} cells, best x {result.x_max:,}); try a larger --budget or"
                " another --seed",
                file=sys.stderr,
            )
            if path != out:
                print(f"no route yet after {_spans(sorted(starts - covered))} no-ops", file=sys.stderr)  # fmt: skip
            return 1
        result.demo.found_by = ns.command_line
        result.demo.save(path)
        reach = set(demo_coverage(result.demo, cfg, cfg.noop_max))
        covered |= reach | {noops}  # never explore the same start twice
        print(
            f"wrote {path}: {ns.stage} cleared in {len(result.demo.steps)} steps, found after"
            f" {result.steps:,} steps of exploring ({took:.0f} s, {result.cells} cells); it"
            f" reaches the flag after {len(reach & starts)} of the {len(starts)} no-op starts"
            f" 0-{cfg.noop_max}, the routes so far after {len(covered & starts)}"
        )
        left = sorted(starts - covered)
        if not left:
            return 0
        if not ns.cover:
            print(f"no route yet after {_spans(left)} no-ops: --cover finds routes for them")
            return 0
        noops = left[0]
        path = out.with_name(f"{out.stem}-n{noops:02d}.json")


def _spans(values: list[int]) -> str:
    """'1, 3-5, 9' for the sorted [1, 3, 4, 5, 9]."""
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _bench_env(ns: argparse.Namespace) -> int:
    from .bench import bench_env

    if ns.workers > ns.envs:
        raise UsageError(f"--workers ({ns.workers}) cannot exceed --envs ({ns.envs})")
    cfg = env_config(ns)
    cfg.validate()
    return _report(bench_env(cfg, envs=ns.envs, workers=ns.workers, seconds=ns.seconds), ns)


def _report(result: dict, ns: argparse.Namespace) -> int:
    """Print a benchmark result (with the command that made it) as JSON or aligned lines."""
    result["command"] = ns.command_line
    if ns.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            if isinstance(v, list):  # a table: one row a line
                print(f"{k:>24}:")
                for row in v:
                    print(" " * 26 + "  ".join(f"{a} {b}" for a, b in row.items()))
            else:
                print(f"{k:>24}: {v}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mario-rl`` console script; returns the exit code."""
    try:
        parser = build_parser()
        ns = parser.parse_args(argv)
        # The command as typed, recorded in run configs and demos so a result says how it was made.
        ns.command_line = " ".join(["mario-rl", *(sys.argv[1:] if argv is None else argv)])
        if ns.command == "bench":
            run = {"env": _bench_env, "train": _bench_train, "learn": _bench_learn}[ns.what]
            return run(ns)
        handlers = {"train": _train, "presets": _presets, "explore": _explore}
        handlers.update(cli_media.HANDLERS)
        return handlers[ns.command](ns)
    except (UsageError, ValueError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
