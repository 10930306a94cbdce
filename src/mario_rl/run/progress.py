"""What a person watching a run sees: steps, SPS, ETA, best x, flags and time shares per phase."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from typing import IO, Any

__all__ = ["PhaseTimer", "Progress"]


class PhaseTimer:
    """Seconds spent per phase: ``with timer("env"): ...``. Phases should not be nested."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self.totals: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = self._clock()
        try:
            yield
        finally:
            self.totals[phase] += self._clock() - start

    def add(self, phase: str, seconds: float) -> None:
        self.totals[phase] += seconds

    def shares(self) -> dict[str, float]:
        """Each phase's fraction of the timed total (empty before anything was timed)."""
        total = sum(self.totals.values())
        return {k: v / total for k, v in self.totals.items()} if total > 0 else {}

    def reset(self) -> None:
        self.totals.clear()


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class Progress:
    """Live progress: steps/total, SPS, ETA, best x, flags, and time shares per phase.

    On a terminal it draws a rich live display; otherwise (CI, tests, ``nohup``) it prints a
    plain line every ``log_every_s`` seconds and one at the end.
    """

    def __init__(
        self,
        total_steps: int,
        *,
        start_step: int = 0,
        timer: PhaseTimer | None = None,
        title: str = "",
        interactive: bool | None = None,
        stream: IO[str] | None = None,
        log_every_s: float = 30.0,
        refresh_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        eta_is_bound: bool = False,
    ) -> None:
        from rich.console import Console

        self.total = int(total_steps)
        self.timer = timer if timer is not None else PhaseTimer()
        self.title = title
        self.eta_is_bound = eta_is_bound
        """The run may stop before total_steps (when a stage is cleared): the ETA is "at most"."""
        self._clock = clock
        self._stream = stream if stream is not None else sys.stdout
        self._console = Console(file=self._stream)
        self.interactive = self._console.is_terminal if interactive is None else interactive
        if interactive:
            self._console = Console(file=self._stream, force_terminal=True)
        self._log_every = log_every_s
        self._refresh = refresh_s
        now = clock()
        self.step = int(start_step)
        self._window: deque[tuple[float, int]] = deque([(now, self.step)])
        self._last_draw = -math.inf
        self._live = None
        self.best_x: float | None = None
        self.flags: int | None = None
        self.extra: dict[str, Any] = {}

    @property
    def sps(self) -> float:
        """Steps per second over the last minute or so."""
        (t0, s0), (t1, s1) = self._window[0], self._window[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 else 0.0

    @property
    def eta_s(self) -> float | None:
        sps = self.sps
        return max(self.total - self.step, 0) / sps if sps > 0 else None

    def update(
        self, step: int, *, best_x: float | None = None, flags: int | None = None, **extra: Any
    ) -> None:
        """Record progress; redraws at most every ``refresh_s`` (TTY) / ``log_every_s`` (plain)."""
        now = self._clock()
        self.step = int(step)
        self._window.append((now, self.step))
        while len(self._window) > 2 and now - self._window[1][0] > 60.0:
            self._window.popleft()
        if best_x is not None:
            self.best_x = best_x
        if flags is not None:
            self.flags = flags
        self.extra.update(extra)
        if now - self._last_draw >= (self._refresh if self.interactive else self._log_every):
            self._draw()
            self._last_draw = now

    def _parts(self) -> list[str]:
        eta = f"ETA {'<= ' if self.eta_is_bound else ''}{_fmt_duration(self.eta_s)}"
        parts = [f"{self.sps:,.0f} SPS", eta]
        if self.best_x is not None:
            parts.append(f"best x {self.best_x:,.0f}")
        if self.flags is not None:
            parts.append(f"flags {self.flags}")
        parts += [
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.extra.items()
        ]
        shares = self.timer.shares()
        if shares:
            parts.append(" ".join(f"{k} {100 * v:.0f}%" for k, v in shares.items()))
        return parts

    def _steps(self) -> str:
        pct = 100.0 * self.step / self.total if self.total else 100.0
        return f"{self.step:,}/{self.total:,} steps ({pct:.1f}%)"

    def line(self) -> str:
        """The plain one-line summary."""
        head = f"[{self.title}] " if self.title else ""
        return head + " | ".join([self._steps(), *self._parts()])

    def _draw(self) -> None:
        if not self.interactive:
            print(self.line(), file=self._stream, flush=True)
            return
        from rich.console import Group
        from rich.live import Live
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        grid = Table.grid(padding=(0, 1))
        grid.add_row(
            Text(self.title, style="bold cyan"),
            ProgressBar(total=max(self.total, 1), completed=min(self.step, self.total), width=40),
            Text(self._steps()),
        )
        view = Group(grid, Text("  " + " | ".join(self._parts())))
        if self._live is None:
            # No background refresh thread: redraws happen only inside update(), which keeps
            # the display free of races with signal handlers and fork/spawn.
            self._live = Live(view, console=self._console, auto_refresh=False, transient=False)
            self._live.start()
        self._live.update(view, refresh=True)

    def close(self) -> None:
        """Draw the final state and release the terminal."""
        self._draw()
        if self._live is not None:
            self._live.stop()
            self._live = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
