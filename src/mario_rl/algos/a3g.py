"""A3G for Mario, top to bottom: asynchronous advantage actor-critic with Hogwild workers.

One shared :class:`ActorCritic` (LSTM policy) lives on the CPU in shared memory. ``workers``
processes (``spawn``-ed, one torch thread each) each own one env and a copy of the model on their
device (the CPU, or a GPU from ``gpu_ids`` round-robin). A worker's update:

1. copy the shared weights into its model;
2. play ``rollout_steps`` steps with the sampled policy (no graph kept), storing obs, actions and the
   env's shaped rewards;
3. rerun the model over the stored sequence in one batched pass (the weights have not changed,
   so this is the same policy) and take the actor-critic loss: GAE(lambda) advantages for the
   policy, n-step bootstrapped returns for the value, minus an entropy bonus, summed over steps;
4. clip its gradient, copy it onto the shared parameters' (process-local) ``.grad`` and step the
   optimizer of the shared model without locks: a shared-memory Adam/RMSprop, or one of its own.

Steps are counted per worker in a shared array (each worker writes only its own slot, so the sum
is exact); episode statistics and per-update losses go to the main process over a queue. The
main process (:class:`A3G`) owns the shared model, the counters, the stage curriculum and the
checkpoint state; the run loop around it is :func:`mario_rl.run.loop.run_loop`, via ``training.train_a3g``.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn

from mario_rl.algos.shared_optim import make_optimizer
from mario_rl.config.a3g import A3GConfig
from mario_rl.envs import EnvConfig, MarioVectorEnv, action_meanings
from mario_rl.envs.stages import STAGES, StageSelection, parse_stages
from mario_rl.io.checkpoint import RESTORE_ERRORS, misfit_error, prefixed, strip_prefix
from mario_rl.io.state_codec import load_optimizer_state, optimizer_state_tensors
from mario_rl.models import ActorCritic, LSTMState, ModelSpec, build_model
from mario_rl.rl.actions import sample_actions
from mario_rl.rl.advantages import gae
from mario_rl.rl.stats import linear_schedule
from mario_rl.run.evaluator import one_line
from mario_rl.run.guards import NonFiniteError
from mario_rl.seeding import worker_seed

CHECKPOINT_FORMAT = "mario-rl/a3g-trainer"
CHECKPOINT_VERSION = 1


# -- the loss ------------------------------------------------------------------------------------
def a3g_targets(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminations: Tensor,
    dones: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """(GAE(lambda) advantages, n-step bootstrapped returns) of a (T,) rollout, as the seed takes
    them: the policy follows the advantages, the value is regressed on the returns (lambda 1).

    ``next_values[t]`` is V of the observation after step t in the same episode (see
    :func:`mario_rl.rl.advantages.gae`); terminations cut the bootstrap, dones cut the chain.
    """
    col = lambda x: x.reshape(-1, 1)  # noqa: E731  (common.gae works on (T, N))
    args = (col(rewards), col(values), col(next_values), col(terminations), col(dones))
    adv, _ = gae(*args, gamma, lam)
    _, returns = gae(*args, gamma, 1.0)
    return adv.reshape(-1), returns.reshape(-1)


def a3g_loss(
    logits: Tensor,
    values: Tensor,
    actions: Tensor,
    advantages: Tensor,
    returns: Tensor,
    ent_coef: float,
    vf_coef: float,
) -> dict[str, Tensor]:
    """The actor-critic loss of one rollout, summed over its T steps as in the seed (so its
    learning rate carries over): ``-sum(log pi(a) * A) - c_H * sum(H) + c_V * sum(0.5 (R - V)^2)``.

    Returns ``loss`` (to minimise) and per-step means for logging: ``policy`` (-log pi(a) * A),
    ``value`` (0.5 squared error) and ``entropy``.
    """
    logp_all = F.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, actions.reshape(-1, 1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    policy = -(logp * advantages.detach())
    value = 0.5 * (returns.detach() - values).square()
    loss = policy.sum() - ent_coef * entropy.sum() + vf_coef * value.sum()
    return {
        "loss": loss,
        "policy": policy.mean().detach(),
        "value": value.mean().detach(),
        "entropy": entropy.mean().detach(),
    }


# -- stages and curriculum -----------------------------------------------------------------------
def assign_stages(stages: str, workers: int, train_stages: bool, curriculum: bool) -> list[str]:
    """The stage selection of each worker rank.

    Normally every worker trains on ``stages``. With ``train_stages`` (the seed's -ts), rank r < 32
    trains on stage r alone and the others on the whole game, or, with ``curriculum``, on all 32
    stages drawn by the curriculum's weights.
    """
    if not train_stages:
        return [parse_stages(stages).spec] * workers
    rest = "all" if curriculum else "game"
    return [STAGES[r] if r < len(STAGES) else rest for r in range(workers)]


def untrained_stages(workers: int, train_stages: bool) -> tuple[str, ...]:
    """Stages no worker plays under ``train_stages`` (fewer than 32 workers), else none."""
    return STAGES[workers:] if train_stages else ()


def train_stages_spec(workers: int) -> str:
    """The stages ``train_stages`` covers with ``workers`` workers (for evaluation and records)."""
    return "all" if workers >= len(STAGES) else ",".join(STAGES[:workers])


def is_curriculum_spec(spec: str) -> bool:
    """Whether a worker with this stage selection can be moved by the curriculum."""
    sel = parse_stages(spec)
    return not sel.game and len(sel.stages) > 1


def plan_workers(cfg: A3GConfig, stages: str) -> tuple[list[str], list[int]]:
    """(stage selection per rank, ranks the curriculum moves); ValueError (one line) when
    --curriculum would move no worker."""
    assignments = assign_stages(stages, cfg.workers, cfg.train_stages, cfg.curriculum)
    ranks = (
        [r for r, s in enumerate(assignments) if is_curriculum_spec(s)] if cfg.curriculum else []
    )
    if cfg.curriculum and not ranks:
        why = (
            "with --train-stages only workers beyond the 32 stage workers follow it; use more than 32 workers"
            if cfg.train_stages
            else f"it needs a set of stages (a list or 'all'), not {stages!r}"
        )
        raise ValueError(f"--curriculum has no worker to move: {why}")
    return assignments, ranks


def train_stages_warning(workers: int, train_stages: bool) -> str | None:
    """The warning for --train-stages with fewer than 32 workers (which stages go untrained)."""
    missing = untrained_stages(workers, train_stages)
    if not missing:
        return None
    covered = STAGES[0] if workers == 1 else f"{STAGES[0]} … {STAGES[workers - 1]}"
    return (
        f"--train-stages with {workers} workers trains {covered} only; {len(missing)} stages get"
        f" no worker and are not trained ({', '.join(missing)}); use 32 workers or more"
    )


class Curriculum:
    """Per-stage running failure rates from finished episodes, turned into sampling weights.

    ``record(stage, cleared)`` folds one episode in (a stage never seen counts as failed);
    ``weights()`` is ``floor + (1 - floor) * failure`` per stage, so stages failed most are drawn
    most and mastered ones still at ``floor`` relative weight. The main process publishes the
    weights into a shared array that curriculum workers read at their episode resets.
    """

    def __init__(self, stages: Sequence[str], floor: float = 0.1, decay: float = 0.9) -> None:
        self.stages = tuple(stages)
        self.floor = floor
        self.decay = decay
        self.failure = dict.fromkeys(self.stages, 1.0)
        self.episodes = dict.fromkeys(self.stages, 0)

    def record(self, stage: str, cleared: bool) -> None:
        """One finished episode that started on ``stage`` (ignored if not a curriculum stage)."""
        if stage not in self.failure:
            return
        self.failure[stage] = self.decay * self.failure[stage] + (1.0 - self.decay) * (
            0.0 if cleared else 1.0
        )
        self.episodes[stage] += 1

    def weights(self) -> dict[str, float]:
        """Relative sampling weight per curriculum stage (not normalised)."""
        return {s: self.floor + (1.0 - self.floor) * f for s, f in self.failure.items()}

    def publish(self, shared: Any) -> None:
        """Write the weights into a 32-slot shared array (indexed like STAGES)."""
        for s, w in self.weights().items():
            shared[STAGES.index(s)] = w

    def state(self) -> dict[str, Any]:
        """JSON-able state (checkpoints)."""
        return {"failure": dict(self.failure), "episodes": dict(self.episodes)}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state` output (stages not in this curriculum are ignored)."""
        for s, f in state.get("failure", {}).items():
            if s in self.failure:
                self.failure[s] = float(f)
        for s, n in state.get("episodes", {}).items():
            if s in self.episodes:
                self.episodes[s] = int(n)


def curriculum_selection(base: StageSelection, shared: Any) -> StageSelection:
    """``base``'s stages weighted by the shared curriculum weights (``base`` until any are set)."""
    weights = {s: float(shared[STAGES.index(s)]) for s in base.stages}
    if sum(weights.values()) <= 0:
        return base
    return base.with_weights(weights)


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


def device_of(rank: int, gpu_ids: Sequence[int]) -> str:
    """The device of worker ``rank``: gpu_ids round-robin, -1 meaning the CPU."""
    gid = gpu_ids[rank % len(gpu_ids)]
    return "cpu" if gid < 0 else f"cuda:{gid}"


def check_devices(gpu_ids: Sequence[int]) -> None:
    """ValueError (one line) if a GPU in ``gpu_ids`` does not exist here."""
    gpus = sorted({g for g in gpu_ids if g >= 0})
    if not gpus:
        return
    if not torch.cuda.is_available():
        raise ValueError(
            f"--gpu-ids {' '.join(map(str, gpu_ids))}: CUDA is not available on this machine; "
            "use --gpu-ids -1 (CPU workers)"
        )
    n = torch.cuda.device_count()
    if gpus[-1] >= n:
        raise ValueError(
            f"--gpu-ids: GPU {gpus[-1]} does not exist; this machine has {n} (0..{n - 1})"
        )


# -- one worker ----------------------------------------------------------------------------------
@dataclass
class A3GRollout:
    """One rollout of T steps of one env (what a worker's update learns from)."""

    obs: Tensor
    """(T, C, H, W) uint8."""
    actions: Tensor
    rewards: Tensor
    """The env's shaped reward of each step (never zero-filled: the seed's bug)."""
    terminations: Tensor
    dones: Tensor
    starts: Tensor
    """obs[t] begins an episode (the LSTM state is zeroed before that step)."""
    next_values: Tensor
    """V(final_obs) where an episode was truncated at step t; other entries unused."""
    init_state: LSTMState
    """LSTM state before step 0 (before its reset mask)."""
    last_value: Tensor
    """V of the observation after the last step (the bootstrap of the rollout's tail)."""
    episodes: list[dict[str, Any]] = field(default_factory=list)
    components: dict[str, float] = field(default_factory=dict)
    """Each reward component summed over the rollout."""
    times: dict[str, float] = field(default_factory=dict)


class Worker:
    """One A3G worker: its env, its model copy and its half of the Hogwild update.

    Runs in a worker process (:func:`worker_main`), or in the calling process for tests. ``env`` is
    a one-env vector env (Gymnasium same-step autoreset); ``optimizer`` steps ``shared_model``.
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
        if env.num_envs != 1:
            raise ValueError(f"an A3G worker plays one env, got {env.num_envs}")
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
        self.next_start = True
        self.state: LSTMState = self.local.initial_state(1, self.device)  # type: ignore[assignment]
        self.steps = 0
        self.updates = 0

    def _apply_curriculum(self) -> None:
        """Point the env's next reset at the curriculum's current weights."""
        if self.curriculum_weights is None or self.base_selection is None:
            return
        self.env.set_stages([0], curriculum_selection(self.base_selection, self.curriculum_weights))

    def global_step(self) -> int:
        """Steps of all workers together (this worker's own when it runs alone)."""
        return int(self.step_fn()) if self.step_fn is not None else self.steps

    def sync(self) -> None:
        """Copy the shared weights into the local model (the start of every update)."""
        self.local.load_state_dict(self.shared.state_dict())

    @torch.no_grad()  # not inference_mode: learn() feeds the stored tensors to autograd
    def rollout(self) -> A3GRollout:
        """Play ``rollout_steps`` steps with the local model, sampling actions."""
        cfg, dev, model = self.cfg, self.device, self.local
        t_len = cfg.rollout_steps
        shape = tuple(self.next_obs.shape[1:])
        z = lambda dtype=torch.float32: torch.zeros(t_len, dtype=dtype, device=dev)  # noqa: E731
        ro = A3GRollout(
            obs=torch.zeros((t_len, *shape), dtype=torch.uint8, device=dev),
            actions=z(torch.int64),
            rewards=z(),
            terminations=z(torch.bool),
            dones=z(torch.bool),
            starts=z(torch.bool),
            next_values=z(),
            init_state=(self.state[0].clone(), self.state[1].clone()),
            last_value=torch.zeros((), device=dev),
        )
        t_env = t_inf = 0.0
        state = self.state
        for t in range(t_len):
            t0 = time.perf_counter()
            ro.obs[t] = self.next_obs[0]
            ro.starts[t] = self.next_start
            start = torch.tensor([self.next_start], device=dev)
            out = model(self.next_obs, state, start)
            action, _ = sample_actions(out.logits.cpu(), self.gen)
            state = out.state  # type: ignore[assignment]
            t1 = time.perf_counter()
            obs, reward, term, trunc, infos = self.env.step(action.numpy())
            t2 = time.perf_counter()
            ro.actions[t] = action[0]
            ro.rewards[t] = float(reward[0])
            ro.terminations[t] = bool(term[0])
            done = bool(term[0] or trunc[0])
            ro.dones[t] = done
            for name, v in infos.get("reward_components", {}).items():
                ro.components[name] = ro.components.get(name, 0.0) + float(v[0])
            if done:
                if trunc[0] and not term[0]:
                    # A time limit cut the episode: its return goes on past the cut, so bootstrap
                    # from V(final_obs), with the LSTM state the episode had reached.
                    final = torch.as_tensor(infos["final_obs"][0]).unsqueeze(0).to(dev)
                    ro.next_values[t] = model(final, state, None).value[0]
                ro.episodes.append(self._episode_record(infos))
                self._apply_curriculum()
            self.next_obs = torch.from_numpy(obs).to(dev)
            self.next_start = done
            t_inf += t1 - t0
            t_env += t2 - t1
        t0 = time.perf_counter()
        start = torch.tensor([self.next_start], device=dev)
        ro.last_value = model(self.next_obs, state, start).value[0]
        self.state = state
        self.steps += t_len
        ro.times = {"env": t_env, "inference": t_inf + time.perf_counter() - t0}
        return ro

    def _episode_record(self, infos: dict[str, Any]) -> dict[str, Any]:
        ep = infos.get("episode", {})
        rec: dict[str, Any] = {"rank": self.rank, "worker_step": self.steps}
        for key, arr in ep.items():
            if isinstance(arr, np.ndarray) and arr.ndim == 1:
                v = arr[0]
                rec[key] = v.item() if hasattr(v, "item") else v
        for key in ("stage", "start_stage"):
            if isinstance(rec.get(key), int) and 0 <= rec[key] < len(STAGES):
                rec[key] = STAGES[rec[key]]
        return rec

    def learn(self, ro: A3GRollout) -> dict[str, float]:
        """Loss on the rollout, gradients to the shared model, one optimizer step (no lock)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        out = self.local(ro.obs.unsqueeze(1), ro.init_state, ro.starts.unsqueeze(1))
        logits, values = out.logits[:, 0], out.value[:, 0]
        with torch.no_grad():
            boot = torch.cat([values[1:].detach(), ro.last_value.reshape(1)])
            truncated = ro.dones & ~ro.terminations
            next_values = torch.where(truncated, ro.next_values, boot)
            adv, returns = a3g_targets(
                ro.rewards, values.detach(), next_values, ro.terminations, ro.dones,
                cfg.gamma, cfg.gae_lambda,
            )  # fmt: skip
        terms = a3g_loss(logits, values, ro.actions, adv, returns, cfg.ent_coef, cfg.vf_coef)
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
        metrics["steps"] = float(self.cfg.rollout_steps)
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


@contextlib.contextmanager
def _single_thread_children() -> Iterator[None]:
    """Spawned children inherit the environment: give each worker one OpenMP/MKL thread from its
    first import of torch (Hogwild workers on shared cores must not spin extra threads)."""
    keys = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(dict.fromkeys(keys, "1"))
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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

    Sends ``("episode", rank, record)`` and ``("update", rank, metrics)`` messages, then
    ``("exit", rank, steps)``; a failure is reported as ``("error", rank, summary, traceback)``.
    """
    # The terminal's Ctrl-C reaches the whole process group; the main process decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
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
        env = MarioVectorEnv(env_cfg, num_envs=1, workers=1, seed=seed)
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
            counters[rank] += cfg.rollout_steps
            for ep in episodes:
                ep["step"] = base_step + sum(counters)
                messages.put(("episode", rank, ep))
            messages.put(("update", rank, metrics))
    except NonFiniteError as e:
        messages.put(("nonfinite", rank, str(e)))
    except BaseException as e:
        summary = one_line(e)
        messages.put(("error", rank, summary, traceback.format_exc()))
    finally:
        if worker is not None:
            worker.close()
        messages.put(("exit", rank, int(counters[rank])))


# -- the main process's side ---------------------------------------------------------------------
class A3G:
    """The shared model, its optimizer, the worker processes and the checkpoint state.

    Typical use (``training.train_a3g``)::

        a3g = A3G(cfg, env_cfg)
        a3g.load_state_dict(tensors, meta)      # resume (before start)
        a3g.start()
        while a3g.global_step < cfg.total_steps and a3g.alive():
            for msg in a3g.poll(0.5): ...       # ("episode"|"update"|"error"|"exit", rank, ...)
        a3g.stop()
    """

    def __init__(self, cfg: A3GConfig, env_cfg: EnvConfig) -> None:
        cfg.validate()
        env_cfg.validate()
        self.cfg = cfg
        self.env_cfg = env_cfg
        self.obs_shape = (env_cfg.frame_stack, env_cfg.size, env_cfg.size)
        self.n_actions = len(action_meanings(env_cfg.actions))
        self.assignments, self.curriculum_ranks = plan_workers(cfg, env_cfg.stages)
        self.curriculum: Curriculum | None = None
        if cfg.curriculum:
            stages = {
                s for r in self.curriculum_ranks for s in parse_stages(self.assignments[r]).stages
            }
            self.curriculum = Curriculum(
                sorted(stages, key=STAGES.index), cfg.curriculum_floor, cfg.curriculum_decay
            )
        self._ctx = mp.get_context("spawn")
        # Initial weights from the seed, without disturbing the caller's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.model: ActorCritic = build_model(cfg, self.obs_shape, self.n_actions)
        self.model.share_memory()
        self.optimizer = (
            make_optimizer(cfg, self.model.parameters(), shared=True)
            if cfg.shared_optimizer
            else None
        )
        self.counters = self._ctx.Array("q", cfg.workers, lock=False)
        self.stage_weights = self._ctx.Array("d", len(STAGES), lock=False)
        if self.curriculum is not None:
            self.curriculum.publish(self.stage_weights)
        self.messages: Any = None
        self.stop_event: Any = None
        self.procs: list[Any] = []
        self.base_step = 0
        """Steps done before this process started its workers (a resumed run's step)."""
        self.updates = 0
        self.episodes_done = 0

    @property
    def global_step(self) -> int:
        """Agent steps so far, all workers together (exact: each worker counts its own)."""
        return self.base_step + sum(self.counters)

    def spec(self) -> ModelSpec:
        """The model's ModelSpec."""
        return self.model.spec

    def start(self) -> None:
        """Spawn the workers (each with one torch thread)."""
        if self.procs:
            raise RuntimeError("workers already started")
        self.messages = self._ctx.Queue()
        self.stop_event = self._ctx.Event()
        with _single_thread_children():
            for rank in range(self.cfg.workers):
                proc = self._ctx.Process(
                    target=worker_main,
                    args=(
                        rank, self.cfg, self.env_cfg, self.assignments[rank],
                        rank in self.curriculum_ranks, self.model, self.optimizer,
                        self.counters, self.base_step, self.messages, self.stop_event,
                        self.stage_weights, os.getpid(),
                        # A resumed run plays fresh episodes: a stream the run has not used.
                        worker_seed(self.cfg.seed, rank, self.base_step),
                    ),
                    name=f"mario-rl-a3g-{rank}",
                    daemon=True,
                )  # fmt: skip
                proc.start()
                self.procs.append(proc)

    def alive(self) -> int:
        """Worker processes still running."""
        return sum(p.is_alive() for p in self.procs)

    def dead(self) -> list[tuple[int, int]]:
        """(rank, exit code) of workers that died: killed by a signal (exit code -N) or exited
        with an error code without reporting one (a worker that finishes exits 0)."""
        return [
            (rank, p.exitcode)
            for rank, p in enumerate(self.procs)
            if not p.is_alive() and p.exitcode not in (None, 0)
        ]

    def poll(self, timeout: float = 0.0) -> list[tuple]:
        """Messages from the workers: waits up to ``timeout`` for the first, then drains."""
        out: list[tuple] = []
        if self.messages is None:
            return out
        try:
            out.append(
                self.messages.get(timeout=timeout) if timeout > 0 else self.messages.get_nowait()
            )
        except (queue.Empty, EOFError, OSError):
            return out
        while True:
            try:
                out.append(self.messages.get_nowait())
            except (queue.Empty, EOFError, OSError):
                return out

    def record(self, messages: Sequence[tuple]) -> None:
        """Fold worker messages into the counters and the curriculum (call with every batch)."""
        for msg in messages:
            if msg[0] == "update":
                self.updates += 1
            elif msg[0] == "episode":
                self.episodes_done += 1
                # An episode begun from a saved progress state says little about the stage.
                if self.curriculum is not None and not msg[2].get("restored"):
                    ep = msg[2]
                    self.curriculum.record(str(ep.get("start_stage", "")), bool(ep.get("flag")))
        if self.curriculum is not None:
            self.curriculum.publish(self.stage_weights)

    def stop(self, timeout_s: float = 30.0) -> list[tuple]:
        """Ask the workers to stop after their update, wait for them; returns the last messages."""
        out: list[tuple] = []
        if self.stop_event is not None:
            self.stop_event.set()
        deadline = time.monotonic() + timeout_s
        # Drain while waiting: a worker with queued messages cannot exit until they are read.
        while self.alive() and time.monotonic() < deadline:
            out += self.poll(0.1)
        for p in self.procs:
            if p.is_alive():
                p.terminate()
            p.join(2.0)
        out += self.poll()
        if self.messages is not None:
            self.messages.cancel_join_thread()
            self.messages.close()
            self.messages = None
        self.procs = []
        self.record(out)
        return out

    # -- checkpoint state --------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Shared weights and (shared) optimizer state as flat tensors + a JSON-able dict.

        Taken while workers run, the copy may mix two updates of some parameters (Hogwild);
        each tensor is a contiguous private copy.
        """
        tensors = prefixed(self.model.state_dict(), "model.")
        opt_meta = None
        if self.optimizer is not None:
            opt_tensors, opt_meta = optimizer_state_tensors(self.optimizer, "optim.")
            tensors |= opt_tensors
        meta = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "algo": "a3g",
            "config": self.cfg.to_dict(),
            "model_spec": self.model.spec.to_dict(),
            "global_step": self.global_step,
            "updates": self.updates,
            "episodes_done": self.episodes_done,
            "optimizer": opt_meta,
            "curriculum": self.curriculum.state() if self.curriculum is not None else None,
        }
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output in place (the tensors stay in shared memory).

        Refuses another trainer's checkpoint or another architecture / action set. Optimizer
        state is restored when both the checkpoint and this run have a shared optimizer. A
        checkpoint that does not fit (missing or unexpected tensors, wrong shapes, a malformed
        meta.json) is a one-line ValueError, never a traceback: its JSON is untrusted input.
        """
        try:
            self._restore(tensors, meta)
        except RESTORE_ERRORS as e:
            raise misfit_error("A3G", e) from None

    def _restore(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"not an A3G trainer checkpoint (format {meta.get('format')!r},"
                f" expected {CHECKPOINT_FORMAT!r})"
            )
        self.model.spec.check_compatible(ModelSpec.from_dict(meta["model_spec"]))
        # load_state_dict copies into the existing (shared-memory) parameters.
        self.model.load_state_dict(strip_prefix(tensors, "model."))
        if self.optimizer is not None and meta.get("optimizer") is not None:
            load_optimizer_state(self.optimizer, tensors, meta["optimizer"])
        if self.curriculum is not None and meta.get("curriculum"):
            self.curriculum.load_state(meta["curriculum"])
            self.curriculum.publish(self.stage_weights)
        self.base_step = int(meta["global_step"]) - sum(self.counters)
        self.updates = int(meta.get("updates", 0))
        self.episodes_done = int(meta.get("episodes_done", 0))
