"""PPO + RND: plain PPO (``ppo.py``) with random network distillation's exploration bonus.

What it adds, and nothing else:

* a fixed random target network and a predictor trained to match it on the frames the agent
  sees; the predictor's error on each next frame is an intrinsic reward (novelty), normalised
  by a running std of intrinsic returns ('std') or per rollout to [0, 1] ('minmax');
* a second value head and a second, non-episodic GAE stream for the intrinsic reward, mixed into
  the advantages with ``rnd_ext_coef`` / ``rnd_int_coef``;
* two loss terms: the intrinsic value's, and the predictor's (on a random subset of samples);
* their state in checkpoints (``rnd.*``, ``rnd_reward_rms.*``, ``rnd_int_return``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mario_rl.algos.ppo import PPO, flat
from mario_rl.algos.rollout import Rollout
from mario_rl.config.ppo import PPOConfig
from mario_rl.io.checkpoint import prefixed, strip_prefix
from mario_rl.models import ACOutput, RNDModel
from mario_rl.rl.advantages import discounted_running_returns, gae
from mario_rl.rl.losses import value_loss
from mario_rl.rl.stats import RunningMeanStd, explained_variance

__all__ = ["PPORND", "RNDRollout"]


class RNDRollout(Rollout):
    """A rollout that also keeps each step's next frame, intrinsic values and rewards."""

    def __init__(self, cfg: PPOConfig, obs_shape: tuple[int, ...], device: torch.device):
        super().__init__(cfg, obs_shape, device)
        t, n = cfg.rollout_steps, cfg.num_envs
        _c, h, w = obs_shape
        self.next_frames = torch.zeros((t, n, h, w), dtype=torch.uint8, device=device)
        """The newest frame of the observation that followed each step (the episode's last
        one where it ended): what the intrinsic reward is computed on."""
        self.values_int = torch.zeros((t, n), device=device)
        self.last_value_int = torch.zeros(n, device=device)
        self.rewards_int = torch.zeros((t, n), device=device)
        self.returns_int = torch.zeros((t, n), device=device)

    def keep_output(self, t: int, cols: slice, out: ACOutput) -> None:
        self.values_int[t, cols] = out.value_int

    def keep_next_obs(self, t: int, cols: slice, next_obs: Tensor) -> None:
        self.next_frames[t, cols] = next_obs[:, -1]

    def keep_final_obs(self, t: int, rows: np.ndarray, finals: Tensor) -> None:
        self.next_frames[t, rows] = finals[:, -1]

    def keep_last_output(self, last: ACOutput) -> None:
        assert last.value_int is not None
        self.last_value_int.copy_(last.value_int)


