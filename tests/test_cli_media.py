"""The eval, record, plot and play commands end to end on a small untrained checkpoint, and their
bad input refused in one line with exit code 2 and nothing written."""

from __future__ import annotations

import json
import sys

import pytest
from PIL import Image

from checkpoints import fresh_checkpoint
from mario_rl.cli import main
from mario_rl.envs import EnvConfig


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    # Short episodes: an untrained policy mostly stands still, and the stall rule ends it.
    env = EnvConfig(stall_steps=40, max_steps=300)
    return str(fresh_checkpoint(tmp_path_factory.mktemp("ck") / "final", env))


def one_line_error(capsys, needle: str) -> None:
    err = capsys.readouterr().err
    assert err.startswith("mario-rl: error:") and err.count("\n") == 1, err
    assert needle in err, err


def test_eval_table_json_csv_and_markdown(ck, tmp_path, capsys):
    j, c, m = tmp_path / "e.json", tmp_path / "e.csv", tmp_path / "left.md"
    args = ["eval", "--checkpoint", ck, "--stages", "1-1,1-2", "--episodes", "2", "--workers", "2"]
    assert main([*args, "--json", str(j), "--csv", str(c), "--markdown", str(m)]) == 0
    out = capsys.readouterr().out
    assert "progress" in out and "1-2" in out
    doc = json.loads(j.read_text())
    assert (
        doc["checkpoint"] == ck and doc["episodes"] == 2 and list(doc["stages"]) == ["1-1", "1-2"]
    )
    for row in doc["stages"].values():
        assert row["episodes"] == 2 and 0 <= row["clear_rate"] <= 1
        assert 0 <= row["mean_progress"] <= 1 and row["stage_length"] > 2000
        assert row["max_x"] >= row["mean_x"] > 0
        fails = round(2 * (1 - row["clear_rate"]))
        assert len(row["end_xs"]) == fails and row["end_xs"] == sorted(row["end_xs"])
        assert row["end_deaths"] + row["end_timeouts"] <= fails
    header, *lines = c.read_text().splitlines()
    assert header.startswith("stage,episodes,clear_rate,mean_x,max_x") and len(lines) == 2
    assert header.endswith(",median_end_x,top_end_x,top_end_share,end_deaths,end_timeouts")
    md = m.read_text().splitlines()
    left = [s for s, row in doc["stages"].items() if row["clear_rate"] < 0.8]
    done = [s for s in doc["stages"] if s not in left]
    assert md[-1] == f"Cleared (clear rate ≥ 80%): {len(done)} — {', '.join(done) or 'none'}"
    for stage in left:
        row = doc["stages"][stage]
        (line,) = [ln for ln in md if ln.startswith(f"| {stage} |")]
        median = "-" if row["median_end_x"] is None else f"{row['median_end_x']:.0f}"
        assert line.split(" | ")[3] == median and line.endswith(f"| {row['stage_length']} |")


