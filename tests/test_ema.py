"""--ema-decay: a weight average moved after every update, stored beside the trained weights,
played by evaluation, export, teachers and --init-from, while training resumes from the trained
weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mario_rl.algos.ppo import PPO
from mario_rl.cli import main
from mario_rl.config.ppo import PPOConfig
from mario_rl.devices import torch_threads
from mario_rl.evaluation.policy import load_policy
from mario_rl.io.checkpoint import load_checkpoint, policy_weights, strip_prefix
from tiny_runs import SMALL


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def _weights(ppo: PPO) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in ppo.model.state_dict().items()}


def test_the_average_follows_each_update_by_its_decay() -> None:
    cfg = PPOConfig(num_envs=2, rollout_steps=16, minibatch_size=16, epochs=1, network="small")
    cfg.ema_decay, cfg.lr = 0.75, 1e-2
    ppo = PPO(cfg, obs_shape=(4, 36, 36), n_actions=5)
    assert ppo.ema is None and not any(k.startswith("ema.") for k in ppo.state_dict()[0])
    ppo.fill_random_rollout()
    ppo.learn()
    first = _weights(ppo)
    assert ppo.ema is not None
    assert all(torch.equal(ppo.ema[k], v) for k, v in first.items())  # begun at the first update
    ppo.fill_random_rollout()
    ppo.learn()
    second = _weights(ppo)
    name = "head.policy.weight" if "head.policy.weight" in second else next(iter(second))
    assert not torch.equal(first[name], second[name])
    for k, v in second.items():
        if v.is_floating_point():
            torch.testing.assert_close(ppo.ema[k], 0.75 * first[k] + 0.25 * v)
    tensors, _ = ppo.state_dict()
    assert set(strip_prefix(tensors, "ema.")) == set(second)
    # Off, nothing is kept.
    cfg_off = PPOConfig(num_envs=2, rollout_steps=16, minibatch_size=16, epochs=1, network="small")
    off = PPO(cfg_off, obs_shape=(4, 36, 36), n_actions=5)
    off.fill_random_rollout()
    off.learn()
    assert off.ema is None


@pytest.mark.parametrize("decay", [-0.1, 1.0, float("nan")])
def test_a_decay_outside_zero_to_one_is_refused(decay: float) -> None:
    cfg = PPOConfig()
    cfg.ema_decay = decay
    with pytest.raises(ValueError, match="ema_decay must be in"):
        cfg.validate()


def test_a_run_with_an_average_plays_it_exports_it_and_resumes_from_its_weights(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    common = [*SMALL, "--stages", "1-1", "--seed", "2", "--run-dir", str(run)]
    assert main(["train", *common, "--ema-decay", "0.5", "--total-steps", "128"]) == 0
    final = run / "checkpoints" / "final"
    tensors, _ = load_checkpoint(final)
    trained, average = strip_prefix(tensors, "model."), strip_prefix(tensors, "ema.")
    assert set(average) == set(trained)
    assert any(not torch.equal(average[k], trained[k]) for k in trained)
    assert policy_weights(tensors) == average
    played = load_policy(final).model.state_dict()
    assert all(torch.equal(played[k], average[k]) for k in average)

    out = tmp_path / "model"
    assert main(["export", "--checkpoint", str(final), "--out", str(out)]) == 0
    exported, _ = load_checkpoint(out)
    assert set(exported) == {f"model.{k}" for k in average}
    assert all(torch.equal(exported[f"model.{k}"], v) for k, v in average.items())
    raw = tmp_path / "raw"
    assert main(["export", "--checkpoint", str(final), "--out", str(raw), "--trained"]) == 0
    exported, _ = load_checkpoint(raw)
    assert all(torch.equal(exported[f"model.{k}"], v) for k, v in trained.items())

    # A leg may turn it off: the trained weights go on, and its checkpoints carry no average.
    assert main(["train", "--run-dir", str(run), "--resume", "--total-steps", "192",
                 "--ema-decay", "0"]) == 0  # fmt: skip
    tensors, meta = load_checkpoint(final)
    assert meta["config"]["ema_decay"] == 0 and not strip_prefix(tensors, "ema.")


def test_an_average_that_does_not_fit_is_a_one_line_refusal() -> None:
    cfg = PPOConfig(num_envs=2, rollout_steps=16, minibatch_size=16, epochs=1, network="small")
    cfg.ema_decay = 0.5
    ppo = PPO(cfg, obs_shape=(4, 36, 36), n_actions=5)
    ppo.fill_random_rollout()
    ppo.learn()
    tensors, meta = ppo.state_dict()
    name = next(k for k in tensors if k.startswith("ema."))
    tensors[name] = torch.zeros(3)
    fresh = PPO(cfg, obs_shape=(4, 36, 36), n_actions=5)
    with pytest.raises(ValueError) as err:
        fresh.load_state_dict(tensors, meta)
    assert "\n" not in str(err.value) and "ema" in str(err.value)
