"""The vector env and the single env on the real emulator: shapes, determinism, equivalence."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mario_rl.envs import (
    STAGES,
    EnvConfig,
    MarioEnv,
    StageError,
    make_vector_env,
    parse_stages,
)
from mario_rl.envs.actions import action_bytes
from mario_rl.envs.emulator import make_emulators

RIGHT = 1  # 'right' in every action set


@pytest.mark.parametrize(
    ("spec", "stages"),
    [("1-1", ("1-1",)), (" 1-1 , 4-2 ", ("1-1", "4-2")), ("all", STAGES), ("game", ("1-1",))],
)
def test_parse_stages(spec, stages):
    sel = parse_stages(spec)
    assert sel.stages == stages
    assert sel.game == (spec == "game")
    assert sum(sel.weights) == pytest.approx(1.0)


def test_parse_weighted_list():
    sel = parse_stages("1-1:3,1-2")
    assert sel.weights == pytest.approx((0.75, 0.25))
    rng = np.random.default_rng(0)
    draws = [sel.sample(rng) for _ in range(400)]
    assert 0.65 < draws.count("1-1") / 400 < 0.85


@pytest.mark.parametrize(
    "bad",
    ["", "0-1", "9-1", "1-5", "1_1", "one", "1-1,,1-2", "1-1,all", "1-1:0", "1-1:x", "1-1,1-1"],
)
def test_bad_stage_selections_name_the_valid_forms(bad):
    with pytest.raises(StageError) as e:
        parse_stages(bad)
    msg = str(e.value)
    assert "\n" not in msg
    assert "1-1" in msg or "number" in msg or "twice" in msg


def test_bad_config_is_refused():
    for cfg in [EnvConfig(actions="jump"), EnvConfig(frame_skip=0), EnvConfig(stages="x")]:
        with pytest.raises(ValueError):
            make_vector_env(cfg, num_envs=1)
    with pytest.raises(ValueError):
        make_vector_env(EnvConfig(), num_envs=2, workers=3)


def test_observation_shapes_and_dtypes():
    env = make_vector_env(EnvConfig(size=64, frame_stack=3, crop_hud=True), num_envs=3, workers=2)
    obs, info = env.reset(seed=0)
    assert obs.shape == (3, 3, 64, 64) and obs.dtype == np.uint8
    assert env.single_observation_space.shape == (3, 64, 64)
    obs, rew, term, trunc, info = env.step(np.zeros(3, np.int64))
    assert obs.shape == (3, 3, 64, 64) and rew.dtype == np.float32
    assert term.dtype == bool and trunc.dtype == bool
    assert set(info["reward_components"]) >= {"progress", "flag", "death"}
    assert obs.max() > 0  # a real picture, not zeros
    env.close()


def _rollout(env, actions):
    out = []
    for a in actions:
        obs, rew, term, trunc, info = env.step(a)
        out.append((obs.copy(), rew.copy(), term.copy(), trunc.copy()))
    return out


def test_same_seed_and_actions_give_the_same_observations():
    rng = np.random.default_rng(3)
    actions = [rng.integers(0, 7, 2) for _ in range(80)]
    runs = []
    for _ in range(2):
        env = make_vector_env(EnvConfig(), num_envs=2, workers=1, seed=5)
        env.reset(seed=5)
        runs.append(_rollout(env, actions))
        env.close()
    for a, b in zip(*runs, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)


def test_workers_do_not_change_results():
    rng = np.random.default_rng(4)
    actions = [rng.integers(0, 7, 4) for _ in range(60)]
    runs = []
    for workers in (1, 2):
        env = make_vector_env(EnvConfig(), num_envs=4, workers=workers, seed=2)
        env.reset(seed=2)
        runs.append(_rollout(env, actions))
        env.close()
    for a, b in zip(*runs, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)


def test_step_group_from_worker_threads_matches_lockstep_step():
    cfg = EnvConfig(stall_steps=8)
    rng = np.random.default_rng(6)
    actions = [rng.integers(0, 7, 4) for _ in range(70)]
    lock = make_vector_env(cfg, num_envs=4, workers=2, seed=8)
    grouped = make_vector_env(cfg, num_envs=4, workers=2, seed=8)
    with pytest.raises(RuntimeError, match="reset"):
        grouped.step_group(0, actions[0][:2])
    lock.reset(seed=8)
    grouped.reset(seed=8)
    with pytest.raises(ValueError, match="group 1 expects 2 actions"):
        grouped.step_group(1, actions[0])
    ends = 0
    for a in actions:
        want = lock.step(a)
        parts = grouped.map_groups(
            lambda k, a=a: grouped.step_group(
                k, a[grouped.ranges[k].start : grouped.ranges[k].stop]
            )
        )
        for j in range(4):
            np.testing.assert_array_equal(np.concatenate([p[j] for p in parts]), want[j])
        np.testing.assert_array_equal(
            np.concatenate([p[4]["x_pos"] for p in parts]), want[4]["x_pos"]
        )
        for k, p in enumerate(parts):
            for j in np.flatnonzero(p[2] | p[3]):
                i = grouped.ranges[k].start + j
                np.testing.assert_array_equal(p[4]["final_obs"][j], want[4]["final_obs"][i])
                assert p[4]["episode"]["x_max"][j] == want[4]["episode"]["x_max"][i]
                ends += 1
    assert ends >= 2
    lock.close()
    grouped.close()


def test_map_groups_waits_for_every_group_before_raising():
    import time

    env = make_vector_env(EnvConfig(), num_envs=2, workers=2, seed=0)
    done = []

    def fn(k):
        if k == 0:
            raise OSError("group 0 failed")
        time.sleep(0.3)
        done.append(k)
        return k

    with pytest.raises(OSError, match="group 0 failed"):
        env.map_groups(fn)
    assert done == [1]
    assert env.map_groups(lambda k: k * 10) == [0, 10]
    env.close()


def test_single_env_matches_vector_env_over_episode_ends():
    cfg = EnvConfig(stall_steps=25)
    rng = np.random.default_rng(7)
    actions = rng.integers(0, 7, 150)
    venv = make_vector_env(cfg, num_envs=1, seed=9)
    vobs, _ = venv.reset(seed=9)
    senv = MarioEnv(cfg, seed=9)
    sobs, _ = senv.reset(seed=9)
    np.testing.assert_array_equal(vobs[0], sobs)
    ends = 0
    for a in actions:
        vobs, vr, vt, vtr, vinfo = venv.step(np.array([a]))
        sobs, sr, st, strc, sinfo = senv.step(int(a))
        assert (vr[0], vt[0], vtr[0]) == (pytest.approx(sr), st, strc)
        if st or strc:
            ends += 1
            np.testing.assert_array_equal(vinfo["final_obs"][0], sobs)
            sobs, _ = senv.reset()
        np.testing.assert_array_equal(vobs[0], sobs)
    assert ends >= 1
    venv.close()
    senv.close()


@pytest.mark.parametrize("emulator", ["native", "nes-py"])
def test_observation_is_the_resized_max_of_each_steps_last_two_frames(emulator):
    """Replays the same buttons on bare emulators started from the env's own states: each new
    frame of the stack must be resize(max(gray(frame k-1), gray(frame k)))."""
    cfg = EnvConfig(noop_max=0, jump_repress=False, emulator=emulator)
    env = make_vector_env(cfg, num_envs=3, workers=2, seed=0)
    env.reset(seed=0)
    bare = make_emulators(emulator, 3)
    for i in range(3):
        g, j = env._locate(i)
        bare.load_state(i, g.emu.dump_state(j))
    buttons = action_bytes(cfg.actions)
    rng = np.random.default_rng(1)
    prev, last = np.zeros((3, 240, 256), np.uint8), np.zeros((3, 240, 256), np.uint8)
    for _ in range(25):
        a = np.array([RIGHT, *rng.integers(0, 7, 2)])
        obs, _, term, trunc, _ = env.step(a)
        assert not (term | trunc).any()  # no reset or cut-scene within these steps
        bare.step(buttons[a], cfg.frame_skip, gray=last, gray_prev=prev)
        for i in range(3):
            want = cv2.resize(
                np.maximum(prev[i], last[i]), (84, 84), interpolation=cv2.INTER_LINEAR
            )
            np.testing.assert_array_equal(obs[i, -1], want)
    assert not np.array_equal(prev, last)  # the two frames differ, so the max is tested
    bare.close()
    env.close()


def test_a_kept_frame_is_not_changed_by_the_next_step():
    env = make_vector_env(EnvConfig(), num_envs=1)
    obs0, _ = env.reset(seed=0)
    kept = obs0.copy()
    obs1, *_ = env.step(np.array([RIGHT]))
    for _ in range(5):
        env.step(np.array([RIGHT]))
    np.testing.assert_array_equal(obs0, kept)
    assert not np.array_equal(obs1, obs0)
    senv = MarioEnv(EnvConfig())
    senv.reset(seed=0)
    frame = senv.render()
    copy = frame.copy()
    for _ in range(10):
        senv.step(RIGHT)
    np.testing.assert_array_equal(frame, copy)
    assert frame.shape == (240, 256, 3)
    env.close()
    senv.close()


def test_running_right_on_1_1_dies_and_auto_resets():
    env = make_vector_env(EnvConfig(noop_max=0), num_envs=1)
    env.reset(seed=0)
    x_before = 0
    for _t in range(400):
        obs, rew, term, trunc, info = env.step(np.array([RIGHT]))
        if term[0]:
            break
        x_before = int(info["x_pos"][0])
    assert term[0], "holding right should run into the first goomba"
    ep = info["episode"]
    assert info["_episode"][0] and ep["reason"][0] == "death"
    assert 200 < ep["x_max"][0] < 500
    # Where it died: the step's x, which the auto-reset info no longer shows.
    assert x_before <= ep["x_end"][0] <= ep["x_max"][0]
    assert ep["components"]["death"][0] < 0 and ep["components"]["progress"][0] > 0
    assert rew[0] == pytest.approx(
        info["reward_components"]["progress"][0] + info["reward_components"]["death"][0]
    )
    assert info["x_pos"][0] < 100  # already back at the start
    assert info["final_obs"][0].shape == (4, 84, 84)
    env.close()


def test_whole_game_continues_after_a_lost_life():
    env = make_vector_env(EnvConfig(stages="game", noop_max=0), num_envs=1)
    _, info = env.reset(seed=0)
    assert info["lives"][0] == 2
    for _ in range(400):
        obs, rew, term, trunc, info = env.step(np.array([RIGHT]))
        if term[0]:
            break
    assert term[0] and info["episode"]["reason"][0] == "death"
    assert info["lives"][0] == 1  # same game, one life fewer
    env.close()


def test_life_loss_off_plays_until_game_over():
    env = make_vector_env(EnvConfig(life_loss_ends=False, noop_max=0), num_envs=1)
    env.reset(seed=0)
    for _ in range(1500):
        obs, rew, term, trunc, info = env.step(np.array([RIGHT]))
        if term[0]:
            break
    assert term[0] and info["episode"]["reason"][0] == "game_over"
    assert (info["episode"]["components"]["death"][0]) == pytest.approx(-15.0)  # three lives
    env.close()


def test_noop_starts_are_seeded():
    def first_obs(seed):
        env = make_vector_env(EnvConfig(noop_max=30), num_envs=4, seed=seed)
        obs, info = env.reset(seed=seed)
        env.close()
        return obs, info["time"]

    a, _ = first_obs(1)
    b, _ = first_obs(1)
    np.testing.assert_array_equal(a, b)
    c, _ = first_obs(2)
    assert not np.array_equal(a, c)


def test_set_stages_while_running():
    env = make_vector_env(EnvConfig(stall_steps=5, noop_max=0), num_envs=2)
    _, info = env.reset(seed=0)
    assert list(info["stage"]) == [0, 0]
    env.set_stages([1], "4-2")
    # Standing still stalls the episode, which restarts on the new stage.
    for _ in range(5):
        _, _, term, trunc, info = env.step(np.zeros(2, np.int64))
    assert trunc.all() and list(info["episode"]["reason"]) == ["stall", "stall"]
    assert list(info["stage"]) == [0, STAGES.index("4-2")]
    assert env.stages_of(1).stages == ("4-2",)
    with pytest.raises(StageError):
        env.set_stages([0], "9-9")
    env.close()


def test_all_stages_draws_different_stages():
    env = make_vector_env(EnvConfig(stages="1-1,2-1,3-1,4-1"), num_envs=6, seed=3)
    _, info = env.reset(seed=3)
    assert len(set(info["stage"].tolist())) > 1
    env.close()


def test_progress_starts_resume_from_reached_states_and_are_marked():
    # Running right on 1-1 reaches a few hundred px before the first Goomba: those states are
    # kept, and with progress_starts most later episodes begin from one of them.
    cfg = EnvConfig(stages="1-1", actions="right-only", progress_starts=0.9, noop_max=0)
    env = make_vector_env(cfg, num_envs=1, workers=1, seed=3)
    env.reset(seed=3)
    episodes = []
    for _ in range(600):
        _, _, term, trunc, info = env.step(np.array([RIGHT]))
        if (term | trunc)[0]:
            episodes.append(
                (bool(info["episode"]["restored"][0]), int(info["episode"]["x_max"][0]))
            )
    reached = dict(env.groups[0].reached)
    env.close()
    assert len(episodes) >= 3
    assert episodes[0][0] is False  # nothing was reached before the first episode
    restored = [x for r, x in episodes if r]
    assert restored, episodes
    assert reached and all(k[0] == "1-1" for k in reached)
    # A restored episode starts past the stage start, so it gets farther than x 40.
    assert min(restored) > 256


def test_progress_starts_off_by_default_and_never_in_evaluation_config():
    assert EnvConfig().progress_starts == 0.0
    with pytest.raises(ValueError, match="progress_starts"):
        EnvConfig(progress_starts=1.0).validate()
    with pytest.raises(ValueError, match="progress_cells needs progress_starts"):
        EnvConfig(progress_cells=True).validate()


def test_progress_cells_keep_standing_states_by_x_and_y_and_favour_rare_cells():
    cfg = EnvConfig(
        stages="1-1", actions="right-only", progress_starts=0.5, progress_cells=True, noop_max=0
    )
    env = make_vector_env(cfg, num_envs=1, workers=1, seed=3)
    env.reset(seed=3)
    for _ in range(300):
        env.step(np.array([RIGHT]))
    group = env.groups[0]
    env.close()
    keys = list(group.reached)
    # Cells of 32 px: running right fills many of them, each with the episodes that stood there.
    assert len(keys) > 4 and all(len(k) == 4 and k[0] == "1-1" for k in keys)
    assert set(group.visits) == set(keys) and min(group.visits.values()) >= 1
    # A cell few episodes reached is drawn far more often than its share of the cells.
    rare = keys[len(keys) // 2]
    for k in keys:
        group.visits[k] = 1 if k == rare else 10_000
    rng = np.random.default_rng(0)
    draws = [group._progress_start("1-1", rng) for _ in range(400)]
    drawn = [s for s in draws if s is not None]
    from_rare = sum(any(s is kept for kept in group.reached[rare]) for s in drawn)
    assert 100 < len(drawn) < 300  # progress_starts = 0.5
    assert from_rare > 0.5 * len(drawn)


@pytest.mark.parametrize("repress", [False, True])
def test_jump_repress_makes_a_held_jump_jump_again(repress):
    # Without it, holding right+A jumps once (the NES wants a new press after landing);
    # with it, every landing starts a new jump.
    env = MarioEnv(EnvConfig(actions="right-only", noop_max=0, jump_repress=repress))
    env.reset(seed=0)
    ram = env.group.emu.rams[0]
    takeoffs, airborne = 0, False
    for _t in range(40):
        env.step(2)  # right+A
        now = ram[0x1D] == 1
        takeoffs += now and not airborne
        airborne = now
    env.close()
    assert (takeoffs > 3) if repress else (takeoffs == 1)


@pytest.mark.parametrize("unblock", [False, True])
def test_jump_unblock_jumps_again_only_where_mario_is_blocked(unblock):
    # Walk to past the first goomba, then hold right+A: the first jump lands short of the first
    # pipe (x ~435). Without the rule Mario stands against it holding A for good; with it he
    # jumps again there, and only there (not on landing while he still runs).
    env = MarioEnv(EnvConfig(actions="right-only", noop_max=0, jump_unblock=unblock))
    env.reset(seed=0)
    ram, ep = env.group.emu.rams[0], lambda: env.group.episodes[0]
    takeoff_x, airborne, x_max = [], False, 0
    for t in range(110):
        env.step(1 if t < 24 else 2)  # right, then right+A
        now = ram[0x1D] == 1
        if now and not airborne:
            takeoff_x.append(ep().x)
        airborne = now
        x_max = max(x_max, ep().x)
    env.close()
    if unblock:
        assert len(takeoff_x) >= 2 and x_max > 500  # over the pipe
        assert all(x > 400 for x in takeoff_x[1:])  # the new jumps start at the pipe
    else:
        assert len(takeoff_x) == 1 and 420 < x_max < 440
