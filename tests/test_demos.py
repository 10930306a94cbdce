"""Demos: exploring to a flag, the demo file, its replay, and training episodes started along it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from mario_rl.envs import EnvConfig
from mario_rl.envs.core import EmulatorGroup
from mario_rl.envs.demos import (
    DELAYS,
    Demo,
    _replay,
    demo_coverage,
    demo_pairs,
    demo_states,
    explore,
    load_demo,
)

ROOT = Path(__file__).parents[1]
DEMO_1_3 = ROOT / "demos" / "1-3.json"
"""Found from two no-op starts at once (``explore --starts 2``): it clears after all of 0-30."""
DEMO_1_3_EVEN = ROOT / "demos" / "phases" / "1-3-n00.json"
"""Found from one start: it clears after the even no-op starts only."""
# The cpu-1-1 preset's environment, which the committed demo was found with.
CFG = EnvConfig(stages="1-3", actions="right-only", size=64)


def test_the_committed_1_3_demo_replays_to_the_flag_with_a_state_per_step() -> None:
    demo = load_demo(DEMO_1_3)
    n = len(demo.steps)
    stage, states = demo_states(str(DEMO_1_3), CFG)
    # One state per step of each replay that reaches the flag, the undelayed one first (a
    # delayed one may reach it a step sooner).
    assert stage == "1-3" and len(states) >= len(DELAYS) * (n - 1)
    # The undelayed replay's last state plus the last action is the flag.
    group = EmulatorGroup(dataclasses.replace(CFG, noop_max=0), 1, [0])
    group.reset()
    group.emu.load_state(0, states[n - 1])
    group.reset_env(0, restart=False)
    assert group.episodes[0].x > 2300
    res = group.step(np.array([demo.steps[-1]]))
    assert res.finished[0]["flag"]
    group.emu.load_state(0, states[0])  # the first is the stage's start
    group.reset_env(0, restart=False)
    assert group.episodes[0].x < 100
    group.close()


def test_a_run_with_jump_unblock_starts_from_the_routes_found_without_it() -> None:
    from mario_rl.envs import demos

    unblock = dataclasses.replace(CFG, jump_unblock=True)
    demos._REPLAYED.clear()
    stage, states = demo_states(str(DEMO_1_3), unblock)
    _, plain = demo_states(str(DEMO_1_3), CFG)
    assert stage == "1-3" and len(states) == len(plain) > 0
    assert demos._play_config(unblock, "1-3").jump_unblock is False


def test_a_demo_that_stops_short_or_dies_is_refused(tmp_path: Path) -> None:
    demo = load_demo(DEMO_1_3)
    short = dataclasses.replace(demo, steps=demo.steps[:40])
    short.save(tmp_path / "short.json")
    with pytest.raises(ValueError, match=r"40 steps end at x \d+, short of the flag"):
        demo_states(str(tmp_path / "short.json"), CFG)
    # Walking right without jumping: Mario falls before the route is done.
    walk = dataclasses.replace(demo, steps=[1] * 300)
    walk.save(tmp_path / "walk.json")
    with pytest.raises(ValueError, match=r"300 steps end with death at x \d+ on step \d+, not at"):
        demo_states(str(tmp_path / "walk.json"), CFG)


_GOOD = {"format": "mario-rl-demo/1", "stage": "1-3", "actions": "right-only", "frame_skip": 4}
_GOOD |= {"jump_repress": False, "steps": [1]}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"no such file"),
        ("{", r"not JSON"),
        ("[1]", r"not a mario-rl-demo/1 file"),
        (json.dumps(_GOOD | {"format": "mario-rl-demo/2"}), r"not a mario-rl-demo/1 file"),
        ('{"format": "mario-rl-demo/1", "stage": "1-3"}', r"bad fields"),
        (json.dumps(_GOOD | {"stage": "9-9"}), r"bad fields"),
        (json.dumps(_GOOD | {"steps": [5]}), r"bad fields"),
        (json.dumps(_GOOD | {"steps": []}), r"bad fields"),
        (json.dumps(_GOOD | {"frame_skip": 0}), r"bad fields"),
        (json.dumps(_GOOD | {"noops": -1}), r"bad fields"),
        (json.dumps(_GOOD | {"noops": 256}), r"bad fields"),
        (json.dumps(_GOOD | {"evil": 1}), r"unknown keys"),
    ],
)
def test_bad_demo_files_get_a_one_line_error(tmp_path: Path, content: str | None, message: str):
    path = tmp_path / "d.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=message) as e:
        load_demo(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_a_good_demo_file_loads(tmp_path: Path) -> None:
    (tmp_path / "d.json").write_text(json.dumps(_GOOD))
    assert load_demo(tmp_path / "d.json").steps == [1]


def test_demo_starts_begin_episodes_along_the_demo_only_on_its_stage() -> None:
    cfg = dataclasses.replace(
        CFG, stages="1-1,1-3", demos=str(DEMO_1_3), demo_starts=0.5, noop_max=0
    )
    cfg.validate()
    group = EmulatorGroup(cfg, 1, [3])
    group.reset()
    starts: dict[str, list[tuple[bool, int]]] = {"1-1": [], "1-3": []}
    for _ in range(200):
        group.reset_env(0)
        ep = group.episodes[0]
        starts[ep.stage].append((bool(group.restored[0]), ep.x))
    group.close()
    assert not any(r for r, _ in starts["1-1"])  # no demo of 1-1
    demo_xs = [x for r, x in starts["1-3"] if r]
    assert 0.3 < len(demo_xs) / len(starts["1-3"]) < 0.7
    # Drawn along the whole route: from near the start to near the flag.
    assert min(demo_xs) < 500 and max(demo_xs) > 1500
    assert all(x < 100 for r, x in starts["1-3"] if not r)


def test_a_loaded_policy_plays_from_the_stage_start_without_its_demo_files(tmp_path: Path):
    """A model trained with demos loads and evaluates where the demo files are not (another
    machine): demos are a training aid and evaluation never starts from them."""
    from checkpoints import fresh_checkpoint
    from mario_rl.evaluation.evaluate import evaluate
    from mario_rl.evaluation.policy import load_policy

    env = dataclasses.replace(CFG, demos="elsewhere/1-3.json", demo_starts=0.5)
    policy = load_policy(str(fresh_checkpoint(tmp_path / "ck", env)))
    assert policy.env_config.demos == "" and policy.env_config.demo_starts == 0.0
    report = evaluate(policy, env, "1-3", episodes=1, seed=0)
    assert report["1-3"].episodes[0].x_max < 1000  # an untrained model, from the start


def test_explore_is_reproducible_and_keeps_the_shortest_route_per_cell() -> None:
    a = explore(CFG, "1-1", seed=5, max_steps=3000)
    b = explore(CFG, "1-1", seed=5, max_steps=3000)
    assert a.demo is None and a.steps >= 3000
    assert (a.steps, a.cells, a.x_max) == (b.steps, b.cells, b.x_max)
    assert a.cells > 10 and a.x_max > 400


def test_explore_then_train_from_the_demo_end_to_end(tmp_path: Path, monkeypatch, capsys) -> None:
    """The explore command finds 1-1's flag and writes a demo a training run then starts from."""
    from mario_rl.cli import main
    from tiny_runs import SMALL

    monkeypatch.chdir(tmp_path)
    assert main(["explore", "--stage", "1-1", "--out", "d.json", "--seed", "1", "--cover"]) == 0
    printed = capsys.readouterr().out
    # 1-1's first route clears after the even no-op starts only; --cover adds one for the rest.
    assert "after 16 of the 31 no-op starts 0-30" in printed
    assert sorted(p.name for p in tmp_path.glob("d*.json")) == ["d-n01.json", "d.json"]
    assert printed.rstrip().endswith("the routes so far after 31")
    demo = json.loads((tmp_path / "d.json").read_text())
    assert demo["stage"] == "1-1" and demo["actions"] == "right-only"
    assert demo["found_by"].startswith("mario-rl explore --stage 1-1")
    assert isinstance(load_demo("d.json"), Demo)
    args = ["train", *SMALL, "--total-steps", "128", "--demos", "d.json,d-n01.json"]
    args += ["--demo-starts", "0.5"]
    args += ["--demo-bc", "0.5", "--run-dir", "r"]
    assert main(args) == 0
    rows = [
        json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    ]
    assert rows and max(r["step"] for r in rows) > 0
    learned = [r for r in rows if "losses/demo_bc" in r]
    assert learned and all(r["charts/demo_bc"] == 0.5 and r["losses/demo_bc"] > 0 for r in learned)
    # A resumed run may ease off the cloning without naming its demos again (they are recorded).
    resume = ["train", "--run-dir", "r", "--resume", "--total-steps", "256", "--demo-bc", "0.1"]
    assert main(resume) == 0
    rows = [
        json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    ]
    assert any(r.get("charts/demo_bc") == 0.1 for r in rows)


