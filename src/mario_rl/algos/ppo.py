"""PPO for Mario, top to bottom: plain PPO, recurrent PPO (LSTM, truncated BPTT) and PPO + RND.

One trainer class with a collect / learn split:

* :meth:`PPO.collect` steps the vector env for ``rollout_steps`` and fills preallocated torch
  storage (obs as uint8); the policy runs under ``torch.inference_mode``. It records per-phase
  times and finished episodes, and ends with everything GAE needs (bootstrap values, including
  V(final_obs) for truncated episodes).
* :meth:`PPO.learn` computes advantages and runs ``epochs`` x minibatches of the clipped objective.

The env contract is Gymnasium's VectorEnv with same-step autoreset (see mario_rl.envs.vector).
Checkpointing goes through :meth:`PPO.state_dict` / :meth:`PPO.load_state_dict`: flat tensors plus
a JSON-able dict, nothing pickled.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mario_rl.algos.common import (
    RunningMeanStd,
    discounted_running_returns,
    explained_variance,
    gae,
    linear_schedule,
    optimizer_from_flat,
    optimizer_to_flat,
)
from mario_rl.config.ppo import PPOConfig
from mario_rl.models import ActorCritic, LSTMState, ModelSpec, RNDModel, build_model

CHECKPOINT_FORMAT = "mario-rl/ppo-trainer"
CHECKPOINT_VERSION = 1


# -- the loss ------------------------------------------------------------------------------------
def value_loss(values: Tensor, returns: Tensor, kind: str) -> Tensor:
    """The value loss alone ('mse' = 0.5 * squared error, 'huber' = smooth L1)."""
    if kind == "huber":
        return F.smooth_l1_loss(values, returns)
    return 0.5 * (values - returns).square().mean()


def ppo_losses(
    logits: Tensor,
    actions: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    values: Tensor,
    returns: Tensor,
    clip: float,
    vf_loss: str = "mse",
) -> dict[str, Tensor]:
    """The clipped-surrogate PPO terms for one minibatch (advantages already normalised or not).

    Returns policy (to minimise), value, entropy (to maximise), approx_kl = mean((r-1) - log r)
    (Schulman's low-variance estimator), old_approx_kl = mean(-log r) and clipfrac.
    """
    logp_all = F.log_softmax(logits, dim=-1)
    new_logprobs = logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
    log_ratio = new_logprobs - old_logprobs
    ratio = log_ratio.exp()
    pg_loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip)).mean()
    v_loss = value_loss(values, returns, vf_loss)
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()
        old_approx_kl = (-log_ratio).mean()
        clipfrac = ((ratio - 1).abs() > clip).float().mean()
    return {
        "policy": pg_loss,
        "value": v_loss,
        "entropy": entropy,
        "approx_kl": approx_kl,
        "old_approx_kl": old_approx_kl,
        "clipfrac": clipfrac,
    }


def sample_actions(
    logits: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Sample from a categorical over the last dim; returns (actions int64, their log-probs)."""
    logp = F.log_softmax(logits, dim=-1)
    actions = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
    return actions, logp.gather(-1, actions.unsqueeze(-1)).squeeze(-1)


@torch.inference_mode()
def policy_act(
    model: ActorCritic,
    obs: np.ndarray | Tensor,
    state: LSTMState | None = None,
    deterministic: bool = True,
    starts: np.ndarray | Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[np.ndarray, LSTMState | None]:
    """Actions for uint8 observations (N,C,H,W) or one (C,H,W): greedy (argmax) or sampled.

    For a recurrent model pass the previous ``state`` (None = zeros) and ``starts`` (True where an
    episode begins, resetting that env's state); returns (actions as int64 numpy, new state).
    """
    x = torch.as_tensor(obs)
    single = x.dim() == 3
    if single:
        x = x.unsqueeze(0)
    device = next(model.parameters()).device
    x = x.to(device)
    s = (
        None
        if starts is None
        else torch.as_tensor(starts, dtype=torch.bool, device=device).reshape(-1)
    )
    out = model(x, state, s)
    if deterministic:
        actions = out.logits.argmax(-1)
    else:
        actions, _ = sample_actions(out.logits, generator)
    a = actions.cpu().numpy()
    return (a[0:1] if single else a), out.state


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Use ``n`` torch intra-op threads inside the block (0 = leave as is)."""
    old = torch.get_num_threads()
    if n and n != old:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n and n != old:
            torch.set_num_threads(old)


# -- the trainer ---------------------------------------------------------------------------------
class PPO:
    """PPO / LSTM-PPO / PPO+RND trainer over a vector env (or without one, for speed measurements).

    Typical loop (the CLI's)::

        ppo = PPO(cfg, envs)
        while ppo.global_step < cfg.total_steps:
            stats = ppo.collect() | ppo.learn()      # namespaced metric dict for TensorBoard
            for ep in ppo.episodes: ...              # episodes finished in that rollout
    """

    def __init__(
        self,
        config: PPOConfig,
        envs: Any | None = None,
        *,
        obs_shape: tuple[int, int, int] | None = None,
        n_actions: int | None = None,
    ):
        config.validate()
        self.cfg = cfg = config
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        self.device = torch.device(cfg.device)
        self.envs = envs
        if envs is not None:
            obs_shape = tuple(envs.single_observation_space.shape)
            n_actions = int(envs.single_action_space.n)
            if envs.num_envs != cfg.num_envs:
                raise ValueError(
                    f"config.num_envs is {cfg.num_envs} but the env has {envs.num_envs}"
                )
        if obs_shape is None or n_actions is None:
            raise ValueError("PPO needs an env, or obs_shape and n_actions")
        self.obs_shape = tuple(int(d) for d in obs_shape)
        self.n_actions = n_actions
        self.recurrent = cfg.algo == "ppo-lstm"
        self.use_rnd = cfg.algo == "ppo-rnd"
        self.gen = torch.Generator().manual_seed(cfg.seed)

        # Initial weights from the seed, without disturbing the caller's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.model: ActorCritic = build_model(cfg, self.obs_shape, n_actions).to(self.device)
            self.rnd: RNDModel | None = None
            if self.use_rnd:
                channels = (32, 64, 64) if cfg.network == "nature" else (16, 32, 32)
                self.rnd = RNDModel(self.obs_shape[1:], channels, obs_clip=cfg.rnd_obs_clip).to(
                    self.device
                )
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
            if self.rnd is not None:
                self.rnd.to(memory_format=torch.channels_last)
        params = list(self.model.parameters())
        if self.rnd is not None:
            params += list(self.rnd.predictor.parameters())
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps)

        self.global_step = 0
        self.update = 0
        self.episodes: list[dict[str, Any]] = []
        self.episodes_done = 0
        self._allocate_storage()

        # Per-env state carried between rollouts.
        n = cfg.num_envs
        self.next_obs = torch.zeros((n, *self.obs_shape), dtype=torch.uint8, device=self.device)
        self.next_start = torch.ones(n, dtype=torch.bool, device=self.device)
        self.lstm_state = self.model.initial_state(n, self.device)
        if self.rnd is not None:
            self.int_return = torch.zeros(n, device=self.device)
            self.int_reward_rms = RunningMeanStd(()).to(self.device)
        self.rnd_initialised = False
        if envs is not None:
            self.reset_envs(cfg.seed)

    # -- storage ---------------------------------------------------------------------------------
    def _allocate_storage(self) -> None:
        cfg, dev = self.cfg, self.device
        t, n = cfg.rollout_steps, cfg.num_envs
        c, h, w = self.obs_shape
        if cfg.channels_last:
            # Stored NHWC so that minibatch gathers come out channels_last for free.
            self._obs_store = torch.zeros((t, n, h, w, c), dtype=torch.uint8, device=dev)
            self.obs = self._obs_store.permute(0, 1, 4, 2, 3)
        else:
            self._obs_store = torch.zeros((t, n, c, h, w), dtype=torch.uint8, device=dev)
            self.obs = self._obs_store
        z = lambda dtype=torch.float32: torch.zeros((t, n), dtype=dtype, device=dev)  # noqa: E731
        self.actions = z(torch.int64)
        self.logprobs = z()
        self.rewards = z()
        self.values = z()
        self.next_values = z()
        self.terminations = z(torch.bool)
        self.dones = z(torch.bool)
        self.starts = z(torch.bool)
        self.advantages = z()
        self.returns = z()
        if self.use_rnd:
            self.next_frames = torch.zeros((t, n, h, w), dtype=torch.uint8, device=dev)
            self.values_int = z()
            self.rewards_int = z()
            self.returns_int = z()
        if self.recurrent:
            s, hs = t // cfg.bptt_len, cfg.lstm_hidden
            self.seq_h = torch.zeros((s, n, hs), device=dev)
            self.seq_c = torch.zeros((s, n, hs), device=dev)
            if cfg.lstm_penalty > 0:
                self.step_h = torch.zeros((t, n, hs), device=dev)
                self.step_c = torch.zeros((t, n, hs), device=dev)

    def reset_envs(self, seed: int | None = None) -> None:
        """Reset every env and the per-env recurrent state (call after swapping in a fresh env)."""
        assert self.envs is not None
        obs, _ = self.envs.reset(seed=seed)
        self.next_obs.copy_(torch.from_numpy(obs))
        self.next_start.fill_(True)
        self.lstm_state = self.model.initial_state(self.cfg.num_envs, self.device)
        if self.rnd is not None:
            self.int_return.zero_()

    # -- schedules -------------------------------------------------------------------------------
    def current_lr(self) -> float:
        """Learning rate for the next update."""
        cfg = self.cfg
        if cfg.lr_schedule == "linear":
            return linear_schedule(cfg.lr, cfg.lr_final, self.update / cfg.num_updates)
        return cfg.lr

    def current_ent_coef(self) -> float:
        """Entropy coefficient for the next update."""
        cfg = self.cfg
        if cfg.ent_schedule == "linear":
            return linear_schedule(cfg.ent_coef, cfg.ent_coef_final, self.update / cfg.num_updates)
        return cfg.ent_coef

    # -- collect ---------------------------------------------------------------------------------
    def collect(self) -> dict[str, float]:
        """Run the policy for ``rollout_steps`` in every env and fill the storage.

        Returns namespaced metrics: per-phase seconds (time/env, time/inference, time/storage,
        time/rnd), episode means of the episodes finished in this rollout (their raw dicts are in
        ``self.episodes``) and per-step means of the reward components (rewards/<name>).
        """
        if self.envs is None:
            raise RuntimeError("collect() needs an env")
        with torch.inference_mode(), torch_threads(self.cfg.collect_threads):
            return self._collect()

    def _collect(self) -> dict[str, float]:
        cfg = self.cfg
        if self.rnd is not None and not self.rnd_initialised:
            self._init_rnd_obs_stats()
        t_env = t_inf = t_store = 0.0
        t_start = time.perf_counter()
        self.episodes = []
        components: dict[str, np.ndarray] = {}
        state = self.lstm_state
        for t in range(cfg.rollout_steps):
            t0 = time.perf_counter()
            self.obs[t].copy_(self.next_obs)
            self.starts[t] = self.next_start
            if self.recurrent:
                assert state is not None
                if t % cfg.bptt_len == 0:
                    # The state *before* this step's reset mask; the model applies starts itself.
                    self.seq_h[t // cfg.bptt_len] = state[0]
                    self.seq_c[t // cfg.bptt_len] = state[1]
            t1 = time.perf_counter()
            out = self.model(self.obs[t], state, self.next_start)
            action, logprob = sample_actions(out.logits, self.gen)
            self.actions[t] = action
            self.logprobs[t] = logprob
            self.values[t] = out.value
            if out.value_int is not None:
                self.values_int[t] = out.value_int
            state = out.state
            if self.recurrent and cfg.lstm_penalty > 0:
                assert state is not None
                self.step_h[t], self.step_c[t] = state
            actions_np = action.cpu().numpy()
            t2 = time.perf_counter()
            obs, reward, term, trunc, infos = self.envs.step(actions_np)
            t3 = time.perf_counter()
            self.next_obs.copy_(torch.from_numpy(obs))
            self.rewards[t] = torch.from_numpy(np.asarray(reward, dtype=np.float32))
            term_t = torch.from_numpy(np.asarray(term, dtype=bool))
            done_np = np.logical_or(term, trunc)
            done_t = torch.from_numpy(done_np)
            self.terminations[t] = term_t
            self.dones[t] = done_t
            self.next_start.copy_(done_t)
            if self.rnd is not None:
                self.next_frames[t] = self.next_obs[:, -1]
            if done_np.any():
                self._handle_episode_ends(t, obs, trunc, done_np, infos, state)
            for name, value in infos.get("reward_components", {}).items():
                acc = components.get(name)
                components[name] = value.astype(np.float64) if acc is None else acc + value
            t4 = time.perf_counter()
            t_inf += t2 - t1
            t_env += t3 - t2
            t_store += (t1 - t0) + (t4 - t3)
        self.lstm_state = state
        self.global_step += cfg.batch_size

        # Bootstrap: V(obs[t+1]) for every step, V(final_obs) already put where truncated.
        t0 = time.perf_counter()
        last = self.model(self.next_obs, state, self.next_start)
        boot = torch.cat([self.values[1:], last.value.unsqueeze(0)])
        trunc_mask = self.dones & ~self.terminations
        self.next_values = torch.where(trunc_mask, self.next_values, boot)
        t_inf += time.perf_counter() - t0
        metrics: dict[str, float] = {}
        if self.rnd is not None:
            t0 = time.perf_counter()
            metrics |= self._intrinsic_rewards(last.value_int)
            metrics["time/rnd"] = time.perf_counter() - t0

        metrics |= {
            "time/env": t_env,
            "time/inference": t_inf,
            "time/storage": t_store,
            "time/collect": time.perf_counter() - t_start,
        }
        steps = cfg.batch_size
        for name, total in components.items():
            metrics[f"rewards/{name}"] = float(total.sum() / steps)
        metrics["charts/reward_per_step"] = float(self.rewards.mean())
        if self.episodes:
            metrics["charts/episodes"] = float(len(self.episodes))
            for key, tag in (("r", "episodic_return"), ("l", "episodic_length"), ("x_max", "x_max"), ("flag", "flag_rate")):  # fmt: skip
                vals = [float(e[key]) for e in self.episodes if key in e]
                if vals:
                    metrics[f"charts/{tag}"] = float(np.mean(vals))
        return metrics

    def _handle_episode_ends(
        self,
        t: int,
        obs: np.ndarray,
        trunc: np.ndarray,
        done: np.ndarray,
        infos: dict,
        state: LSTMState | None,
    ) -> None:
        """Bootstrap values for truncated episodes, RND's true next frame, episode records."""
        final_valid = infos.get("_final_obs", done)
        final_obs = infos.get("final_obs")
        idx = (
            np.flatnonzero(done & final_valid) if final_obs is not None else np.array([], dtype=int)
        )
        if len(idx):
            finals = torch.from_numpy(np.stack([final_obs[i] for i in idx])).to(self.device)
            if self.rnd is not None:
                self.next_frames[t, idx] = finals[:, -1]
            trunc_idx = [k for k, i in enumerate(idx) if trunc[i]]
            if trunc_idx:
                # The episode was cut by a time limit, not ended: its return continues past the
                # cut, so bootstrap from V(final_obs) (with the env's pre-reset LSTM state).
                rows = torch.as_tensor(idx[trunc_idx])
                sub_state = None if state is None else (state[0][rows], state[1][rows])
                if self.cfg.channels_last:
                    finals = finals.contiguous(memory_format=torch.channels_last)
                v = self.model(finals[trunc_idx], sub_state, None).value
                self.next_values[t, rows] = v
        ep = infos.get("episode")
        if ep is not None:
            mask = infos.get("_episode", done)
            for i in np.flatnonzero(mask):
                rec: dict[str, Any] = {
                    "env": int(i),
                    "step": self.global_step + (t + 1) * self.cfg.num_envs,
                }
                for key, arr in ep.items():
                    if isinstance(arr, np.ndarray) and arr.ndim == 1:
                        v = arr[i]
                        rec[key] = v.item() if hasattr(v, "item") else v
                self.episodes.append(rec)
                self.episodes_done += 1

    # -- RND ----------------------------------------------------------------------------------
    def _init_rnd_obs_stats(self) -> None:
        """Initialise the RND observation normaliser from random-action steps (as in the RND
        paper), so that the first intrinsic rewards are not dominated by unnormalised pixels."""
        assert self.rnd is not None and self.envs is not None
        frames = []
        for _ in range(self.cfg.rnd_init_steps):
            a = torch.randint(0, self.n_actions, (self.cfg.num_envs,), generator=self.gen)
            obs, *_ = self.envs.step(a.numpy())
            frames.append(torch.from_numpy(obs[:, -1]))
        if frames:
            self.rnd.obs_rms.update(torch.stack(frames).reshape(-1, 1, *self.obs_shape[1:]).float())
            # The random steps moved the envs on: carry on from where they are.
            self.next_obs.copy_(torch.from_numpy(obs))
            self.next_start.fill_(True)
            self.lstm_state = self.model.initial_state(self.cfg.num_envs, self.device)
        self.rnd_initialised = True

    def _intrinsic_rewards(self, last_value_int: Tensor | None) -> dict[str, float]:
        """Intrinsic rewards for the rollout (batched), their normalisation, next-value bootstrap
        for the non-episodic intrinsic returns, then the obs-stat update."""
        assert self.rnd is not None and last_value_int is not None
        cfg = self.cfg
        frames = self.next_frames.reshape(-1, *self.obs_shape[1:])
        errs = [self.rnd.error(chunk) for chunk in frames.split(1024)]
        raw = torch.cat(errs).reshape(cfg.rollout_steps, cfg.num_envs)
        if cfg.rnd_reward_norm == "minmax":
            r_int = (raw - raw.min()) / (raw.max() - raw.min() + 1e-8)
        else:
            rets, self.int_return = discounted_running_returns(
                raw, self.int_return, cfg.rnd_gamma_int
            )
            self.int_reward_rms.update(rets.reshape(-1))
            r_int = raw / self.int_reward_rms.var.float().add(1e-8).sqrt()
        self.rewards_int.copy_(r_int)
        self._last_value_int = last_value_int.clone()
        self.rnd.obs_rms.update(frames.unsqueeze(1).float())
        return {
            "charts/intrinsic_reward": float(r_int.mean()),
            "charts/rnd_error": float(raw.mean()),
        }

    # -- learn -----------------------------------------------------------------------------------
    def compute_advantages(self) -> None:
        """GAE over the stored rollout into ``advantages`` / ``returns`` (and intrinsic ones)."""
        cfg = self.cfg
        adv, ret = gae(
            self.rewards,
            self.values,
            self.next_values,
            self.terminations,
            self.dones,
            cfg.gamma,
            cfg.gae_lambda,
        )
        self.returns = ret
        if self.use_rnd:
            # Non-episodic: an episode end is not the end of novelty, so neither cut nor stop the
            # bootstrap; obs[t+1] (first obs of the next episode) is the continuation.
            nv_int = torch.cat([self.values_int[1:], self._last_value_int.unsqueeze(0)])
            zeros = torch.zeros_like(self.dones)
            adv_int, self.returns_int = gae(
                self.rewards_int,
                self.values_int,
                nv_int,
                zeros,
                zeros,
                cfg.rnd_gamma_int,
                cfg.gae_lambda,
            )
            adv = cfg.rnd_ext_coef * adv + cfg.rnd_int_coef * adv_int
        self.advantages = adv

    def learn(self) -> dict[str, float]:
        """One PPO update on the stored rollout; returns namespaced metrics."""
        cfg = self.cfg
        t_start = time.perf_counter()
        self.compute_advantages()
        lr, ent_coef = self.current_lr(), self.current_ent_coef()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()

        n, steps = cfg.num_envs, cfg.rollout_steps
        flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
        b_obs = self._obs_store.reshape(-1, *self._obs_store.shape[2:])
        b_actions, b_logprobs = flat(self.actions), flat(self.logprobs)
        b_adv, b_returns, b_starts = flat(self.advantages), flat(self.returns), flat(self.starts)
        b_returns_int = flat(self.returns_int) if self.use_rnd else None
        b_frames = flat(self.next_frames) if self.use_rnd else None

        if self.recurrent:
            n_units, unit = (steps // cfg.bptt_len) * n, cfg.bptt_len
        else:
            n_units, unit = cfg.batch_size, 1
        units_per_mb = cfg.minibatch_size // unit
        sums: dict[str, Tensor] = {}
        n_mb = 0
        stop = False
        epochs_done = 0
        for _epoch in range(cfg.epochs):
            perm = torch.randperm(n_units, generator=self.gen)
            for k in range(0, n_units, units_per_mb):
                units = perm[k : k + units_per_mb]
                if self.recurrent:
                    # unit q = sequence s of env e, q = s * n + e; sample (t, e) -> flat t * n + e
                    seq, env = units // n, units % n
                    t_idx = seq.unsqueeze(0) * unit + torch.arange(unit).unsqueeze(1)  # (T, M)
                    idx = (t_idx * n + env.unsqueeze(0)).reshape(-1)  # time-major (T*M,)
                    obs = self._as_nchw(b_obs[idx]).reshape(unit, len(units), *self.obs_shape)
                    state = (self.seq_h[seq, env], self.seq_c[seq, env])
                    out = self.model(
                        obs, state, b_starts[idx].reshape(unit, -1), cfg.lstm_penalty > 0
                    )
                else:
                    idx = units
                    out = self.model(self._as_nchw(b_obs[idx]))
                logits = out.logits.reshape(-1, self.n_actions)
                value = out.value.reshape(-1)
                adv = b_adv[idx]
                if cfg.norm_adv:
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                terms = ppo_losses(
                    logits,
                    b_actions[idx],
                    b_logprobs[idx],
                    adv,
                    value,
                    b_returns[idx],
                    cfg.clip,
                    cfg.vf_loss,
                )
                v_loss = terms["value"]
                if b_returns_int is not None:
                    assert out.value_int is not None
                    v_int = out.value_int.reshape(-1)
                    v_loss = v_loss + value_loss(v_int, b_returns_int[idx], cfg.vf_loss)
                    terms["value_int"] = value_loss(v_int.detach(), b_returns_int[idx], cfg.vf_loss)
                loss = terms["policy"] - ent_coef * terms["entropy"] + cfg.vf_coef * v_loss
                if self.recurrent and cfg.lstm_penalty > 0:
                    assert out.all_states is not None
                    t_idx_flat = idx // n
                    e_idx_flat = idx % n
                    h_old = self.step_h[t_idx_flat, e_idx_flat].reshape(unit, len(units), -1)
                    c_old = self.step_c[t_idx_flat, e_idx_flat].reshape(unit, len(units), -1)
                    # Mean over every step of every sequence (the seed kept only the last step).
                    penalty = F.mse_loss(out.all_states[0], h_old) + F.mse_loss(
                        out.all_states[1], c_old
                    )
                    loss = loss + cfg.lstm_penalty * penalty
                    terms["lstm_penalty"] = penalty.detach()
                if self.rnd is not None and b_frames is not None:
                    # Train the predictor on a random subset only, so it does not catch up with
                    # novelty too fast (same expectation as the RND paper's mask, less compute).
                    n_sub = max(1, round(cfg.rnd_update_proportion * len(idx)))
                    sub = idx[torch.randperm(len(idx), generator=self.gen)[:n_sub]]
                    rnd_loss = self.rnd.error(b_frames[sub]).mean()
                    loss = loss + rnd_loss
                    terms["rnd"] = rnd_loss.detach()

                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.max_grad_norm > 0:
                    terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(
                        self.optimizer.param_groups[0]["params"], cfg.max_grad_norm
                    )
                self.optimizer.step()

                for key, val in terms.items():
                    v = val.detach()
                    sums[key] = sums[key] + v if key in sums else v.clone()
                n_mb += 1
                # One sync per minibatch only when early stopping is on.
                if cfg.target_kl is not None and float(terms["approx_kl"]) > 1.5 * cfg.target_kl:
                    stop = True
                    break
            epochs_done += 1
            if stop:
                break
        self.update += 1

        means = {k: float(v) / n_mb for k, v in sums.items()}
        metrics = {
            "losses/policy": means["policy"],
            "losses/value": means["value"],
            "losses/entropy": means["entropy"],
            "debug/approx_kl": means["approx_kl"],
            "debug/old_approx_kl": means["old_approx_kl"],
            "debug/clipfrac": means["clipfrac"],
            "debug/explained_variance": explained_variance(flat(self.values), b_returns),
            "debug/epochs": float(epochs_done),
            "debug/early_stop": float(stop),
            "charts/lr": lr,
            "charts/ent_coef": ent_coef,
            "time/learn": time.perf_counter() - t_start,
        }
        if "grad_norm" in means:
            metrics["debug/grad_norm"] = means["grad_norm"]
        if "lstm_penalty" in means:
            metrics["losses/lstm_penalty"] = means["lstm_penalty"]
        if self.use_rnd:
            metrics["losses/rnd"] = means["rnd"]
            metrics["losses/value_int"] = means["value_int"]
            metrics["debug/explained_variance_int"] = explained_variance(
                flat(self.values_int), flat(self.returns_int)
            )
        return metrics

    def _as_nchw(self, x: Tensor) -> Tensor:
        """Gathered storage rows -> (B, C, H, W) (a free permute when stored NHWC)."""
        return x.permute(0, 3, 1, 2) if self.cfg.channels_last else x

    def train_iteration(self) -> dict[str, float]:
        """collect() then learn(); the merged metrics."""
        return self.collect() | self.learn()

    def fill_random_rollout(self) -> None:
        """Random storage contents with the right shapes/dtypes (for speed measurements and tests)."""
        g = self.gen
        cfg = self.cfg
        self._obs_store.copy_(
            torch.randint(0, 256, self._obs_store.shape, dtype=torch.uint8, generator=g)
        )
        self.actions.copy_(torch.randint(0, self.n_actions, self.actions.shape, generator=g))
        self.logprobs.fill_(-float(np.log(self.n_actions)))
        self.rewards.copy_(torch.randn(self.rewards.shape, generator=g))
        self.values.copy_(torch.randn(self.values.shape, generator=g))
        self.next_values.copy_(torch.randn(self.values.shape, generator=g))
        self.terminations.copy_(torch.rand(self.values.shape, generator=g) < 0.01)
        self.dones.copy_(self.terminations)
        self.starts[1:] = self.dones[:-1]
        if self.use_rnd:
            self.next_frames.copy_(
                self._obs_store[..., -1] if cfg.channels_last else self._obs_store[:, :, -1]
            )
            self.values_int.copy_(torch.randn(self.values.shape, generator=g))
            self.rewards_int.copy_(torch.rand(self.values.shape, generator=g))
            self._last_value_int = torch.zeros(cfg.num_envs)

    # -- checkpoint state --------------------------------------------------------------------------
    def spec(self) -> ModelSpec:
        """The model's ModelSpec."""
        return self.model.spec

    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Whole trainer state as (flat contiguous tensors, JSON-able dict); safetensors-ready."""
        tensors: dict[str, Tensor] = {
            f"model.{k}": v.detach().contiguous().clone()
            for k, v in self.model.state_dict().items()
        }
        opt_tensors, opt_meta = optimizer_to_flat(self.optimizer, "optim.")
        tensors |= opt_tensors
        if self.rnd is not None:
            tensors |= {
                f"rnd.{k}": v.detach().contiguous().clone()
                for k, v in self.rnd.state_dict().items()
            }
            tensors |= {
                f"rnd_reward_rms.{k}": v.clone()
                for k, v in self.int_reward_rms.state_dict().items()
            }
            tensors["rnd_int_return"] = self.int_return.clone()
        tensors["env.next_obs"] = self.next_obs.clone()
        tensors["env.next_start"] = self.next_start.clone()
        if self.lstm_state is not None:
            tensors["env.lstm_h"] = self.lstm_state[0].clone()
            tensors["env.lstm_c"] = self.lstm_state[1].clone()
        tensors["rng.generator"] = self.gen.get_state()
        tensors["rng.torch"] = torch.get_rng_state()
        meta = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "algo": self.cfg.algo,
            "config": self.cfg.to_dict(),
            "model_spec": self.model.spec.to_dict(),
            "global_step": self.global_step,
            "update": self.update,
            "episodes_done": self.episodes_done,
            "rnd_initialised": self.rnd_initialised,
            "optimizer": opt_meta,
        }
        return tensors, meta

    def load_state_dict(
        self, tensors: dict[str, Tensor], meta: dict[str, Any], restore_env_state: bool = False
    ) -> None:
        """Restore :meth:`state_dict` output. Refuses another architecture / action set / algo.

        ``restore_env_state`` also restores the per-env carry (next obs, episode-start flags, LSTM
        state); only right when the env itself continues exactly where the checkpoint left it.
        A resumed run with freshly reset envs keeps False (the LSTM state of old episodes would
        not match the new ones).
        """
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"not a PPO trainer checkpoint (format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r})"
            )
        if meta.get("algo") != self.cfg.algo:
            raise ValueError(
                f"checkpoint is for algo {meta.get('algo')!r}, this run is {self.cfg.algo!r}"
            )
        self.model.spec.check_compatible(ModelSpec.from_dict(meta["model_spec"]))
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        optimizer_from_flat(self.optimizer, tensors, meta["optimizer"], "optim.")
        if self.rnd is not None:
            self.rnd.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("rnd.")})
            self.int_reward_rms.load_state_dict(
                {k[15:]: v for k, v in tensors.items() if k.startswith("rnd_reward_rms.")}
            )
            self.int_return.copy_(tensors["rnd_int_return"])
        self.gen.set_state(tensors["rng.generator"].clone())
        torch.set_rng_state(tensors["rng.torch"].clone())
        self.global_step = int(meta["global_step"])
        self.update = int(meta["update"])
        self.episodes_done = int(meta.get("episodes_done", 0))
        self.rnd_initialised = bool(meta.get("rnd_initialised", False))
        if restore_env_state:
            self.next_obs.copy_(tensors["env.next_obs"])
            self.next_start.copy_(tensors["env.next_start"])
            if self.lstm_state is not None:
                self.lstm_state = (tensors["env.lstm_h"].clone(), tensors["env.lstm_c"].clone())


# -- speed measurement ---------------------------------------------------------------------------
def measure_learn_speed(
    network: str = "small",
    algo: str = "ppo",
    threads: int = 2,
    num_envs: int = 8,
    rollout_steps: int = 512,
    minibatch_size: int = 256,
    epochs: int = 1,
    obs_shape: tuple[int, int, int] = (4, 84, 84),
    n_actions: int = 7,
    channels_last: bool = True,
    repeats: int = 2,
) -> dict[str, float]:
    """Time the real learn() (forward + backward + Adam) on a random rollout, and batch-``num_envs``
    inference. Returns best-of-``repeats`` numbers: learn samples/s, inference ms per env step,
    and the parameter count. Uses ``threads`` torch threads (restored afterwards)."""
    old_threads = torch.get_num_threads()
    cfg = PPOConfig(
        algo=algo,  # type: ignore[arg-type]
        network=network,  # type: ignore[arg-type]
        num_envs=num_envs,
        rollout_steps=rollout_steps,
        minibatch_size=minibatch_size,
        epochs=epochs,
        torch_threads=threads,
        channels_last=channels_last,
    )
    try:
        ppo = PPO(cfg, obs_shape=obs_shape, n_actions=n_actions)
        ppo.fill_random_rollout()
        ppo.learn()  # warm-up (allocator, oneDNN primitive cache)
        best = 0.0
        for _ in range(repeats):
            ppo.fill_random_rollout()
            t0 = time.perf_counter()
            ppo.learn()
            best = max(best, cfg.batch_size * cfg.epochs / (time.perf_counter() - t0))
        x = ppo.obs[0]
        state = ppo.model.initial_state(num_envs)
        starts = torch.zeros(num_envs, dtype=torch.bool)
        with torch.inference_mode(), torch_threads(cfg.collect_threads):
            for _ in range(10):
                ppo.model(x, state, starts)
            best_inf = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                for _ in range(50):
                    out = ppo.model(x, state, starts)
                    sample_actions(out.logits, ppo.gen)
                best_inf = min(best_inf, (time.perf_counter() - t0) / 50)
        return {
            "learn_samples_per_s": best,
            "inference_ms_per_step": best_inf * 1e3,
            "params": float(sum(p.numel() for p in ppo.model.parameters())),
        }
    finally:
        torch.set_num_threads(old_threads)
