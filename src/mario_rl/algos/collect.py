"""PPO's rollout collection: step the vector env ``rollout_steps`` times with the policy and fill
a :class:`~mario_rl.algos.rollout.Rollout`.

One act-step loop (:meth:`Collector._collect_group`) runs in three ways:

* all envs together, in the calling thread;
* per env group (``group_collect``): each env worker runs the loop over its own envs, so no
  worker waits for the slowest group at every step; they meet once per rollout;
* in a background thread (``async_collect``), with a snapshot of the policy, while the learner
  trains on the previous rollout.

The collector owns what carries over from one rollout to the next: each env's next observation
and episode-start flag, the recurrent state, and the action-sampling streams (one per env group).
The env contract is Gymnasium's VectorEnv with same-step autoreset (see mario_rl.envs.vector).
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mario_rl.algos.rollout import Rollout
from mario_rl.config.ppo import PPOConfig
from mario_rl.devices import set_threads, torch_threads
from mario_rl.models import ActorCritic, LSTMState
from mario_rl.rl.actions import sample_actions
from mario_rl.seeding import collect_seed, group_seed

__all__ = ["Collector", "GroupPart"]


def _copy_stages(dst: Tensor, info: dict) -> None:
    """``info["stage"]`` (per env, indices into STAGES) into ``dst``; -1 where an env has none."""
    stage = info.get("stage") if isinstance(info, dict) else None
    if stage is None or len(stage) != len(dst):
        dst.fill_(-1)
    else:
        dst.copy_(torch.from_numpy(np.asarray(stage, dtype=np.int16)))


def _collect_key(k: int) -> str:
    """Checkpoint key of env group k's action-sampling stream (group 0's predates groups)."""
    return f"rng.collect_generator.{k}" if k else "rng.collect_generator"


@dataclass
class GroupPart:
    """What one env group's collection loop hands back besides the buffer columns it filled."""

    episodes: list[dict[str, Any]] = field(default_factory=list)
    components: dict[str, np.ndarray] = field(default_factory=dict)
    state: LSTMState | None = None
    t_env: float = 0.0
    t_inf: float = 0.0
    t_store: float = 0.0


