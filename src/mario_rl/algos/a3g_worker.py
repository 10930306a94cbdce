"""One A3G worker process: its env and model copy, a rollout, the actor-critic loss, the Hogwild
push of its gradients into the shared model, and the typed messages it sends the main process."""

from __future__ import annotations

import os
import signal
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mario_rl.algos.a3g_stages import curriculum_selection
from mario_rl.algos.shared_optim import make_optimizer
from mario_rl.config.a3g import A3GConfig
from mario_rl.devices import device_of, set_threads
from mario_rl.envs import EnvConfig, MarioVectorEnv
from mario_rl.envs.stages import STAGES, StageSelection
from mario_rl.errors import NonFiniteError, one_line
from mario_rl.models import ActorCritic, LSTMState, build_model
from mario_rl.rl.actions import sample_actions
from mario_rl.rl.advantages import a3g_targets
from mario_rl.rl.losses import a3g_loss
from mario_rl.rl.stats import linear_schedule
from mario_rl.seeding import worker_seed


@dataclass(frozen=True)
class EpisodeMsg:
    """A finished episode of worker ``rank`` (the env's episode record, plus the global step)."""

    rank: int
    record: dict[str, Any]


@dataclass(frozen=True)
class UpdateMsg:
    """One update of worker ``rank``: its losses, reward sums and phase times."""

    rank: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class NonFiniteMsg:
    """Worker ``rank``'s update gave NaN/inf: it did not apply it, and stopped."""

    rank: int
    message: str


@dataclass(frozen=True)
class ErrorMsg:
    """Worker ``rank`` raised: a one-line summary and the traceback."""

    rank: int
    summary: str
    traceback: str


@dataclass(frozen=True)
class ExitMsg:
    """Worker ``rank`` finished after ``steps`` steps of its own (always its last message)."""

    rank: int
    steps: int


WorkerMessage = EpisodeMsg | UpdateMsg | NonFiniteMsg | ErrorMsg | ExitMsg


# -- gradients -----------------------------------------------------------------------------------
def push_gradients(local: nn.Module, shared: nn.Module) -> None:
    """Copy ``local``'s gradients onto ``shared``'s parameters, on every update.

    The shared parameters' ``.grad`` are buffers of this process (allocated once, never in shared
    memory, so workers cannot overwrite each other's gradients); ``copy_`` also brings a GPU
    worker's gradients to the CPU. The seed aliased CPU gradients once and then returned early,
    which silently goes stale as soon as the local grads are re-allocated (set_to_none).
    """
    with torch.no_grad():
        for lp, sp in zip(local.parameters(), shared.parameters(), strict=True):
            if sp.grad is None:
                sp.grad = torch.zeros_like(sp, memory_format=torch.contiguous_format)
            if lp.grad is None:
                sp.grad.zero_()
            else:
                sp.grad.copy_(lp.grad)


# -- one worker ----------------------------------------------------------------------------------
@dataclass
class A3GRollout:
    """One rollout of T steps of a worker's N envs (what its update learns from); N = 1 is the
    seed's one env per worker."""

    obs: Tensor
    """(T, N, C, H, W) uint8."""
    actions: Tensor
    """(T, N), like every per-step field below."""
    rewards: Tensor
    """The env's shaped reward of each step (never zero-filled: the seed's bug)."""
    terminations: Tensor
    dones: Tensor
    starts: Tensor
    """obs[t, i] begins an episode (the LSTM state is zeroed before that step)."""
    next_values: Tensor
    """V(final_obs) where an episode was truncated at step t; other entries unused."""
    init_state: LSTMState
    """LSTM state before step 0 (before its reset mask), (N, H) each."""
    last_value: Tensor
    """(N,) V of the observation after the last step (the bootstrap of the rollout's tail)."""
    episodes: list[dict[str, Any]] = field(default_factory=list)
    components: dict[str, float] = field(default_factory=dict)
    """Each reward component summed over the rollout."""
    times: dict[str, float] = field(default_factory=dict)


