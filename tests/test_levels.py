"""Stage goals read from the ROM's level data: known facts of the game, and the RAM's view."""

from __future__ import annotations

import pytest

from mario_rl.envs import EnvConfig, MarioEnv
from mario_rl.envs.rules import read
from mario_rl.envs.stages import STAGES
from mario_rl.evaluation.levels import all_goals, main_area, progress, stage_goal, stage_length


def test_every_stage_has_a_goal_where_the_game_has_one():
    goals = all_goals()
    assert list(goals) == list(STAGES)
    for stage, goal in goals.items():
        # Castles (W-4) end at Bowser's axe, every other stage at a flag pole.
        assert goal.kind == ("axe" if stage.endswith("-4") else "flag"), stage
        assert 2000 <= goal.x <= 6100, (stage, goal)
    # Mario's x reads 3161-3170 when he grabs the 1-1 pole.
    assert 3161 <= stage_length("1-1") <= 3170
    # 8-1 is the longest stage; later stages reuse earlier areas.
    assert max(goals, key=lambda s: goals[s].x) == "8-1"
    assert goals["5-3"] == goals["1-3"] and goals["6-4"] == goals["1-4"]
    # Underground and water stages end through a pipe into 1-1's area, near its pole.
    for stage in ("1-2", "2-2", "4-2", "7-2"):
        assert goals[stage].area == stage_goal("1-1").area


def test_progress_is_a_share_of_the_stage():
    assert progress("1-1", 0) == 0.0
    assert progress("1-1", stage_length("1-1") // 2) == pytest.approx(0.5, abs=0.01)
    assert progress("1-1", 10_000) == 1.0
    assert progress("1-1", 100, cleared=True) == 1.0


@pytest.mark.parametrize("stage", ["1-1", "1-2", "1-3", "8-4"])
def test_main_area_is_the_area_the_emulator_plays(stage):
    env = MarioEnv(EnvConfig(stages=stage, noop_max=0))
    try:
        env.reset(seed=0)
        ram = env.group.emu.rams[0]
        area_number, area_type = int(ram[0x760]), int(ram[0x74E])
        area = read(ram.tobytes()).area
        next_pipe = int(ram[0x750])
    finally:
        env.close()
    index, pointer = main_area(stage)
    assert (index, (pointer >> 5) & 3) == (area_number, area_type)
    # The rules' area is the loaded one, not 0x750 (on 1-1 that already names the bonus room).
    assert area == pointer & 0x7F
    if stage == "1-1":
        assert next_pipe != area
