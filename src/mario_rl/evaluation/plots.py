"""PNG charts: training curves from a run's metrics rows, a many-stage run's stages cleared
against steps and hours, and the 8x4 stage success map of an evaluation JSON.

Figures are drawn with matplotlib's object API on an Agg canvas, never through pyplot, so
plotting works without a display and leaves the caller's (e.g. a notebook's) backend alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..envs.stages import STAGES
from .levels import stage_length
from .report import CLEARED_BAR

# Each panel: title, candidate keys (older runs used the first), y label.
CURVES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("episode return", ("charts/episodic_return", "charts/episode_return"), "return"),
    ("progress", ("charts/x_max",), "x reached (mean per episode)"),
    ("flag rate", ("charts/flag_rate",), "share of episodes at the flag"),
    ("speed", ("charts/SPS",), "agent steps per second"),
)
EVAL_OVERLAYS = {"progress": "eval/mean_x", "flag rate": "eval/flag_rate"}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _series(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the first key present, rows without a finite value skipped."""
    for key in keys:
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float)]
        if pts:
            a = np.array(pts, float)
            return a[:, 0], a[:, 1]
    return np.zeros(0), np.zeros(0)


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (the first points average what exists so far)."""
    if window <= 1 or len(values) == 0:
        return values
    c = np.cumsum(np.insert(values, 0, 0.0))
    n = np.arange(1, len(values) + 1)
    lo = np.maximum(n - window, 0)
    return (c[n] - c[lo]) / (n - lo)


def training_curves(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Return, x, flag rate and SPS against training steps as one 2x2 PNG at ``path``.

    Raw points are faint, a moving average over about 1/50 of the points is drawn on top;
    evaluation results, where the run logged them, are drawn as dots.
    """
    if not rows:
        raise ValueError("no metrics rows to plot")
    fig = _figure(11, 7)
    axes = fig.subplots(2, 2, sharex=True).ravel()
    for ax, (name, keys, ylabel) in zip(axes, CURVES, strict=True):
        steps, values = _series(rows, keys)
        if len(steps):
            line = ax.plot(steps, values, alpha=0.25, linewidth=0.8)[0]
            ax.plot(steps, smooth(values, max(1, len(values) // 50)), color=line.get_color())
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        if name in EVAL_OVERLAYS:
            es, ev = _series(rows, (EVAL_OVERLAYS[name],))
            if len(es):
                ax.plot(es, ev, "o", markersize=3, color="black", label="evaluation")
                ax.legend(loc="best", fontsize=8)
        ax.set_title(name)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    for ax in axes[2:]:
        ax.set_xlabel("agent steps")
    if title:
        fig.suptitle(title)
    fig.savefig(path)
    return path


def stages_cleared_points(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One point per evaluation that logged stages cleared: its step, the training hours spent by then
    (None where the run did not log ``charts/train_hours``), stages cleared, stages evaluated, and
    the mean progress over them (each stage's mean x as a share of its length, capped at 1).

    Hours are read off the nearest training rows (linear between them): evaluations run beside
    training and log at the step of the checkpoint they evaluated.
    """
    hs, hv = _series(rows, ("charts/train_hours",))
    points = []
    for r in rows:
        cleared = r.get("eval/stages_cleared")
        if not isinstance(cleared, int | float):
            continue
        rates = [
            v for k, v in r.items() if k.startswith("eval/stage/") and k.endswith("/clear_rate")
        ]
        evaluated = len(rates)
        if rates:
            # Re-read from the per-stage rates: logs before session 12 counted only 100 % clears.
            cleared = sum(float(v) >= CLEARED_BAR - 1e-9 for v in rates)
        shares = [
            min(1.0, float(v) / stage_length(k.split("/")[2]))
            for k, v in r.items()
            if k.startswith("eval/stage/") and k.endswith("/mean_x") and k.split("/")[2] in STAGES
        ]
        # Before the first timed row (a leg trained before hours were logged) it is unknown.
        hours = float(np.interp(r["step"], hs, hv)) if len(hs) and r["step"] >= hs[0] else None
        points.append(
            {
                "step": int(r["step"]),
                "hours": hours,
                "stages_cleared": int(cleared),
                "stages": evaluated,
                "mean_progress": sum(shares) / len(shares) if shares else None,
            }
        )
    return points


def stages_cleared_curve(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Stages cleared at each evaluation against agent steps and against training hours, side
    by side: the curve a many-stage campaign is judged by."""
    points = stages_cleared_points(rows)
    if not points:
        raise ValueError("no evaluation logged eval/stages_cleared (a run over several stages)")
    fig = _figure(11, 4)
    by_steps, by_hours = fig.subplots(1, 2, sharey=True)
    ys = [p["stages_cleared"] for p in points]
    by_steps.plot([p["step"] for p in points], ys, "o-", markersize=3)
    by_steps.set_xlabel("agent steps")
    timed = [p for p in points if p["hours"] is not None]
    if timed:
        by_hours.plot([p["hours"] for p in timed], [p["stages_cleared"] for p in timed], "o-",
                      markersize=3)  # fmt: skip
    else:
        by_hours.text(0.5, 0.5, "training hours not logged", ha="center", va="center",
                      transform=by_hours.transAxes)  # fmt: skip
    by_hours.set_xlabel("training hours (all legs, wall clock)")
    most = max(p["stages"] for p in points)
    by_steps.set_ylabel(f"stages cleared (of {most} evaluated)")
    by_steps.set_ylim(-0.3, most + 0.3)
    for ax in (by_steps, by_hours):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.savefig(path)
    return path


def success_map(doc: dict[str, Any], path: Path) -> Path:
    """The 32 stages as an 8x4 map (worlds across, stages down) coloured by clear rate, each
    cell labelled with its clear rate and mean progress; stages not evaluated are grey."""
    stages = doc.get("stages")
    if not isinstance(stages, dict):
        raise ValueError("not an evaluation JSON: it has no 'stages' object")
    rates = np.full((4, 8), np.nan)
    for name, row in stages.items():
        if name in STAGES and isinstance(row, dict) and "clear_rate" in row:
            i = STAGES.index(name)
            rates[i % 4, i // 4] = float(row["clear_rate"])
    fig = _figure(9, 5)
    ax = fig.subplots()
    from matplotlib import colormaps

    cmap = colormaps["RdYlGn"].with_extremes(bad="#d0d0d0")
    im = ax.imshow(np.ma.masked_invalid(rates), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    for i, name in enumerate(STAGES):
        r, c = i % 4, i // 4
        row = stages.get(name)
        if isinstance(row, dict) and "clear_rate" in row:
            prog = row.get("mean_progress")
            label = f"{name}\n{row['clear_rate']:.0%}"
            if isinstance(prog, int | float):
                label += f"\n({prog:.0%} of stage)"
        else:
            label = f"{name}\nn/a"
        rate = rates[r, c]
        dark = not np.isnan(rate) and (rate < 0.2 or rate > 0.85)  # ends of RdYlGn are dark
        ax.text(
            c, r, label, ha="center", va="center", fontsize=8, color="white" if dark else "black"
        )
    ax.set_xticks(range(8), [f"world {w}" for w in range(1, 9)])
    ax.set_yticks(range(4), [f"stage {s}" for s in range(1, 5)])
    ax.tick_params(length=0)
    fig.colorbar(im, ax=ax, label="clear rate", fraction=0.04)
    episodes = doc.get("episodes")
    ck = doc.get("checkpoint", "")
    ax.set_title(f"clear rate per stage — {ck}" + (f", {episodes} episodes" if episodes else ""))
    fig.savefig(path)
    return path