def test_eval_whole_game_reports_the_run(ck, capsys):
    assert (
        main(["eval", "--checkpoint", ck, "--stages", "game", "--episodes", "1", "--json", "-"])
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    (run,) = doc["game"]["runs"]
    assert run["path"][0] == "1-1" and run["ended_on"] in doc["stages"]
    assert run["cleared"] == [s for s in run["path"] if doc["stages"][s]["clear_rate"] > 0]
    assert doc["stages"]["1-1"]["episodes"] == 1


@pytest.mark.parametrize("fmt", ["gif", "mp4"])
def test_record_one_video_per_stage(ck, tmp_path, capsys, fmt):
    out = tmp_path / "videos"
    assert (
        main(
            [
                "record",
                "--checkpoint",
                ck,
                "--stages",
                "1-1,1-2",
                "--format",
                fmt,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == [f"1-1.{fmt}", f"1-2.{fmt}"]
    assert "wrote" in capsys.readouterr().out
    if fmt == "gif":
        with Image.open(out / "1-1.gif") as im:
            assert im.size == (256, 240) and im.n_frames > 1


def test_record_grid_and_whole_game(ck, tmp_path):
    out = tmp_path / "v"
    args = ["record", "--checkpoint", ck, "--out", str(out)]
    assert main([*args, "--stages", "1-1,1-2,2-1,3-1,4-1", "--grid"]) == 0
    with Image.open(out / "grid.gif") as im:  # 5 tiles: 4 rows, 2 columns, half size, 2 px gaps
        assert im.size == (2 * 128 + 2, 4 * 120 + 3 * 2)
    assert main([*args, "--stages", "game"]) == 0
    assert (out / "game.gif").is_file()


def test_plot_run_and_eval_json(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": 512 * k, "charts/episodic_return": k, "charts/x_max": 400 + k,
             "charts/flag_rate": 0.0, "charts/SPS": 300.0} for k in range(1, 20)]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["plot", str(run), "--out", str(tmp_path / "png")]) == 0
    assert (tmp_path / "png" / "training-curves.png").is_file()
    for row in rows[5::6]:  # one stage: no campaign curve
        row |= {"eval/stage/1-1/clear_rate": 1.0, "eval/stages_cleared": 1.0}
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["plot", str(run), "--out", str(tmp_path / "png")]) == 0
    assert not (tmp_path / "png" / "stages-cleared.png").exists()
    capsys.readouterr()
    # A many-stage run also gets its stages-cleared curve, and the numbers behind it.
    for k, row in enumerate(rows):
        row["charts/train_hours"] = 0.1 * (k + 1)
        if k % 6 == 5:
            cleared = {f"eval/stage/{s}/clear_rate": float(i < k // 6) for i, s in
                       enumerate(("1-1", "1-2", "1-3"))}  # fmt: skip
            row |= cleared | {"eval/stages_cleared": float(sum(cleared.values()))}
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["plot", str(run)]) == 0
    assert (run / "stages-cleared.png").is_file()
    table = capsys.readouterr().out.splitlines()[-3:]
    assert table == [
        "3,072        0.60  0/3             -",
        "6,144        1.20  1/3             -",
        "9,216        1.80  2/3             -",
    ]
    ev = tmp_path / "e.json"
    ev.write_text(
        json.dumps({"checkpoint": "c", "episodes": 1, "stages": {"1-1": {"clear_rate": 1.0}}})
    )
    assert main(["plot", str(ev)]) == 0
    assert (tmp_path / "e-success-map.png").is_file()
    assert "wrote" in capsys.readouterr().out


class FakeViewer:
    def __init__(self) -> None:
        self.frames = 0
        self.closed = False

    def show(self, frame) -> None:
        assert frame.shape == (240, 256, 3)
        self.frames += 1

    def close(self) -> None:
        self.closed = True


def test_play_shows_the_episode_in_the_viewer(ck, monkeypatch, capsys):
    viewer = FakeViewer()
    monkeypatch.setattr("mario_rl.evaluation.watch.open_viewer", lambda *a, **k: viewer)
    assert main(["play", "--checkpoint", ck, "--stage", "1-1", "--fps", "1000"]) == 0
    assert viewer.frames > 1 and viewer.closed
    assert "episode 1: 1-1" in capsys.readouterr().out


def test_play_without_a_display_is_a_clear_error(ck, monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert main(["play", "--checkpoint", ck, "--stage", "1-1"]) == 2
    one_line_error(capsys, "$DISPLAY is not set")


def test_play_without_pyglet_is_a_clear_error(ck, monkeypatch, capsys):
    monkeypatch.setenv("DISPLAY", ":99")
    monkeypatch.setitem(sys.modules, "pyglet", None)  # import pyglet now raises ImportError
    assert main(["play", "--checkpoint", ck, "--stage", "1-1"]) == 2
    one_line_error(capsys, "pyglet is not installed")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["eval", "--checkpoint", "no/such/ck"], "does not exist"),
        (["record", "--checkpoint", "no/such/ck", "--out", "v"], "does not exist"),
        (["play", "--checkpoint", "no/such/ck"], "does not exist"),
        (["eval", "--checkpoint", "CK", "--stages", "9-1"], "1-1 … 8-4"),
        (["eval", "--checkpoint", "CK", "--stages", "1-1,,1-2"], "expected"),
        (["eval", "--checkpoint", "CK", "--markdown", "no/such/left.md"], "does not exist"),
        (["eval", "--checkpoint", "CK", "--markdown", "EMPTY"], "is a directory"),
        (["eval", "--checkpoint", "CK", "--json", "EMPTY"], "is a directory"),
        (["record", "--checkpoint", "CK", "--stages", "1-1,1-1", "--out", "v"], "listed twice"),
        (["record", "--checkpoint", "CK", "--stages", "all,game", "--out", "v"], "list"),
        (["record", "--checkpoint", "CK", "--format", "avi", "--out", "v"], "invalid choice"),
        (["record", "--checkpoint", "CK", "--tile-shrink", "3", "--out", "v"], "invalid choice"),
        (["record", "--checkpoint", "CK", "--out", "FILE"], "is a file"),
        (["record", "--checkpoint", "CK", "--every", "0", "--out", "v"], "> 0"),
        (["play", "--checkpoint", "CK", "--stage", "1-1,1-2"], "one stage"),
        (["play", "--checkpoint", "CK", "--fps", "-1"], "> 0"),
        (["plot", "no/such/run"], "does not exist"),
        (["plot", "EMPTY"], "metrics"),
        (["plot", "FILE"], "not JSON"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    args, needle, ck, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("not json")
    (tmp_path / "EMPTY").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    args = [ck if a == "CK" else a for a in args]
    assert main(args) == 2
    one_line_error(capsys, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
