"""Plain PPO for Mario, top to bottom: the trainer, its collect / learn step, its checkpoint state.

* :meth:`PPO.collect` gets the next rollout from the :class:`~mario_rl.algos.collect.Collector`
  (``rollout_steps`` x ``num_envs`` steps into preallocated storage, with everything GAE needs)
  and reports its timings and finished episodes.
* :meth:`PPO.learn` computes GAE and runs ``epochs`` x minibatches of the clipped objective.

Recurrent PPO (``ppo_lstm.py``) and PPO + RND (``ppo_rnd.py``) are small subclasses: they replace
the minibatch sampler and the forward pass, add loss terms, an intrinsic reward and their state;
:func:`mario_rl.algos.ppo_family.make_ppo` picks the class a config names. Numbers that must agree
across data-parallel replicas go through a :class:`~mario_rl.parallel.collective.Collective`.
Checkpointing goes through :meth:`PPO.state_dict` / :meth:`PPO.load_state_dict`: flat tensors
plus a JSON-able dict, nothing pickled.

With ``cfg.curriculum`` (a set of stages), every finished episode is folded into a
:class:`~mario_rl.rl.curriculum.Curriculum` by its start stage and flag, and after each rollout
every env's stage selection is re-weighted by it (``envs.set_stages``), effective at each env's
next reset. Under torchrun each rank keeps its own curriculum over its own envs' episodes; the
checkpoint holds rank 0's, which every rank restores on resume.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mario_rl.algos.collect import Collector
from mario_rl.algos.rollout import Rollout
from mario_rl.algos.teachers import Teachers, teacher_kl
from mario_rl.config.ppo import PPOConfig
from mario_rl.devices import learn_dtype
from mario_rl.envs.stages import STAGES, StageSelection, check_curriculum_stages
from mario_rl.io.checkpoint import prefixed, strip_prefix
from mario_rl.io.checkpoint_checks import RESTORE_ERRORS, misfit_error
from mario_rl.io.state_codec import load_optimizer_state, optimizer_state_tensors
from mario_rl.models import ACOutput, ActorCritic, ModelSpec, build_model
from mario_rl.parallel.collective import LOCAL, Collective
from mario_rl.rl.advantages import gae
from mario_rl.rl.curriculum import Curriculum
from mario_rl.rl.losses import ppo_losses
from mario_rl.rl.stats import episode_metrics, explained_variance, linear_schedule
from mario_rl.seeding import collect_seed, resume_seed

__all__ = ["PPO", "flat"]

CHECKPOINT_FORMAT = "mario-rl/ppo-trainer"
CHECKPOINT_VERSION = 1
# The loss terms every update reports under fixed names; any other term is "losses/<name>".
_REPORTED = {"policy", "value", "entropy", "approx_kl", "old_approx_kl", "clipfrac", "grad_norm"}


def _as_float(x: Any) -> Any:
    """A tensor (or tuple of them, as an LSTM state) in float32; None stays None."""
    if isinstance(x, tuple):
        return tuple(t.float() for t in x)
    return None if x is None else x.float()


def flat(x: Tensor) -> Tensor:
    """(T, N, ...) rollout storage as (T*N, ...) samples, row t*N + n (a view)."""
    return x.reshape(-1, *x.shape[2:])


class PPO:
    """Plain PPO over a vector env (or without one, for speed measurements).

    Typical loop (:mod:`mario_rl.run.loop` runs it through ``training._PPOSteps``)::

        ppo = make_ppo(cfg, envs)                    # PPO, PPOLSTM or PPORND, as cfg.algo says
        while ppo.global_step < cfg.total_steps:
            stats = ppo.collect() | ppo.learn()      # namespaced metric dict for TensorBoard
            for ep in ppo.episodes: ...              # episodes finished in that rollout
        ppo.close()                                  # before envs.close()

    With ``cfg.async_collect`` the next rollout is collected by a background thread (with a
    snapshot of the policy) while learn() runs: one update of policy lag for ~1.3x throughput
    on 2 cores, since the emulator releases the GIL. The caller sets torch's thread count
    (``cfg.torch_threads``) for the process; see :func:`mario_rl.devices.set_threads`.
    """

    algo = "ppo"
    """The ``PPOConfig.algo`` this class trains."""
    rollout_class: type[Rollout] = Rollout

    def __init__(
        self,
        config: PPOConfig,
        envs: Any | None = None,
        *,
        obs_shape: tuple[int, int, int] | None = None,
        n_actions: int | None = None,
        collective: Collective = LOCAL,
    ):
        config.validate()  # a cheap guard for library users; the CLI has validated its job
        if config.algo != self.algo:
            raise ValueError(
                f"{type(self).__name__} trains algo {self.algo!r}, the config says"
                f" {config.algo!r}; make_ppo(config, ...) picks the right trainer"
            )
        self.cfg = cfg = config
        self.device = torch.device(cfg.device)
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
        self.collective: Collective = collective
        """The other replicas under torchrun (updates and batch statistics become global); LOCAL alone."""
        # Minibatch order; the collector has its own streams, so that collection (possibly in
        # another thread) and learning do not interleave draws from one generator.
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.autocast = learn_dtype(cfg.precision, cfg.device)
        """The update's autocast dtype (bfloat16), or None for float32."""

        # Initial weights from the seed, without disturbing the caller's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.model: ActorCritic = build_model(cfg, self.obs_shape, n_actions).to(self.device)
            extra_params = self._init_extras()
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(
            [*self.model.parameters(), *extra_params], lr=cfg.lr, eps=cfg.adam_eps
        )

        self.global_step = 0
        self.update = 0
        self.episodes: list[dict[str, Any]] = []
        self.restored_episodes: list[dict[str, Any]] = []
        """Episodes of the last rollout begun from a saved progress state (not in episodes)."""
        self.episodes_done = 0
        self.rollout = self._new_rollout()
        """The rollout learn() trains on (the latest one collect() returned)."""
        self.collector = Collector(
            cfg, envs, self.model, self._new_rollout, cfg.batch_size * collective.world_size
        )
        self.ema: dict[str, Tensor] | None = None
        """The weight average the run plays with (``cfg.ema_decay``), begun at the first update."""
        self.teachers: Teachers | None = None
        """Kickstarting teachers by stage (``cfg.teachers``, set by the caller: :meth:`set_teachers`)."""
        self.demo_obs: Tensor | None = None
        """Demo observations (N, C, H, W) uint8 to clone (``cfg.demo_bc``; :meth:`set_demos`)."""
        self.demo_actions: Tensor | None = None
        self.curriculum: Curriculum | None = None
        """The stage curriculum (``cfg.curriculum`` with an env), else None."""
        self._stages: StageSelection | None = None
        """The envs' stage selection before the curriculum re-weights it."""
        if cfg.curriculum and envs is not None:
            self._stages = _curriculum_stages(envs)
            self.curriculum = Curriculum(
                self._stages.stages,
                cfg.curriculum_floor,
                cfg.curriculum_decay,
                cfg.curriculum_frontier,
                cfg.curriculum_master,
            )
            self._apply_curriculum()
        if envs is not None:
            self.reset_envs(cfg.seed)
        # Every replica starts from rank 0's weights.
        self.collective.broadcast_tensors(self._replicated_tensors())

    def set_teachers(self, teachers: Teachers | None) -> None:
        """Frozen teachers whose action distributions the update pulls the model toward on
        their stages' samples (:func:`mario_rl.algos.teachers.load_teachers`); None: none."""
        self.teachers = teachers

    def set_demos(self, obs: np.ndarray, actions: np.ndarray) -> None:
        """The (observation, action) pairs of the demos' routes that ``cfg.demo_bc`` clones
        (:func:`mario_rl.envs.demos.demo_pairs`)."""
        self.demo_obs = torch.from_numpy(obs).to(self.device)
        self.demo_actions = torch.from_numpy(actions).long().to(self.device)

    def current_demo_bc(self) -> float:
        """Weight of the demo behaviour-cloning term for the next update."""
        cfg = self.cfg
        if self.demo_obs is None:
            return 0.0
        if cfg.demo_bc_steps:
            return cfg.demo_bc * max(0.0, 1.0 - self.global_step / cfg.demo_bc_steps)
        return cfg.demo_bc

    def _demo_bc_loss(self) -> Tensor:
        """Cross-entropy of the policy against the demos' actions on a random draw of pairs."""
        assert self.demo_obs is not None and self.demo_actions is not None
        j = torch.randint(len(self.demo_obs), (self.cfg.demo_bc_batch,), generator=self.gen)
        j = j.to(self.device)
        if self.autocast is None:
            logits = self.model(self.demo_obs[j]).logits
        else:
            with torch.autocast(self.device.type, dtype=self.autocast):
                logits = self.model(self.demo_obs[j]).logits
        return F.cross_entropy(logits.float(), self.demo_actions[j])

    def current_teacher_coef(self) -> float:
        """Weight of the teachers' KL term for the next update."""
        cfg = self.cfg
        if cfg.teacher_steps:
            return cfg.teacher_coef * max(0.0, 1.0 - self.global_step / cfg.teacher_steps)
        return cfg.teacher_coef

    def _init_extras(self) -> list[nn.Parameter]:
        """What a subclass trains besides the actor-critic, built from the same seeded stream;
        returns its trained parameters (plain PPO: nothing)."""
        return []

    def _new_rollout(self) -> Rollout:
        return self.rollout_class(self.cfg, self.obs_shape, self.device)

    def _replicated_tensors(self) -> list[Tensor]:
        """What must be identical on every replica: the model's weights."""
        return list(self.model.state_dict().values())

    @property
    def envs(self) -> Any | None:
        """The vector env (None without one); assigning another takes effect at the next rollout."""
        return self.collector.envs

    @envs.setter
    def envs(self, envs: Any | None) -> None:
        self.collector.envs = envs

    def reset_envs(self, seed: int | None = None) -> None:
        """Reset every env and the per-env recurrent state (call after swapping in a fresh env)."""
        self.collector.reset(seed)

    def close(self) -> None:
        """Finish any background rollout and stop the collector thread (call before envs.close())."""
        self.collector.close()

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

        Metrics: per-phase seconds (time/env, time/inference, time/storage and, when async,
        time/wait: how long this call blocked), means over the episodes finished in the rollout
        (their raw dicts are in ``self.episodes``) and per-step means of the reward components
        (rewards/<name>).
        """
        if self.envs is None:
            raise RuntimeError("collect() needs an env")
        t0 = time.perf_counter()
        buf = self.rollout = self.collector.collect(self.rollout, self.global_step)
        self.global_step += self.cfg.batch_size * self.collective.world_size
        wait = time.perf_counter() - t0
        # Episodes begun from a saved progress state (EnvConfig.progress_starts) would inflate
        # the stage's flag rate and x: they are counted apart, and not in self.episodes.
        restored = [e for e in buf.episodes if e.get("restored")]
        self.restored_episodes = restored
        self.episodes = [e for e in buf.episodes if not e.get("restored")]
        self.episodes_done += len(buf.episodes)
        metrics = dict(buf.times)
        if self.curriculum is not None:
            metrics |= self._follow_curriculum()
        if self.cfg.async_collect:
            metrics["time/wait"] = wait
        for name, total in buf.components.items():
            metrics[f"rewards/{name}"] = float(total.sum() / self.cfg.batch_size)
        metrics["charts/reward_per_step"] = float(buf.rewards.mean())
        return metrics | episode_metrics(self.episodes, restored)

    def _follow_curriculum(self) -> dict[str, float]:
        """Fold the rollout's episodes into the curriculum (those begun from a saved progress
        state say little about their stage) and re-weight every env's next stage draw; returns
        the normalised weights as ``curriculum/<stage>``."""
        assert self.curriculum is not None
        for ep in self.episodes:
            stage = ep.get("start_stage")
            if isinstance(stage, int) and 0 <= stage < len(STAGES):
                self.curriculum.record(STAGES[stage], bool(ep.get("flag")))
        self._apply_curriculum()
        shares = {f"curriculum/{s}": w for s, w in self.curriculum.shares().items()}
        return shares | {"curriculum/stages_open": float(self.curriculum.opened)}

    def _apply_curriculum(self) -> None:
        """Point every env's next reset at the curriculum's current weights."""
        assert self.curriculum is not None and self._stages is not None and self.envs is not None
        selection = self._stages.with_weights(self.curriculum.weights())
        self.envs.set_stages(range(self.cfg.num_envs), selection)

    # -- learn -----------------------------------------------------------------------------------
    def compute_advantages(self) -> None:
        """GAE over ``self.rollout`` into its ``advantages`` / ``returns``."""
        cfg, buf = self.cfg, self.rollout
        buf.advantages, buf.returns = gae(
            buf.rewards,
            buf.values,
            buf.next_values,
            buf.terminations,
            buf.dones,
            cfg.gamma,
            cfg.gae_lambda,
        )

    def learn(self) -> dict[str, float]:
        """One PPO update (epochs x minibatches) on ``self.rollout``; returns namespaced metrics."""
        cfg, buf = self.cfg, self.rollout
        t_start = time.perf_counter()
        self.compute_advantages()
        lr, ent_coef = self.current_lr(), self.current_ent_coef()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        params = self.optimizer.param_groups[0]["params"]
        b_actions, b_logprobs = flat(buf.actions), flat(buf.logprobs)
        b_adv, b_returns = flat(buf.advantages), flat(buf.returns)
        teacher_coef = self.current_teacher_coef() if self.teachers is not None else 0.0
        demo_bc = self.current_demo_bc()
        if teacher_coef > 0:
            assert self.teachers is not None
            t_logp, t_mask = self.teachers.log_probs(
                self._as_nchw(flat(buf.obs_store)), flat(buf.stages).long()
            )

        sums: dict[str, Tensor] = {}
        n_mb = 0
        stop = False
        epochs_done = 0
        for _epoch in range(cfg.epochs):
            for idx in self._minibatches():
                out = self._forward_cast(idx)
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
                loss = self._loss(terms, out, idx, ent_coef)
                if teacher_coef > 0:
                    term, terms["teacher_kl"] = teacher_kl(
                        out.logits.reshape(-1, self.n_actions), t_logp[idx], t_mask[idx]
                    )
                    loss = loss + teacher_coef * term
                if demo_bc > 0:
                    terms["demo_bc"] = self._demo_bc_loss()
                    loss = loss + demo_bc * terms["demo_bc"]

                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                # Before clipping, so that every rank clips the same mean gradient.
                self.collective.average_gradients(params)
                if cfg.max_grad_norm > 0:
                    terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
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
        if cfg.ema_decay > 0:
            self._update_ema()

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
        if self.teachers is not None:
            metrics["charts/teacher_coef"] = teacher_coef
            if teacher_coef > 0:
                metrics["charts/teacher_share"] = float(t_mask.float().mean())
        if self.demo_obs is not None:
            metrics["charts/demo_bc"] = demo_bc
        # The subclasses' own loss terms (the LSTM penalty; RND's predictor and intrinsic value).
        metrics |= {f"losses/{k}": v for k, v in means.items() if k not in _REPORTED}
        return metrics

    @torch.no_grad()
    def _update_ema(self) -> None:
        """Move the weight average toward the weights this update left (ranks agree: their
        weights do)."""
        now = self.model.state_dict()
        if self.ema is None:
            self.ema = {k: v.detach().clone() for k, v in now.items()}
            return
        for k, v in now.items():
            avg = self.ema[k]
            if avg.is_floating_point():
                avg.lerp_(v, 1.0 - self.cfg.ema_decay)
            else:
                avg.copy_(v)

    def _minibatches(self) -> Iterator[Tensor]:
        """One epoch's minibatches: shuffled sample indices into the flattened batch."""
        cfg = self.cfg
        perm = torch.randperm(cfg.batch_size, generator=self.gen)
        for k in range(0, cfg.batch_size, cfg.minibatch_size):
            yield perm[k : k + cfg.minibatch_size]

    def _forward_cast(self, idx: Tensor) -> ACOutput:
        """:meth:`_forward` under the configured autocast; what the losses read is float32."""
        if self.autocast is None:
            return self._forward(idx)
        with torch.autocast(self.device.type, dtype=self.autocast):
            out = self._forward(idx)
        return ACOutput(*(_as_float(part) for part in out))

    def _forward(self, idx: Tensor) -> ACOutput:
        """The policy and values on the samples ``idx``, with gradients."""
        return self.model(self._as_nchw(flat(self.rollout.obs_store)[idx]))

    def _loss(
        self, terms: dict[str, Tensor], out: ACOutput, idx: Tensor, ent_coef: float
    ) -> Tensor:
        """The minibatch's loss from PPO's terms (a subclass adds its own, recorded in ``terms``)."""
        return terms["policy"] - ent_coef * terms["entropy"] + self.cfg.vf_coef * terms["value"]

    def _kl(self, approx_kl: Tensor) -> float:
        # The mean over the ranks, so that every rank stops the update at the same minibatch.
        return self.collective.mean(approx_kl)

    def _as_nchw(self, x: Tensor) -> Tensor:
        """Gathered storage rows -> (B, C, H, W) (a free permute when stored NHWC)."""
        return x.permute(0, 3, 1, 2) if self.cfg.channels_last else x

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

    # -- checkpoint state --------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Whole trainer state as (flat contiguous tensors, JSON-able dict); safetensors-ready.

        With async_collect the per-env carry (env.*) and the collector's generators are taken
        while a rollout is in flight, so they only matter for an exact resume in sync mode.
        """
        tensors = prefixed(self.model.state_dict(), "model.")
        if self.ema is not None:
            tensors |= prefixed(self.ema, "ema.")
        opt_tensors, opt_meta = optimizer_state_tensors(self.optimizer, "optim.")
        tensors |= opt_tensors
        tensors |= self.collector.state_dict()
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
            "optimizer": opt_meta,
            "curriculum": self.curriculum.state() if self.curriculum is not None else None,
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
            self.collector.seed(collect_seed(base))
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
        self.collector.wait()
        self.model.load_state_dict(strip_prefix(tensors, "model."))
        # A leg that turns the average on starts it from the weights it resumes.
        ema = strip_prefix(tensors, "ema.") if self.cfg.ema_decay > 0 else {}
        self.ema = None
        if ema:
            now = self.model.state_dict()
            if set(ema) != set(now) or any(ema[k].shape != v.shape for k, v in now.items()):
                raise RuntimeError("its weight average (ema.*) does not fit the model's weights")
            self.ema = {k: v.clone().to(now[k].dtype) for k, v in ema.items()}
        load_optimizer_state(self.optimizer, tensors, meta["optimizer"])
        self.gen.set_state(tensors["rng.generator"].clone())
        torch.set_rng_state(tensors["rng.torch"].clone())
        self.global_step = int(meta["global_step"])
        self.update = int(meta["update"])
        self.episodes_done = int(meta.get("episodes_done", 0))
        self.collector.load_state_dict(tensors, restore_env_state)
        if self.curriculum is not None and meta.get("curriculum"):
            # Effective at each env's next reset: a resumed run's reset_envs() draws by it.
            self.curriculum.load_state(meta["curriculum"])
            self._apply_curriculum()


def _curriculum_stages(envs: Any) -> StageSelection:
    """The stage selection a curriculum re-weights: the envs' own (all draw from the same one);
    ValueError (one line) for an env whose stages cannot be set or a single stage / the game."""
    if not hasattr(envs, "set_stages") or not hasattr(envs, "stages_of"):
        raise ValueError(
            f"curriculum needs an env whose stage selection can be set ({type(envs).__name__}"
            " has no set_stages/stages_of); use mario_rl.envs.make_vector_env"
        )
    sel = envs.stages_of(0)
    check_curriculum_stages(sel)
    return sel
