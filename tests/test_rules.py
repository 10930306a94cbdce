"""Episode rules and every reward component, on synthetic RAM (no emulator needed)."""

from __future__ import annotations

import pytest

from mario_rl.envs import EnvConfig, RewardConfig
from mario_rl.envs import rules as R


def ram(
    x: int = 40,
    y: int = 79,
    world: int = 1,
    stage: int = 1,
    area: int = 0x25,
    lives: int = 2,
    state: int = 8,
    time: int = 400,
    score: int = 0,
    flag: bool = False,
    viewport: int = 1,
) -> bytes:
    """A RAM image with the fields the rules read."""
    m = bytearray(2048)
    m[R.X_PAGE], m[R.X_SCREEN] = divmod(x, 256)
    if y > 255:
        m[R.Y_VIEWPORT], m[R.Y_PIXEL] = 0, 255 - (y - 255)
    else:
        m[R.Y_VIEWPORT], m[R.Y_PIXEL] = viewport, 255 - y
    m[R.WORLD], m[R.STAGE] = world - 1, stage - 1
    m[R.AREA_TYPE], m[R.AREA_OFFSET] = area >> 5, area & 0x1F
    m[R.LIVES], m[R.PLAYER_STATE] = lives, state
    for k, d in enumerate(f"{time:03d}"):
        m[R.TIME_DIGITS[0] + k] = int(d)
    for k, d in enumerate(f"{score:06d}"):
        m[R.SCORE_DIGITS[0] + k] = int(d)
    if flag:
        m[0x16], m[R.FLOAT_STATE] = 0x31, 3
    return bytes(m)


def rules(game: bool = False, **kw) -> R.Rules:
    reward = RewardConfig(**{k[2:]: v for k, v in kw.items() if k.startswith("r_")})
    env = {k: v for k, v in kw.items() if not k.startswith("r_")}
    return R.Rules(EnvConfig(reward=reward, **env), game=game)


def test_read_decodes_position_and_flags():
    r = R.read(ram(x=1000, y=300, world=4, stage=2, lives=1, time=123))
    assert (r.x, r.y, r.stage_name, r.lives, r.time) == (1000, 300, "4-2", 1, 123)
    assert not r.dying and not r.flag
    assert R.read(ram(state=0x0B)).dying and R.read(ram(viewport=2)).dying
    assert R.read(ram(flag=True)).flag


def test_progress_rewards_new_max_x_only_and_clips():
    ru = rules(r_scale=1.0)
    ep = ru.start(ram(x=40))
    assert ru.step(ep, ram(x=50)).components["progress"] == 10
    assert ru.step(ep, ram(x=45)).components["progress"] == 0  # going back: nothing
    assert ru.step(ep, ram(x=55)).components["progress"] == 5  # only beyond the old max
    assert ru.step(ep, ram(x=500)).components["progress"] == 30  # clipped per step
    assert ep.x_max == 500


def test_progress_restarts_in_a_new_area():
    ru = rules(r_scale=1.0)
    ep = ru.start(ram(x=900))
    out = ru.step(ep, ram(x=40, area=0x05))  # down a pipe into another area: x restarts
    assert out.components["progress"] == 0
    assert ru.step(ep, ram(x=50, area=0x05)).components["progress"] == 10
    assert ep.x_max == 900  # the stage's maximum is still reported


def test_flag_bonus_and_flag_ends():
    ru = rules(r_scale=1.0)
    ep = ru.start(ram(x=3000))
    out = ru.step(ep, ram(x=3010, flag=True))
    assert out.components["flag"] == 50 and out.terminated and out.reason == "flag"
    ru = rules(flag_ends=False, r_scale=1.0)
    ep = ru.start(ram(x=3000))
    out = ru.step(ep, ram(x=3010, flag=True))
    assert out.components["flag"] == 50 and not out.terminated
    assert ru.step(ep, ram(x=3011, flag=True)).components["flag"] == 0  # once per stage


def test_death_penalty_and_life_loss_rule():
    ru = rules(r_scale=1.0)
    ep = ru.start(ram())
    out = ru.step(ep, ram(state=0x0B))
    assert out.components["death"] == -50 and out.terminated and out.reason == "death"
    ru = rules(life_loss_ends=False, r_scale=1.0)
    ep = ru.start(ram())
    out = ru.step(ep, ram(state=0x0B, lives=2))
    assert out.components["death"] == -50 and not out.terminated
    out = ru.step(ep, ram(state=0x0B, lives=0))  # the last life: game over
    assert out.terminated and out.reason == "game_over"


def test_fall_time_score_penalties():
    ru = rules(r_fall=1.0, r_time=0.5, r_score=0.025, r_scale=1.0)
    ep = ru.start(ram(score=100))
    out = ru.step(ep, ram(y=60, score=300))
    assert out.components["fall"] == -1.0
    assert out.components["time"] == -0.5
    assert out.components["score"] == pytest.approx(5.0)
    assert out.reward == pytest.approx(-1.0 - 0.5 + 5.0)


def test_components_switch_off_and_scale():
    ru = rules(r_fall=0.0, r_time=0.0, r_scale=0.1)
    ep = ru.start(ram())
    out = ru.step(ep, ram(x=50, y=60))
    assert out.components["fall"] == 0 and out.components["time"] == 0
    assert out.reward == pytest.approx(1.0) and out.components["progress"] == pytest.approx(1.0)


