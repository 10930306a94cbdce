"""The checkpoint format: save and load training state safely (safetensors + JSON, no pickle).

A checkpoint is a **directory** holding exactly two files::

    <name>/weights.safetensors   flat dict[str, Tensor]: weights, optimizer tensors, RNG states
    <name>/meta.json             the caller's JSON (config, model spec, counters; an integer
                                 "step" is required) plus save_checkpoint's own record under
                                 "checkpoint": format, format_version, the dtype/shape of every
                                 tensor, and the size and sha256 of weights.safetensors

Where checkpoints live inside a run (``ckpt-<step>``, ``best``, ``final``) and which are kept is
:mod:`mario_rl.run.checkpoints`' job; turning nested state into tensors + JSON is
:mod:`mario_rl.io.state_codec`'s.

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
import math
import os
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mario_rl.io import files

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "META_FILE",
    "RECORD_KEY",
    "RESERVED_META_KEYS",
    "RESTORE_ERRORS",
    "WEIGHTS_FILE",
    "CheckpointError",
    "load_checkpoint",
    "misfit_error",
    "prefixed",
    "promote_checkpoint",
    "read_meta",
    "save_checkpoint",
    "snapshot_checkpoint",
    "strip_prefix",
]

FORMAT = "mario-rl-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
META_FILE = "meta.json"
# save_checkpoint's own record in meta.json, under one key so that callers keep every other
# name (including "format" / "version" of their own state formats).
RECORD_KEY = "checkpoint"
RESERVED_META_KEYS = frozenset({RECORD_KEY})
_REQUIRED_RECORD_KEYS = ("format", "format_version", "tensors", "weights_bytes", "weights_sha256")

_REFUSED_SUFFIXES = frozenset({".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".tar", ".zip"})
_MAX_META_BYTES = 64 * 1024 * 1024
# A run keeps its checkpoints in this subdirectory (see mario_rl.run.checkpoints).
CHECKPOINTS_SUBDIR = "checkpoints"
_PERIODIC_RE = re.compile(r"^ckpt-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message says what is wrong and what would be right."""


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


# --------------------------------------------------------------------------------------------
# JSON helpers
# --------------------------------------------------------------------------------------------


def _find_non_json(obj: Any, where: str = "meta") -> str | None:
    """Describe the first value strict JSON cannot hold exactly, or None."""
    if obj is None or isinstance(obj, bool | str):
        return None
    if isinstance(obj, int):
        return None
    if isinstance(obj, float):
        return None if math.isfinite(obj) else f"{where} is {obj!r} (not finite)"
    if isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            found = _find_non_json(v, f"{where}[{i}]")
            if found:
                return found
        return None
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, str):
                return f"{where} has a non-string key {k!r}"
            found = _find_non_json(v, f"{where}.{k}")
            if found:
                return found
        return None
    return f"{where} is a {type(obj).__name__}"


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


# --------------------------------------------------------------------------------------------
# save / load
# --------------------------------------------------------------------------------------------


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
        specs = {n: {"dtype": _dtype_name(t), "shape": list(t.shape)} for n, t in prepared.items()}
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
    problem = _find_non_json(dict(meta))
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

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = files.hidden_sibling(path, "tmp")
    tmp.mkdir()
    try:
        files.write_file_synced(tmp / WEIGHTS_FILE, data)
        files.write_file_synced(tmp / META_FILE, meta_bytes)
        files.fsync_dir(tmp)
        _install_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _sniff_refused(head: bytes) -> str | None:
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (the torch.save format)"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "a pickle"
    return None


