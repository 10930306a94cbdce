"""The checkpoint format: save and load training state safely (safetensors + JSON, no pickle).

A checkpoint is a **directory** holding exactly two files::

    <name>/weights.safetensors   flat dict[str, Tensor]: weights, optimizer tensors, RNG states
    <name>/meta.json             the caller's JSON (config, model spec, counters; an integer
                                 "step" is required) plus save_checkpoint's own record under
                                 "checkpoint": format, format_version, the dtype/shape of every
                                 tensor, and the size and sha256 of weights.safetensors

Where checkpoints live inside a run (``ckpt-<step>``, ``best``, ``final``) and which are kept is
:mod:`mario_rl.run.checkpoints`' job; turning nested state into tensors + JSON is
:mod:`mario_rl.io.state_codec`'s; the checks on what is read, and their errors, are
:mod:`mario_rl.io.checkpoint_checks`'.

Guarantees:

* Loading never executes code: nothing is unpickled, ``torch.load`` is never called, pickle /
  ``.pt`` / ``.pth`` / zip files are refused by their suffix and by their first bytes, and no
  path stored in ``meta.json`` is ever used to open a file.
* Saving is atomic: both files are written to a hidden temporary directory next to the target,
  fsynced, then moved into place with one rename (or one atomic exchange when the target
  already exists, e.g. ``best``), and the parent directory is fsynced. A crash or SIGKILL at
  any moment leaves either the old or the new checkpoint, never a mix of both.
* Every load is validated; each problem raises :class:`CheckpointError` (a ``ValueError``)
  with a one-line message saying what is wrong and what would be right.

``torch`` is imported lazily so that processes which only move checkpoints around (the
evaluation child, the run-directory helpers) start fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mario_rl.io import files
from mario_rl.io.checkpoint_checks import (
    FORMAT,
    FORMAT_VERSION,
    META_FILE,
    RECORD_KEY,
    RESERVED_META_KEYS,
    WEIGHTS_FILE,
    CheckpointError,
    check_tensors,
    dtype_name,
    find_non_json,
    read_meta,
    read_weights_bytes,
    resolve_dir,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np
    import torch

# With the names above from checkpoint_checks, for the callers that read checkpoints.
__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "load_checkpoint",
    "policy_weights",
    "prefixed",
    "promote_checkpoint",
    "read_meta",
    "save_checkpoint",
    "snapshot_checkpoint",
    "strip_prefix",
]


def _looks_like_checkpoint_dir(path: Path) -> bool:
    names = {p.name for p in path.iterdir()}
    return not names or names <= {WEIGHTS_FILE, META_FILE}


def _install_dir(tmp: Path, dst: Path) -> None:
    """Move the finished directory ``tmp`` to ``dst`` atomically, replacing a previous one."""
    if dst.exists() or dst.is_symlink():
        if dst.is_symlink() or not dst.is_dir() or not _looks_like_checkpoint_dir(dst):
            raise CheckpointError(
                f"refusing to overwrite {dst}: it is not a checkpoint directory; "
                "choose another path or remove it yourself"
            )
        if files.exchange(tmp, dst):
            # tmp now holds the previous checkpoint.
            files.fsync_dir(dst.parent)
            shutil.rmtree(tmp, ignore_errors=True)
            return
        # Fallback without an atomic swap: between the two renames only ".<name>.old-*"
        # exists; clean_checkpoint_dir() moves it back after a crash.
        old = files.hidden_sibling(dst, "old")
        os.rename(dst, old)
        os.rename(tmp, dst)
        files.fsync_dir(dst.parent)
        shutil.rmtree(old, ignore_errors=True)
        return
    os.rename(tmp, dst)
    files.fsync_dir(dst.parent)


def _write_dir(dst: Path, fill: Callable[[Path], None]) -> Path:
    """Make the checkpoint directory ``dst`` atomically: ``fill`` writes the files into a hidden
    temporary sibling, which is fsynced and then moved into place."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = files.hidden_sibling(dst, "tmp")
    tmp.mkdir()
    try:
        fill(tmp)
        files.fsync_dir(tmp)
        _install_dir(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def _serialize(
    tensors: Mapping[str, torch.Tensor | np.ndarray],
) -> tuple[bytes, dict[str, dict[str, Any]]]:
    """safetensors bytes plus the name -> {dtype, shape} declarations for meta.json."""
    import numpy as np

    torch = sys.modules.get("torch")  # only needed if the caller already uses torch
    for name, t in tensors.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"tensor names must be non-empty strings, got {name!r}")
        if not (isinstance(t, np.ndarray) or (torch is not None and isinstance(t, torch.Tensor))):
            raise ValueError(
                f"tensor {name!r} is a {type(t).__name__}, expected a torch.Tensor or numpy array"
            )
    if torch is not None and any(isinstance(t, torch.Tensor) for t in tensors.values()):
        import safetensors.torch

        # safetensors refuses tensors that share storage (tied weights, shared-memory
        # optimizer state), so every tensor gets its own contiguous CPU copy.
        prepared = {
            n: t.detach().to("cpu", copy=True).contiguous()
            if isinstance(t, torch.Tensor)
            else torch.from_numpy(np.array(t, copy=True, order="C"))
            for n, t in tensors.items()
        }
        data = safetensors.torch.save(prepared)
        specs = {n: {"dtype": dtype_name(t), "shape": list(t.shape)} for n, t in prepared.items()}
    else:
        import safetensors.numpy

        arrays = {n: np.ascontiguousarray(t) for n, t in tensors.items()}
        data = safetensors.numpy.save(arrays)
        specs = {n: {"dtype": a.dtype.name, "shape": list(a.shape)} for n, a in arrays.items()}
    return data, dict(sorted(specs.items()))