def test_a_route_from_one_start_clears_after_even_no_op_starts_only() -> None:
    """What the 1-3 model's deaths at x 655 came from: one enemy a frame out of step."""
    demo = load_demo(DEMO_1_3_EVEN)
    assert demo_coverage(demo, CFG, 30) == list(range(0, 31, 2))
    late = dataclasses.replace(demo, noops=3)  # the route cannot start before its own no-ops
    assert demo_coverage(late, CFG, 6) == [4, 6]


def test_a_route_from_two_starts_at_once_clears_after_every_start() -> None:
    assert demo_coverage(load_demo(DEMO_1_3), CFG, 30) == list(range(31))
    obs, actions = demo_pairs(str(DEMO_1_3), CFG)
    assert len(obs) == len(actions) >= len(DELAYS) * (len(load_demo(DEMO_1_3).steps) - 1)


def test_explore_from_two_starts_keeps_both_alive_to_the_flag() -> None:
    for bad in (0, 257):
        with pytest.raises(ValueError, match=r"starts must be 1\.\.256 after 0 no-ops"):
            explore(CFG, "1-1", starts=bad)
    result = explore(CFG, "1-1", seed=0, max_steps=30_000, starts=2)
    assert result.demo is not None and result.demo.noops == 0
    assert {0, 1} <= set(demo_coverage(result.demo, CFG, 1))


