"""Checkpoints on disk: save and load training state safely (safetensors + JSON, no pickle).

A checkpoint is a **directory** holding exactly two files::

    <name>/weights.safetensors   flat dict[str, Tensor]: weights, optimizer tensors, RNG states
    <name>/meta.json             the caller's JSON (config, model spec, counters; an integer
                                 "step" is required) plus save_checkpoint's own record under
                                 "checkpoint": format, format_version, the dtype/shape of every
                                 tensor, and the size and sha256 of weights.safetensors

Inside a run, checkpoints live in ``<run>/checkpoints/``: periodic ones are named
``ckpt-<step>`` (the last K are kept, see :func:`keep_last`), plus ``best`` and ``final``.

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

import ctypes
import errno
import hashlib
import json
import math
import os
import random
import re
import secrets
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "META_FILE",
    "RECORD_KEY",
    "RESERVED_META_KEYS",
    "WEIGHTS_FILE",
    "CheckpointError",
    "capture_rng_state",
    "check_compatible",
    "clean_checkpoint_dir",
    "flatten_state",
    "keep_last",
    "latest_checkpoint",
    "list_periodic",
    "load_checkpoint",
    "load_optimizer_state",
    "optimizer_state_tensors",
    "periodic_name",
    "prefixed",
    "promote_checkpoint",
    "read_meta",
    "restore_rng_state",
    "save_checkpoint",
    "snapshot_checkpoint",
    "strip_prefix",
    "unflatten_state",
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

_PERIODIC_RE = re.compile(r"^ckpt-(\d+)$")
_REFUSED_SUFFIXES = frozenset({".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".tar", ".zip"})
_MAX_META_BYTES = 64 * 1024 * 1024
_CHECKPOINTS_SUBDIR = "checkpoints"


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message says what is wrong and what would be right."""


