"""A run's checkpoints directory: periodic ``ckpt-<step>`` (the last K kept), ``best`` and ``final``,
when each is written, which one a resume starts from, and tidying up after a crash.

The file format itself is :mod:`mario_rl.io.checkpoint`'s job.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mario_rl.io import files
from mario_rl.io.checkpoint import promote_checkpoint, read_meta, save_checkpoint
from mario_rl.io.checkpoint_checks import (
    CHECKPOINTS_SUBDIR,
    META_FILE,
    WEIGHTS_FILE,
    CheckpointError,
)
from mario_rl.run.logger import scalar

__all__ = [
    "CheckpointSchedule",
    "clean_checkpoint_dir",
    "flag_rate_then_mean_x",
    "keep_last",
    "latest_checkpoint",
    "list_periodic",
    "periodic_name",
]

_PERIODIC_RE = re.compile(r"^ckpt-(\d+)$")


def periodic_name(step: int) -> str:
    """Directory name of the periodic checkpoint at ``step`` (zero-padded so names sort)."""
    return f"ckpt-{step:012d}"


def _checkpoints_dir(run_or_ckpt_dir: Path) -> Path:
    sub = run_or_ckpt_dir / CHECKPOINTS_SUBDIR
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
        files.remove_dir_atomically(p)
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
        files.fsync_dir(d)
    return actions


def flag_rate_then_mean_x(metrics: Mapping[str, Any]) -> tuple[float, float] | None:
    """Default "best" key: flag (clear) rate first, mean x as tie-break; None if unusable."""
    rate = metrics.get("flag_rate", metrics.get("clear_rate"))
    x = metrics.get("mean_x")
    rate, x = scalar(rate), scalar(x)
    if rate is None or x is None or not (math.isfinite(rate) and math.isfinite(x)):
        return None
    return (rate, x)


def stages_then_flag_rate(metrics: Mapping[str, Any]) -> tuple[float, float, float] | None:
    """Default "best" key: stages cleared (``stages_cleared``, 0 where an evaluation does not
    count them) first, then :func:`flag_rate_then_mean_x`. On one stage it orders checkpoints
    as the flag rate does; over many it keeps the checkpoint that clears the most stages, not
    one with more flags spread over stages it does not clear."""
    base = flag_rate_then_mean_x(metrics)
    if base is None:
        return None
    cleared = scalar(metrics.get("stages_cleared", 0))
    return (cleared if cleared is not None and math.isfinite(cleared) else 0.0, *base)


def _jsonable(obj: Any) -> Any:
    """A strict-JSON copy of evaluation results (numpy/tensor scalars to numbers, NaN to None)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, bool | str | int):
        return obj
    v = scalar(obj)
    if v is None:
        return str(obj)
    return v if math.isfinite(v) else None


class CheckpointSchedule:
    """When and where to checkpoint: periodic ``ckpt-<step>`` every ``every`` steps (the last
    ``keep`` kept), ``final`` at the end, and ``best`` by ``best_key`` of evaluation results.

    ``best_key(metrics)`` returns a tuple compared lexicographically (higher is better) or None
    for results that cannot rank. On resume the best score is read back from ``best/meta.json``.
    """

    def __init__(
        self,
        checkpoints_dir: str | os.PathLike[str],
        every: int,
        keep: int = 3,
        *,
        start_step: int = 0,
        best_key: Callable[[Mapping[str, Any]], tuple[float, ...] | None] = stages_then_flag_rate,
    ) -> None:
        if every < 1:
            raise ValueError(f"checkpoint interval must be >= 1 step, got {every}")
        if keep < 1:
            raise ValueError(f"keep must be >= 1 periodic checkpoint, got {keep}")
        self.dir = Path(checkpoints_dir)
        self.every = every
        self.keep = keep
        self.best_key = best_key
        self._next = (start_step // every + 1) * every
        self.latest: Path | None = None
        self.best_score: tuple[float, ...] | None = None
        best = self.dir / "best"
        if best.is_dir():
            with contextlib.suppress(CheckpointError):
                record = read_meta(best).get("best", {})
                # Scored again by this key: a best kept under an older key stays comparable.
                metrics = record.get("metrics")
                score = self.best_key(metrics) if isinstance(metrics, Mapping) else None
                if score is not None:
                    self.best_score = tuple(float(v) for v in score)
                elif isinstance(s := record.get("score"), list) and all(
                    isinstance(v, int | float) for v in s
                ):
                    self.best_score = tuple(float(v) for v in s)

    @property
    def best_path(self) -> Path:
        return self.dir / "best"

    @property
    def final_path(self) -> Path:
        return self.dir / "final"

    def due(self, step: int) -> bool:
        """True once ``step`` reaches the next multiple of ``every``."""
        return step >= self._next

    def save(self, step: int, tensors: Mapping[str, Any], meta: Mapping[str, Any]) -> Path:
        """Write the periodic checkpoint for ``step`` now and apply retention."""
        path = save_checkpoint(self.dir / periodic_name(step), tensors, {**meta, "step": int(step)})
        keep_last(self.dir, self.keep)
        self._next = (step // self.every + 1) * self.every
        self.latest = path
        return path

    def maybe_save(
        self, step: int, make_state: Callable[[], tuple[Mapping[str, Any], Mapping[str, Any]]]
    ) -> Path | None:
        """If due, call ``make_state() -> (tensors, meta)`` and save; return the path or None."""
        if not self.due(step):
            return None
        tensors, meta = make_state()
        return self.save(step, tensors, meta)

    def save_final(self, step: int, tensors: Mapping[str, Any], meta: Mapping[str, Any]) -> Path:
        """Write (or atomically replace) ``final``."""
        return save_checkpoint(self.final_path, tensors, {**meta, "step": int(step)})

    def consider_best(
        self, checkpoint: str | os.PathLike[str], metrics: Mapping[str, Any], step: int
    ) -> bool:
        """Make ``checkpoint`` the new ``best`` if its score beats the best so far."""
        score = self.best_key(metrics)
        if score is None or (self.best_score is not None and tuple(score) <= self.best_score):
            return False
        record = {
            "score": list(score),
            "step": int(step),
            "source": Path(checkpoint).name,
            "metrics": _jsonable(metrics),
        }
        promote_checkpoint(checkpoint, self.best_path, {"best": record})
        self.best_score = tuple(float(v) for v in score)
        return True
