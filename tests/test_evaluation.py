"""Evaluation tables: a scripted policy's numbers match what the environment reports, whole-game
and flag bookkeeping on scripted step infos, and the JSON / CSV / text schemas."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from mario_rl.envs import EnvConfig, MarioEnv, action_meanings
from mario_rl.envs.stages import STAGES
from mario_rl.evaluation.evaluate import (
    StageReport,
    _play_chunk,
    evaluate,
    game_runs,
    game_table,
    summarise,
)
from mario_rl.evaluation.levels import stage_length
from mario_rl.evaluation.report import CSV_FIELDS, as_csv, as_json, as_text

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
        full = {"stage": 0, "x_max": 40, "time": 400, "lives": 2, "flag_get": False} | d
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
    episode = {"stage": one_two, "x_max": 350, "reason": "game_over", "l": 5, "time_left": 395,
               "stages_cleared": 1, "r": 12.5}  # fmt: skip
    (result,) = _play_chunk(ScriptedEnv(infos, episode), always(0), 0, None)
    table = game_table(StageReport([result]))
    assert list(table) == ["1-1", "1-2"]
    assert table["1-1"]["clear_rate"] == 1.0 and table["1-1"]["mean_progress"] == 1.0
    assert table["1-1"]["mean_steps_to_flag"] == 2 and table["1-1"]["mean_game_time_to_flag"] == 10
    assert table["1-1"]["deaths"] == 0
    assert table["1-2"]["clear_rate"] == 0.0 and table["1-2"]["max_x"] == 350
    assert table["1-2"]["deaths"] == 2  # one on the way, one that ended the game
    assert table["1-2"]["mean_progress"] == pytest.approx(350 / stage_length("1-2"))
    (run,) = game_runs(StageReport([result]))
    assert run["cleared"] == ["1-1"] and run["path"] == ["1-1", "1-2"]
    assert (run["ended_on"], run["x"], run["reason"], run["steps"]) == ("1-2", 350, "game_over", 5)
    assert summarise({"game": StageReport([result])}) == table


def test_flag_on_the_last_step_counts_steps_and_in_game_time():
    infos = [{}, {"x_max": 1500, "time": 330}]
    episode = {"stage": 0, "x_max": 3166, "reason": "flag", "l": 2, "time_left": 250,
               "stages_cleared": 1, "r": 300.0}  # fmt: skip
    (result,) = _play_chunk(ScriptedEnv(infos, episode), always(0), 0, None)
    row = StageReport([result]).summary()
    assert row["clear_rate"] == 1.0 and row["mean_progress"] == 1.0 and row["max_x"] == 3166
    assert row["mean_steps_to_flag"] == 2
    assert row["mean_game_time_to_flag"] == 150 and row["mean_time_left_at_flag"] == 250
    assert row["deaths"] == 0 and row["ends"] == {"flag": 1}


def test_json_csv_and_text_schemas():
    infos = [{}, {"x_max": 700, "time": 395}]
    episode = {"stage": 0, "x_max": 720, "reason": "death", "l": 2, "time_left": 394,
               "stages_cleared": 0, "r": 60.0}  # fmt: skip
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
    text = as_text(table)
    assert "1-1" in text and "23%" in text and "0/1 episodes" in text
