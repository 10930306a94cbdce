"""A3G worker entry points with an injected fault, for the fault tests (test_reliability, test_a3g).

A3G spawns its workers with ``target=worker_main`` looked up in ``mario_rl.algos.a3g`` when
``start()`` runs; a test swaps in one of these (spawn pickles them by reference, so they live in
a module the child can import). Each wraps the real ``worker_main`` after arming its fault in
the child. The fault fires on worker 0 only, once the run directory named by
``$MARIO_RL_TEST_ARM_AFTER`` holds a periodic checkpoint (so a good checkpoint exists first).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import torch

from mario_rl.algos import a3g_worker as a3g


def _armed() -> bool:
    run = os.environ.get("MARIO_RL_TEST_ARM_AFTER")
    return run is None or any(Path(run, "checkpoints").glob("ckpt-*"))


def _patch_update(rank: int, fault) -> None:
    real = a3g.Worker.update

    def update(self: a3g.Worker) -> Any:
        if rank == 0 and _armed():
            fault(self)
        return real(self)

    a3g.Worker.update = update  # type: ignore[method-assign]


def _raise(worker: a3g.Worker) -> None:
    raise RuntimeError("injected worker fault")


def _die(worker: a3g.Worker) -> None:
    # What the kernel's OOM killer does: no message, no exception, no clean-up.
    os.kill(os.getpid(), signal.SIGKILL)


def _hang(worker: a3g.Worker) -> None:
    # An env stuck inside a step (a deadlocked emulator, a blocking call): no message, no exit.
    def step(*a: Any, **k: Any) -> Any:
        while True:
            time.sleep(3600)

    worker.env.step = step


def raising_worker_main(rank: int, *args: Any) -> None:
    """worker_main whose worker 0 raises RuntimeError in an update."""
    _patch_update(rank, _raise)
    a3g.worker_main(rank, *args)


def dying_worker_main(rank: int, *args: Any) -> None:
    """worker_main whose worker 0 is SIGKILLed in an update (no error message sent)."""
    _patch_update(rank, _die)
    a3g.worker_main(rank, *args)


def hanging_worker_main(rank: int, *args: Any) -> None:
    """worker_main whose worker 0's env hangs in a step (forever, sending nothing)."""
    _patch_update(rank, _hang)
    a3g.worker_main(rank, *args)


def nan_worker_main(rank: int, *args: Any) -> None:
    """worker_main whose worker 0 computes a NaN loss (the real learn() must catch it)."""
    real_loss = a3g.a3g_loss

    def loss(*a: Any, **k: Any) -> dict[str, torch.Tensor]:
        terms = real_loss(*a, **k)
        if rank == 0 and _armed():
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    a3g.a3g_loss = loss
    a3g.worker_main(rank, *args)
