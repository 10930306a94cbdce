"""Atomic, durable filesystem primitives: synced writes, hidden siblings, atomic swaps and removals.

Everything a crash-safe writer needs and nothing about what it writes; the checkpoint format
(:mod:`mario_rl.io.checkpoint`) and the run directory (:mod:`mario_rl.run`) build on these.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

__all__ = [
    "exchange",
    "fsync_dir",
    "hidden_sibling",
    "link_or_copy",
    "remove_dir_atomically",
    "write_file_synced",
    "write_json_atomic",
]


def fsync_dir(path: Path) -> None:
    """Flush ``path``'s directory entries to disk."""
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


def write_file_synced(path: Path, data: bytes) -> None:
    """Create ``path`` (it must not exist) holding ``data``, fsynced."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_json_atomic(path: Path, obj: Any) -> None:
    """Replace ``path`` with ``obj`` as indented JSON in one rename (readers see old or new)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, allow_nan=False, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def hidden_sibling(path: Path, kind: str) -> Path:
    """A fresh hidden path next to ``path`` for a temporary, trash or backup copy of it."""
    # Dot-prefixed so that listings (latest_checkpoint, keep_last) never mistake it for a
    # checkpoint; pid + random token so concurrent writers never collide.
    return path.parent / f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
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


def remove_dir_atomically(path: Path) -> None:
    """Delete the directory ``path`` so that its name vanishes in one step."""
    # Rename first so a crash half-way through rmtree never leaves a half-deleted directory
    # under a checkpoint name.
    trash = hidden_sibling(path, "trash")
    os.rename(path, trash)
    fsync_dir(path.parent)
    shutil.rmtree(trash, ignore_errors=True)


def link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` hold ``src``'s bytes: a hard link where possible, else a synced copy."""
    # Checkpoint files are never modified in place, so a hard link is a free, safe copy.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
        with open(dst, "rb+") as f:
            os.fsync(f.fileno())
