"""The ``mario-rl`` commands that look at what training made: ``eval`` (per-stage tables),
``record`` (GIF/MP4), ``export`` (the network alone, to ship), ``plot`` (training curves, stage
maps) and ``play`` (a live window).

Their parsers and handlers; :mod:`mario_rl.cli` dispatches to them. Bad input is a one-line
:class:`~mario_rl.cliargs.UsageError` (exit code 2), refused before anything is loaded or written.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .cliargs import (
    UsageError,
    nonnegative_int,
    positive_float,
    positive_int,
    stage_list,
    stage_spec,
)
from .envs import EnvConfig
from .envs.emulator import BACKENDS

__all__ = ["HANDLERS", "add_parsers"]


def add_parsers(sub: Any) -> None:
    """The eval, record, export, plot and play subcommands."""
    ev = sub.add_parser("eval", help="per-stage clear rate and progress of a checkpoint")
    _checkpoint_args(ev, episodes=10)
    _stage_args(ev)
    ev.add_argument(
        "--json", default=None, metavar="FILE|-", help="write the JSON report (- for stdout)"
    )
    ev.add_argument("--csv", default=None, metavar="FILE", help="write a CSV table")
    ev.add_argument(
        "--markdown",
        default=None,
        metavar="FILE",
        help="write a Markdown table of the stages under an 80%% clear rate (where they end)",
    )

    rec = sub.add_parser("record", help="GIF/MP4 of a checkpoint playing: per stage, or a grid")
    _play_args(rec, episodes=1)
    _stage_args(rec)
    rec.add_argument("--format", choices=["gif", "mp4"], default="gif", help="video format")
    rec.add_argument("--out", required=True, metavar="DIR", help="directory for the videos")
    rec.add_argument(
        "--grid", action="store_true", help="one video with every stage side by side (grid.gif)"
    )
    rec.add_argument(
        "--every",
        type=positive_int("--every"),
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

    ex = sub.add_parser(
        "export", help="a checkpoint's network alone (weights + JSON), small enough to ship"
    )
    ex.add_argument(
        "--checkpoint", required=True, help="a checkpoint directory (e.g. runs/…/checkpoints/best)"
    )
    ex.add_argument(
        "--out", required=True, metavar="DIR", help="a new directory (e.g. models/NAME)"
    )
    ex.add_argument("--note", default="", help="a line on what it is and how it was trained")
    ex.add_argument(
        "--trained",
        action="store_true",
        help="the trained weights, not the weight average of a run with --ema-decay (to compare)",
    )

    pl = sub.add_parser("plot", help="PNG training curves of a run, or the stage map of an eval")
    pl.add_argument("source", metavar="RUN_DIR|EVAL.json", help="a run directory or eval JSON")
    pl.add_argument("--out", default=None, metavar="DIR", help="directory (default: beside it)")

    pa = sub.add_parser("play", help="watch a checkpoint play live in a window")
    _play_args(pa, episodes=1)
    pa.add_argument(
        "--stage", default=None, help="one stage or game (default: its first training stage)"
    )
    pa.add_argument(
        "--scale", type=positive_int("--scale"), default=2, help="window size, x 256x240"
    )


def _checkpoint_args(p: argparse.ArgumentParser, episodes: int) -> None:
    """Options shared by the commands that play a checkpoint (eval, record, play)."""
    p.add_argument(
        "--checkpoint", required=True, help="a checkpoint directory (e.g. runs/…/checkpoints/best)"
    )
    p.add_argument(
        "--episodes",
        type=positive_int("--episodes"),
        default=episodes,
        help=f"episodes per stage (default {episodes})",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the no-op starts (never a training stream)"
    )
    p.add_argument(
        "--noop-max",
        type=nonnegative_int("--noop-max"),
        default=30,
        help="episodes start after 0..N no-op frames (default 30)",
    )
    p.add_argument(
        "--sample", action="store_true", help="sample actions instead of the greedy argmax"
    )
    p.add_argument(
        "--emulator",
        choices=list(BACKENDS),
        default=None,
        help="emulator backend (default: the checkpoint's; both give the same play)",
    )


def _stage_args(p: argparse.ArgumentParser) -> None:
    """The stages to play and the env threads playing them (eval, record)."""
    p.add_argument(
        "--stages",
        default=None,
        help="1-1, a list, all or game (default: the stages it trained on)",
    )
    p.add_argument("--workers", type=positive_int("--workers"), default=2, help="env threads")


def _play_args(p: argparse.ArgumentParser, episodes: int) -> None:
    """Options of the commands that show a checkpoint playing (record, play)."""
    _checkpoint_args(p, episodes)
    p.add_argument(
        "--fps",
        type=positive_float("--fps"),
        default=None,
        help="frames per second (default: the game's own speed)",
    )


def _load_policy(path: str, sample: bool):
    """The checkpoint's policy, or a one-line UsageError saying why it cannot be used."""

    from .devices import set_threads
    from .evaluation.policy import load_policy
    from .io.checkpoint import CheckpointError

    # This command's thread setting. Batched inference of a few frames: one torch thread beats
    # OpenMP threads that wait on cores the emulator threads (or a training run) keep busy.
    set_threads(1)
    try:
        return load_policy(path, deterministic=not sample)
    except CheckpointError as e:
        raise UsageError(str(e)) from None


