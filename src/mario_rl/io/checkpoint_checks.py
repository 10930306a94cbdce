"""Checks on everything read from a checkpoint directory, and the one-line errors they raise.

A checkpoint's files are untrusted input. This module names what a checkpoint directory holds
(the format that :mod:`mario_rl.io.checkpoint` reads and writes), resolves the path a user gave
(refusing pickles, zips and ``.pt`` files by suffix and by their first bytes), validates
``meta.json``, the weights' size and sha256 and the declared tensors, and builds the one-line
error a trainer raises for a checkpoint whose contents do not fit it. Every problem is a
:class:`CheckpointError` (a ``ValueError``) saying what is wrong and what would be right.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "CHECKPOINTS_SUBDIR",
    "FORMAT",
    "FORMAT_VERSION",
    "META_FILE",
    "RECORD_KEY",
    "RESERVED_META_KEYS",
    "RESTORE_ERRORS",
    "WEIGHTS_FILE",
    "CheckpointError",
    "check_tensors",
    "dtype_name",
    "find_non_json",
    "misfit_error",
    "read_meta",
    "read_weights_bytes",
    "resolve_dir",
    "sniff_refused",
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


def find_non_json(obj: Any, where: str = "meta") -> str | None:
    """Describe the first value strict JSON cannot hold exactly, or None."""
    if obj is None or isinstance(obj, bool | str):
        return None
    if isinstance(obj, int):
        return None
    if isinstance(obj, float):
        return None if math.isfinite(obj) else f"{where} is {obj!r} (not finite)"
    if isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            found = find_non_json(v, f"{where}[{i}]")
            if found:
                return found
        return None
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, str):
                return f"{where} has a non-string key {k!r}"
            found = find_non_json(v, f"{where}.{k}")
            if found:
                return found
        return None
    return f"{where} is a {type(obj).__name__}"


def dtype_name(t: torch.Tensor) -> str:
    """A tensor's dtype as meta.json declares it (``float32``)."""
    return str(t.dtype).removeprefix("torch.")


def sniff_refused(head: bytes) -> str | None:
    """What a file's first bytes say it is when that is a pickle or a zip, else None."""
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (the torch.save format)"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "a pickle"
    return None


def _read_refusing_pickles(path: Path, why: str) -> bytes:
    """The bytes of ``path``, unless they are a pickle or a zip (refused: ``why``)."""
    data = path.read_bytes()
    kind = sniff_refused(data[:8])
    if kind:
        raise CheckpointError(f"refusing {path}: it is {kind}, {why}")
    return data


def resolve_dir(path: Path) -> Path:
    """The checkpoint directory a user's path names (the directory, or a file inside it)."""
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
            kind = sniff_refused(f.read(8))
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
    ckpt = resolve_dir(Path(path))
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
    raw = _read_refusing_pickles(meta_path, "not JSON; meta.json must be a JSON object")
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


def read_weights_bytes(ckpt: Path, meta: Mapping[str, Any]) -> bytes:
    """The bytes of ``weights.safetensors``, checked against the size and sha256 in meta.json."""
    wpath = ckpt / WEIGHTS_FILE
    if not wpath.is_file():
        raise CheckpointError(
            f"{ckpt} is not a checkpoint: missing {WEIGHTS_FILE} next to {META_FILE}"
        )
    data = _read_refusing_pickles(wpath, "not safetensors; loading pickles can run arbitrary code")
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


def check_tensors(ckpt: Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """The loaded tensors are exactly those meta.json declares, with their dtypes and shapes."""
    declared: dict[str, dict[str, Any]] = meta[RECORD_KEY]["tensors"]
    extra = sorted(set(tensors) - set(declared))
    missing = sorted(set(declared) - set(tensors))
    if extra or missing:
        parts = []
        if missing:
            parts.append(f"declared but missing: {short_list(missing)}")
        if extra:
            parts.append(f"present but not declared: {short_list(extra)}")
        raise CheckpointError(
            f"{ckpt}: tensors do not match meta.json ({'; '.join(parts)}); the two files belong to different checkpoints"
        )
    for name, spec in declared.items():
        t = tensors[name]
        if dtype_name(t) != spec["dtype"] or list(t.shape) != spec["shape"]:
            raise CheckpointError(
                f"{ckpt}: tensor {name!r} is {dtype_name(t)}{list(t.shape)} but meta.json declares "
                f"{spec['dtype']}{spec['shape']}; the checkpoint is inconsistent, use another one"
            )


def short_list(names: list[str], n: int = 5) -> str:
    """The first ``n`` names, and how many more."""
    shown = ", ".join(names[:n])
    return shown + (f" (+{len(names) - n} more)" if len(names) > n else "")


RESTORE_ERRORS = (KeyError, TypeError, IndexError, AttributeError, RuntimeError)
"""What restoring a trainer from an ill-fitting checkpoint raises (its JSON is untrusted)."""


def misfit_error(trainer: str, e: BaseException) -> ValueError:
    """The one-line error for a checkpoint whose contents do not fit ``trainer``."""
    why = " ".join(f"{type(e).__name__}: {e}".split())[:300]
    return ValueError(
        f"checkpoint does not fit this {trainer} trainer ({why}); "
        "use a checkpoint saved by a run with the same settings"
    )
