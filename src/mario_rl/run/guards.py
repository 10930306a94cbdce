"""When a run must stop: SIGINT/SIGTERM as a graceful stop request, and NaN/inf metrics."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from mario_rl.errors import NonFiniteError
from mario_rl.run.logger import scalar

__all__ = ["NonFiniteError", "SignalGuard", "check_finite"]


class SignalGuard:
    """Turn SIGINT/SIGTERM into a stop request the training loop can honour.

    The first signal sets ``stop_requested`` (the trainer finishes its update, writes a final
    checkpoint and exits 0); a second one raises ``KeyboardInterrupt`` at once. A second signal
    within ``grace_s`` of the first is taken as the same request: a terminal's Ctrl-C reaches both
    ``uv run`` and the trainer, and uv forwards it again. The previous handlers are restored on
    exit. Must be entered in the main thread.
    """

    def __init__(
        self,
        signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM),
        *,
        quiet: bool = False,
        grace_s: float = 2.0,
    ) -> None:
        self.signals = tuple(signals)
        self.quiet = quiet
        self.grace_s = grace_s
        self._first_at = -math.inf
        self.stop_requested = False
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.stop_requested:
            if time.monotonic() - self._first_at < self.grace_s:
                return
            raise KeyboardInterrupt(f"second stop signal ({name})")
        self._first_at = time.monotonic()
        self.stop_requested = True
        self.received = signum
        if not self.quiet:
            # os.write, not print: print may be interrupted mid-call and is not reentrant.
            msg = f"\n{name} received: stopping after this update and writing a final checkpoint (send again to abort)\n"
            with contextlib.suppress(OSError):
                os.write(2, msg.encode())

    def request_stop(self) -> None:
        """Ask for a graceful stop from code (e.g. a target reached)."""
        self.stop_requested = True

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(
                "SignalGuard must be entered in the main thread (signal handlers live there)"
            )
        for s in self.signals:
            self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, old in self._old.items():
            signal.signal(s, old if old is not None else signal.SIG_DFL)
        self._old.clear()


def _is_finite(v: Any) -> bool | None:
    """True/False for numeric values (numbers, tensors, arrays), None for anything else."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return None
    if isinstance(v, int | float):
        return math.isfinite(v)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(v, torch.Tensor):
        if not (v.is_floating_point() or v.is_complex()):
            return True
        return bool(torch.isfinite(v.detach()).all())
    np = sys.modules.get("numpy")
    if np is not None and isinstance(v, np.ndarray | np.generic):
        if v.dtype.kind not in "fc":
            return True
        return bool(np.isfinite(v).all())
    return None


def check_finite(metrics: Mapping[str, Any], step: int | None = None) -> None:
    """Raise :class:`NonFiniteError` if any numeric value in ``metrics`` is NaN or infinite.

    The trainer should then stop *without* saving, so the last good checkpoint stays the one
    to resume from.
    """
    bad = [
        f"{k}={scalar(v) if scalar(v) is not None else 'non-finite'}"
        for k, v in metrics.items()
        if _is_finite(v) is False
    ]
    if bad:
        at = f" at step {step}" if step is not None else ""
        raise NonFiniteError(
            f"non-finite training values{at}: {', '.join(bad)}; stopping without saving so the last good "
            "checkpoint stays the latest (try a lower learning rate or check reward/advantage scaling)"
        )
