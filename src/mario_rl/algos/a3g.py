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
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.multiprocessing as mp
from torch import Tensor

from mario_rl.algos.a3g_stages import plan_workers, publish_weights
from mario_rl.algos.a3g_worker import EpisodeMsg, ExitMsg, UpdateMsg, WorkerMessage, worker_main
from mario_rl.algos.shared_optim import make_optimizer
from mario_rl.config.a3g import A3GConfig
from mario_rl.envs import EnvConfig, action_meanings
from mario_rl.envs.stages import STAGES, parse_stages
from mario_rl.io.checkpoint import prefixed, strip_prefix
from mario_rl.io.checkpoint_checks import RESTORE_ERRORS, misfit_error
from mario_rl.io.state_codec import load_optimizer_state, optimizer_state_tensors
from mario_rl.models import ActorCritic, ModelSpec, build_model
from mario_rl.rl.curriculum import Curriculum
from mario_rl.seeding import worker_seed

CHECKPOINT_FORMAT = "mario-rl/a3g-trainer"
CHECKPOINT_VERSION = 1

HANG_TIMEOUT_S = 120.0
"""A running worker that sends no message for this long is taken as hung (an env stuck in a step):
the run stops. Its updates take well under a second, so this is far above any healthy gap."""
START_TIMEOUT_S = 600.0
"""The same limit before a worker's first message: spawning it, its imports and its first update
can take tens of seconds on a busy machine (more with many workers on few cores)."""


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


class A3G:
    """The shared model, its optimizer, the worker processes and the checkpoint state.

    Typical use (``training.train_a3g``)::

        a3g = A3G(cfg, env_cfg)
        a3g.load_state_dict(tensors, meta)      # resume (before start)
        a3g.start()
        while a3g.global_step < cfg.total_steps and a3g.alive():
            a3g.record(msgs := a3g.poll(0.5))    # WorkerMessage: EpisodeMsg, UpdateMsg, ...
            if a3g.dead() or a3g.hung(): ...     # killed, or silent too long: stop the run
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
                sorted(stages, key=STAGES.index),
                cfg.curriculum_floor,
                cfg.curriculum_decay,
                cfg.curriculum_frontier,
                cfg.curriculum_master,
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
            publish_weights(self.curriculum, self.stage_weights)
        self.messages: Any = None
        self.stop_event: Any = None
        self.procs: list[Any] = []
        self.base_step = 0
        """Steps done before this process started its workers (a resumed run's step)."""
        self.updates = 0
        self.episodes_done = 0
        # Hang detection (read when the workers start; tests lower them).
        self.hang_timeout_s = HANG_TIMEOUT_S
        self.start_timeout_s = START_TIMEOUT_S
        self.started_at = 0.0
        self.last_heard: list[float | None] = [None] * cfg.workers
        """time.monotonic() of each rank's last message as this process received it."""
        self.finished: set[int] = set()
        """Ranks that sent their ExitMsg."""

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
        self.started_at = time.monotonic()
        self.last_heard = [None] * self.cfg.workers
        self.finished = set()
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

    def hung(self, now: float | None = None) -> list[tuple[int, float, bool]]:
        """(rank, seconds, heard before) of running workers silent for too long: no message for
        ``hang_timeout_s`` since their last one, or for ``start_timeout_s`` since :meth:`start`
        when they have sent none yet. Call after folding the latest poll into :meth:`record`."""
        now = time.monotonic() if now is None else now
        out = []
        for rank, p in enumerate(self.procs):
            if rank in self.finished or not p.is_alive():
                continue
            last = self.last_heard[rank]
            since, limit = (
                (self.started_at, self.start_timeout_s)
                if last is None
                else (last, self.hang_timeout_s)
            )
            if now - since >= limit:
                out.append((rank, now - since, last is not None))
        return out

    def terminate(self, ranks: Sequence[int]) -> None:
        """End these workers now (SIGTERM, then SIGKILL): a hung one never sees the stop event."""
        for rank in ranks:
            p = self.procs[rank]
            if p.is_alive():
                p.terminate()
                p.join(2.0)
            if p.is_alive():
                p.kill()
                p.join(2.0)

    def poll(self, timeout: float = 0.0) -> list[WorkerMessage]:
        """Messages from the workers: waits up to ``timeout`` for the first, then drains."""
        out: list[WorkerMessage] = []
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

    def record(self, messages: Sequence[WorkerMessage]) -> None:
        """Fold worker messages into the counters, the curriculum and each rank's last-heard
        time (call with every batch)."""
        now = time.monotonic()
        for msg in messages:
            if 0 <= msg.rank < len(self.last_heard):
                self.last_heard[msg.rank] = now
            if isinstance(msg, ExitMsg):
                self.finished.add(msg.rank)
            if isinstance(msg, UpdateMsg):
                self.updates += 1
            elif isinstance(msg, EpisodeMsg):
                self.episodes_done += 1
                # An episode begun from a saved progress state says little about the stage.
                if self.curriculum is not None and not msg.record.get("restored"):
                    ep = msg.record
                    self.curriculum.record(str(ep.get("start_stage", "")), bool(ep.get("flag")))
        if self.curriculum is not None:
            publish_weights(self.curriculum, self.stage_weights)

    def stop(self, timeout_s: float = 30.0) -> list[WorkerMessage]:
        """Ask the workers to stop after their update, wait for them; returns the last messages."""
        out: list[WorkerMessage] = []
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
            publish_weights(self.curriculum, self.stage_weights)
        self.base_step = int(meta["global_step"]) - sum(self.counters)
        self.updates = int(meta.get("updates", 0))
        self.episodes_done = int(meta.get("episodes_done", 0))