def test_demo_pairs_are_the_route_replayed_after_several_delays() -> None:
    demo = load_demo(DEMO_1_3_EVEN)
    obs, actions = demo_pairs(str(DEMO_1_3_EVEN), CFG)
    n = len(demo.steps)
    k = len(obs) // n
    assert obs.shape == (k * n, CFG.frame_stack, CFG.size, CFG.size) and obs.dtype == np.uint8
    assert k >= 2 and actions.tolist() == demo.steps * k
    group = EmulatorGroup(dataclasses.replace(CFG, noop_max=0), 1, [0])
    try:
        first = group.reset()[0]
        after = group.step(np.array([demo.steps[0]])).obs[0]
    finally:
        group.close()
    assert np.array_equal(obs[0], first) and np.array_equal(obs[1], after)
    assert not np.array_equal(obs[:n], obs[n : 2 * n])  # a delayed replay sees other screens


def test_demo_bc_pulls_the_policy_toward_the_demo_actions_and_decays() -> None:
    import torch

    from mario_rl.algos.ppo import PPO
    from mario_rl.config.ppo import PPOConfig

    cfg = PPOConfig(num_envs=2, rollout_steps=16, minibatch_size=16, epochs=1, network="small")
    cfg.demo_bc, cfg.demo_bc_steps, cfg.lr = 1.0, 1000, 1e-3
    ppo = PPO(cfg, obs_shape=(4, 36, 36), n_actions=7)
    assert ppo.current_demo_bc() == 0.0  # no demos given
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 256, (8, 4, 36, 36), dtype=np.uint8)
    ppo.set_demos(obs, np.full(8, 3, np.int64))
    with torch.no_grad():
        before = ppo.model(torch.from_numpy(obs)).logits.softmax(-1)[:, 3].mean()
    for _ in range(10):
        ppo.fill_random_rollout()
        metrics = ppo.learn()
    with torch.no_grad():
        after = ppo.model(torch.from_numpy(obs)).logits.softmax(-1)[:, 3].mean()
    assert metrics["charts/demo_bc"] == 1.0 and metrics["losses/demo_bc"] > 0
    assert after > before + 0.2
    ppo.global_step = 250
    assert ppo.current_demo_bc() == 0.75
    ppo.global_step = 5000
    assert ppo.current_demo_bc() == 0.0


@pytest.mark.parametrize("path", sorted((ROOT / "demos").rglob("*.json")), ids=lambda p: p.stem)
def test_every_committed_demo_replays_to_its_stage_flag(path: Path) -> None:
    demo = load_demo(path)
    assert path.stem in (demo.stage, f"{demo.stage}-n{demo.noops:02d}")
    assert demo.found_by.startswith(f"mario-rl explore --stage {demo.stage} ")
    # Its own replay reaches the flag (training replays it after more no-op frames too).
    assert _replay(demo, dataclasses.replace(CFG, stages=demo.stage), 0).flag


def test_a_directory_of_demos_gives_those_of_the_run_stages(tmp_path: Path) -> None:
    from mario_rl.envs.demos import demo_paths

    for name in ("1-3.json", "1-3-n01.json", "2-1.json"):
        stage = name[:3]
        (tmp_path / name).write_text(json.dumps(_GOOD | {"stage": stage}))
    (tmp_path / "notes.txt").write_text("not a demo")
    got = demo_paths(f"{tmp_path},x.json", "1-3,4-1")
    assert got == [str(tmp_path / "1-3-n01.json"), str(tmp_path / "1-3.json"), "x.json"]
    assert len(demo_paths(str(tmp_path))) == 3  # all stages


def test_noops_give_another_start_and_replays_keep_them() -> None:
    """A route found after no-op frames is replayed after the same frames (the enemies' timing
    against Mario depends on the frame the play starts at)."""
    d0 = explore(CFG, "1-4", seed=0, max_steps=60_000)
    d3 = explore(CFG, "1-4", seed=0, max_steps=60_000, noops=3)
    assert d0.demo is not None and d3.demo is not None and d3.demo.noops == 3
    assert d0.demo.steps != d3.demo.steps
