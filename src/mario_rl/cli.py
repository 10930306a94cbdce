"""The ``mario-rl`` command line: parse, validate, dispatch. Nothing imports this module.

Every bad input ends as one line on stderr (``mario-rl: error: …``) and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import cliargs
from .envs import EnvConfig, RewardConfig
from .envs.emulator import BACKENDS

PROG = "mario-rl"
DEFAULT_PPO_PRESET = "cpu-1-1"
"""The preset plain ``mario-rl train`` uses when none is given (docs/results.md)."""


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

    tr = sub.add_parser("train", help="train an agent (PPO, recurrent PPO, PPO+RND, A3G)")
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
    _emulator_arg(ev)
    ev.add_argument(
        "--json", default=None, metavar="FILE|-", help="write the JSON report (- for stdout)"
    )
    ev.add_argument("--csv", default=None, metavar="FILE", help="write a CSV table")
    _media_parsers(sub)
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
        type=_positive_int("--workers"),
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
        sections = preset_sections(preset, list(_stage_list(stages)))
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
    job.validate()
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
        sections = preset_sections(ns.preset, list(_stage_list(stages)), algo_section="a3g")
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
    if a3g.train_stages and _stage_spec(cliargs.given(ns, "env").get("stages")) not in (
        None,
        "all",
    ):
        raise UsageError(
            "--train-stages gives each worker its own stage (rank r plays stage r); drop --stages"
        )
    job = A3GJob(env_config(ns, env), a3g, run, command)
    job.validate()
    return job


def _stage_list(stages: str) -> tuple[str, ...]:
    from .envs import parse_stages

    return parse_stages(stages).stages


def _train(ns: argparse.Namespace) -> int:
    from .config.jobs import A3GJob
    from .parallel import distributed
    from .parallel.collective import LOCAL
    from .training import train, train_a3g

    job = train_job(ns, "mario-rl " + " ".join(sys.argv[1:]))
    given_total = cliargs.given(ns, "ppo").get("total_steps")
    if isinstance(job, A3GJob):
        if distributed.launch_from_env() is not None:
            raise UsageError(
                "A3G runs in one process: spread it with --workers and --gpu-ids, not torchrun"
            )
        return train_a3g(job, total_steps_given=given_total)
    with distributed.from_env() as dist:
        return train(job, total_steps_given=given_total, collective=dist or LOCAL)


def _bench_train(ns: argparse.Namespace) -> int:
    from .bench import bench_a3g, bench_train
    from .config.jobs import A3GJob

    job = train_job(ns)
    if isinstance(job, A3GJob):
        from .devices import check_devices

        check_devices(job.a3g.gpu_ids)
        return _report(bench_a3g(job, seconds=ns.seconds), ns.json)
    return _report(bench_train(job, seconds=ns.seconds), ns.json)


def _eval(ns: argparse.Namespace) -> int:
    from .evaluation.evaluate import evaluate, game_runs, summarise
    from .evaluation.report import as_csv, as_json, as_text

    for flag, target in (("--json", ns.json), ("--csv", ns.csv)):
        if target and target != "-" and not Path(target).parent.is_dir():
            raise UsageError(f"{flag}: directory {Path(target).parent} does not exist")
    stages = _stage_spec(ns.stages)  # a bad list is refused before any loading
    policy = _load_policy(ns.checkpoint, ns.sample)
    env_config = _play_config(ns, policy)
    stages = stages or _stage_spec(env_config.stages)
    reports = evaluate(policy, env_config, stages, ns.episodes, seed=ns.seed, workers=ns.workers)
    table = summarise(reports)
    runs = game_runs(reports["game"]) if "game" in reports else None
    extra = {
        "stages_spec": stages,
        "seed": ns.seed,
        "noop_max": ns.noop_max,
        "greedy": not ns.sample,
        "emulator": env_config.emulator,
    }
    if runs is not None:
        extra["game"] = {"runs": runs}
    doc = as_json(str(ns.checkpoint), ns.episodes, table, extra)
    if ns.json == "-":
        print(doc)
    else:
        print(as_text(table, runs))
        if ns.json:
            Path(ns.json).write_text(doc + "\n")
    if ns.csv:
        Path(ns.csv).write_text(as_csv(table))
    return 0


def _stage_spec(text: str | None) -> str | None:
    """The normalised stage selection of a --stages value (None when not given)."""
    from .envs import parse_stages

    return None if text is None else parse_stages(text).spec


def _load_policy(path: str, sample: bool):
    """The checkpoint's policy, or a one-line UsageError saying why it cannot be used."""

    from .devices import set_threads
    from .evaluation.policy import load_policy
    from .io.checkpoint import CheckpointError

    # Batched inference of a few frames: one torch thread beats OpenMP threads that wait on
    # cores the emulator threads (or a training run) keep busy.
    set_threads(1)
    try:
        return load_policy(path, deterministic=not sample)
    except CheckpointError as e:
        raise UsageError(str(e)) from None