def save_checkpoint(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor | np.ndarray],
    meta: Mapping[str, Any],
) -> Path:
    """Write a checkpoint directory at ``path`` atomically and return its path.

    ``tensors`` are torch tensors (any device; saved as CPU copies) or numpy arrays; loading
    always gives torch tensors.

    ``meta`` must be strict-JSON (finite floats, string keys) and hold an integer ``step``.
    The record ``meta["checkpoint"]`` (format, version, tensor declarations, size and sha256
    of the weights) is added here. An existing checkpoint at ``path`` is replaced atomically;
    anything else there is refused.
    """
    path = Path(path)
    if "step" not in meta or isinstance(meta["step"], bool) or not isinstance(meta["step"], int):
        raise ValueError(
            "checkpoint meta needs an integer 'step' (the training step it was taken at)"
        )
    clash = RESERVED_META_KEYS & set(meta)
    if clash:
        raise ValueError(
            f"checkpoint meta may not set reserved keys {sorted(clash)}; they are written by save_checkpoint"
        )
    problem = find_non_json(dict(meta))
    if problem:
        raise ValueError(
            f"checkpoint meta must be strict JSON: {problem}; convert it (e.g. None for 'no value yet')"
        )

    data, specs = _serialize(tensors)
    full_meta = {
        **meta,
        RECORD_KEY: {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "weights_bytes": len(data),
            "weights_sha256": hashlib.sha256(data).hexdigest(),
            "tensors": specs,
        },
    }
    meta_bytes = (json.dumps(full_meta, indent=1, allow_nan=False) + "\n").encode()

    def fill(tmp: Path) -> None:
        files.write_file_synced(tmp / WEIGHTS_FILE, data)
        files.write_file_synced(tmp / META_FILE, meta_bytes)

    return _write_dir(path, fill)


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load and validate the checkpoint directory at ``path``; return ``(tensors, meta)``.

    ``meta`` is the whole ``meta.json``: the caller's keys plus the ``"checkpoint"`` record. Raises
    :class:`CheckpointError` for every kind of unusable input; never unpickles anything.
    """
    import safetensors.torch

    ckpt = resolve_dir(Path(path))
    meta = read_meta(ckpt)
    data = read_weights_bytes(ckpt, meta)
    try:
        tensors = safetensors.torch.load(data)
    except Exception as e:  # safetensors raises its own error types for malformed input
        raise CheckpointError(
            f"{ckpt / WEIGHTS_FILE} is not a valid safetensors file ({e}); use another checkpoint"
        ) from None

    check_tensors(ckpt, tensors, meta)
    return tensors, meta


def snapshot_checkpoint(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Make ``dst`` an immutable copy of checkpoint ``src`` (hard links where possible).

    Used to hand a checkpoint to another process without retention deleting it meanwhile.
    """
    return promote_checkpoint(src, dst, None, verify=False)


def promote_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    extra_meta: Mapping[str, Any] | None = None,
    *,
    verify: bool = True,
) -> Path:
    """Atomically make ``dst`` (e.g. ``checkpoints/best``) a copy of checkpoint ``src``.

    ``extra_meta`` keys are merged into the copy's meta.json (e.g. the evaluation results that
    made it the best). With ``verify`` the source's weights are checked against its sha256.
    """
    src_dir = resolve_dir(Path(src))
    dst = Path(dst)
    meta = read_meta(src_dir)
    if verify:
        read_weights_bytes(src_dir, meta)
    if extra_meta:
        clash = RESERVED_META_KEYS & set(extra_meta)
        if clash:
            raise ValueError(f"extra_meta may not set reserved keys {sorted(clash)}")
        problem = find_non_json(dict(extra_meta), "extra_meta")
        if problem:
            raise ValueError(f"extra_meta must be strict JSON: {problem}")
        meta = {**meta, **extra_meta}

    def fill(tmp: Path) -> None:
        files.link_or_copy(src_dir / WEIGHTS_FILE, tmp / WEIGHTS_FILE)
        if extra_meta:
            files.write_file_synced(
                tmp / META_FILE, (json.dumps(meta, indent=1, allow_nan=False) + "\n").encode()
            )
        else:
            files.link_or_copy(src_dir / META_FILE, tmp / META_FILE)

    return _write_dir(dst, fill)


def prefixed(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """``{prefix + name: private contiguous copy}``, e.g. ``prefixed(model.state_dict(), "model.")``.

    Copies, because the live tensors keep changing after the state is taken (and safetensors
    refuses non-contiguous ones)."""
    return {f"{prefix}{k}": v.detach().contiguous().clone() for k, v in tensors.items()}


def strip_prefix(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose names start with ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def policy_weights(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The network a checkpoint plays with: its weight average (``ema.``, a run trained with
    ``--ema-decay``) where it has one, else the trained weights (``model.``); prefix removed.
    Training resumes from ``model.``; evaluation, export, teachers and ``--init-from`` use this."""
    ema = strip_prefix(tensors, "ema.")
    return ema if ema else strip_prefix(tensors, "model.")
