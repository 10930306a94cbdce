"""Render an evaluation: a terminal table, JSON, CSV, and Markdown of the stages still to clear."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from .evaluate import END_BUCKET_PX

CSV_FIELDS = (
    "stage", "episodes", "clear_rate", "mean_x", "max_x", "stage_length", "mean_progress",
    "max_progress", "mean_return", "mean_steps_to_flag", "mean_game_time_to_flag",
    "mean_time_left_at_flag", "deaths", "mean_stages_cleared",
    # Added later, so appended: readers of the older columns keep working.
    "median_end_x", "top_end_x", "top_end_share", "end_deaths", "end_timeouts",
)  # fmt: skip
"""CSV columns, one row per stage (a column a table lacks stays empty)."""

CLEARED_BAR = 0.8
"""Clear rate from which a stage counts as cleared in the Markdown summary: the project's bar of
8 of 10 greedy episodes."""


def as_json(
    checkpoint: str, episodes: int, table: dict[str, dict], extra: dict | None = None
) -> str:
    """``{"checkpoint": …, "episodes": N, …extra, "stages": {"1-1": {...}, …}}``."""
    doc: dict[str, Any] = {
        "checkpoint": checkpoint,
        "episodes": episodes,
        **(extra or {}),
        "stages": table,
    }
    return json.dumps(doc, indent=1)


def as_csv(table: dict[str, dict]) -> str:
    """One row per stage with the summary columns."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for stage, row in table.items():
        w.writerow({"stage": stage, **row})
    return buf.getvalue()


def _num(value: float | None, fmt: str = ".0f") -> str:
    return "-" if value is None else format(value, fmt)


def _end_x(row: dict) -> str:
    """Where the episodes without a clear ended: ``median (top bucket share)``, e.g.
    ``1210 (1216 67%)``; ``-`` when all cleared (or for a table from before these columns)."""
    if row.get("median_end_x") is None:
        return "-"
    return f"{row['median_end_x']:.0f} ({row['top_end_x']} {row['top_end_share']:.0%})"


def as_text(table: dict[str, dict], runs: list[dict] | None = None) -> str:
    """A readable table for the terminal; ``runs`` (whole-game mode) adds one line per run."""
    head = (
        f"{'stage':<6} {'eps':>4} {'clear':>6} {'mean x':>7} {'max x':>6} {'length':>6}"
        f" {'progress':>8} {'steps→flag':>10} {'time→flag':>9} {'deaths':>6}"
        f" {'end x (top 64px)':>16}  ends"
    )
    lines = [head, "-" * len(head)]
    for stage, r in table.items():
        ends = ", ".join(f"{k} {v}" for k, v in r.get("ends", {}).items())
        lines.append(
            f"{stage:<6} {r['episodes']:>4} {r['clear_rate']:>6.0%} {r['mean_x']:>7.0f}"
            f" {r['max_x']:>6} {_num(r.get('stage_length')):>6}"
            f" {r.get('mean_progress', 0.0):>8.0%} {_num(r.get('mean_steps_to_flag')):>10}"
            f" {_num(r.get('mean_game_time_to_flag')):>9} {r['deaths']:>6}"
            f" {_end_x(r):>16}  {ends}"
        )
    if runs is None:
        n = sum(r["episodes"] for r in table.values())
        cleared = sum(r["clear_rate"] * r["episodes"] for r in table.values())
        lines.append(f"overall: {cleared:.0f}/{n} episodes reached the flag")
    else:
        lines.append("(whole game: each row counts the runs that reached the stage)")
        for k, run in enumerate(runs, 1):
            cleared = " → ".join(run["cleared"]) or "none"
            lines.append(
                f"run {k}: cleared {len(run['cleared'])} ({cleared}); ended on {run['ended_on']}"
                f" at x {run['x']} ({run['progress']:.0%}) by {run['reason']}"
                f" after {run['steps']} steps, {run['deaths']} lives lost"
            )
    return "\n".join(lines)


def _cleared(row: dict, bar: float) -> bool:
    return row.get("clear_rate", 0.0) >= bar


def as_markdown(table: dict[str, dict], bar: float = CLEARED_BAR) -> str:
    """What is left: a Markdown table of the stages whose clear rate is under ``bar`` (where the
    episodes without a clear ended), then one line naming the stages at or above it."""
    left = {s: r for s, r in table.items() if not _cleared(r, bar)}
    done = [s for s, r in table.items() if _cleared(r, bar)]
    lines = []
    if left:
        lines += [
            "| stage | clear rate | mean progress | median end x | top end x (64 px) | share there"
            " | stage length |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for stage, r in left.items():
            rate, n = r.get("clear_rate", 0.0), r.get("episodes", 0)
            top, share = r.get("top_end_x"), r.get("top_end_share")
            cells = [
                stage,
                f"{rate:.0%} ({round(rate * n)}/{n})",
                f"{r.get('mean_progress', 0.0):.0%}",
                _num(r.get("median_end_x")),
                "-" if top is None else f"{top}–{top + END_BUCKET_PX - 1}",
                "-" if share is None else f"{share:.0%}",
                _num(r.get("stage_length")),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    else:
        lines.append(f"Every stage has a clear rate of {bar:.0%} or more.")
    lines += ["", f"Cleared (clear rate ≥ {bar:.0%}): {len(done)} — {', '.join(done) or 'none'}"]
    return "\n".join(lines) + "\n"
