"""Checking, before any file is written, that a requested torch device exists on this machine."""

from __future__ import annotations

import torch

__all__ = ["check_device"]


def check_device(device: str) -> None:
    """ValueError (one line) unless ``device`` names a torch device that exists here.

    Called before a run directory is made, so that ``--device cuda:7`` on a machine without
    that GPU is refused as bad input instead of failing after files were written."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(
            f"--device {device!r} is not a torch device; use cpu, cuda, cuda:<index> or mps"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {device}: CUDA is not available on this machine; use --device cpu"
            )
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ValueError(
                f"--device {device}: GPU {dev.index} does not exist; this machine has {n} "
                f"(cuda:0 … cuda:{n - 1})"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"--device {device}: MPS is not available on this machine; use --device cpu"
        )
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {device}: unsupported device type; use cpu, cuda[:i] or mps")
