"""The single env's contract: what a terminal step reports (checked against gym-super-mario-bros's
own env on the same emulated frames), and the Gymnasium ids that build it."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gym_super_mario_bros import SuperMarioBrosEnv
from gym_super_mario_bros.actions import RIGHT_ONLY
from gymnasium.utils.env_checker import check_env
from nes_py.wrappers import JoypadSpace

from mario_rl.envs import STAGES, EnvConfig, MarioEnv, MarioVectorEnv, env_id, register_envs
from mario_rl.envs.actions import ACTION_SETS

NOOP, RIGHT = 0, 1
# The shipped 1-1 model's sampled play from 1-1's start (right-only actions, no no-op start),
# recorded once: it reaches the flag after 322 steps.
FLAG_RUN = [
    int(c) for c in (Path(__file__).parent / "data" / "1-1-flag.actions").read_text().strip()
]
# After 140 steps of that run Mario is at x≈1000; walking on drops him into 1-1's first pit.
PIT_RUN = FLAG_RUN[:140] + [RIGHT] * 60
GOOMBA_RUN = [RIGHT] * 100  # walks into the first goomba
STALL_STEPS = 30
STAND_STILL = [NOOP] * (STALL_STEPS + 10)  # cut by our stall rule; gym-super-mario-bros plays on

CASES = {
    "flag": (FLAG_RUN, {}, "flag"),
    "pit": (PIT_RUN, {}, "death"),
    "goomba": (GOOMBA_RUN, {}, "death"),
    "stall": (STAND_STILL, {"stall_steps": STALL_STEPS}, "stall"),
}


def test_the_recorded_actions_are_the_right_only_set():
    # The reference below plays them through gym-super-mario-bros's own RIGHT_ONLY list.
    assert ACTION_SETS["right-only"] == RIGHT_ONLY
    assert set(FLAG_RUN) <= set(range(len(RIGHT_ONLY)))


class Reference:
    """gym-super-mario-bros's SuperMarioBrosEnv on 1-1, one agent step = the action repeated
    for ``skip`` frames, as our env does. Where it ends the episode inside a step, the step's
    remaining frames are still emulated (without its cut-scene hacks, as ours does within a
    step) so that both describe the same emulated frame."""

    def __init__(self, skip: int) -> None:
        self.env = JoypadSpace(SuperMarioBrosEnv(target=(1, 1)), RIGHT_ONLY)
        self.env.reset()
        self.base = self.env.unwrapped
        self.skip = skip

    @property
    def ram(self) -> np.ndarray:
        return self.base.ram

    def step(self, action: int) -> tuple[dict, bool]:
        """The info after one agent step, and whether gym-super-mario-bros ended the episode."""
        ended = False
        for _ in range(self.skip):
            if ended:
                self.base._frame_advance(self.env._action_map[action])
            else:
                _, _, term, trunc, _ = self.env.step(action)
                ended = term or trunc
        return self.base._get_info(), ended

    def close(self) -> None:
        self.env.close()


@pytest.mark.parametrize("case", list(CASES))
def test_terminal_info_is_gym_super_mario_bros_info_of_the_state_that_ended_it(case):
    actions, options, reason = CASES[case]
    cfg = EnvConfig(actions="right-only", noop_max=0, **options)
    env = MarioEnv(cfg)
    ref = Reference(cfg.frame_skip)
    try:
        _, start = env.reset(seed=0)
        np.testing.assert_array_equal(env.group.emu.rams[0], ref.ram)
        for t, a in enumerate(actions):
            want, ref_ended = ref.step(a)
            _, _, term, trunc, info = env.step(a)
            if term or trunc:
                break
            assert not ref_ended, f"gym-super-mario-bros ended the episode at step {t}, we did not"
            # Both have emulated the same frames, so the end is compared on one state.
            np.testing.assert_array_equal(env.group.emu.rams[0], ref.ram, err_msg=f"step {t}")
        else:
            pytest.fail(f"{case}: no episode end in {len(actions)} steps")
        assert info["episode"]["reason"] == reason
        assert (term, trunc) == (reason != "stall", reason == "stall")
        # It ends flags and deaths on the same step; our stall cut is ours alone.
        assert ref_ended == (reason != "stall")
        assert want["flag_get"] == (reason == "flag")
        got = {k: info[k] for k in ("x_pos", "y_pos", "flag_get", "lives", "time", "stage")}
        assert got == {
            "x_pos": want["x_pos"],
            "y_pos": want["y_pos"],
            "flag_get": want["flag_get"],
            "lives": want["life"],
            "time": want["time"],
            "stage": f"{want['world']}-{want['stage']}",
        }
        assert info["x_max"] == info["episode"]["x_max"] >= info["x_pos"]
        # Where it ended, as gym-super-mario-bros reports it (a pit: where Mario fell in).
        assert info["episode"]["x_end"] == info["x_pos"]
        assert info["stage_index"] == STAGES.index(info["stage"])
        # The next episode's start comes from reset(), as before.
        _, after = env.reset()
        assert after == start
    finally:
        env.close()
        ref.close()


def test_a_flag_in_whole_game_mode_reports_the_stage_it_cleared():
    env = MarioEnv(EnvConfig(stages="game", actions="right-only", noop_max=0))
    try:
        env.reset(seed=0)
        for a in FLAG_RUN:
            _, _, term, trunc, info = env.step(a)
            if term or trunc:
                break
        assert info["episode"]["reason"] == "flag"
        assert (info["flag_get"], info["stage"], info["x_pos"]) == (True, "1-1", info["x_max"])
        assert info["x_pos"] > 3000
        # The game goes on: the next episode is 1-2 with the lives it had.
        _, nxt = env.reset()
        assert (nxt["stage"], nxt["flag_get"], nxt["lives"]) == ("1-2", False, info["lives"])
    finally:
        env.close()


# -- Gymnasium registration ----------------------------------------------------------------------


def test_every_stage_all_and_game_have_an_id():
    ids = [env_id(s) for s in (*STAGES, "all", "game")]
    assert ids[0] == "mario_rl/Mario-1-1-v0" and ids[-1] == "mario_rl/Mario-game-v0"
    assert env_id() == "mario_rl/Mario-v0"
    for name in [*ids, env_id()]:
        spec = gym.spec(name)
        assert spec.namespace == "mario_rl" and spec.version == 0
        assert isinstance(spec.entry_point, str) and isinstance(spec.vector_entry_point, str)
        # The env truncates episodes itself; no TimeLimit on top.
        assert spec.max_episode_steps is None
    with pytest.raises(ValueError, match="mario_rl/Mario-v0"):
        env_id("1-1,4-2")


def test_make_a_stage_with_options():
    env = gym.make(
        "mario_rl/Mario-4-2-v0", actions="complex", frame_skip=2, render_mode="rgb_array"
    )
    try:
        inner = env.unwrapped
        assert isinstance(inner, MarioEnv)
        assert (inner.config.stages, inner.config.actions, inner.config.frame_skip) == (
            "4-2",
            "complex",
            2,
        )
        assert env.action_space == gym.spaces.Discrete(12)
        obs, info = env.reset(seed=0)
        assert obs.shape == (4, 84, 84) and info["stage"] == "4-2"
        assert env.render().shape == (240, 256, 3)
        _, _, _, _, info = env.step(RIGHT)
        assert info["stage"] == "4-2"
        # The spec records the options, so it rebuilds the same env.
        again = gym.make(env.spec)
        assert again.unwrapped.config == inner.config
        again.close()
    finally:
        env.close()


def test_make_the_whole_game_all_stages_and_any_selection():
    game = gym.make("mario_rl/Mario-game-v0")
    assert game.unwrapped.config.stages == "game"
    assert game.reset(seed=0)[1]["stage"] == "1-1"
    game.close()
    every = gym.make("mario_rl/Mario-all-v0")
    assert every.unwrapped.config.stages == "all"
    seen = {every.reset(seed=s)[1]["stage"] for s in range(6)}
    assert len(seen) > 1
    every.close()
    mixed = gym.make("mario_rl/Mario-v0", stages="1-1,4-2", reward={"flag": 0.0})
    cfg = mixed.unwrapped.config
    assert cfg.stages == "1-1,4-2" and cfg.reward.flag == 0.0
    assert cfg.reward.death == EnvConfig().reward.death  # the other shaping fields kept
    mixed.close()
    base = EnvConfig(actions="complex", noop_max=0)
    based = gym.make("mario_rl/Mario-1-1-v0", config=base, frame_stack=2)
    assert based.unwrapped.config.actions == "complex"
    assert based.unwrapped.config.frame_stack == 2 and base.frame_stack == 4
    based.close()


@pytest.mark.parametrize(
    ("name", "options", "error", "match"),
    [
        ("mario_rl/Mario-9-1-v0", {}, gym.error.NameNotFound, "Mario-9-1"),
        ("mario_rl/Mario-1-1-v1", {}, gym.error.VersionNotFound, "v0"),
        ("mario_rl/Mario-1-1-v0", {"frameskip": 2}, TypeError, "unknown option.*'frameskip'"),
        ("mario_rl/Mario-1-1-v0", {"reward": {"flg": 1.0}}, TypeError, "unknown reward.*'flg'"),
        ("mario_rl/Mario-1-1-v0", {"stages": "4-2"}, ValueError, "always plays '1-1'"),
        ("mario_rl/Mario-1-1-v0", {"actions": "all"}, ValueError, "unknown action set"),
        ("mario_rl/Mario-v0", {"stages": "9-9"}, ValueError, "unknown stage '9-9'"),
        ("mario_rl/Mario-1-1-v0", {"render_mode": "ansi"}, ValueError, "render_mode must be"),
    ],
)
def test_a_bad_id_or_option_is_a_clear_error(name, options, error, match):
    with pytest.raises(error, match=match):
        gym.make(name, **options)


def test_registration_is_idempotent_and_happens_on_import():
    before = gym.spec("mario_rl/Mario-1-1-v0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # gymnasium warns when an id is registered again
        register_envs()
    assert gym.spec("mario_rl/Mario-1-1-v0") is before
    code = (
        "import gymnasium, mario_rl; "
        "print(sum(k.startswith('mario_rl/') for k in gymnasium.registry))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(len(STAGES) + 3)]


def test_the_env_passes_gymnasiums_checker():
    env = gym.make("mario_rl/Mario-1-1-v0", render_mode="rgb_array")
    try:
        check_env(env.unwrapped, skip_render_check=False)
    finally:
        env.close()


def test_make_vec_builds_the_projects_vector_env():
    venv = gym.make_vec("mario_rl/Mario-1-2-v0", num_envs=3, workers=2)
    try:
        assert isinstance(venv, MarioVectorEnv) and venv.num_envs == 3
        obs, info = venv.reset(seed=0)
        assert obs.shape == (3, 4, 84, 84)
        assert venv.unwrapped.config.stages == "1-2"
    finally:
        venv.close()
    with pytest.raises(ValueError, match="does not render"):
        gym.make_vec("mario_rl/Mario-1-1-v0", num_envs=2, render_mode="rgb_array")