def _resolve_dir(path: Path) -> Path:
    if not path.exists():
        hint = ""
        if path.parent.is_dir():
            leftovers = sorted(p.name for p in path.parent.glob(f".{path.name}.old-*"))
            if leftovers:
                hint = f" (an interrupted save left {leftovers[0]}; clean_checkpoint_dir() restores it)"
        raise CheckpointError(
            f"checkpoint {path} does not exist{hint}; pass a checkpoint directory containing "
            f"{WEIGHTS_FILE} and {META_FILE}, e.g. runs/<run>/checkpoints/best"
        )
    if path.is_file():
        if path.name in (WEIGHTS_FILE, META_FILE):
            return path.parent
        with open(path, "rb") as f:
            kind = _sniff_refused(f.read(8))
        if kind or path.suffix.lower() in _REFUSED_SUFFIXES:
            what = kind or f"a {path.suffix} file"
            raise CheckpointError(
                f"refusing to load {path}: it is {what}, and loading pickles can run arbitrary code; "
                f"only checkpoint directories ({WEIGHTS_FILE} + {META_FILE}) are accepted"
            )
        raise CheckpointError(
            f"{path} is a file, not a checkpoint; pass a directory containing {WEIGHTS_FILE} and {META_FILE}"
        )
    if not path.is_dir():
        raise CheckpointError(
            f"{path} is neither a file nor a directory; pass a checkpoint directory"
        )
    return path


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate only ``meta.json`` of the checkpoint at ``path`` (cheap, no tensors)."""
    ckpt = _resolve_dir(Path(path))
    meta_path = ckpt / META_FILE
    if not meta_path.is_file():
        hint = ""
        if (ckpt / CHECKPOINTS_SUBDIR).is_dir() or any(
            _PERIODIC_RE.match(p.name) for p in ckpt.iterdir()
        ):
            hint = " (it looks like a run or checkpoints directory; latest_checkpoint() picks one inside it)"
        missing = [n for n in (WEIGHTS_FILE, META_FILE) if not (ckpt / n).is_file()]
        raise CheckpointError(
            f"{ckpt} is not a checkpoint: missing {' and '.join(missing)}{hint}; "
            f"a checkpoint directory holds {WEIGHTS_FILE} and {META_FILE}"
        )
    size = meta_path.stat().st_size
    if size > _MAX_META_BYTES:
        raise CheckpointError(
            f"{meta_path} is {size} bytes; a meta.json larger than {_MAX_META_BYTES} bytes is refused"
        )
    raw = meta_path.read_bytes()
    kind = _sniff_refused(raw[:8])
    if kind:
        raise CheckpointError(
            f"refusing {meta_path}: it is {kind}, not JSON; meta.json must be a JSON object"
        )
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(
            f"{meta_path} is not valid JSON ({e}); the checkpoint is corrupt, use another one"
        ) from None
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"{meta_path} holds a JSON {type(meta).__name__}; it must be a JSON object"
        )
    rec = meta.get(RECORD_KEY)
    if not isinstance(rec, dict) or rec.get("format") != FORMAT:
        raise CheckpointError(
            f"{meta_path} has no '{RECORD_KEY}' record of format {FORMAT!r}; "
            "it was not written by save_checkpoint, use a checkpoint saved by mario-rl"
        )
    version = rec.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        why = (
            "a newer mario-rl wrote it; upgrade this one"
            if newer
            else "re-save it with this version"
        )
        raise CheckpointError(
            f"{meta_path} has format_version {version!r}, this code reads {FORMAT_VERSION}; {why}"
        )
    missing = [f"{RECORD_KEY}.{k}" for k in _REQUIRED_RECORD_KEYS if k not in rec]
    missing += ["step"] if "step" not in meta else []
    if missing:
        raise CheckpointError(
            f"{meta_path} lacks required keys {missing}; the checkpoint is incomplete, use another one"
        )
    if not isinstance(rec["weights_bytes"], int) or not isinstance(rec["weights_sha256"], str):
        raise CheckpointError(
            f"{meta_path}: weights_bytes must be an integer and weights_sha256 a hex string"
        )
    spec = rec["tensors"]
    if not isinstance(spec, dict) or not all(
        isinstance(v, dict)
        and isinstance(v.get("dtype"), str)
        and isinstance(v.get("shape"), list)
        and all(isinstance(d, int) and d >= 0 for d in v["shape"])
        for v in spec.values()
    ):
        raise CheckpointError(
            f"{meta_path}: '{RECORD_KEY}.tensors' must map each name to {{'dtype': str, 'shape': [int, ...]}}"
        )
    if not isinstance(meta["step"], int) or isinstance(meta["step"], bool):
        raise CheckpointError(f"{meta_path}: 'step' is {meta['step']!r}; it must be an integer")
    return meta


def _read_weights_bytes(ckpt: Path, meta: Mapping[str, Any]) -> bytes:
    wpath = ckpt / WEIGHTS_FILE
    if not wpath.is_file():
        raise CheckpointError(
            f"{ckpt} is not a checkpoint: missing {WEIGHTS_FILE} next to {META_FILE}"
        )
    data = wpath.read_bytes()
    kind = _sniff_refused(data[:8])
    if kind:
        raise CheckpointError(
            f"refusing {wpath}: it is {kind}, not safetensors; loading pickles can run arbitrary code"
        )
    rec = meta[RECORD_KEY]
    if len(data) != rec["weights_bytes"]:
        raise CheckpointError(
            f"{wpath} is {len(data)} bytes but meta.json records {rec['weights_bytes']}; "
            "the file is truncated or from another checkpoint, use another checkpoint"
        )
    if hashlib.sha256(data).hexdigest() != rec["weights_sha256"]:
        raise CheckpointError(
            f"{wpath} does not match the sha256 in meta.json; it is corrupt or from another checkpoint, use another one"
        )
    return data


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load and validate the checkpoint directory at ``path``; return ``(tensors, meta)``.

    ``meta`` is the whole ``meta.json``: the caller's keys plus the ``"checkpoint"`` record. Raises
    :class:`CheckpointError` for every kind of unusable input; never unpickles anything.
    """
    import safetensors.torch

    ckpt = _resolve_dir(Path(path))
    meta = read_meta(ckpt)
    data = _read_weights_bytes(ckpt, meta)
    try:
        tensors = safetensors.torch.load(data)
    except Exception as e:  # safetensors raises its own error types for malformed input
        raise CheckpointError(
            f"{ckpt / WEIGHTS_FILE} is not a valid safetensors file ({e}); use another checkpoint"
        ) from None

    declared: dict[str, dict[str, Any]] = meta[RECORD_KEY]["tensors"]
    extra = sorted(set(tensors) - set(declared))
    missing = sorted(set(declared) - set(tensors))
    if extra or missing:
        parts = []
        if missing:
            parts.append(f"declared but missing: {_short_list(missing)}")
        if extra:
            parts.append(f"present but not declared: {_short_list(extra)}")
        raise CheckpointError(
            f"{ckpt}: tensors do not match meta.json ({'; '.join(parts)}); the two files belong to different checkpoints"
        )
    for name, spec in declared.items():
        t = tensors[name]
        if _dtype_name(t) != spec["dtype"] or list(t.shape) != spec["shape"]:
            raise CheckpointError(
                f"{ckpt}: tensor {name!r} is {_dtype_name(t)}{list(t.shape)} but meta.json declares "
                f"{spec['dtype']}{spec['shape']}; the checkpoint is inconsistent, use another one"
            )
    return tensors, meta