def _emulator_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--emulator",
        choices=list(BACKENDS),
        default=None,
        help="emulator backend (default: the checkpoint's; both give the same play)",
    )


def _play_config(ns: argparse.Namespace, policy) -> EnvConfig:
    """The env of a checkpoint being played, with the command's no-op starts and emulator."""
    env_config = policy.env_config
    env_config.noop_max = ns.noop_max
    if ns.emulator:
        env_config.emulator = ns.emulator
    return env_config


def _play_args(p: argparse.ArgumentParser, episodes: int) -> None:
    """Options shared by the commands that play a checkpoint (record, play)."""
    p.add_argument(
        "--checkpoint", required=True, help="a checkpoint directory (e.g. runs/…/checkpoints/best)"
    )
    p.add_argument(
        "--episodes",
        type=_positive_int("--episodes"),
        default=episodes,
        help=f"episodes per stage (default {episodes})",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the no-op starts (never a training stream)"
    )
    p.add_argument(
        "--noop-max",
        type=_nonnegative_int("--noop-max"),
        default=30,
        help="episodes start after 0..N no-op frames (default 30)",
    )
    p.add_argument(
        "--sample", action="store_true", help="sample actions instead of the greedy argmax"
    )
    _emulator_arg(p)
    p.add_argument(
        "--fps",
        type=_positive_float("--fps"),
        default=None,
        help="frames per second (default: the game's own speed)",
    )


def _media_parsers(sub) -> None:
    """The record, plot and play subcommands."""
    rec = sub.add_parser("record", help="GIF/MP4 of a checkpoint playing: per stage, or a grid")
    _play_args(rec, episodes=1)
    rec.add_argument(
        "--stages",
        default=None,
        help="1-1, a list, all or game (default: the stages it trained on)",
    )
    rec.add_argument("--format", choices=["gif", "mp4"], default="gif", help="video format")
    rec.add_argument("--out", required=True, metavar="DIR", help="directory for the videos")
    rec.add_argument(
        "--grid", action="store_true", help="one video with every stage side by side (grid.gif)"
    )
    rec.add_argument(
        "--every",
        type=_positive_int("--every"),
        default=None,
        help="keep every K-th agent step (default 1; 2 with --grid): smaller files",
    )
    rec.add_argument(
        "--tile-shrink",
        type=int,
        choices=[1, 2, 4],
        default=2,
        help="--grid tiles at 1/N of 256x240 (default 2)",
    )
    rec.add_argument("--workers", type=_positive_int("--workers"), default=2, help="env threads")

    pl = sub.add_parser("plot", help="PNG training curves of a run, or the stage map of an eval")
    pl.add_argument("source", metavar="RUN_DIR|EVAL.json", help="a run directory or eval JSON")
    pl.add_argument("--out", default=None, metavar="DIR", help="directory (default: beside it)")

    pa = sub.add_parser("play", help="watch a checkpoint play live in a window")
    _play_args(pa, episodes=1)
    pa.add_argument(
        "--stage", default=None, help="one stage or game (default: its first training stage)"
    )
    pa.add_argument(
        "--scale", type=_positive_int("--scale"), default=2, help="window size, x 256x240"
    )


def _out_dir(text: str) -> Path:
    """An output directory that exists or can be made (nothing is created yet)."""
    out = Path(text)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: {out} is a file; pass a directory (it is created if missing)")
    return out


