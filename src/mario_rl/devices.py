"""Torch devices and threads: checking, before any file is written, that the requested devices
exist here, which one an A3G worker uses, torch's intra-op thread count, and the arithmetic a
learner's precision setting means on this hardware."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

__all__ = [
    "check_device",
    "check_devices",
    "device_of",
    "learn_dtype",
    "native_bf16",
    "set_threads",
    "torch_threads",
]


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


def set_threads(n: int) -> None:
    """Use ``n`` torch intra-op threads in the calling OS thread from now on (0 = leave as is)."""
    # torch's thread count is per OS thread under OpenMP: set it in the collector thread itself.
    if n:
        torch.set_num_threads(n)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(device: str) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CPU with AMX or AVX512-BF16 (Linux), or a
    CUDA GPU that supports it. Elsewhere bf16 is emulated and slower than float32."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev.type == "cpu":
        return bool(_cpu_flags() & {"amx_bf16", "avx512_bf16"})
    return False


def learn_dtype(precision: str, device: str) -> torch.dtype | None:
    """The autocast dtype of a learner with ``precision`` ('fp32', 'bf16' or 'auto') on
    ``device``; None means plain float32."""
    if precision == "bf16" or (precision == "auto" and native_bf16(device)):
        return torch.bfloat16
    return None
