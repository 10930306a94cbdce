"""The PPO family's stage curriculum: its options and their refusals, episodes moving the envs'
stage draws toward the failed stages, its state through a checkpoint, and a run end to end
through the CLI (tags in the log, state restored on --resume)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from mario_rl.algos.ppo_family import make_ppo
from mario_rl.cli import build_parser, main, train_job
from mario_rl.config.jobs import TrainJob
from mario_rl.config.ppo import PPOConfig
from mario_rl.config.run import RunConfig
from mario_rl.devices import torch_threads
from mario_rl.envs import STAGES, EnvConfig, MarioVectorEnv
from mario_rl.io.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture(autouse=True)
def _one_torch_thread():
    with torch_threads(1):
        yield


def tiny(algo: str = "ppo", **kw) -> PPOConfig:
    base = dict(
        algo=algo, num_envs=2, rollout_steps=16, minibatch_size=16, epochs=1, bptt_len=8,
        lstm_hidden=32, rnd_init_steps=2, total_steps=1000, seed=3, torch_threads=1,
        curriculum=True,
    )  # fmt: skip
    return PPOConfig(**(base | kw))


def env_of(stages: str = "1-1,1-2", num_envs: int = 2, workers: int = 1, **kw) -> MarioVectorEnv:
    return MarioVectorEnv(EnvConfig(stages=stages, size=36, **kw), num_envs, workers, seed=0)


def drawn(env: MarioVectorEnv, resets: int = 8) -> Counter:
    """The stages the envs start on over ``resets`` resets with different seeds."""
    seen: Counter = Counter()
    for seed in range(resets):
        _, info = env.reset(seed=seed)
        seen.update(STAGES[int(s)] for s in info["stage"])
    return seen


def episode(stage: str, flag: bool) -> dict:
    """An episode record as the collector makes it (stages as indices into STAGES)."""
    i = STAGES.index(stage)
    return {"env": 0, "step": 0, "stage": i, "start_stage": i, "flag": flag, "restored": False}


# -- options -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"curriculum_floor": 0.0}, "curriculum_floor must be in (0, 1]"),
        ({"curriculum_floor": 1.5}, "curriculum_floor must be in (0, 1]"),
        ({"curriculum_decay": 1.0}, "curriculum_decay must be in [0, 1)"),
        ({"curriculum_decay": -0.1}, "curriculum_decay must be in [0, 1)"),
    ],
)
def test_curriculum_options_are_validated(kw: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=re.escape(msg)):
        PPOConfig(**kw).validate()
    PPOConfig(curriculum=True, curriculum_floor=1.0, curriculum_decay=0.0).validate()


@pytest.mark.parametrize("stages", ["1-1", "game", "4-2:3"])
def test_curriculum_needs_a_set_of_stages(stages: str) -> None:
    job = TrainJob(EnvConfig(stages=stages), PPOConfig(curriculum=True), RunConfig())
    with pytest.raises(ValueError, match="--curriculum .* needs a set of stages"):
        job.validate()
    TrainJob(EnvConfig(stages=stages), PPOConfig(), RunConfig()).validate()  # without: fine
    # A library user's trainer refuses the env too.
    env = env_of(stages, num_envs=1)
    try:
        with pytest.raises(ValueError, match="needs a set of stages"):
            make_ppo(tiny(num_envs=1), env)
    finally:
        env.close()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--curriculum"], "needs a set of stages"),  # the default stage, 1-1
        (["--algo", "ppo-lstm", "--stages", "game", "--curriculum"], "not 'game'"),
        (["--algo", "ppo-rnd", "--stages", "all", "--curriculum-floor", "0"], "curriculum_floor"),
        (["--stages", "1-1,1-2", "--curriculum-decay", "1"], "curriculum_decay"),
    ],
)
def test_cli_refuses_a_curriculum_without_stages_in_one_line(
    args, needle, capsys, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mario-rl: error:") and err.count("\n") == 1, err
    assert needle in err, err
    assert not any(tmp_path.iterdir())  # nothing written


def test_curriculum_flags_are_one_name_for_ppo_and_a3g() -> None:
    def job(*args: str):
        return train_job(build_parser().parse_args(["train", *args]))

    flags = ("--stages", "1-1,1-2", "--curriculum", "--curriculum-floor", "0.2",
             "--curriculum-decay", "0.5")  # fmt: skip
    for algo in ("ppo", "ppo-lstm", "ppo-rnd"):
        p = job("--algo", algo, *flags)
        assert (p.ppo.curriculum, p.ppo.curriculum_floor, p.ppo.curriculum_decay) == (
            True,
            0.2,
            0.5,
        )
    a = job("--algo", "a3g", *flags)
    assert (a.a3g.curriculum, a.a3g.curriculum_floor, a.a3g.curriculum_decay) == (True, 0.2, 0.5)
    assert not job("--algo", "ppo", "--stages", "1-1,1-2").ppo.curriculum  # off by default


# -- training ------------------------------------------------------------------------------------
@pytest.mark.parametrize("algo", ["ppo", "ppo-lstm", "ppo-rnd"])
def test_failed_stages_are_drawn_more_after_a_rollout(algo, monkeypatch) -> None:
    env = env_of(num_envs=8, workers=2)
    try:
        ppo = make_ppo(tiny(algo, num_envs=8, curriculum_decay=0.7), env)
        assert ppo.curriculum is not None and ppo.curriculum.stages == ("1-1", "1-2")
        assert all(env.stages_of(i).weights == (0.5, 0.5) for i in range(8))
        # A rollout whose episodes clear 1-1 and fail 1-2 (and one from a saved progress state,
        # which says nothing about its stage and is left out).
        buf = ppo.rollout
        buf.episodes = [episode("1-1", True), episode("1-2", False)] * 10
        buf.episodes.append(episode("1-2", True) | {"restored": True})
        buf.times, buf.components = {}, {}
        monkeypatch.setattr(ppo.collector, "collect", lambda current, first_step: buf)
        m = ppo.collect()
        assert ppo.curriculum.episodes == {"1-1": 10, "1-2": 10}
        assert m["curriculum/1-2"] > 5 * m["curriculum/1-1"] > 0
        assert m["curriculum/1-1"] + m["curriculum/1-2"] == pytest.approx(1.0)
        for i in range(8):
            w = env.stages_of(i).weights
            assert w[1] > 5 * w[0] > 0
        seen = drawn(env)
        assert seen["1-2"] > 3 * seen["1-1"], seen
    finally:
        env.close()
    # Without a curriculum the same resets draw both stages about equally.
    plain = env_of(num_envs=8, workers=2)
    try:
        seen = drawn(plain)
        assert seen["1-2"] < 2 * seen["1-1"], seen
    finally:
        plain.close()


@pytest.mark.parametrize("async_collect", [False, True])
def test_real_episodes_are_recorded_by_their_start_stage(async_collect: bool) -> None:
    env = env_of(num_envs=4, workers=2, stall_steps=6)
    try:
        ppo = make_ppo(tiny("ppo", num_envs=4, async_collect=async_collect), env)
        try:
            seen = 0
            for _ in range(2):
                m = ppo.collect()
                seen += len(ppo.episodes)
            assert seen >= 1
            assert sum(ppo.curriculum.episodes.values()) == seen
            # Stalled episodes fail: the weights stay at their start, equal.
            assert m["curriculum/1-1"] == m["curriculum/1-2"] == 0.5
        finally:
            ppo.close()
    finally:
        env.close()


@pytest.mark.parametrize("algo", ["ppo", "ppo-rnd"])
def test_curriculum_state_survives_a_checkpoint(algo, tmp_path: Path) -> None:
    env = env_of()
    try:
        ppo = make_ppo(tiny(algo), env)
        for _ in range(15):
            ppo.curriculum.record("1-1", True)
        ppo.curriculum.record("1-2", False)
        tensors, meta = ppo.state_dict()
        assert json.loads(json.dumps(meta["curriculum"])) == ppo.curriculum.state()
        path = save_checkpoint(tmp_path / "ck", tensors, meta | {"step": 0})
    finally:
        env.close()
    env = env_of()
    try:
        other = make_ppo(tiny(algo), env)
        assert other.curriculum.state() != ppo.curriculum.state()
        other.load_state_dict(*load_checkpoint(path))
        assert other.curriculum.state() == ppo.curriculum.state()
        # The restored weights reach the envs' next resets.
        w = env.stages_of(0).weights
        assert w[1] > 3 * w[0]
        # A checkpoint of a run without a curriculum leaves a fresh one as it is.
        fresh = make_ppo(tiny(algo), env)
        before = fresh.curriculum.state()
        fresh.load_state_dict(tensors, meta | {"curriculum": None})
        assert fresh.curriculum.state() == before
        # Out-of-range state is refused in one line.
        bad = {"failure": {"1-1": 2.0}, "episodes": {}}
        with pytest.raises(ValueError, match="failure rate of 1-1"):
            fresh.load_state_dict(tensors, meta | {"curriculum": bad})
    finally:
        env.close()


TINY = [
    "--stages", "1-1,1-2", "--curriculum", "--envs", "2", "--workers", "2",
    "--rollout-steps", "32", "--minibatch-size", "32", "--epochs", "1", "--network", "small",
    "--max-steps", "10", "--eval-every", "0", "--checkpoint-every", "64",
]  # fmt: skip


def test_train_cli_logs_the_curriculum_and_resumes_it(tmp_path: Path) -> None:
    run = tmp_path / "run"

    def train(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "mario_rl", "train", "--algo", "ppo", *TINY, "--run-dir",
             str(run), *args],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    r = train("--total-steps", "128")
    assert r.returncode == 0, r.stderr
    _, meta = load_checkpoint(run / "checkpoints" / "final")
    first = sum(meta["curriculum"]["episodes"].values())
    assert first > 0 and set(meta["curriculum"]["failure"]) == {"1-1", "1-2"}
    r = train("--total-steps", "256", "--resume")
    assert r.returncode == 0, r.stderr
    assert "resumed" in r.stdout
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    tagged = [row for row in rows if "curriculum/1-1" in row]
    assert tagged and all(
        row["curriculum/1-1"] + row["curriculum/1-2"] == pytest.approx(1.0) for row in tagged
    )
    assert max(row["step"] for row in tagged) == 256
    # The resumed run went on counting from the checkpoint's state: every logged episode is in it.
    _, meta = load_checkpoint(run / "checkpoints" / "final")
    total = sum(meta["curriculum"]["episodes"].values())
    assert total > first
    assert total == sum(row.get("charts/episodes", 0) for row in rows)
    assert torch.isfinite(torch.tensor([row["curriculum/1-2"] for row in tagged])).all()