class PPORND(PPO):
    """PPO with an RND exploration bonus (``algo="ppo-rnd"``)."""

    algo = "ppo-rnd"
    rollout_class = RNDRollout
    rollout: RNDRollout

    def _init_extras(self) -> list[nn.Parameter]:
        """The RND networks (from the seeded stream, after the actor-critic), the intrinsic
        returns' statistics and each env's running intrinsic return; trains the predictor."""
        cfg = self.cfg
        channels = (32, 64, 64) if cfg.network == "nature" else (16, 32, 32)
        self.rnd = RNDModel(self.obs_shape[1:], channels, obs_clip=cfg.rnd_obs_clip)
        self.rnd.to(self.device)
        if cfg.channels_last:
            self.rnd.to(memory_format=torch.channels_last)
        self.int_reward_rms = RunningMeanStd(()).to(self.device)
        self.int_return = torch.zeros(cfg.num_envs, device=self.device)
        self.rnd_initialised = False
        return list(self.rnd.predictor.parameters())

    def _replicated_tensors(self) -> list[Tensor]:
        """Also RND's networks and intrinsic-return statistics."""
        tensors = super()._replicated_tensors()
        tensors += list(self.rnd.state_dict().values())
        return tensors + list(self.int_reward_rms.state_dict().values())

    def reset_envs(self, seed: int | None = None) -> None:
        super().reset_envs(seed)
        self.int_return.zero_()

    # -- the intrinsic reward ----------------------------------------------------------------------
    def collect(self) -> dict[str, float]:
        """The next rollout with its intrinsic rewards (also time/rnd, charts/intrinsic_reward,
        charts/rnd_error). The first call initialises the observation statistics."""
        if self.envs is not None and not self.rnd_initialised:
            self._init_obs_stats()
        metrics = super().collect()
        t0 = time.perf_counter()
        metrics |= self._intrinsic_rewards(self.rollout)
        metrics["time/rnd"] = time.perf_counter() - t0
        return metrics

    def _init_obs_stats(self) -> None:
        """Initialise the RND observation normaliser from random-action steps (as in the RND
        paper), so that the first intrinsic rewards are not dominated by unnormalised pixels."""
        seen = self.collector.random_steps(self.cfg.rnd_init_steps, self.n_actions)
        if seen:
            frames = torch.stack([torch.from_numpy(obs[:, -1]) for obs in seen])
            self.collective.update_running_stats(
                self.rnd.obs_rms, frames.reshape(-1, 1, *self.obs_shape[1:]).float()
            )
        self.rnd_initialised = True

    @torch.inference_mode()
    def _intrinsic_rewards(self, buf: RNDRollout) -> dict[str, float]:
        """Intrinsic rewards for a rollout (batched, on the learner's thread since the predictor
        and the obs statistics belong to it), normalised; then the obs-statistics update.
        Under torchrun every rank folds in the same global batch, so the statistics agree."""
        cfg = self.cfg
        frames = buf.next_frames.reshape(-1, *self.obs_shape[1:])
        errs = [self.rnd.error(chunk) for chunk in frames.split(1024)]
        raw = torch.cat(errs).reshape(cfg.rollout_steps, cfg.num_envs)
        if cfg.rnd_reward_norm == "minmax":
            lo, hi = self.collective.min_max(raw)
            r_int = (raw - lo) / (hi - lo + 1e-8)
        else:
            rets, last = discounted_running_returns(raw, self.int_return, cfg.rnd_gamma_int)
            self.int_return.copy_(last)
            self.collective.update_running_stats(self.int_reward_rms, rets.reshape(-1))
            r_int = raw / self.int_reward_rms.var.float().add(1e-8).sqrt()
        buf.rewards_int.copy_(r_int)
        self.collective.update_running_stats(self.rnd.obs_rms, frames.unsqueeze(1).float())
        return {
            "charts/intrinsic_reward": float(r_int.mean()),
            "charts/rnd_error": float(raw.mean()),
        }

    # -- learn ---------------------------------------------------------------------------------------
    def compute_advantages(self) -> None:
        """Extrinsic GAE, plus the intrinsic stream's; the advantages are their weighted sum."""
        super().compute_advantages()
        cfg, buf = self.cfg, self.rollout
        # Non-episodic: an episode end is not the end of novelty, so neither cut nor stop the
        # bootstrap; obs[t+1] (first obs of the next episode) is the continuation.
        nv_int = torch.cat([buf.values_int[1:], buf.last_value_int.unsqueeze(0)])
        zeros = torch.zeros_like(buf.dones)
        adv_int, buf.returns_int = gae(
            buf.rewards_int,
            buf.values_int,
            nv_int,
            zeros,
            zeros,
            cfg.rnd_gamma_int,
            cfg.gae_lambda,
        )
        buf.advantages = cfg.rnd_ext_coef * buf.advantages + cfg.rnd_int_coef * adv_int

    def _loss(
        self, terms: dict[str, Tensor], out: ACOutput, idx: Tensor, ent_coef: float
    ) -> Tensor:
        """Both value heads' losses, and the predictor's."""
        cfg, buf = self.cfg, self.rollout
        assert out.value_int is not None
        v_int = out.value_int.reshape(-1)
        terms["value_int"] = value_loss(v_int, flat(buf.returns_int)[idx], cfg.vf_loss)
        value = terms["value"] + terms["value_int"]
        loss = terms["policy"] - ent_coef * terms["entropy"] + cfg.vf_coef * value
        # Train the predictor on a random subset only, so it does not catch up with novelty too
        # fast (same expectation as the RND paper's mask, less compute).
        n_sub = max(1, round(cfg.rnd_update_proportion * len(idx)))
        sub = idx[torch.randperm(len(idx), generator=self.gen)[:n_sub]]
        terms["rnd"] = self.rnd.error(flat(buf.next_frames)[sub]).mean()
        return loss + terms["rnd"]

    def learn(self) -> dict[str, float]:
        metrics = super().learn()
        buf = self.rollout
        metrics["debug/explained_variance_int"] = explained_variance(
            flat(buf.values_int), flat(buf.returns_int)
        )
        return metrics

    def fill_random_rollout(self) -> None:
        super().fill_random_rollout()
        g, buf = self.gen, self.rollout
        buf.next_frames.copy_(buf.obs[:, :, -1])
        buf.values_int.copy_(torch.randn(buf.values.shape, generator=g))
        buf.rewards_int.copy_(torch.rand(buf.values.shape, generator=g))

    # -- checkpoint state --------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors, meta = super().state_dict()
        tensors |= prefixed(self.rnd.state_dict(), "rnd.")
        tensors |= prefixed(self.int_reward_rms.state_dict(), "rnd_reward_rms.")
        tensors["rnd_int_return"] = self.int_return.clone()
        meta["rnd_initialised"] = self.rnd_initialised
        return tensors, meta

    def _restore(
        self, tensors: dict[str, Tensor], meta: dict[str, Any], restore_env_state: bool
    ) -> None:
        super()._restore(tensors, meta, restore_env_state)
        self.rnd.load_state_dict(strip_prefix(tensors, "rnd."))
        self.int_reward_rms.load_state_dict(strip_prefix(tensors, "rnd_reward_rms."))
        self.int_return.copy_(tensors["rnd_int_return"])
        self.rnd_initialised = bool(meta.get("rnd_initialised", False))