# --------------------------------------------------------------------------------------------
# small filesystem helpers
# --------------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    # A rename is only durable once the directory entry itself reaches the disk.
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _write_file_synced(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _hidden_sibling(path: Path, kind: str) -> Path:
    # Dot-prefixed so that listings (latest_checkpoint, keep_last) never mistake it for a
    # checkpoint; pid + random token so concurrent writers never collide.
    return path.parent / f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the platform cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


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
        if _exchange(tmp, dst):
            # tmp now holds the previous checkpoint.
            _fsync_dir(dst.parent)
            shutil.rmtree(tmp, ignore_errors=True)
            return
        # Fallback without an atomic swap: between the two renames only ".<name>.old-*"
        # exists; clean_checkpoint_dir() moves it back after a crash.
        old = _hidden_sibling(dst, "old")
        os.rename(dst, old)
        os.rename(tmp, dst)
        _fsync_dir(dst.parent)
        shutil.rmtree(old, ignore_errors=True)
        return
    os.rename(tmp, dst)
    _fsync_dir(dst.parent)


def _remove_dir_atomically(path: Path) -> None:
    # Rename first so a crash half-way through rmtree never leaves a half-deleted directory
    # under a checkpoint name.
    trash = _hidden_sibling(path, "trash")
    os.rename(path, trash)
    _fsync_dir(path.parent)
    shutil.rmtree(trash, ignore_errors=True)


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
    tmp = _hidden_sibling(path, "tmp")
    tmp.mkdir()
    try:
        _write_file_synced(tmp / WEIGHTS_FILE, data)
        _write_file_synced(tmp / META_FILE, meta_bytes)
        _fsync_dir(tmp)
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
        if (ckpt / _CHECKPOINTS_SUBDIR).is_dir() or list_periodic(ckpt):
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


def check_compatible(meta: Mapping[str, Any], expected_model_spec: Mapping[str, Any]) -> None:
    """Refuse a checkpoint whose ``meta["model_spec"]`` differs from ``expected_model_spec``.

    The model spec is whatever dict the trainer stores to describe the network's interface
    (architecture name, action set, number of actions, observation shape, ...). Tuples and
    lists compare equal, since JSON has only lists.
    """
    got = meta.get("model_spec")
    if not isinstance(got, dict):
        raise CheckpointError(
            "checkpoint meta has no 'model_spec' object, so it cannot be checked against this model; "
            "use a checkpoint saved by this project's trainer"
        )
    want = json.loads(json.dumps(dict(expected_model_spec)))  # tuples -> lists, as stored
    diffs = []
    for key in sorted(set(got) | set(want)):
        if key not in got:
            diffs.append(f"{key} missing in the checkpoint (expected {want[key]!r})")
        elif key not in want:
            diffs.append(f"{key}={got[key]!r} in the checkpoint is unknown here")
        elif got[key] != want[key]:
            diffs.append(f"{key} is {got[key]!r} in the checkpoint but {want[key]!r} here")
    if diffs:
        raise CheckpointError(
            "checkpoint was made for a different model: "
            + "; ".join(diffs)
            + " — use a checkpoint trained with the same settings, or change the settings to match it"
        )


# --------------------------------------------------------------------------------------------
# checkpoint directories: listing, retention, copies
# --------------------------------------------------------------------------------------------


def periodic_name(step: int) -> str:
    """Directory name of the periodic checkpoint at ``step`` (zero-padded so names sort)."""
    return f"ckpt-{step:012d}"


def _checkpoints_dir(run_or_ckpt_dir: Path) -> Path:
    sub = run_or_ckpt_dir / _CHECKPOINTS_SUBDIR
    return sub if sub.is_dir() else run_or_ckpt_dir


def list_periodic(run_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """``(step, path)`` of the periodic checkpoints in a run or checkpoints directory, oldest first."""
    d = _checkpoints_dir(Path(run_dir))
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _PERIODIC_RE.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def _meta_step(path: Path) -> int | None:
    try:
        return int(read_meta(path)["step"])
    except CheckpointError:
        return None


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint to resume from: highest step among ``ckpt-*`` and ``final``.

    Accepts a run directory or its ``checkpoints/`` directory. Candidates whose meta.json is
    unreadable are skipped (the full sha256 check happens in :func:`load_checkpoint`).
    ``best`` is never returned: resuming from it would rewind training.
    """
    d = _checkpoints_dir(Path(run_dir))
    candidates: list[tuple[int, int, Path]] = []
    for step, p in list_periodic(d):
        candidates.append((step, 0, p))
    final = d / "final"
    if final.is_dir():
        step = _meta_step(final)
        if step is not None:
            candidates.append((step, 1, final))  # on a tie, final is the later write
    for _, _, p in sorted(candidates, reverse=True):
        if (p / WEIGHTS_FILE).is_file() and _meta_step(p) is not None:
            return p
    return None


def keep_last(run_dir: str | os.PathLike[str], k: int) -> list[Path]:
    """Delete all but the newest ``k`` periodic checkpoints; return what was removed.

    ``best``, ``final`` and anything not named ``ckpt-<step>`` are never touched.
    """
    if k < 0:
        raise ValueError(f"keep_last needs k >= 0, got {k}")
    periodic = list_periodic(run_dir)
    doomed = [p for _, p in periodic[: max(len(periodic) - k, 0)]]
    for p in doomed:
        _remove_dir_atomically(p)
    return doomed


def clean_checkpoint_dir(run_dir: str | os.PathLike[str]) -> list[str]:
    """Tidy up after a crash; return a description of each action taken.

    Restores a checkpoint an interrupted non-atomic replace left as ``.<name>.old-*`` and
    removes leftover temporary, trash and evaluation-snapshot directories. Only call it when
    no other process is saving into this directory (e.g. when a run resumes).
    """
    d = _checkpoints_dir(Path(run_dir))
    if not d.is_dir():
        return []
    actions = []
    for p in sorted(d.iterdir()):
        m = re.match(r"^\.(.+)\.(tmp|old|trash)-\d+-[0-9a-f]+$", p.name)
        if not m:
            continue
        target = d / m.group(1)
        if m.group(2) == "old" and not target.exists() and (p / META_FILE).is_file():
            os.rename(p, target)
            actions.append(f"restored {target.name} from {p.name}")
        else:
            shutil.rmtree(p, ignore_errors=True)
            actions.append(f"removed {p.name}")
    snapshots = d / ".eval"
    if snapshots.is_dir():
        shutil.rmtree(snapshots, ignore_errors=True)
        actions.append("removed .eval snapshots")
    if actions:
        _fsync_dir(d)
    return actions


def _link_or_copy(src: Path, dst: Path) -> None:
    # Checkpoint files are never modified in place, so a hard link is a free, safe copy.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
        with open(dst, "rb+") as f:
            os.fsync(f.fileno())


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
    tmp = _hidden_sibling(dst, "tmp")
    tmp.mkdir()
    try:
        _link_or_copy(src_dir / WEIGHTS_FILE, tmp / WEIGHTS_FILE)
        if extra_meta:
            _write_file_synced(
                tmp / META_FILE, (json.dumps(meta, indent=1, allow_nan=False) + "\n").encode()
            )
        else:
            _link_or_copy(src_dir / META_FILE, tmp / META_FILE)
        _fsync_dir(tmp)
        _install_dir(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


# --------------------------------------------------------------------------------------------
# nested state <-> (tensors, JSON)
# --------------------------------------------------------------------------------------------

_MAX_EXACT_JSON_INT = 2**53  # larger ints lose precision in many JSON readers


def flatten_state(obj: Any, prefix: str) -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested state (dicts, lists, tuples, numbers, tensors) into tensors + JSON, exactly.

    Tensors go into the returned dict under names starting with ``prefix``; the JSON side keeps
    the structure, with tags for what plain JSON would lose (tuples, non-string keys,
    non-finite floats, huge ints, numpy arrays). :func:`unflatten_state` inverts it.
    """
    import numpy as np
    import torch

    tensors: dict[str, torch.Tensor] = {}

    def name_for(path: str) -> str:
        name = f"{prefix}{path}"
        n = 1
        while name in tensors:
            n += 1
            name = f"{prefix}{path}#{n}"
        return name

    def enc(x: Any, path: str) -> Any:
        if isinstance(x, torch.Tensor):
            name = name_for(path)
            tensors[name] = x
            return {"__tensor__": name}
        if isinstance(x, np.ndarray):
            # Stored widened to int64/float64 where torch lacks the dtype, restored exactly.
            name = name_for(path)
            wide = x.astype(np.int64) if x.dtype.kind in "ui" and x.dtype.itemsize <= 4 else x
            tensors[name] = torch.from_numpy(np.ascontiguousarray(wide).copy())
            return {"__ndarray__": [name, x.dtype.str]}
        if isinstance(x, np.generic):
            x = x.item()
        if x is None or isinstance(x, bool | str):
            return x
        if isinstance(x, int):
            return {"__int__": str(x)} if abs(x) >= _MAX_EXACT_JSON_INT else x
        if isinstance(x, float):
            return x if math.isfinite(x) else {"__float__": repr(x)}
        if isinstance(x, tuple):
            return {"__tuple__": [enc(v, f"{path}.{i}") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [enc(v, f"{path}.{i}") for i, v in enumerate(x)]
        if isinstance(x, Mapping):
            if all(isinstance(k, str) and not k.startswith("__") for k in x):
                return {k: enc(v, f"{path}.{k}" if path else k) for k, v in x.items()}
            return {
                "__dict__": [
                    [enc(k, f"{path}.key"), enc(v, f"{path}.{k}" if path else str(k))]
                    for k, v in x.items()
                ]
            }
        raise TypeError(f"cannot store a {type(x).__name__} at {prefix}{path} in a checkpoint")

    return tensors, enc(obj, "")


def unflatten_state(spec: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Rebuild the object :func:`flatten_state` split; raises CheckpointError on bad references."""
    import numpy as np

    def dec(x: Any) -> Any:
        if isinstance(x, list):
            return [dec(v) for v in x]
        if isinstance(x, dict):
            if len(x) == 1:
                ((tag, val),) = x.items()
                if tag == "__tensor__":
                    if not isinstance(val, str) or val not in tensors:
                        raise CheckpointError(
                            f"state refers to tensor {val!r}, which the checkpoint does not hold"
                        )
                    return tensors[val]
                if tag == "__ndarray__":
                    name, dtype = val
                    return dec({"__tensor__": name}).numpy().astype(np.dtype(dtype))
                if tag == "__tuple__":
                    return tuple(dec(v) for v in val)
                if tag == "__float__":
                    return float(val)
                if tag == "__int__":
                    return int(val)
                if tag == "__dict__":
                    return {dec(k): dec(v) for k, v in val}
            return {k: dec(v) for k, v in x.items()}
        return x

    return dec(spec)


def prefixed(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """``{prefix + name: tensor}``, e.g. ``prefixed(model.state_dict(), "model/")``."""
    return {f"{prefix}{k}": v for k, v in tensors.items()}


def strip_prefix(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose names start with ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def optimizer_state_tensors(
    optimizer: torch.optim.Optimizer, prefix: str = "optim/"
) -> tuple[dict[str, torch.Tensor], Any]:
    """Flatten ``optimizer.state_dict()`` (Adam, RMSprop, shared-memory variants) to tensors + JSON.

    The tensors are contiguous copies: the live state keeps changing with later steps, and
    state of channels-last parameters is not contiguous (safetensors refuses that).
    """
    tensors, spec = flatten_state(optimizer.state_dict(), prefix)
    return {k: v.detach().contiguous().clone() for k, v in tensors.items()}, spec


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], spec: Any
) -> None:
    """Restore an optimizer from what :func:`optimizer_state_tensors` produced.

    State tensors are copied in place where the optimizer already holds state of the same
    shape, which keeps shared-memory state (A3G's shared optimizers) shared across processes.
    """
    import torch

    state_dict = unflatten_state(spec, tensors)
    if (
        not isinstance(state_dict, dict)
        or "param_groups" not in state_dict
        or "state" not in state_dict
    ):
        raise CheckpointError(
            "optimizer state in the checkpoint is malformed; expected 'state' and 'param_groups'"
        )
    shared = _shared_state_tensors(optimizer)
    try:
        optimizer.load_state_dict(state_dict)
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(
            f"optimizer state does not fit this optimizer ({e}); was it saved for another model?"
        ) from None
    if shared:
        # load_state_dict replaced the tensors; put the values back into the shared ones.
        with torch.no_grad():
            for (param, key), old in shared.items():
                new = optimizer.state[param][key]
                if isinstance(new, torch.Tensor) and new.shape == old.shape:
                    old.copy_(new.to(old.dtype))
                    optimizer.state[param][key] = old


def _shared_state_tensors(optimizer: torch.optim.Optimizer) -> dict[tuple[Any, str], torch.Tensor]:
    import torch

    out = {}
    for param, st in optimizer.state.items():
        for key, v in st.items():
            if isinstance(v, torch.Tensor) and v.is_shared():
                out[(param, key)] = v
    return out


# --------------------------------------------------------------------------------------------
# RNG states
# --------------------------------------------------------------------------------------------


def capture_rng_state(
    prefix: str = "rng/",
    generators: Mapping[str, np.random.Generator | torch.Generator] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Capture python ``random``, numpy's global RNG, torch (CPU and CUDA) and named generators.

    Returns tensors (names under ``prefix``) and a JSON-safe spec for the meta;
    :func:`restore_rng_state` puts everything back so the run continues bit-identically.
    """
    import numpy as np
    import torch

    tensors: dict[str, torch.Tensor] = {}
    version, internal, gauss_next = random.getstate()
    tensors[f"{prefix}python"] = torch.tensor(internal, dtype=torch.int64)
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state(legacy=True)
    tensors[f"{prefix}numpy"] = torch.from_numpy(np.asarray(np_keys, dtype=np.int64).copy())
    tensors[f"{prefix}torch"] = torch.get_rng_state()
    n_cuda = 0
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"{prefix}cuda.{i}"] = s
        n_cuda = torch.cuda.device_count()
    spec: dict[str, Any] = {
        "python": {"version": version, "gauss_next": gauss_next},
        "numpy": {
            "name": np_name,
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
        "cuda_devices": n_cuda,
        "generators": {},
    }
    for gname, gen in (generators or {}).items():
        if isinstance(gen, torch.Generator):
            tensors[f"{prefix}gen.{gname}"] = gen.get_state()
            spec["generators"][gname] = {"kind": "torch"}
        else:
            g_tensors, g_spec = flatten_state(gen.bit_generator.state, f"{prefix}gen.{gname}.")
            tensors.update(g_tensors)
            spec["generators"][gname] = {"kind": "numpy", "state": g_spec}
    return tensors, spec


def restore_rng_state(
    tensors: Mapping[str, torch.Tensor],
    spec: Mapping[str, Any],
    prefix: str = "rng/",
    generators: Mapping[str, np.random.Generator | torch.Generator] | None = None,
) -> None:
    """Put back what :func:`capture_rng_state` captured (generators are matched by name)."""
    import numpy as np
    import torch

    def need(name: str) -> torch.Tensor:
        if name not in tensors:
            raise CheckpointError(
                f"checkpoint lacks RNG tensor {name!r}; it was saved without RNG state"
            )
        return tensors[name]

    try:
        py = spec["python"]
        internal = tuple(int(v) for v in need(f"{prefix}python").tolist())
        gauss = py["gauss_next"]
        random.setstate((py["version"], internal, gauss))
        npspec = spec["numpy"]
        keys = need(f"{prefix}numpy").numpy().astype(np.uint32)
        np.random.set_state(
            (npspec["name"], keys, npspec["pos"], npspec["has_gauss"], npspec["cached_gaussian"])
        )
        torch.set_rng_state(need(f"{prefix}torch").to(torch.uint8))
        n_cuda = int(spec.get("cuda_devices", 0))
        if n_cuda and torch.cuda.is_available():
            states = [
                need(f"{prefix}cuda.{i}") for i in range(min(n_cuda, torch.cuda.device_count()))
            ]
            torch.cuda.set_rng_state_all(states)
        for gname, gen in (generators or {}).items():
            gspec = spec["generators"].get(gname)
            if gspec is None:
                raise CheckpointError(f"checkpoint holds no state for RNG generator {gname!r}")
            if isinstance(gen, torch.Generator):
                gen.set_state(need(f"{prefix}gen.{gname}").to(torch.uint8))
            else:
                gen.bit_generator.state = unflatten_state(gspec["state"], tensors)
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(
            f"RNG state in the checkpoint is malformed ({e!r}); it cannot be restored"
        ) from None


RESTORE_ERRORS = (KeyError, TypeError, IndexError, AttributeError, RuntimeError)
"""What restoring a trainer from an ill-fitting checkpoint raises (its JSON is untrusted)."""


def misfit_error(trainer: str, e: BaseException) -> ValueError:
    """The one-line error for a checkpoint whose contents do not fit ``trainer``."""
    why = " ".join(f"{type(e).__name__}: {e}".split())[:300]
    return ValueError(
        f"checkpoint does not fit this {trainer} trainer ({why}); "
        "use a checkpoint saved by a run with the same settings"
    )