@pytest.mark.parametrize("stage", ["1-2", "4-2"])
def test_warp_zone_penalty_above_the_ceiling(stage):
    w, s = map(int, stage.split("-"))
    ru = rules(r_scale=1.0)
    ep = ru.start(ram(world=w, stage=s))
    assert ru.step(ep, ram(world=w, stage=s, y=300)).components["warp"] == -1.0
    assert ru.step(ep, ram(world=w, stage=s, y=200)).components["warp"] == 0.0
    other = rules(r_scale=1.0)
    ep = other.start(ram(world=1, stage=1))
    assert other.step(ep, ram(y=300)).components["warp"] == 0.0


def test_taking_a_warp_pipe_ends_a_stage_episode_without_flag():
    ru = rules()
    ep = ru.start(ram(world=1, stage=2))
    ru.step(ep, ram(world=1, stage=2, x=2000))
    out = ru.step(ep, ram(world=4, stage=1, x=40))
    assert out.terminated and out.reason == "warp" and not ep.flag
    # The episode's record is the stage it left, not where the pipe led.
    assert (ep.stage, ep.x_max) == ("1-2", 2000)
    assert out.components["progress"] == 0


def test_puzzle_reward_for_the_7_4_sequence_in_order():
    ru = rules(r_scale=1.0)
    ep = ru.start(ram(world=7, stage=4, x=1600, y=191))
    path = [(1750, 191), (1910, 191), (2000, 127), (2130, 127)]
    for x, y in path:
        assert ru.step(ep, ram(world=7, stage=4, x=x, y=y)).components["puzzle"] == 0
    out = ru.step(ep, ram(world=7, stage=4, x=2250, y=191))
    assert out.components["puzzle"] == 30 and not out.terminated


def test_puzzle_needs_the_order():
    ru = rules(r_scale=1.0, r_wrong_path=0.0)
    ep = ru.start(ram(world=7, stage=4, x=1600, y=191))
    for x, y in [(1750, 191), (2000, 127), (2130, 127), (2250, 191)]:  # skipped the first spot
        assert ru.step(ep, ram(world=7, stage=4, x=x, y=y)).components["puzzle"] == 0


@pytest.mark.parametrize(
    ("stage", "x", "y"),
    [("4-4", 1000, 100), ("4-4", 2000, 200), ("7-4", 600, 200), ("8-4", 2450, 100)],
)
def test_wrong_path_zones_penalise_and_end(stage, x, y):
    w, s = map(int, stage.split("-"))
    ru = rules(r_scale=1.0)
    ep = ru.start(ram(world=w, stage=s, x=x - 4, y=150 if stage != "4-4" else 130))
    out = ru.step(ep, ram(world=w, stage=s, x=x, y=y))
    assert out.components["wrong_path"] == -50 and out.terminated and out.reason == "wrong_path"


def test_loop_back_in_a_castle_maze_is_a_wrong_path():
    ru = rules(r_scale=1.0)
    ep = ru.start(ram(world=8, stage=4, x=1500, y=150))
    out = ru.step(ep, ram(world=8, stage=4, x=312, y=150))
    assert out.terminated and out.reason == "wrong_path"
    # The same jump back elsewhere is not a maze.
    ru = rules(r_scale=1.0)
    ep = ru.start(ram(world=1, stage=1, x=1500))
    assert not ru.step(ep, ram(x=312)).terminated


def test_wrong_path_off_switches_the_rule_off():
    ru = rules(r_wrong_path=0.0)
    ep = ru.start(ram(world=4, stage=4, x=996, y=130))
    assert not ru.step(ep, ram(world=4, stage=4, x=1000, y=100)).terminated


def test_stall_limit_truncates():
    ru = rules(stall_steps=3)
    ep = ru.start(ram(x=100))
    outs = [ru.step(ep, ram(x=100)) for _ in range(3)]
    assert [o.truncated for o in outs] == [False, False, True] and outs[-1].reason == "stall"
    assert not outs[-1].terminated


def test_step_cap_and_time_budget_truncate():
    ru = rules(max_steps=2, stall_steps=0)
    ep = ru.start(ram())
    assert [ru.step(ep, ram(x=41 + i)).truncated for i in range(2)] == [False, True]
    ru = rules(time_per_stage=100, stall_steps=0)
    ep = ru.start(ram(time=400))
    assert not ru.step(ep, ram(x=41, time=301)).truncated
    out = ru.step(ep, ram(x=42, time=299))
    assert out.truncated and out.reason == "timeout"


def test_whole_game_moves_on_to_the_next_stage():
    ru = rules(game=True, r_scale=1.0)
    ep = ru.start(ram(x=3100))
    out = ru.step(ep, ram(x=3110, flag=True))
    assert out.terminated  # the flag ends an episode by default
    ru = rules(game=True, flag_ends=False, r_scale=1.0)
    ep = ru.start(ram(x=3100))
    ru.step(ep, ram(x=3110, flag=True))
    out = ru.step(ep, ram(world=1, stage=2, x=40))
    assert not out.terminated and ep.stage == "1-2" and ep.stages_cleared == 1
    assert ru.step(ep, ram(world=1, stage=2, x=45)).components["progress"] == 5


def test_episode_sums_track_components():
    ru = rules(r_scale=0.5)
    ep = ru.start(ram(x=40))
    ru.step(ep, ram(x=50))
    ru.step(ep, ram(x=60, state=0x0B))
    assert ep.sums["progress"] == pytest.approx(10.0)
    assert ep.sums["death"] == pytest.approx(-25.0)
    assert ep.ret == pytest.approx(-15.0)
