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

import copy
import functools
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mario_rl.algos.rollout import GroupPart, Rollout
from mario_rl.config.ppo import PPOConfig
from mario_rl.devices import set_threads, torch_threads
from mario_rl.io.checkpoint import RESTORE_ERRORS, misfit_error, prefixed, strip_prefix
from mario_rl.io.state_codec import load_optimizer_state, optimizer_state_tensors
from mario_rl.models import ActorCritic, LSTMState, ModelSpec, RNDModel, build_model
from mario_rl.parallel.collective import LOCAL, Collective
from mario_rl.rl.actions import sample_actions
from mario_rl.rl.advantages import discounted_running_returns, gae
from mario_rl.rl.losses import ppo_losses, value_loss
from mario_rl.rl.stats import RunningMeanStd, episode_metrics, explained_variance, linear_schedule
from mario_rl.seeding import collect_seed, group_seed, resume_seed

CHECKPOINT_FORMAT = "mario-rl/ppo-trainer"
CHECKPOINT_VERSION = 1


def _collect_key(k: int) -> str:
    """Checkpoint key of env group k's action-sampling stream (group 0's predates groups)."""
    return f"rng.collect_generator.{k}" if k else "rng.collect_generator"


# -- the trainer ---------------------------------------------------------------------------------
class PPO:
    """PPO / LSTM-PPO / PPO+RND trainer over a vector env (or without one, for speed measurements).

    Typical loop (the CLI's)::

        ppo = PPO(cfg, envs)
        while ppo.global_step < cfg.total_steps:
            stats = ppo.collect() | ppo.learn()      # namespaced metric dict for TensorBoard
            for ep in ppo.episodes: ...              # episodes finished in that rollout
        ppo.close()                                  # before envs.close()

    With ``cfg.async_collect`` the next rollout is collected by a background thread (with a
    snapshot of the policy) while learn() runs: one update of policy lag for ~1.3x throughput
    on 2 cores, since the emulator releases the GIL.
    """

    def __init__(
        self,
        config: PPOConfig,
        envs: Any | None = None,
        *,
        obs_shape: tuple[int, int, int] | None = None,
        n_actions: int | None = None,
        collective: Collective = LOCAL,
    ):
        config.validate()
        self.cfg = cfg = config
        set_threads(cfg.torch_threads)
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
        self.collective: Collective = collective
        """The other replicas under torchrun (updates and batch statistics become global); LOCAL alone."""
        # Separate streams so that collection (possibly in another thread) and learning do not
        # interleave draws from one generator.
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.collect_gen = torch.Generator().manual_seed(collect_seed(cfg.seed))
        self.collect_gens = [self.collect_gen, *(torch.Generator() for _ in self._groups()[1:])]
        """Action-sampling streams, one per env group that collects side by side (group_collect)."""
        self.seed_collection(collect_seed(cfg.seed))

        # Initial weights from the seed, without disturbing the caller's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.model: ActorCritic = build_model(cfg, self.obs_shape, n_actions).to(self.device)
            self.rnd: RNDModel | None = None
            if self.use_rnd:
                channels = (32, 64, 64) if cfg.network == "nature" else (16, 32, 32)
                self.rnd = RNDModel(self.obs_shape[1:], channels, obs_clip=cfg.rnd_obs_clip)
                self.rnd.to(self.device)
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
        self.restored_episodes: list[dict[str, Any]] = []
        """Episodes of the last rollout begun from a saved progress state (not in episodes)."""
        self.episodes_done = 0
        self.rollout = Rollout(cfg, self.obs_shape, self.device)
        """The rollout learn() trains on (the latest one collect() returned)."""

        # Per-env state carried from one rollout to the next (owned by the collector).
        n = cfg.num_envs
        self.next_obs = torch.zeros((n, *self.obs_shape), dtype=torch.uint8, device=self.device)
        self.next_start = torch.ones(n, dtype=torch.bool, device=self.device)
        self.lstm_state = self.model.initial_state(n, self.device)
        if self.rnd is not None:
            self.int_return = torch.zeros(n, device=self.device)
            self.int_reward_rms = RunningMeanStd(()).to(self.device)
        self.rnd_initialised = False

        # Background collection: a second buffer, a policy snapshot, one worker thread.
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future[Rollout] | None = None
        if cfg.async_collect:
            self._spare = Rollout(cfg, self.obs_shape, self.device)
            self._actor = copy.deepcopy(self.model)
            threads = cfg.collect_threads or cfg.torch_threads
            self._pool = ThreadPoolExecutor(
                1, thread_name_prefix="ppo-collect", initializer=set_threads, initargs=(threads,)
            )
        if envs is not None:
            self.reset_envs(cfg.seed)
        # Every replica starts from rank 0's weights.
        self.collective.broadcast_tensors(self._replicated_tensors())

    def _replicated_tensors(self) -> list[Tensor]:
        """What must be identical on every replica: the model, RND's networks and statistics."""
        tensors = list(self.model.state_dict().values())
        if self.rnd is not None:
            tensors += list(self.rnd.state_dict().values())
            tensors += list(self.int_reward_rms.state_dict().values())
        return tensors

    def reset_envs(self, seed: int | None = None) -> None:
        """Reset every env and the per-env recurrent state (call after swapping in a fresh env)."""
        assert self.envs is not None
        self._wait_pending()
        obs, _ = self.envs.reset(seed=seed)
        self.next_obs.copy_(torch.from_numpy(obs))
        self.next_start.fill_(True)
        self.lstm_state = self.model.initial_state(self.cfg.num_envs, self.device)
        if self.rnd is not None:
            self.int_return.zero_()

    def close(self) -> None:
        """Finish any background rollout and stop the collector thread (call before envs.close())."""
        self._wait_pending()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # -- schedules -------------------------------------------------------------------------------
    def current_lr(self) -> float:
        """Learning rate for the next update."""
        cfg = self.cfg
        if cfg.lr_schedule == "linear":
            return linear_schedule(cfg.lr, cfg.lr_final, self._progress())
        return cfg.lr

    def current_ent_coef(self) -> float:
        """Entropy coefficient for the next update."""
        cfg = self.cfg
        if cfg.ent_schedule == "linear":
            return linear_schedule(cfg.ent_coef, cfg.ent_coef_final, self._progress())
        return cfg.ent_coef

    def _progress(self) -> float:
        # Under torchrun each update consumes world_size batches of the step budget.
        world = self.collective.world_size
        return self.update / max(1, self.cfg.total_steps // (self.cfg.batch_size * world))

    # -- collect ---------------------------------------------------------------------------------
    def collect(self) -> dict[str, float]:
        """Get the next rollout into ``self.rollout``; returns namespaced metrics.

        Synchronous: runs the policy for ``rollout_steps`` in every env now. Asynchronous: takes
        the rollout the background thread has been collecting (waiting if needed) and starts
        the next one with a snapshot of the current weights.

        Metrics: per-phase seconds (time/env, time/inference, time/storage, time/rnd and, when
        async, time/wait: how long this call blocked), means over the episodes finished in the
        rollout (their raw dicts are in ``self.episodes``) and per-step means of the reward
        components (rewards/<name>).
        """
        if self.envs is None:
            raise RuntimeError("collect() needs an env")
        if self.rnd is not None and not self.rnd_initialised:
            self._init_rnd_obs_stats()
        t0 = time.perf_counter()
        if self._pool is None:
            with torch_threads(self.cfg.collect_threads):
                self._collect_into(self.rollout, self.model)
            buf = self.rollout
        else:
            if self._pending is None:
                self._launch()
            assert self._pending is not None
            # Cleared first: a rollout that raised (an env worker failed) is not waited for again.
            pending, self._pending = self._pending, None
            buf = pending.result()
            self._spare, self.rollout = self.rollout, buf
        self.global_step += self.cfg.batch_size * self.collective.world_size
        if self._pool is not None:
            self._launch()
        wait = time.perf_counter() - t0
        # Episodes begun from a saved progress state (EnvConfig.progress_starts) would inflate
        # the stage's flag rate and x: they are counted apart, and not in self.episodes.
        restored = [e for e in buf.episodes if e.get("restored")]
        self.restored_episodes = restored
        self.episodes = [e for e in buf.episodes if not e.get("restored")]
        self.episodes_done += len(buf.episodes)
        metrics = dict(buf.times)
        if self._pool is not None:
            metrics["time/wait"] = wait
        if self.rnd is not None:
            t1 = time.perf_counter()
            metrics |= self._intrinsic_rewards(buf)
            metrics["time/rnd"] = time.perf_counter() - t1
        for name, total in buf.components.items():
            metrics[f"rewards/{name}"] = float(total.sum() / self.cfg.batch_size)
        metrics["charts/reward_per_step"] = float(buf.rewards.mean())
        return metrics | episode_metrics(self.episodes, restored)

    def _launch(self) -> None:
        """Start collecting into the spare buffer with a snapshot of the current weights."""
        assert self._pool is not None
        with torch.no_grad():
            for dst, src in zip(self._actor.parameters(), self.model.parameters(), strict=True):
                dst.copy_(src)
        buf = self._spare
        buf.first_step = self.global_step
        self._pending = self._pool.submit(self._collect_into, buf, self._actor)

    def _wait_pending(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def _collect_into(self, buf: Rollout, model: ActorCritic) -> Rollout:
        """Step the envs ``rollout_steps`` times with ``model``, filling ``buf`` (any thread)."""
        with torch.inference_mode():
            self._collect_steps(buf, model)
        return buf

    def _collect_steps(self, buf: Rollout, model: ActorCritic) -> None:
        assert self.envs is not None
        cfg = self.cfg
        if self._pool is None:
            buf.first_step = self.global_step
        t_start = time.perf_counter()
        groups = self._groups()
        if len(groups) == 1:
            parts = [self._collect_group(buf, model, range(cfg.num_envs), self.envs.step, 0)]
        else:
            # Each env worker runs its own act-step loop over its own envs, so no worker waits
            # for the slowest group at every step (envs.step would); they meet once, here.
            envs = self.envs
            parts = envs.map_groups(
                lambda k: self._collect_group(
                    buf, model, groups[k], functools.partial(envs.step_group, k), k
                )
            )
        buf.episodes = sorted(
            (e for p in parts for e in p.episodes), key=lambda e: (e["step"], e["env"])
        )
        buf.components = {
            name: np.concatenate([p.components[name] for p in parts])
            for name in parts[0].components
        }
        states = [p.state for p in parts]
        state = None
        if states[0] is not None:
            state = (torch.cat([s[0] for s in states]), torch.cat([s[1] for s in states]))  # type: ignore[index]
        self.lstm_state = state

        # Bootstrap: V(obs[t+1]) for every step; V(final_obs) was put where truncated.
        t0 = time.perf_counter()
        last = model(self.next_obs, state, self.next_start)
        boot = torch.cat([buf.values[1:], last.value.unsqueeze(0)])
        truncated = buf.dones & ~buf.terminations
        buf.next_values.copy_(torch.where(truncated, buf.next_values, boot))
        if last.value_int is not None:
            buf.last_value_int.copy_(last.value_int)
        # Groups ran side by side: each phase's time is the mean over them (wall-clock shares).
        buf.times = {
            "time/env": float(np.mean([p.t_env for p in parts])),
            "time/inference": float(np.mean([p.t_inf for p in parts])) + time.perf_counter() - t0,
            "time/storage": float(np.mean([p.t_store for p in parts])),
            "time/collect": time.perf_counter() - t_start,
        }

    def seed_collection(self, seed: int) -> None:
        """Re-seed the action-sampling streams (group k's from ``seed`` and k)."""
        for k, gen in enumerate(self.collect_gens):
            gen.manual_seed(group_seed(seed, k))

    def _groups(self) -> list[range]:
        """The env index ranges that collect side by side (one per env worker, or all)."""
        ranges = getattr(self.envs, "ranges", None)
        if not self.cfg.group_collect or ranges is None or len(ranges) < 2:
            return [range(self.cfg.num_envs)]
        return list(ranges)

    def _collect_group(
        self,
        buf: Rollout,
        model: ActorCritic,
        r: range,
        step: Callable[[np.ndarray], tuple],
        k: int,
    ) -> GroupPart:
        """``rollout_steps`` act-step rounds of the envs ``r`` (any thread; the envs of ``r``
        and their columns of ``buf`` belong to this call alone)."""
        cfg = self.cfg
        part = GroupPart()
        gen = self.collect_gens[k]
        cols = slice(r.start, r.stop)
        state = None
        if self.lstm_state is not None:
            state = (self.lstm_state[0][cols], self.lstm_state[1][cols])
        next_obs, next_start = self.next_obs[cols], self.next_start[cols]
        with torch.inference_mode():
            for t in range(cfg.rollout_steps):
                t0 = time.perf_counter()
                buf.obs[t, cols] = next_obs
                buf.starts[t, cols] = next_start
                if self.recurrent and t % cfg.bptt_len == 0:
                    assert state is not None
                    # The state *before* this step's reset mask; the model applies starts itself.
                    buf.seq_h[t // cfg.bptt_len, cols] = state[0]
                    buf.seq_c[t // cfg.bptt_len, cols] = state[1]
                t1 = time.perf_counter()
                out = model(buf.obs[t, cols], state, next_start)
                action, logprob = sample_actions(out.logits, gen)
                buf.actions[t, cols] = action
                buf.logprobs[t, cols] = logprob
                buf.values[t, cols] = out.value
                if out.value_int is not None:
                    buf.values_int[t, cols] = out.value_int
                state = out.state
                if self.recurrent and cfg.lstm_penalty > 0:
                    assert state is not None
                    buf.step_h[t, cols], buf.step_c[t, cols] = state
                actions_np = action.cpu().numpy()
                t2 = time.perf_counter()
                obs, reward, term, trunc, infos = step(actions_np)
                t3 = time.perf_counter()
                next_obs.copy_(torch.from_numpy(obs))
                buf.rewards[t, cols] = torch.from_numpy(np.asarray(reward, dtype=np.float32))
                done_np = np.logical_or(term, trunc)
                done_t = torch.from_numpy(done_np)
                buf.terminations[t, cols] = torch.from_numpy(np.asarray(term, dtype=bool))
                buf.dones[t, cols] = done_t
                next_start.copy_(done_t)
                if self.rnd is not None:
                    buf.next_frames[t, cols] = next_obs[:, -1]
                if done_np.any():
                    self._handle_episode_ends(
                        buf, model, t, r, trunc, done_np, infos, state, part.episodes
                    )
                for name, value in infos.get("reward_components", {}).items():
                    acc = part.components.get(name)
                    part.components[name] = value.astype(np.float64) if acc is None else acc + value
                t4 = time.perf_counter()
                part.t_inf += t2 - t1
                part.t_env += t3 - t2
                part.t_store += (t1 - t0) + (t4 - t3)
        part.state = state
        return part

    def _handle_episode_ends(
        self,
        buf: Rollout,
        model: ActorCritic,
        t: int,
        r: range,
        trunc: np.ndarray,
        done: np.ndarray,
        infos: dict,
        state: LSTMState | None,
        episodes: list[dict[str, Any]],
    ) -> None:
        """Bootstrap values for truncated episodes, RND's true next frame, episode records
        (``done``, ``infos`` and ``state`` are for the envs ``r``; ``episodes`` gets the records)."""
        final_obs = infos.get("final_obs")
        if final_obs is not None:
            idx = np.flatnonzero(done & infos.get("_final_obs", done))
            finals = torch.from_numpy(np.stack([final_obs[i] for i in idx])).to(self.device)
            if self.rnd is not None:
                buf.next_frames[t, r.start + idx] = finals[:, -1]
            cut = [k for k, i in enumerate(idx) if trunc[i]]
            if cut:
                # A time limit cut the episode, it did not end: its return continues past the
                # cut, so bootstrap from V(final_obs) (with the env's pre-reset LSTM state).
                rows = torch.as_tensor(idx[cut])
                sub_state = None if state is None else (state[0][rows], state[1][rows])
                rows_buf = rows + r.start
                x = finals[cut]
                if self.cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                buf.next_values[t, rows_buf] = model(x, sub_state, None).value
        ep = infos.get("episode")
        if ep is not None:
            for i in np.flatnonzero(infos.get("_episode", done)):
                rec: dict[str, Any] = {
                    "env": r.start + int(i),
                    "step": buf.first_step + (t + 1) * self.cfg.num_envs,
                }
                for key, arr in ep.items():
                    if isinstance(arr, np.ndarray) and arr.ndim == 1:
                        v = arr[i]
                        rec[key] = v.item() if hasattr(v, "item") else v
                episodes.append(rec)

    # -- RND ----------------------------------------------------------------------------------
    def _init_rnd_obs_stats(self) -> None:
        """Initialise the RND observation normaliser from random-action steps (as in the RND
        paper), so that the first intrinsic rewards are not dominated by unnormalised pixels."""
        assert self.rnd is not None and self.envs is not None
        self._wait_pending()
        frames = []
        obs = None
        for _ in range(self.cfg.rnd_init_steps):
            a = torch.randint(0, self.n_actions, (self.cfg.num_envs,), generator=self.collect_gen)
            obs, *_ = self.envs.step(a.numpy())
            frames.append(torch.from_numpy(obs[:, -1]))
        if obs is not None:
            self._update_stats(
                self.rnd.obs_rms,
                torch.stack(frames).reshape(-1, 1, *self.obs_shape[1:]).float(),
            )
            # The random steps moved the envs on: carry on from where they are.
            self.next_obs.copy_(torch.from_numpy(obs))
            self.next_start.fill_(True)
            self.lstm_state = self.model.initial_state(self.cfg.num_envs, self.device)
        self.rnd_initialised = True

    @torch.inference_mode()
    def _intrinsic_rewards(self, buf: Rollout) -> dict[str, float]:
        """Intrinsic rewards for a rollout (batched, on the learner's thread since the predictor
        and the obs statistics belong to it), normalised; then the obs-statistics update."""
        assert self.rnd is not None
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
            self._update_stats(self.int_reward_rms, rets.reshape(-1))
            r_int = raw / self.int_reward_rms.var.float().add(1e-8).sqrt()
        buf.rewards_int.copy_(r_int)
        self._update_stats(self.rnd.obs_rms, frames.unsqueeze(1).float())
        return {
            "charts/intrinsic_reward": float(r_int.mean()),
            "charts/rnd_error": float(raw.mean()),
        }

    def _update_stats(self, rms: RunningMeanStd, x: Tensor) -> None:
        # Under torchrun every rank folds in the same global batch, so the statistics agree.
        self.collective.update_running_stats(rms, x)

    # -- learn -----------------------------------------------------------------------------------
    def compute_advantages(self) -> None:
        """GAE over ``self.rollout`` into its ``advantages`` / ``returns`` (and intrinsic ones)."""
        cfg, buf = self.cfg, self.rollout
        adv, buf.returns = gae(
            buf.rewards,
            buf.values,
            buf.next_values,
            buf.terminations,
            buf.dones,
            cfg.gamma,
            cfg.gae_lambda,
        )
        if self.use_rnd:
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
            adv = cfg.rnd_ext_coef * adv + cfg.rnd_int_coef * adv_int
        buf.advantages = adv

    def learn(self) -> dict[str, float]:
        """One PPO update (epochs x minibatches) on ``self.rollout``; returns namespaced metrics."""
        cfg, buf = self.cfg, self.rollout
        t_start = time.perf_counter()
        self.compute_advantages()
        lr, ent_coef = self.current_lr(), self.current_ent_coef()
        for group in self.optimizer.param_groups:
            group["lr"] = lr

        n, steps = cfg.num_envs, cfg.rollout_steps
        flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
        b_obs = flat(buf.obs_store)
        b_actions, b_logprobs = flat(buf.actions), flat(buf.logprobs)
        b_adv, b_returns, b_starts = flat(buf.advantages), flat(buf.returns), flat(buf.starts)
        b_returns_int = flat(buf.returns_int) if self.use_rnd else None
        b_frames = flat(buf.next_frames) if self.use_rnd else None

        # A unit is one sample, or for the LSTM one bptt_len sequence of one env.
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
                    # unit q = sequence s of env e (q = s * n + e); sample (t, e) is row t * n + e
                    seq, env = units // n, units % n
                    t_idx = seq.unsqueeze(0) * unit + torch.arange(unit).unsqueeze(1)  # (T, M)
                    idx = (t_idx * n + env.unsqueeze(0)).reshape(-1)  # time-major (T*M,)
                    obs = self._as_nchw(b_obs[idx]).reshape(unit, len(units), *self.obs_shape)
                    state = (buf.seq_h[seq, env], buf.seq_c[seq, env])
                    # No detach inside the sequence: gradients flow through all bptt_len steps.
                    out = self.model(
                        obs, state, b_starts[idx].reshape(unit, -1), cfg.lstm_penalty > 0
                    )
                else:
                    idx = units
                    out = self.model(self._as_nchw(b_obs[idx]))
                adv = b_adv[idx]
                if cfg.norm_adv:
                    # Over all ranks' minibatches under torchrun: the combined batch's statistics.
                    mean, std = self.collective.mean_std(adv)
                    adv = (adv - mean) / (std + 1e-8)
                terms = ppo_losses(
                    out.logits.reshape(-1, self.n_actions),
                    b_actions[idx],
                    b_logprobs[idx],
                    adv,
                    out.value.reshape(-1),
                    b_returns[idx],
                    cfg.clip,
                    cfg.vf_loss,
                )
                v_loss = terms["value"]
                if b_returns_int is not None:
                    assert out.value_int is not None
                    v_int = out.value_int.reshape(-1)
                    terms["value_int"] = value_loss(v_int, b_returns_int[idx], cfg.vf_loss)
                    v_loss = v_loss + terms["value_int"]
                loss = terms["policy"] - ent_coef * terms["entropy"] + cfg.vf_coef * v_loss
                if self.recurrent and cfg.lstm_penalty > 0:
                    assert out.all_states is not None
                    t_of, e_of = idx // n, idx % n
                    h_old = buf.step_h[t_of, e_of].reshape(unit, len(units), -1)
                    c_old = buf.step_c[t_of, e_of].reshape(unit, len(units), -1)
                    # Mean over every step of every sequence (the seed kept only the last step).
                    penalty = F.mse_loss(out.all_states[0], h_old) + F.mse_loss(
                        out.all_states[1], c_old
                    )
                    loss = loss + cfg.lstm_penalty * penalty
                    terms["lstm_penalty"] = penalty
                if self.rnd is not None and b_frames is not None:
                    # Train the predictor on a random subset only, so it does not catch up with
                    # novelty too fast (same expectation as the RND paper's mask, less compute).
                    n_sub = max(1, round(cfg.rnd_update_proportion * len(idx)))
                    sub = idx[torch.randperm(len(idx), generator=self.gen)[:n_sub]]
                    terms["rnd"] = self.rnd.error(b_frames[sub]).mean()
                    loss = loss + terms["rnd"]

                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                # Before clipping, so that every rank clips the same mean gradient.
                self.collective.average_gradients(self.optimizer.param_groups[0]["params"])
                if cfg.max_grad_norm > 0:
                    terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(
                        self.optimizer.param_groups[0]["params"], cfg.max_grad_norm
                    )
                self.optimizer.step()

                # Sum as tensors: no .item() (a sync) per minibatch.
                for key, val in terms.items():
                    v = val.detach()
                    sums[key] = sums[key] + v if key in sums else v.clone()
                n_mb += 1
                if cfg.target_kl is not None and self._kl(terms["approx_kl"]) > 1.5 * cfg.target_kl:
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
            "debug/explained_variance": explained_variance(flat(buf.values), b_returns),
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
                flat(buf.values_int), flat(buf.returns_int)
            )
        return metrics

    def _kl(self, approx_kl: Tensor) -> float:
        # The mean over the ranks, so that every rank stops the update at the same minibatch.
        return self.collective.mean(approx_kl)

    def _as_nchw(self, x: Tensor) -> Tensor:
        """Gathered storage rows -> (B, C, H, W) (a free permute when stored NHWC)."""
        return x.permute(0, 3, 1, 2) if self.cfg.channels_last else x

    def train_iteration(self) -> dict[str, float]:
        """collect() then learn(); the merged metrics."""
        return self.collect() | self.learn()

    def fill_random_rollout(self) -> None:
        """Random rollout contents with the right shapes/dtypes (speed measurements, tests)."""
        g, buf = self.gen, self.rollout
        shape = buf.values.shape
        buf.obs_store.copy_(
            torch.randint(0, 256, buf.obs_store.shape, dtype=torch.uint8, generator=g)
        )
        buf.actions.copy_(torch.randint(0, self.n_actions, shape, generator=g))
        buf.logprobs.fill_(-float(np.log(self.n_actions)))
        buf.rewards.copy_(torch.randn(shape, generator=g))
        buf.values.copy_(torch.randn(shape, generator=g))
        buf.next_values.copy_(torch.randn(shape, generator=g))
        buf.terminations.copy_(torch.rand(shape, generator=g) < 0.01)
        buf.dones.copy_(buf.terminations)
        buf.starts[1:] = buf.dones[:-1]
        if self.use_rnd:
            buf.next_frames.copy_(buf.obs[:, :, -1])
            buf.values_int.copy_(torch.randn(shape, generator=g))
            buf.rewards_int.copy_(torch.rand(shape, generator=g))

    # -- checkpoint state --------------------------------------------------------------------------
    def spec(self) -> ModelSpec:
        """The model's ModelSpec."""
        return self.model.spec

    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Whole trainer state as (flat contiguous tensors, JSON-able dict); safetensors-ready.

        With async_collect the per-env carry (env.*) and the collector's generator are taken
        while a rollout is in flight, so they only matter for an exact resume in sync mode.
        """
        tensors = prefixed(self.model.state_dict(), "model.")
        opt_tensors, opt_meta = optimizer_state_tensors(self.optimizer, "optim.")
        tensors |= opt_tensors
        if self.rnd is not None:
            tensors |= prefixed(self.rnd.state_dict(), "rnd.")
            tensors |= prefixed(self.int_reward_rms.state_dict(), "rnd_reward_rms.")
            tensors["rnd_int_return"] = self.int_return.clone()
        tensors["env.next_obs"] = self.next_obs.clone()
        tensors["env.next_start"] = self.next_start.clone()
        if self.lstm_state is not None:
            tensors["env.lstm_h"] = self.lstm_state[0].clone()
            tensors["env.lstm_c"] = self.lstm_state[1].clone()
        tensors["rng.generator"] = self.gen.get_state()
        for k, gen in enumerate(self.collect_gens):
            tensors[_collect_key(k)] = gen.get_state()
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
        not match the new ones) and calls :meth:`reset_envs`.

        A checkpoint that does not fit (missing or unexpected tensors, wrong shapes, a malformed
        meta.json) is a one-line ValueError, never a traceback: its JSON is untrusted input.
        """
        try:
            self._restore(tensors, meta, restore_env_state)
        except RESTORE_ERRORS as e:
            raise misfit_error(self.cfg.algo, e) from None
        if not self.collective.is_main:
            # The checkpoint holds rank 0's generators; the others draw their own streams.
            base = resume_seed(self.cfg.seed, self.update)
            self.gen.manual_seed(base)
            self.seed_collection(collect_seed(base))
        self.collective.broadcast_tensors(self._replicated_tensors())

    def _restore(
        self, tensors: dict[str, Tensor], meta: dict[str, Any], restore_env_state: bool
    ) -> None:
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"not a PPO trainer checkpoint (format {meta.get('format')!r},"
                f" expected {CHECKPOINT_FORMAT!r})"
            )
        if meta.get("algo") != self.cfg.algo:
            raise ValueError(
                f"checkpoint is for algo {meta.get('algo')!r}, this run is {self.cfg.algo!r}"
            )
        self.model.spec.check_compatible(ModelSpec.from_dict(meta["model_spec"]))
        self._wait_pending()
        self.model.load_state_dict(strip_prefix(tensors, "model."))
        load_optimizer_state(self.optimizer, tensors, meta["optimizer"])
        if self.rnd is not None:
            self.rnd.load_state_dict(strip_prefix(tensors, "rnd."))
            self.int_reward_rms.load_state_dict(strip_prefix(tensors, "rnd_reward_rms."))
            self.int_return.copy_(tensors["rnd_int_return"])
        self.gen.set_state(tensors["rng.generator"].clone())
        for k, gen in enumerate(self.collect_gens):
            if _collect_key(k) in tensors:
                gen.set_state(tensors[_collect_key(k)].clone())
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