def _record(ns: argparse.Namespace) -> int:
    from .evaluation.media import realtime_fps, record, save_clips, save_grid

    stages = _stage_spec(ns.stages)
    out = _out_dir(ns.out)
    policy = _load_policy(ns.checkpoint, ns.sample)
    env_config = _play_config(ns, policy)
    stages = stages or _stage_spec(env_config.stages)
    every = ns.every or (2 if ns.grid else 1)
    clips, palette, reports = record(
        policy,
        env_config,
        stages,
        ns.episodes,
        seed=ns.seed,
        workers=ns.workers,
        every=every,
        shrink=ns.tile_shrink if ns.grid else 1,
    )
    fps = ns.fps or realtime_fps(env_config, every)
    if ns.grid:
        paths = [save_grid(clips, palette, out / f"grid.{ns.format}", ns.format, fps)]
    else:
        paths = save_clips(clips, palette, out, ns.format, fps)
    for report in reports.values():
        for ep in report.episodes:
            print(
                f"{ep.path[0].stage}: x {ep.x_max} ({ep.start.progress:.0%}), "
                f"{'cleared' if ep.cleared else 'not cleared'}, {ep.stages_cleared} flag(s), "
                f"ended by {ep.reason} after {ep.steps} steps"
            )
    for path in paths:
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def _plot(ns: argparse.Namespace) -> int:
    from .evaluation.plots import success_map, training_curves
    from .run.logger import read_metrics

    src = Path(ns.source)
    hint = "pass a run directory (holding metrics.jsonl) or an eval JSON (mario-rl eval --json)"
    if not src.exists():
        raise UsageError(f"{src} does not exist; {hint}")
    out = _out_dir(ns.out) if ns.out else (src if src.is_dir() else src.parent)
    if src.is_dir() or src.name.endswith(".jsonl"):
        metrics = src / "metrics.jsonl" if src.is_dir() else src
        rows = read_metrics(metrics)
        if not rows:
            raise UsageError(f"{metrics} is missing or has no metric rows; {hint}")
        out.mkdir(parents=True, exist_ok=True)
        name = src.name if src.is_dir() else src.parent.name
        path = training_curves(rows, out / "training-curves.png", title=name)
    else:
        try:
            doc = json.loads(src.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UsageError(f"{src} is not JSON ({e}); {hint}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("stages"), dict):
            raise UsageError(f"{src} has no 'stages' table; {hint}")
        for stage, row in doc["stages"].items():
            rate = row.get("clear_rate") if isinstance(row, dict) else None
            if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
                raise UsageError(
                    f"{src}: stage {stage!r} has no clear_rate in [0, 1] (got {rate!r}); {hint}"
                )
        out.mkdir(parents=True, exist_ok=True)
        path = success_map(doc, out / f"{src.stem}-success-map.png")
    print(f"wrote {path}")
    return 0


def _play(ns: argparse.Namespace) -> int:
    from .evaluation.watch import DisplayError, open_viewer, play

    stage = _stage_spec(ns.stage)
    if stage is not None and stage != "game" and len(_stage_list(stage)) != 1:
        raise UsageError(f"--stage takes one stage (1-1 … 8-4) or game, got {ns.stage!r}")
    policy = _load_policy(ns.checkpoint, ns.sample)
    env_config = _play_config(ns, policy)
    if stage is None:
        sel = _stage_spec(env_config.stages)
        stage = "game" if sel == "game" else _stage_list(sel)[0]
    try:
        viewer = open_viewer(f"mario-rl: {stage}", scale=ns.scale)
    except DisplayError as e:
        raise UsageError(str(e)) from None
    play(policy, env_config, stage, viewer, episodes=ns.episodes, seed=ns.seed, fps=ns.fps)
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
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"{flag} expects a finite number > 0, got {text!r}")
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
        handlers = {
            "train": _train,
            "presets": _presets,
            "eval": _eval,
            "record": _record,
            "plot": _plot,
            "play": _play,
        }
        return handlers[ns.command](ns)
    except (UsageError, ValueError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
