"""Render an evaluation: a terminal table, JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

CSV_FIELDS = (
    "stage", "episodes", "clear_rate", "mean_x", "max_x", "mean_return",
    "mean_steps_to_flag", "mean_time_left_at_flag", "deaths", "mean_stages_cleared",
)  # fmt: skip


def as_json(
    checkpoint: str, episodes: int, table: dict[str, dict], extra: dict | None = None
) -> str:
    """``{"checkpoint": …, "episodes": N, "stages": {"1-1": {...}, …}}``."""
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


def as_text(table: dict[str, dict]) -> str:
    """A readable table for the terminal."""
    head = f"{'stage':<6} {'eps':>4} {'clear':>6} {'mean x':>7} {'max x':>6} {'steps→flag':>10} {'time left':>9} {'deaths':>6}  ends"
    lines = [head, "-" * len(head)]
    for stage, r in table.items():
        steps = "-" if r["mean_steps_to_flag"] is None else f"{r['mean_steps_to_flag']:.0f}"
        tleft = "-" if r["mean_time_left_at_flag"] is None else f"{r['mean_time_left_at_flag']:.0f}"
        ends = ", ".join(f"{k} {v}" for k, v in r["ends"].items())
        lines.append(
            f"{stage:<6} {r['episodes']:>4} {r['clear_rate']:>6.0%} {r['mean_x']:>7.0f} {r['max_x']:>6}"
            f" {steps:>10} {tleft:>9} {r['deaths']:>6}  {ends}"
        )
    n = sum(r["episodes"] for r in table.values())
    cleared = sum(r["clear_rate"] * r["episodes"] for r in table.values())
    lines.append(f"overall: {cleared:.0f}/{n} episodes reached the flag")
    return "\n".join(lines)
