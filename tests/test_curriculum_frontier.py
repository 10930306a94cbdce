"""The curriculum's frontier (--curriculum-frontier N): stages open in the order given as earlier
ones are mastered, never close again, survive a checkpoint, and reach the envs' stage draws (PPO)
and the workers' shared weights (A3G)."""

from __future__ import annotations

import re

import pytest

from mario_rl.algos.a3g import A3G
from mario_rl.algos.ppo_family import make_ppo
from mario_rl.cli import build_parser, main, train_job
from mario_rl.config.a3g import A3GConfig
from mario_rl.config.ppo import PPOConfig
from mario_rl.devices import torch_threads
from mario_rl.envs import STAGES, EnvConfig, MarioVectorEnv
from mario_rl.rl.curriculum import Curriculum

FOUR = ("1-1", "1-2", "1-3", "1-4")


def clear(cur: Curriculum, stage: str, times: int = 12) -> None:
    for _ in range(times):
        cur.record(stage, cleared=True)


def test_stages_open_one_by_one_as_earlier_ones_are_mastered() -> None:
    cur = Curriculum(FOUR, frontier=2, master=0.5)
    assert cur.opened == 2
    w = cur.weights()
    assert w["1-1"] == w["1-2"] == 1.0 and w["1-3"] == w["1-4"] == 0.0
    # Failing the open stages opens nothing; a mastered stage opens the next one.
    for _ in range(30):
        cur.record("1-1", cleared=False)
    assert cur.opened == 2
    clear(cur, "1-2")
    assert cur.mastered("1-2") and cur.opened == 3 and cur.weights()["1-3"] > 0
    assert cur.weights()["1-4"] == 0.0
    # 1-1 mastered too: only 1-3 of the open ones is left, so 1-4 opens.
    clear(cur, "1-1")
    assert cur.opened == 4 and min(cur.weights().values()) > 0
    # Forgetting does not close a stage again.
    for _ in range(40):
        for s in FOUR:
            cur.record(s, cleared=False)
    assert cur.opened == 4 and not any(cur.mastered(s) for s in FOUR)
    # A stage already mastered when it opens counts as such: the next one opens with it.
    ahead = Curriculum(FOUR, frontier=1)
    clear(ahead, "1-2")
    assert ahead.opened == 1
    clear(ahead, "1-1")
    assert ahead.opened == 3


def test_the_mastery_threshold_and_a_frontier_of_zero() -> None:
    strict = Curriculum(FOUR, frontier=1, master=0.9)
    for _ in range(40):  # a clear rate near 2/3: not mastered at 0.9
        strict.record("1-1", cleared=True)
        strict.record("1-1", cleared=True)
        strict.record("1-1", cleared=False)
    assert strict.opened == 1 and not strict.mastered("1-1")
    clear(strict, "1-1", 40)
    assert strict.opened == 2
    everything = Curriculum(FOUR)  # frontier 0: every stage from the start
    assert everything.opened == 4 and len(set(everything.weights().values())) == 1
    wide = Curriculum(FOUR, frontier=9)
    assert wide.opened == 4


def test_the_frontier_survives_its_state() -> None:
    cur = Curriculum(FOUR, frontier=1)
    clear(cur, "1-1")
    clear(cur, "1-2")
    assert cur.opened == 3
    for _ in range(40):  # forgotten again: the frontier stays where it was
        cur.record("1-1", cleared=False)
        cur.record("1-2", cleared=False)
    state = cur.state()
    assert state["opened"] == ["1-1", "1-2", "1-3"]
    again = Curriculum(FOUR, frontier=1)
    again.load_state(state)
    assert again.opened == 3 and again.weights() == cur.weights()
    # A state saved before frontiers existed opens as its failure rates say.
    old = Curriculum(FOUR, frontier=1)
    old.load_state({"failure": {"1-1": 0.0}, "episodes": {"1-1": 30}})
    assert old.opened == 2


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"curriculum_frontier": -1}, "curriculum_frontier must be >= 0"),
        ({"curriculum_master": 0.0}, "curriculum_master must be in (0, 1]"),
        ({"curriculum_master": 1.5}, "curriculum_master must be in (0, 1]"),
        ({"curriculum": False, "curriculum_frontier": 2}, "give --curriculum with it"),
    ],
)
@pytest.mark.parametrize("config", [PPOConfig, A3GConfig])
def test_frontier_options_are_validated(config, kw: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=re.escape(msg)):
        config(**({"curriculum": True} | kw)).validate()
    config(curriculum=True, curriculum_frontier=3, curriculum_master=1.0).validate()


def test_frontier_flags_for_ppo_and_a3g(capsys, tmp_path, monkeypatch) -> None:
    flags = ["--stages", "1-1,1-2,1-3", "--curriculum", "--curriculum-frontier", "2",
             "--curriculum-master", "0.7"]  # fmt: skip
    for algo in ("ppo", "ppo-lstm", "a3g"):
        job = train_job(build_parser().parse_args(["train", "--algo", algo, *flags]))
        cfg = job.a3g if algo == "a3g" else job.ppo
        assert (cfg.curriculum_frontier, cfg.curriculum_master) == (2, 0.7)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--stages", "1-1,1-2", "--curriculum-frontier", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give --curriculum with it" in err
    assert not any(tmp_path.iterdir())


def test_ppo_draws_only_open_stages_and_opens_the_next(monkeypatch) -> None:
    env = MarioVectorEnv(EnvConfig(stages="1-3,1-1,1-2", size=36), 4, 1, seed=0)
    try:
        with torch_threads(1):
            cfg = PPOConfig(
                num_envs=4, rollout_steps=16, minibatch_size=16, epochs=1, total_steps=1000,
                seed=3, torch_threads=1, curriculum=True, curriculum_frontier=1,
            )  # fmt: skip
            ppo = make_ppo(cfg, env)
        # The order given is the order of opening: 1-3 first.
        assert env.stages_of(0).weights == (1.0, 0.0, 0.0)
        for seed in range(4):
            _, info = env.reset(seed=seed)
            assert {STAGES[int(s)] for s in info["stage"]} == {"1-3"}
        buf = ppo.rollout
        i = STAGES.index("1-3")
        buf.episodes = [{"start_stage": i, "stage": i, "flag": True, "restored": False}] * 12
        buf.times, buf.components = {}, {}
        monkeypatch.setattr(ppo.collector, "collect", lambda current, first_step: buf)
        m = ppo.collect()
        assert m["curriculum/stages_open"] == 2.0 and m["curriculum/1-2"] == 0.0
        w = env.stages_of(0).weights
        assert w[1] > 2 * w[0] > 0 and w[2] == 0.0
        tensors, meta = ppo.state_dict()
        assert meta["curriculum"]["opened"] == ["1-3", "1-1"]
    finally:
        env.close()


def test_a3g_publishes_zero_weight_for_closed_stages() -> None:
    cfg = A3GConfig(
        workers=1, rollout_steps=8, lstm_hidden=16, curriculum=True, curriculum_frontier=1
    )
    with torch_threads(1):
        a3g = A3G(cfg, EnvConfig(stages="1-2,1-1"))
    # A3G opens its stages in game order.
    arr = list(a3g.stage_weights)
    assert arr[STAGES.index("1-1")] > 0 and arr[STAGES.index("1-2")] == 0.0
