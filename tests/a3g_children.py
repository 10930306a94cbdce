"""Targets of the processes that test_a3g spawns, in a module that imports little (a spawned
child imports the module of its target; the test module itself pulls in the whole CLI)."""

from __future__ import annotations

from typing import Any

import torch


def hogwild_steps(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, n: int, value: float,
    wait_for: Any, done: Any,
) -> None:  # fmt: skip
    """``n`` steps of the shared optimizer with every gradient equal to ``value``; waits for
    ``wait_for`` first (when given) and sets ``done`` at the end."""
    torch.set_num_threads(1)
    if wait_for is not None:
        wait_for.wait(600)
    for p in model.parameters():
        p.grad = torch.full_like(p, value)
    for _ in range(n):
        optimizer.step()
    done.set()