class Worker:
    """One A3G worker: its envs, its model copy and its half of the Hogwild update.

    Runs in a worker process (:func:`worker_main`), or in the calling process for tests. ``env`` is
    a vector env of ``cfg.envs_per_worker`` envs (Gymnasium same-step autoreset), stepped together
    with one batched forward pass; ``optimizer`` steps ``shared_model``.
    """

    def __init__(
        self,
        cfg: A3GConfig,
        env: Any,
        shared_model: ActorCritic,
        optimizer: torch.optim.Optimizer,
        *,
        rank: int = 0,
        device: str = "cpu",
        step_fn: Any = None,
        curriculum_weights: Any = None,
        seed: int | None = None,
    ) -> None:
        if env.num_envs != cfg.envs_per_worker:
            raise ValueError(
                f"an A3G worker plays envs_per_worker={cfg.envs_per_worker} envs, got {env.num_envs}"
            )
        self.n = env.num_envs
        self.cfg = cfg
        self.env = env
        self.rank = rank
        self.device = torch.device(device)
        self.shared = shared_model
        self.optimizer = optimizer
        self.local = build_model(shared_model.spec).to(self.device)
        self.local.load_state_dict(shared_model.state_dict())
        self.step_fn = step_fn
        """Returns the global step count (for the lr schedule); None: this worker's own steps."""
        self.curriculum_weights = curriculum_weights
        base = env.stages_of(0) if hasattr(env, "stages_of") else None
        self.base_selection: StageSelection | None = base
        seed = worker_seed(cfg.seed, rank) if seed is None else seed
        self.gen = torch.Generator().manual_seed(seed)
        self._apply_curriculum()
        obs, _ = env.reset(seed=seed)
        self.next_obs = torch.from_numpy(obs).to(self.device)
        self.next_start = torch.ones(self.n, dtype=torch.bool, device=self.device)
        self.state: LSTMState = self.local.initial_state(self.n, self.device)  # type: ignore[assignment]
        self.steps = 0
        self.updates = 0

    def _apply_curriculum(self, envs: list[int] | None = None) -> None:
        """Point the next reset of ``envs`` (default: all) at the curriculum's current weights."""
        if self.curriculum_weights is None or self.base_selection is None:
            return
        selection = curriculum_selection(self.base_selection, self.curriculum_weights)
        self.env.set_stages(list(range(self.n)) if envs is None else envs, selection)

    def global_step(self) -> int:
        """Steps of all workers together (this worker's own when it runs alone)."""
        return int(self.step_fn()) if self.step_fn is not None else self.steps

    def sync(self) -> None:
        """Copy the shared weights into the local model (the start of every update)."""
        self.local.load_state_dict(self.shared.state_dict())

    @torch.no_grad()  # not inference_mode: learn() feeds the stored tensors to autograd
    def rollout(self) -> A3GRollout:
        """Play ``rollout_steps`` steps of every env with the local model, sampling actions."""
        cfg, dev, model, n = self.cfg, self.device, self.local, self.n
        t_len = cfg.rollout_steps
        shape = tuple(self.next_obs.shape[1:])
        z = lambda dtype=torch.float32: torch.zeros((t_len, n), dtype=dtype, device=dev)  # noqa: E731
        ro = A3GRollout(
            obs=torch.zeros((t_len, n, *shape), dtype=torch.uint8, device=dev),
            actions=z(torch.int64),
            rewards=z(),
            terminations=z(torch.bool),
            dones=z(torch.bool),
            starts=z(torch.bool),
            next_values=z(),
            init_state=(self.state[0].clone(), self.state[1].clone()),
            last_value=torch.zeros(n, device=dev),
        )
        t_env = t_inf = 0.0
        state = self.state
        for t in range(t_len):
            t0 = time.perf_counter()
            ro.obs[t] = self.next_obs
            ro.starts[t] = self.next_start
            out = model(self.next_obs, state, self.next_start)
            action, _ = sample_actions(out.logits.cpu(), self.gen)
            state = out.state  # type: ignore[assignment]
            t1 = time.perf_counter()
            obs, reward, term, trunc, infos = self.env.step(action.numpy())
            t2 = time.perf_counter()
            ro.actions[t] = action
            ro.rewards[t] = torch.as_tensor(reward, dtype=torch.float32)
            term_t = torch.as_tensor(term, dtype=torch.bool)
            done = term_t | torch.as_tensor(trunc, dtype=torch.bool)
            ro.terminations[t] = term_t
            ro.dones[t] = done
            for name, v in infos.get("reward_components", {}).items():
                ro.components[name] = ro.components.get(name, 0.0) + float(np.sum(v))
            if bool(done.any()):
                ended = [int(i) for i in torch.nonzero(done).flatten()]
                cut = [i for i in ended if trunc[i] and not term[i]]
                if cut:
                    # A time limit cut the episode: its return goes on past the cut, so bootstrap
                    # from V(final_obs), with the LSTM state the episode had reached.
                    final = torch.as_tensor(np.stack([infos["final_obs"][i] for i in cut])).to(dev)
                    idx = torch.tensor(cut, device=dev)
                    cut_state = (state[0][idx], state[1][idx])
                    ro.next_values[t, idx] = model(final, cut_state, None).value
                ro.episodes += [self._episode_record(infos, i) for i in ended]
                self._apply_curriculum(ended)
            self.next_obs = torch.from_numpy(obs).to(dev)
            self.next_start = done.to(dev)
            t_inf += t1 - t0
            t_env += t2 - t1
        t0 = time.perf_counter()
        ro.last_value = model(self.next_obs, state, self.next_start).value
        self.state = state
        self.steps += t_len * n
        ro.times = {"env": t_env, "inference": t_inf + time.perf_counter() - t0}
        return ro

    def _episode_record(self, infos: dict[str, Any], i: int) -> dict[str, Any]:
        ep = infos.get("episode", {})
        rec: dict[str, Any] = {"rank": self.rank, "worker_step": self.steps}
        for key, arr in ep.items():
            if isinstance(arr, np.ndarray) and arr.ndim == 1:
                v = arr[i]
                rec[key] = v.item() if hasattr(v, "item") else v
        for key in ("stage", "start_stage"):
            if isinstance(rec.get(key), int) and 0 <= rec[key] < len(STAGES):
                rec[key] = STAGES[rec[key]]
        return rec

    def learn(self, ro: A3GRollout) -> dict[str, float]:
        """Loss on the rollout, gradients to the shared model, one optimizer step (no lock).

        The loss sums over the rollout's steps (the seed's scale) and averages over the envs, so
        one update of N envs is as large as one of a single env, only less noisy."""
        cfg = self.cfg
        t0 = time.perf_counter()
        out = self.local(ro.obs, ro.init_state, ro.starts)
        logits, values = out.logits, out.value
        with torch.no_grad():
            boot = torch.cat([values[1:].detach(), ro.last_value.reshape(1, -1)])
            truncated = ro.dones & ~ro.terminations
            next_values = torch.where(truncated, ro.next_values, boot)
            adv, returns = a3g_targets(
                ro.rewards, values.detach(), next_values, ro.terminations, ro.dones,
                gamma=cfg.gamma, lam=cfg.gae_lambda,
            )  # fmt: skip
            if cfg.norm_adv and adv.numel() > 1:
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        terms = a3g_loss(
            logits.reshape(-1, logits.shape[-1]), values.reshape(-1), ro.actions.reshape(-1),
            adv.reshape(-1), returns.reshape(-1), cfg.ent_coef, cfg.vf_coef,
        )  # fmt: skip
        terms["loss"] = terms["loss"] / self.n
        # Checked before anything reaches the shared model: one NaN gradient pushed there would
        # poison every worker and every later checkpoint.
        _check_finite_terms(terms, self.rank)
        self.local.zero_grad(set_to_none=True)
        terms["loss"].backward()
        metrics: dict[str, float] = {}
        if cfg.max_grad_norm > 0:
            norm = nn.utils.clip_grad_norm_(self.local.parameters(), cfg.max_grad_norm)
            _check_finite_terms({"grad_norm": norm}, self.rank)
            metrics["debug/grad_norm"] = float(norm)
        lr = (
            linear_schedule(cfg.lr, cfg.lr_final, self.global_step() / cfg.total_steps)
            if cfg.lr_schedule == "linear"
            else cfg.lr
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        push_gradients(self.local, self.shared)
        self.optimizer.step()
        self.updates += 1
        metrics |= {
            "losses/policy": float(terms["policy"]),
            "losses/value": float(terms["value"]),
            "losses/entropy": float(terms["entropy"]),
            "losses/loss": float(terms["loss"].detach()) / cfg.rollout_steps,
            "charts/lr": lr,
            "time/learn": time.perf_counter() - t0,
        }
        return metrics

    def update(self) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """sync → rollout → learn; returns (metrics incl. timings and reward sums, episodes)."""
        t0 = time.perf_counter()
        self.sync()
        t_sync = time.perf_counter() - t0
        ro = self.rollout()
        metrics = self.learn(ro)
        metrics["time/env"] = ro.times["env"]
        metrics["time/inference"] = ro.times["inference"]
        metrics["time/sync"] = t_sync
        metrics["steps"] = float(self.cfg.rollout_steps * self.n)
        metrics["reward_sum"] = float(ro.rewards.sum())
        for name, total in ro.components.items():
            metrics[f"rewards/{name}"] = total
        return metrics, ro.episodes

    def close(self) -> None:
        self.env.close()


def _check_finite_terms(terms: dict[str, Tensor], rank: int) -> None:
    """NonFiniteError naming the values of worker ``rank``'s update that are NaN or infinite."""
    bad = [f"{k}={float(v)}" for k, v in terms.items() if not bool(torch.isfinite(v).all())]
    if bad:
        raise NonFiniteError(
            f"A3G worker {rank}: non-finite {', '.join(bad)}; its gradients were not applied"
        )


def worker_main(
    rank: int,
    cfg: A3GConfig,
    env_cfg: EnvConfig,
    stages: str,
    curriculum: bool,
    shared_model: ActorCritic,
    optimizer: torch.optim.Optimizer | None,
    counters: Any,
    base_step: int,
    messages: Any,
    stop_event: Any,
    stage_weights: Any,
    parent_pid: int,
    seed: int,
) -> None:
    """Entry point of worker process ``rank``: update until the step budget or the stop event.

    Sends :class:`EpisodeMsg` and :class:`UpdateMsg` messages, then :class:`ExitMsg`; a failure is
    reported as :class:`ErrorMsg` (or :class:`NonFiniteMsg` for a NaN/inf update).
    """
    # The terminal's Ctrl-C reaches the whole process group; the main process decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_threads(1)
    worker: Worker | None = None
    try:
        device = device_of(rank, cfg.gpu_ids)
        if optimizer is None:
            # --no-shared-optimizer: this worker's own optimizer state over the shared parameters.
            optimizer = make_optimizer(cfg, shared_model.parameters(), shared=False)
        elif any(
            p is not q
            for p, q in zip(
                optimizer.param_groups[0]["params"], shared_model.parameters(), strict=True
            )
        ):
            # Both arrive in one pickle, so they must be the very same tensors here.
            raise RuntimeError("the shared optimizer does not hold the shared model's parameters")
        env_cfg.stages = stages
        env = MarioVectorEnv(env_cfg, num_envs=cfg.envs_per_worker, workers=1, seed=seed)
        worker = Worker(
            cfg,
            env,
            shared_model,
            optimizer,
            rank=rank,
            device=device,
            step_fn=lambda: base_step + sum(counters),
            curriculum_weights=stage_weights if curriculum else None,
            seed=seed,
        )
        while not stop_event.is_set() and base_step + sum(counters) < cfg.total_steps:
            if os.getppid() != parent_pid:  # the main process died without stopping us
                break
            metrics, episodes = worker.update()
            counters[rank] += cfg.rollout_steps * cfg.envs_per_worker
            for ep in episodes:
                ep["step"] = base_step + sum(counters)
                messages.put(EpisodeMsg(rank, ep))
            messages.put(UpdateMsg(rank, metrics))
    except NonFiniteError as e:
        messages.put(NonFiniteMsg(rank, str(e)))
    except BaseException as e:
        summary = one_line(e)
        messages.put(ErrorMsg(rank, summary, traceback.format_exc()))
    finally:
        if worker is not None:
            worker.close()
        messages.put(ExitMsg(rank, int(counters[rank])))
