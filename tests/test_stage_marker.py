"""The stage marker (EnvConfig.stage_marker, --stage-marker): every observation frame carries the
index of the stage being played in its top-left corner, readable back, and only when asked."""

from __future__ import annotations

import numpy as np
import pytest

from mario_rl.cli import build_parser, train_job
from mario_rl.envs import STAGES, EnvConfig, make_vector_env
from mario_rl.envs.core import mark_stage, read_stage_mark


@pytest.mark.parametrize("size", [36, 64, 84])
def test_every_stage_index_reads_back(size: int) -> None:
    rng = np.random.default_rng(0)
    for index in range(32):
        frame = rng.integers(0, 256, (size, size), dtype=np.uint8)
        below = frame[size // 2 :].copy()
        mark_stage(frame, index)
        assert read_stage_mark(frame) == index
        assert np.array_equal(frame[size // 2 :], below)  # the rest of the picture is untouched


def test_observations_carry_the_stage_played() -> None:
    cfg = EnvConfig(stages="1-1,4-2,8-4", size=64, stage_marker=True, stall_steps=0)
    env = make_vector_env(cfg, num_envs=6, workers=2, seed=1)
    try:
        obs, info = env.reset(seed=3)
        assert len(set(info["stage"].tolist())) > 1  # several stages drawn
        for _ in range(3):
            for i in range(6):
                for f in range(obs.shape[1]):
                    assert read_stage_mark(obs[i, f]) == int(info["stage"][i])
            obs, _, _, _, info = env.step(np.zeros(6, np.int64))
    finally:
        env.close()
    # Off (the default), the corner is the game's picture: 1-1's sky is not a code of squares.
    plain = make_vector_env(EnvConfig(stages="1-1", size=64), num_envs=1)
    try:
        obs, _ = plain.reset(seed=0)
        corner = obs[0, -1, :4, :20]
        assert not set(np.unique(corner).tolist()) <= {0, 255}
    finally:
        plain.close()


def test_the_flag_reaches_the_env_config() -> None:
    job = train_job(build_parser().parse_args(["train", "--stages", "1-1,1-2", "--stage-marker"]))
    assert job.env.stage_marker
    assert not train_job(build_parser().parse_args(["train"])).env.stage_marker
    assert STAGES[0] == "1-1"
