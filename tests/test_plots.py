"""PNG charts: training curves from metrics rows and the 8x4 success map of an eval JSON."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mario_rl.evaluation.plots import (
    smooth,
    stages_cleared_curve,
    stages_cleared_points,
    success_map,
    training_curves,
)


def rows(n: int = 30) -> list[dict]:
    out = []
    for k in range(1, n + 1):
        row = {"step": 2048 * k, "charts/episodic_return": 50 + k, "charts/x_max": 600 + 10 * k,
               "charts/flag_rate": k / n, "charts/SPS": 200.0}  # fmt: skip
        if k % 10 == 0:
            row |= {"eval/mean_x": 700.0, "eval/flag_rate": 0.5}
        out.append(row)
    return out


def test_training_curves_png(tmp_path):
    path = training_curves(rows(), tmp_path / "c.png", title="run")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 600 and im.size[1] > 400
    # Newer runs name the return charts/episode_return; missing series say so instead of failing.
    renamed = [
        {"step": r["step"], "charts/episode_return": r["charts/episodic_return"]} for r in rows()
    ]
    assert training_curves(renamed, tmp_path / "d.png").is_file()
    with pytest.raises(ValueError):
        training_curves([], tmp_path / "e.png")


def test_stages_cleared_points_read_hours_between_training_rows(tmp_path):
    rows = [
        {"step": 1000, "charts/train_hours": 1.0},
        {"step": 3000, "charts/train_hours": 2.0},
        # An evaluation logs at its checkpoint's step, between training rows.
        {
            "step": 2000,
            "eval/stages_cleared": 2.0,
            "eval/stage/1-1/clear_rate": 1.0,
            "eval/stage/1-2/clear_rate": 0.8,
            "eval/stage/1-3/clear_rate": 0.2,
        },
    ]
    assert stages_cleared_points(rows) == [
        {"step": 2000, "hours": 1.5, "stages_cleared": 2, "stages": 3, "mean_progress": None}
    ]
    # Mean progress: each stage's mean x over its length (1-1's flag is at x 3168), capped at 1.
    rows[2] |= {"eval/stage/1-1/mean_x": 1584.0, "eval/stage/1-2/mean_x": 99999.0}
    assert stages_cleared_points(rows)[0]["mean_progress"] == pytest.approx(0.75)
    # Older runs did not log training hours: the steps are still there.
    late = [{"step": 2500, "charts/train_hours": 1.0}, *rows[1:]]
    assert stages_cleared_points(late)[0]["hours"] is None  # before the first timed row
    untimed = [r for r in rows if "charts/train_hours" not in r]
    assert stages_cleared_points(untimed)[0]["hours"] is None
    assert stages_cleared_curve(untimed, tmp_path / "s.png").is_file()
    with pytest.raises(ValueError, match="stages_cleared"):
        stages_cleared_curve(rows[:2], tmp_path / "t.png")


def test_smooth_is_a_trailing_mean():
    assert np.allclose(smooth(np.array([2.0, 4.0, 6.0, 8.0]), 2), [2, 3, 5, 7])
    assert np.array_equal(smooth(np.array([1.0, 5.0]), 1), [1, 5])


def test_success_map_png(tmp_path):
    doc = {"checkpoint": "ck", "episodes": 4, "stages": {
        "1-1": {"clear_rate": 1.0, "mean_progress": 1.0},
        "4-2": {"clear_rate": 0.25, "mean_progress": 0.6},
        "8-4": {"clear_rate": 0.0},
    }}  # fmt: skip
    path = success_map(doc, tmp_path / "m.png")
    with Image.open(path) as im:
        assert im.format == "PNG"
        rgb = np.asarray(im.convert("RGB"))
    assert rgb.std() > 10  # not a blank canvas
    with pytest.raises(ValueError):
        success_map({"episodes": 1}, tmp_path / "x.png")


def test_a_stage_counts_as_cleared_at_eight_of_ten():
    # Logs before session 12 counted a stage only at 100 %: the points re-read the rates.
    row = {"step": 10, "eval/stages_cleared": 0.0, "eval/stage/1-1/clear_rate": 0.8,
           "eval/stage/1-2/clear_rate": 0.7, "eval/stage/1-3/clear_rate": 1.0}  # fmt: skip
    (point,) = stages_cleared_points([row])
    assert (point["stages_cleared"], point["stages"]) == (2, 3)
