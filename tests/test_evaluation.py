"""Evaluation tables: a scripted policy's numbers match what the environment reports, whole-game
and flag bookkeeping on scripted step infos, where failed episodes end, and the JSON / CSV /
text / Markdown schemas."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from mario_rl.envs import EnvConfig, MarioEnv, action_meanings
from mario_rl.envs.stages import STAGES
from mario_rl.evaluation.evaluate import (
    EpisodeResult,
    StageReport,
    StageVisit,
    _play_chunk,
    end_places,
    evaluate,
    game_runs,
    game_table,
    summarise,
)
from mario_rl.evaluation.levels import stage_length
from mario_rl.evaluation.report import CSV_FIELDS, as_csv, as_json, as_markdown, as_text

RIGHT_JUMP = action_meanings("simple").index("right+A")


def always(action: int):
    return lambda obs, first: np.full(len(obs), action)


def env_episode(stage: str, action: int) -> dict:
    """One episode of a constant action in the plain single env: what the env itself reports."""
    env = MarioEnv(EnvConfig(stages=stage, noop_max=0))
    try:
        env.reset(seed=0)
        while True:
            _, _, term, trunc, info = env.step(action)
            if term or trunc:
                return info["episode"]
    finally:
        env.close()


def test_scripted_policy_table_matches_the_environment():
    # Without no-op starts the episode is fixed: always right+jump runs into 1-1's first goomba.
    expected = {s: env_episode(s, RIGHT_JUMP) for s in ("1-1", "1-2")}
    reports = evaluate(
        always(RIGHT_JUMP), EnvConfig(noop_max=0), "1-1,1-2", episodes=2, seed=3, workers=2
    )
    table = summarise(reports)
    assert list(table) == ["1-1", "1-2"]
    for stage, ep in expected.items():
        row = table[stage]
        assert row["episodes"] == 2
        assert row["clear_rate"] == (1.0 if ep["flag"] else 0.0)
        assert row["mean_x"] == row["max_x"] == ep["x_max"]
        assert row["stage_length"] == stage_length(stage)
        assert row["mean_progress"] == pytest.approx(ep["x_max"] / stage_length(stage))
        assert row["mean_return"] == pytest.approx(ep["r"])
        assert row["ends"] == {ep["reason"]: 2}
        assert row["deaths"] == (2 if ep["reason"] in ("death", "game_over") else 0)
        if not ep["flag"]:
            assert row["end_xs"] == [ep["x_end"]] * 2 and row["median_end_x"] == ep["x_end"]
        for e in reports[stage].episodes:
            assert (e.steps, e.x_max, e.reason, e.time_left) == (
                ep["l"], ep["x_max"], ep["reason"], ep["time_left"]
            )  # fmt: skip
    assert expected["1-1"]["reason"] == "death" and table["1-1"]["mean_steps_to_flag"] is None


class ScriptedEnv:
    """Replays per-step infos of one env (the vector env's contract), then ends the episode."""

    num_envs = 1

    def __init__(self, infos: list[dict], episode: dict) -> None:
        self.infos, self.episode = infos, episode
        self.t = 0

    @staticmethod
    def _info(d: dict) -> dict:
        full = {"stage": 0, "x_pos": 40, "x_max": 40, "time": 400, "lives": 2, "flag_get": False}
        full |= d
        return {k: np.array([v]) for k, v in full.items()}

    def reset(self):
        return np.zeros((1, 4, 84, 84), np.uint8), self._info(self.infos[0])

    def step(self, actions):
        self.t += 1
        end = self.t == len(self.infos)
        info = self._info(self.infos[0] if end else self.infos[self.t])  # autoreset: a new start
        if end:
            info["episode"] = {k: np.array([v], dtype=object) for k, v in self.episode.items()}
        obs = np.zeros((1, 4, 84, 84), np.uint8)
        return obs, np.zeros(1), np.array([end]), np.array([False]), info

    def rgb(self, i):
        return np.zeros((240, 256, 3), np.uint8)

    def keep_final_rgb(self, on=True):
        pass


def test_whole_game_run_lists_stages_cleared_and_where_it_ended():
    one_two = STAGES.index("1-2")
    infos = [
        {},  # reset: 1-1, clock 400
        {"x_max": 100, "time": 399},
        {"x_max": 3165, "time": 390, "flag_get": True},
        {"stage": one_two, "time": 400},
        {"stage": one_two, "x_max": 300, "time": 398, "lives": 1},  # a life lost
    ]
    episode = {"stage": one_two, "x_max": 350, "x_end": 340, "reason": "game_over", "l": 5,
               "time_left": 395, "stages_cleared": 1, "r": 12.5}  # fmt: skip
    (result,) = _play_chunk(ScriptedEnv(infos, episode), always(0), 0, None)
    table = game_table(StageReport([result]))
    assert list(table) == ["1-1", "1-2"]
    assert table["1-1"]["clear_rate"] == 1.0 and table["1-1"]["mean_progress"] == 1.0
    assert table["1-1"]["mean_steps_to_flag"] == 2 and table["1-1"]["mean_game_time_to_flag"] == 10
    assert table["1-1"]["deaths"] == 0
    assert table["1-1"]["end_xs"] == [] and table["1-1"]["median_end_x"] is None
    assert table["1-2"]["end_xs"] == [340] and table["1-2"]["end_deaths"] == 1
    assert table["1-2"]["clear_rate"] == 0.0 and table["1-2"]["max_x"] == 350
    assert table["1-2"]["deaths"] == 2  # one on the way, one that ended the game
    assert table["1-2"]["mean_progress"] == pytest.approx(350 / stage_length("1-2"))
    (run,) = game_runs(StageReport([result]))
    assert run["cleared"] == ["1-1"] and run["path"] == ["1-1", "1-2"]
    assert (run["ended_on"], run["x"], run["reason"], run["steps"]) == ("1-2", 350, "game_over", 5)
    assert summarise({"game": StageReport([result])}) == table


def test_whole_game_times_a_stage_from_its_own_clock_not_the_last_ones():
    one_two = STAGES.index("1-2")
    infos = [
        {},  # reset: 1-1, clock 400
        {"x_max": 3165, "time": 390, "flag_get": True},
        {"stage": one_two, "time": 0},  # 1-2 already, the clock still 1-1's (tallied)
        {"stage": one_two, "time": 400},
        {"stage": one_two, "x_max": 3000, "time": 380, "flag_get": True},
        {"stage": one_two + 1, "time": 300},
    ]
    episode = {"stage": one_two + 1, "x_max": 50, "x_end": 50, "reason": "game_over", "l": 6,
               "time_left": 300, "stages_cleared": 2, "r": 1.0}  # fmt: skip
    (result,) = _play_chunk(ScriptedEnv(infos, episode), always(0), 0, None)
    table = game_table(StageReport([result]))
    assert table["1-1"]["mean_game_time_to_flag"] == 10
    assert table["1-2"]["mean_game_time_to_flag"] == 20


def test_flag_on_the_last_step_counts_steps_and_in_game_time():
    infos = [{}, {"x_max": 1500, "time": 330}]
    episode = {"stage": 0, "x_max": 3166, "x_end": 3166, "reason": "flag", "l": 2,
               "time_left": 250, "stages_cleared": 1, "r": 300.0}  # fmt: skip
    (result,) = _play_chunk(ScriptedEnv(infos, episode), always(0), 0, None)
    row = StageReport([result]).summary()
    assert row["clear_rate"] == 1.0 and row["mean_progress"] == 1.0 and row["max_x"] == 3166
    assert row["mean_steps_to_flag"] == 2
    assert row["mean_game_time_to_flag"] == 150 and row["mean_time_left_at_flag"] == 250
    assert row["deaths"] == 0 and row["ends"] == {"flag": 1}


def test_json_csv_and_text_schemas():
    infos = [{}, {"x_pos": 700, "x_max": 700, "time": 395}]
    # It died at 705, after the last step the visits saw (x 700).
    episode = {"stage": 0, "x_max": 720, "x_end": 705, "reason": "death", "l": 2,
               "time_left": 394, "stages_cleared": 0, "r": 60.0}  # fmt: skip
    (result,) = _play_chunk(ScriptedEnv(infos, episode), always(0), 0, None)
    table = summarise({"1-1": StageReport([result])})
    doc = json.loads(as_json("ck", 1, table, {"seed": 0}))
    assert list(doc)[:2] == ["checkpoint", "episodes"] and list(doc)[-1] == "stages"
    assert doc["checkpoint"] == "ck" and doc["episodes"] == 1
    row = doc["stages"]["1-1"]
    for key in ("clear_rate", "mean_x", "max_x", "mean_progress", "stage_length",
                "mean_steps_to_flag", "mean_game_time_to_flag", "deaths", "ends"):  # fmt: skip
        assert key in row
    assert row["max_x"] == 720 and row["deaths"] == 1 and row["clear_rate"] == 0.0
    rows = list(csv.DictReader(io.StringIO(as_csv(table))))
    assert tuple(rows[0]) == CSV_FIELDS and rows[0]["stage"] == "1-1" and rows[0]["max_x"] == "720"
    assert rows[0]["mean_steps_to_flag"] == ""  # not cleared: empty, not 0
    assert row["end_xs"] == [705] and "end_xs" not in rows[0]  # the list is JSON only
    assert (rows[0]["median_end_x"], rows[0]["top_end_x"], rows[0]["top_end_share"]) == (
        "705.0", "704", "1.0"
    )  # fmt: skip
    assert (rows[0]["end_deaths"], rows[0]["end_timeouts"]) == ("1", "0")
    text = as_text(table)
    assert "1-1" in text and "23%" in text and "0/1 episodes" in text
    assert "705 (704 100%)  death 1" in text


def test_csv_columns_keep_the_old_order_and_append_the_end_places():
    old = ("stage", "episodes", "clear_rate", "mean_x", "max_x", "stage_length", "mean_progress",
           "max_progress", "mean_return", "mean_steps_to_flag", "mean_game_time_to_flag",
           "mean_time_left_at_flag", "deaths", "mean_stages_cleared")  # fmt: skip
    assert (
        *old, "median_end_x", "top_end_x", "top_end_share", "end_deaths", "end_timeouts"
    ) == CSV_FIELDS  # fmt: skip


def test_end_places_median_bucket_share_and_how():
    row = end_places([700, 130, 150, 3000, 100], ["stall", "death", "game_over", "warp", "timeout"])
    assert row["end_xs"] == [100, 130, 150, 700, 3000]
    assert row["median_end_x"] == 150.0
    # 64-px stretches: 100 -> 64, 130 and 150 -> 128, 700 -> 640, 3000 -> 2944.
    assert (row["top_end_x"], row["top_end_share"]) == (128, 0.4)
    assert (row["end_deaths"], row["end_timeouts"]) == (2, 2)  # the warp is neither
    # A tie goes to the stretch met first; an even count's median is the middle pair's mean.
    tie = end_places([210, 10, 200, 20], ["death"] * 4)  # two in 0-63, two in 192-255
    assert (tie["median_end_x"], tie["top_end_x"], tie["top_end_share"]) == (110.0, 0, 0.5)
    none = end_places([], [])
    assert none == {"end_xs": [], "median_end_x": None, "top_end_x": None,
                    "top_end_share": None, "end_deaths": 0, "end_timeouts": 0}  # fmt: skip
    with pytest.raises(ValueError, match="2 end x values for 1"):
        end_places([1, 2], ["death"])


def episode(stage: str, cleared: bool, x_max: int, x_end: int, reason: str) -> EpisodeResult:
    """A synthetic one-stage episode record."""
    visit = StageVisit(stage, x_max, cleared, steps=100, deaths=int(reason == "death"),
                       x_end=x_end, end=reason)  # fmt: skip
    return EpisodeResult(stage, cleared, x_max, 100, reason, 10.0, int(cleared), 300,
                         visit.deaths, [visit])  # fmt: skip


def test_stage_summary_says_where_and_how_failed_episodes_ended():
    eps = [
        episode("1-2", True, 3165, 3165, "flag"),
        episode("1-2", False, 700, 690, "death"),  # died a little behind its furthest x
        episode("1-2", False, 1300, 1300, "stall"),
        episode("1-2", False, 660, 650, "death"),
    ]
    row = StageReport(eps).summary()
    assert row["clear_rate"] == 0.25 and row["max_x"] == 3165 and row["deaths"] == 2
    assert row["end_xs"] == [650, 690, 1300]  # the clear is not among them
    assert row["median_end_x"] == 690.0
    assert (row["top_end_x"], row["top_end_share"]) == (640, pytest.approx(2 / 3))
    assert (row["end_deaths"], row["end_timeouts"]) == (2, 1)
    assert row["ends"] == {"death": 2, "flag": 1, "stall": 1}  # unchanged: every episode


def test_whole_game_stage_left_by_a_warp_ends_where_it_was_left():
    four_one = STAGES.index("4-1")
    infos = [
        {},  # reset: 1-1
        {"x_pos": 480, "x_max": 500, "time": 399},
        {"stage": four_one, "x_pos": 40, "x_max": 40, "time": 400},  # through a warp pipe
    ]
    episode = {"stage": four_one, "x_max": 60, "x_end": 55, "reason": "stall", "l": 3,
               "time_left": 399, "stages_cleared": 0, "r": 5.0}  # fmt: skip
    (result,) = _play_chunk(ScriptedEnv(infos, episode), always(0), 0, None)
    assert [(v.stage, v.x_end, v.end) for v in result.path] == [
        ("1-1", 480, "warp"), ("4-1", 55, "stall")
    ]  # fmt: skip
    table = game_table(StageReport([result]))
    assert table["1-1"]["end_xs"] == [480] and table["1-1"]["end_timeouts"] == 0
    assert table["4-1"]["end_xs"] == [55] and table["4-1"]["end_timeouts"] == 1


def test_markdown_lists_the_stages_left_then_the_cleared_ones():
    rows = {
        "1-1": {"episodes": 10, "clear_rate": 0.8, "mean_progress": 0.95, "stage_length": 3168},
        "1-2": {"episodes": 10, "clear_rate": 0.3, "mean_progress": 0.456, "median_end_x": 1210.5,
                "top_end_x": 1216, "top_end_share": 2 / 3, "stage_length": 3168},
        "1-3": {"episodes": 10, "clear_rate": 1.0, "mean_progress": 1.0, "stage_length": 2432},
    }  # fmt: skip
    assert as_markdown(rows) == (
        "| stage | clear rate | mean progress | median end x | top end x (64 px) | share there"
        " | stage length |\n"
        "|---|---:|---:|---:|---:|---:|---:|\n"
        "| 1-2 | 30% (3/10) | 46% | 1210 | 1216–1279 | 67% | 3168 |\n"
        "\n"
        "Cleared (clear rate ≥ 80%): 2 — 1-1, 1-3\n"
    )
    done = as_markdown({"1-1": rows["1-1"]})
    assert done.startswith("Every stage has a clear rate of 80% or more.\n")
    assert done.endswith("Cleared (clear rate ≥ 80%): 1 — 1-1\n")
    assert as_markdown(rows, bar=1.0).count("\n| 1-") == 2  # 1-1 and 1-2 under a 100% bar