def _play_config(ns: argparse.Namespace, policy) -> EnvConfig:
    """The env of a checkpoint being played, with the command's no-op starts and emulator."""
    env_config = policy.env_config
    env_config.noop_max = ns.noop_max
    if ns.emulator:
        env_config.emulator = ns.emulator
    return env_config


def _out_dir(text: str) -> Path:
    """An output directory that exists or can be made (nothing is created yet)."""
    out = Path(text)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: {out} is a file; pass a directory (it is created if missing)")
    return out


def _out_file(flag: str, target: str | None) -> None:
    """Refuse an output file that cannot be written (checked before any evaluation runs)."""
    if not target:
        return
    path = Path(target)
    if not path.parent.is_dir():
        raise UsageError(f"{flag}: directory {path.parent} does not exist")
    if path.is_dir():
        raise UsageError(f"{flag}: {path} is a directory; pass a file name")


def _eval(ns: argparse.Namespace) -> int:
    from .evaluation.evaluate import evaluate, game_runs, summarise
    from .evaluation.report import as_csv, as_json, as_markdown, as_text

    _out_file("--json", None if ns.json == "-" else ns.json)  # - is stdout
    _out_file("--csv", ns.csv)
    _out_file("--markdown", ns.markdown)
    stages = stage_spec(ns.stages)  # a bad list is refused before any loading
    policy = _load_policy(ns.checkpoint, ns.sample)
    env_config = _play_config(ns, policy)
    stages = stages or stage_spec(env_config.stages)
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
    if ns.markdown:
        Path(ns.markdown).write_text(as_markdown(table))
    return 0


def _record(ns: argparse.Namespace) -> int:
    from .evaluation.media import realtime_fps, record, save_clips, save_grid

    stages = stage_spec(ns.stages)
    out = _out_dir(ns.out)
    policy = _load_policy(ns.checkpoint, ns.sample)
    env_config = _play_config(ns, policy)
    stages = stages or stage_spec(env_config.stages)
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


def _export(ns: argparse.Namespace) -> int:
    from .evaluation.policy import export_policy
    from .io.checkpoint import CheckpointError

    out = Path(ns.out)
    if out.exists() or out.is_symlink():
        raise UsageError(f"--out: {out} already exists; name a new directory (nothing is replaced)")
    if not out.parent.is_dir():
        raise UsageError(f"--out: directory {out.parent} does not exist")
    try:
        path, size = export_policy(ns.checkpoint, out, ns.note, trained=ns.trained)
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    print(f"wrote {path} (weights {size / 1e6:.2f} MB)")
    return 0


def _plot(ns: argparse.Namespace) -> int:
    from .evaluation.plots import (
        stages_cleared_curve,
        stages_cleared_points,
        success_map,
        training_curves,
    )
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
        points = stages_cleared_points(rows)
        if any(p["stages"] > 1 for p in points):
            # A many-stage run: its campaign curve, and the numbers behind it.
            print(f"wrote {path}")
            path = stages_cleared_curve(rows, out / "stages-cleared.png", title=name)
            print(f"wrote {path}")
            print("step        hours  stages cleared  mean progress")
            for p in points:
                hours = "-" if p["hours"] is None else f"{p['hours']:.2f}"
                share = "-" if p["mean_progress"] is None else f"{p['mean_progress']:.1%}"
                cleared = f"{p['stages_cleared']}/{p['stages']}"
                print(f"{p['step']:<11,} {hours:>5}  {cleared:<14}  {share}")
            return 0
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

    stage = stage_spec(ns.stage)
    if stage is not None and stage != "game" and len(stage_list(stage)) != 1:
        raise UsageError(f"--stage takes one stage (1-1 … 8-4) or game, got {ns.stage!r}")
    policy = _load_policy(ns.checkpoint, ns.sample)
    env_config = _play_config(ns, policy)
    if stage is None:
        sel = stage_spec(env_config.stages)
        stage = "game" if sel == "game" else stage_list(sel)[0]
    try:
        viewer = open_viewer(f"mario-rl: {stage}", scale=ns.scale)
    except DisplayError as e:
        raise UsageError(str(e)) from None
    play(policy, env_config, stage, viewer, episodes=ns.episodes, seed=ns.seed, fps=ns.fps)
    return 0


HANDLERS = {"eval": _eval, "record": _record, "export": _export, "plot": _plot, "play": _play}
"""Each subcommand's handler: the parsed namespace in, the exit code out."""
