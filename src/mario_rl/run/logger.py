"""Training metrics on disk: TensorBoard scalars and ``metrics.jsonl``, written and read back."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mario_rl.run.rundir import RunDir

__all__ = ["METRICS_FILE", "Logger", "read_metrics", "scalar"]

METRICS_FILE = "metrics.jsonl"


def scalar(v: Any) -> float | None:
    """A float from a number / one-element tensor or array, or None for anything else."""
    if isinstance(v, bool | int | float):
        return float(v)
    torch = sys.modules.get("torch")  # a tensor can only exist if torch is already imported
    if torch is not None and isinstance(v, torch.Tensor):
        return float(v.detach().item()) if v.numel() == 1 and not v.is_complex() else None
    np = sys.modules.get("numpy")
    if np is not None and isinstance(v, np.generic | np.ndarray):
        return float(v.item()) if v.size == 1 and v.dtype.kind in "biuf" else None
    return None


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a ``metrics.jsonl`` (or of the run directory holding one); broken lines skipped."""
    p = Path(path)
    if p.is_dir():
        p = p / METRICS_FILE
    rows = []
    if not p.exists():
        return rows
    with open(p) as f:
        for line in f:
            if not line.endswith("\n"):
                break  # a write cut short by a crash
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows.append(row)
    return rows


class Logger:
    """Scalars to TensorBoard (``tb/``) and to ``metrics.jsonl`` (one JSON object per call).

    Tags are namespaced: ``log(step, {"SPS": 900}, prefix="charts")`` writes ``charts/SPS``;
    keys that already contain a ``/`` are used as given. With ``purge_step`` (the step a resumed
    run continues from), TensorBoard hides what the previous process logged at or after it and
    ``metrics.jsonl`` drops those rows, so curves continue without duplicates.
    """

    def __init__(
        self,
        run_dir: RunDir | str | os.PathLike[str],
        *,
        purge_step: int | None = None,
        tensorboard: bool = True,
        flush_secs: int = 30,
    ) -> None:
        if not isinstance(run_dir, str | os.PathLike):  # a RunDir
            tb_dir, self.metrics_path = run_dir.tb, run_dir.metrics_path
        else:
            tb_dir, self.metrics_path = Path(run_dir) / "tb", Path(run_dir) / METRICS_FILE
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        if self.metrics_path.exists():
            self._rewrite_metrics(purge_step)
        self._jsonl: IO[str] | None = open(self.metrics_path, "a")  # noqa: SIM115 - closed in close()
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            tb_dir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(str(tb_dir), purge_step=purge_step, flush_secs=flush_secs)

    def _rewrite_metrics(self, purge_step: int | None) -> None:
        # Also drops a half-written last line a crash may have left.
        rows = [
            r
            for r in read_metrics(self.metrics_path)
            if purge_step is None or r["step"] < purge_step
        ]
        tmp = self.metrics_path.with_name(f".{self.metrics_path.name}.tmp-{os.getpid()}")
        with open(tmp, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.metrics_path)

    def log(self, step: int, metrics: Mapping[str, Any], *, prefix: str = "") -> None:
        """Write every numeric value of ``metrics`` at ``step`` (non-numeric values are skipped)."""
        row: dict[str, Any] = {"step": int(step), "time": round(time.time(), 3)}
        for key, value in metrics.items():
            v = scalar(value)
            if v is None:
                continue
            tag = f"{prefix}/{key}" if prefix and "/" not in key else key
            if self._writer is not None:
                self._writer.add_scalar(tag, v, int(step))
            row[tag] = v if math.isfinite(v) else None  # strict JSON has no NaN
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(row) + "\n")
            self._jsonl.flush()

    def text(self, tag: str, text: str, step: int) -> None:
        """A text note in TensorBoard (e.g. the config at the start of a run)."""
        if self._writer is not None:
            self._writer.add_text(tag, text, int(step))

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()
        if self._jsonl is not None:
            self._jsonl.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None

    def __enter__(self) -> Logger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