def _short_list(names: list[str], n: int = 5) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" (+{len(names) - n} more)" if len(names) > n else "")


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
    src_dir = _resolve_dir(Path(src))
    dst = Path(dst)
    meta = read_meta(src_dir)
    if verify:
        _read_weights_bytes(src_dir, meta)
    if extra_meta:
        clash = RESERVED_META_KEYS & set(extra_meta)
        if clash:
            raise ValueError(f"extra_meta may not set reserved keys {sorted(clash)}")
        problem = _find_non_json(dict(extra_meta), "extra_meta")
        if problem:
            raise ValueError(f"extra_meta must be strict JSON: {problem}")
        meta = {**meta, **extra_meta}
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = files.hidden_sibling(dst, "tmp")
    tmp.mkdir()
    try:
        files.link_or_copy(src_dir / WEIGHTS_FILE, tmp / WEIGHTS_FILE)
        if extra_meta:
            files.write_file_synced(
                tmp / META_FILE, (json.dumps(meta, indent=1, allow_nan=False) + "\n").encode()
            )
        else:
            files.link_or_copy(src_dir / META_FILE, tmp / META_FILE)
        files.fsync_dir(tmp)
        _install_dir(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def prefixed(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """``{prefix + name: private contiguous copy}``, e.g. ``prefixed(model.state_dict(), "model.")``.

    Copies, because the live tensors keep changing after the state is taken (and safetensors
    refuses non-contiguous ones)."""
    return {f"{prefix}{k}": v.detach().contiguous().clone() for k, v in tensors.items()}


def strip_prefix(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose names start with ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


RESTORE_ERRORS = (KeyError, TypeError, IndexError, AttributeError, RuntimeError)
"""What restoring a trainer from an ill-fitting checkpoint raises (its JSON is untrusted)."""


def misfit_error(trainer: str, e: BaseException) -> ValueError:
    """The one-line error for a checkpoint whose contents do not fit ``trainer``."""
    why = " ".join(f"{type(e).__name__}: {e}".split())[:300]
    return ValueError(
        f"checkpoint does not fit this {trainer} trainer ({why}); "
        "use a checkpoint saved by a run with the same settings"
    )