class Collector:
    """Fills rollouts from ``envs`` with ``model`` (or, in the background, a snapshot of it).

    ``envs`` may be None (a trainer used for speed measurements): then only the carried state
    exists, for checkpoints. ``steps_per_rollout`` is how far ``global_step`` moves per rollout
    (every rank's envs under torchrun), so that a background rollout knows where it starts.
    """

    def __init__(
        self,
        cfg: PPOConfig,
        envs: Any | None,
        model: ActorCritic,
        new_rollout: Callable[[], Rollout],
        steps_per_rollout: int,
    ) -> None:
        self.cfg = cfg
        self.envs = envs
        self.model = model
        self.device = torch.device(cfg.device)
        self.steps_per_rollout = steps_per_rollout
        self.gens = [torch.Generator() for _ in self.groups()]
        """Action-sampling streams, one per env group that collects side by side."""
        self.seed(collect_seed(cfg.seed))
        n = cfg.num_envs
        obs_shape = tuple(model.spec.obs_shape)
        self.next_obs = torch.zeros((n, *obs_shape), dtype=torch.uint8, device=self.device)
        self.next_start = torch.ones(n, dtype=torch.bool, device=self.device)
        self.next_stage = torch.full((n,), -1, dtype=torch.int16, device=self.device)
        """The stage each env's next observation shows (the env's ``info["stage"]``; -1 unknown)."""
        self.state = model.initial_state(n, self.device)
        """The recurrent state of every env (None for a feed-forward model)."""

        # Background collection: a second buffer, a policy snapshot, one worker thread.
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future[Rollout] | None = None
        if cfg.async_collect:
            self._spare = new_rollout()
            self._actor = copy.deepcopy(model)
            threads = cfg.collect_threads or cfg.torch_threads
            # torch's thread count is per OS thread: the collector thread sets its own, once.
            self._pool = ThreadPoolExecutor(
                1, thread_name_prefix="ppo-collect", initializer=set_threads, initargs=(threads,)
            )

    def groups(self) -> list[range]:
        """The env index ranges that collect side by side (one per env worker, or all)."""
        ranges = getattr(self.envs, "ranges", None)
        if not self.cfg.group_collect or ranges is None or len(ranges) < 2:
            return [range(self.cfg.num_envs)]
        return list(ranges)

    def seed(self, seed: int) -> None:
        """Re-seed the action-sampling streams (group k's from ``seed`` and k)."""
        for k, gen in enumerate(self.gens):
            gen.manual_seed(group_seed(seed, k))

    def reset(self, seed: int | None = None) -> None:
        """Reset every env and the carried state (after swapping in a fresh env, or a resume)."""
        assert self.envs is not None
        self.wait()
        obs, info = self.envs.reset(seed=seed)
        self.next_obs.copy_(torch.from_numpy(obs))
        self.next_start.fill_(True)
        _copy_stages(self.next_stage, info)
        self.state = self.model.initial_state(self.cfg.num_envs, self.device)

    def random_steps(self, steps: int, n_actions: int) -> list[np.ndarray]:
        """Step every env ``steps`` times with uniformly random actions (group 0's stream); the
        next rollout carries on from where they are, as from fresh episodes. The observations."""
        assert self.envs is not None
        self.wait()
        seen = []
        for _ in range(steps):
            a = torch.randint(0, n_actions, (self.cfg.num_envs,), generator=self.gens[0])
            obs, _, _, _, info = self.envs.step(a.numpy())
            _copy_stages(self.next_stage, info)
            seen.append(obs)
        if seen:
            self.next_obs.copy_(torch.from_numpy(seen[-1]))
            self.next_start.fill_(True)
            self.state = self.model.initial_state(self.cfg.num_envs, self.device)
        return seen

    # -- the next rollout --------------------------------------------------------------------------
    def collect(self, current: Rollout, first_step: int) -> Rollout:
        """The next rollout, which starts at ``first_step``.

        Synchronous: ``current`` is refilled now with the learner's model. Asynchronous: the
        rollout the background thread has been collecting (waiting for it if needed); ``current``
        becomes the spare that the next one, started now with a snapshot of the weights, fills.
        """
        if self._pool is None:
            with torch_threads(self.cfg.collect_threads):
                current.first_step = first_step
                return self._fill(current, self.model)
        if self._pending is None:
            self._launch(first_step)
        assert self._pending is not None
        # Cleared first: a rollout that raised (an env worker failed) is not waited for again.
        pending, self._pending = self._pending, None
        buf = pending.result()
        self._spare = current
        self._launch(first_step + self.steps_per_rollout)
        return buf

    def _launch(self, first_step: int) -> None:
        """Start collecting into the spare buffer with a snapshot of the current weights."""
        assert self._pool is not None
        with torch.no_grad():
            for dst, src in zip(self._actor.parameters(), self.model.parameters(), strict=True):
                dst.copy_(src)
        self._spare.first_step = first_step
        self._pending = self._pool.submit(self._fill, self._spare, self._actor)

    def wait(self) -> None:
        """Let a background rollout finish (its result is dropped)."""
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def close(self) -> None:
        """Finish any background rollout and stop the collector thread."""
        self.wait()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _fill(self, buf: Rollout, model: ActorCritic) -> Rollout:
        """Step the envs ``rollout_steps`` times with ``model``, filling ``buf`` (any thread)."""
        assert self.envs is not None
        envs = self.envs
        with torch.inference_mode():
            t_start = time.perf_counter()
            groups = self.groups()
            if len(groups) == 1:
                parts = [self._collect_group(buf, model, groups[0], envs.step, 0)]
            else:
                # Each env worker runs its own act-step loop over its own envs, so no worker
                # waits for the slowest group at every step (envs.step would); they meet here.
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
            self.state = state

            # Bootstrap: V(obs[t+1]) for every step; V(final_obs) was put where truncated.
            t0 = time.perf_counter()
            last = model(self.next_obs, state, self.next_start)
            boot = torch.cat([buf.values[1:], last.value.unsqueeze(0)])
            truncated = buf.dones & ~buf.terminations
            buf.next_values.copy_(torch.where(truncated, buf.next_values, boot))
            buf.keep_last_output(last)
            # Groups ran side by side: each phase's time is the mean over them (wall-clock shares).
            buf.times = {
                "time/env": float(np.mean([p.t_env for p in parts])),
                "time/inference": float(np.mean([p.t_inf for p in parts]))
                + time.perf_counter()
                - t0,
                "time/storage": float(np.mean([p.t_store for p in parts])),
                "time/collect": time.perf_counter() - t_start,
            }
        return buf

    def _collect_group(
        self,
        buf: Rollout,
        model: ActorCritic,
        r: range,
        step: Callable[[np.ndarray], tuple],
        k: int,
    ) -> GroupPart:
        """``rollout_steps`` act-step rounds of the envs ``r`` with group k's stream (any thread;
        the envs of ``r`` and their columns of ``buf`` belong to this call alone)."""
        part = GroupPart()
        gen = self.gens[k]
        cols = slice(r.start, r.stop)
        state = None if self.state is None else (self.state[0][cols], self.state[1][cols])
        next_obs, next_start = self.next_obs[cols], self.next_start[cols]
        next_stage = self.next_stage[cols]
        with torch.inference_mode():
            for t in range(self.cfg.rollout_steps):
                t0 = time.perf_counter()
                buf.obs[t, cols] = next_obs
                buf.starts[t, cols] = next_start
                buf.stages[t, cols] = next_stage
                buf.keep_state(t, cols, state)
                t1 = time.perf_counter()
                out = model(buf.obs[t, cols], state, next_start)
                action, logprob = sample_actions(out.logits, gen)
                buf.actions[t, cols] = action
                buf.logprobs[t, cols] = logprob
                buf.values[t, cols] = out.value
                buf.keep_output(t, cols, out)
                state = out.state
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
                _copy_stages(next_stage, infos)
                buf.keep_next_obs(t, cols, next_obs)
                if done_np.any():
                    self._episode_ends(
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

    def _episode_ends(
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
        """Bootstrap values for truncated episodes, the episodes' last observations, episode
        records (``done``, ``infos`` and ``state`` are for the envs ``r``; ``episodes`` gets the
        records)."""
        final_obs = infos.get("final_obs")
        if final_obs is not None:
            idx = np.flatnonzero(done & infos.get("_final_obs", done))
            finals = torch.from_numpy(np.stack([final_obs[i] for i in idx])).to(self.device)
            buf.keep_final_obs(t, r.start + idx, finals)
            cut = [k for k, i in enumerate(idx) if trunc[i]]
            if cut:
                # A time limit cut the episode, it did not end: its return continues past the
                # cut, so bootstrap from V(final_obs) (with the env's pre-reset LSTM state).
                rows = torch.as_tensor(idx[cut])
                sub_state = None if state is None else (state[0][rows], state[1][rows])
                x = finals[cut]
                if self.cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                buf.next_values[t, rows + r.start] = model(x, sub_state, None).value
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

    # -- checkpoint state -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        """The carried per-env state (``env.*``) and the action-sampling streams."""
        tensors = {
            "env.next_obs": self.next_obs.clone(),
            "env.next_start": self.next_start.clone(),
            "env.next_stage": self.next_stage.clone(),
        }
        if self.state is not None:
            tensors["env.lstm_h"] = self.state[0].clone()
            tensors["env.lstm_c"] = self.state[1].clone()
        for k, gen in enumerate(self.gens):
            tensors[_collect_key(k)] = gen.get_state()
        return tensors

    def load_state_dict(self, tensors: dict[str, Tensor], restore_env_state: bool) -> None:
        """The streams (a checkpoint from before env groups has group 0's only); with
        ``restore_env_state`` also the carried per-env state."""
        self.wait()
        for k, gen in enumerate(self.gens):
            if _collect_key(k) in tensors:
                gen.set_state(tensors[_collect_key(k)].clone())
        if restore_env_state:
            self.next_obs.copy_(tensors["env.next_obs"])
            self.next_start.copy_(tensors["env.next_start"])
            if "env.next_stage" in tensors:  # absent from checkpoints before it was kept
                self.next_stage.copy_(tensors["env.next_stage"])
            if self.state is not None:
                self.state = (tensors["env.lstm_h"].clone(), tensors["env.lstm_c"].clone())
