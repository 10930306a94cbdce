"""What every training run shares, whatever the algorithm: run directory, logging, progress,
signals, checkpoint schedule, evaluation in a side process, and the non-finite guard.

Nothing here knows PPO or A3G internals; a trainer composes the pieces::

    run = RunDir.open(cfg.run_dir, algo="ppo", stages="1-1", resume=cfg.resume, config=cfg_dict)
    ckpts = CheckpointSchedule(run.checkpoints, every=100_000, keep=3, start_step=step)
    with Logger(run, purge_step=step) as log, Progress(total, start_step=step) as prog, \\
            SignalGuard() as guard, EvalProcess(evaluate_checkpoint, schedule=ckpts) as ev:
        while step < total and not guard.stop_requested:
            ...  # collect + learn inside `with prog.timer("env"):` etc.
            check_finite(metrics, step)  # NonFiniteError: stop, keep the last good checkpoint
            log.log(step, metrics); prog.update(step, best_x=best_x, flags=flags)
            if (path := ckpts.maybe_save(step, make_state)) is not None:
                ev.submit(path, step)
            for r in ev.poll():
                log.log(r.step, r.metrics or {}, prefix="eval")
        ckpts.save_final(step, *make_state())

``torch`` (and TensorBoard) are imported only where needed, so the evaluation child and
signal handling start quickly.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import multiprocessing as mp
import os
import pickle
import queue
import re
import shutil
import signal
import sys
import threading
import time
import traceback
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from . import checkpoint as ckpt

__all__ = [
    "CheckpointSchedule",
    "EvalProcess",
    "EvalResult",
    "Logger",
    "NonFiniteError",
    "PhaseTimer",
    "Progress",
    "RunDir",
    "RunDirError",
    "SignalGuard",
    "check_finite",
    "flag_rate_then_mean_x",
    "read_metrics",
]


# --------------------------------------------------------------------------------------------
# run directory
# --------------------------------------------------------------------------------------------


class RunDirError(ValueError):
    """A run directory cannot be used as asked; the message says what to do instead."""


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, allow_nan=False, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _stages_label(stages: str | Sequence[str]) -> str:
    if isinstance(stages, str):
        label = stages.replace(",", "+").replace(" ", "")
    else:
        items = list(stages)
        label = "+".join(items) if len(items) <= 3 else f"{len(items)}stages"
    return re.sub(r"[^A-Za-z0-9.+_-]", "_", label) or "stages"


class RunDir:
    """A run's directory: ``config.json``, ``metrics.jsonl``, ``checkpoints/`` and ``tb/``.

    A new run refuses an existing non-empty directory; ``resume=True`` requires one that holds
    a ``config.json`` and tidies up what a crash may have left in ``checkpoints/``.
    """

    CONFIG = "config.json"
    METRICS = "metrics.jsonl"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        resume: bool = False,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.resumed = resume
        if resume:
            if not self.path.is_dir():
                raise RunDirError(
                    f"run directory {self.path} does not exist; nothing to resume — drop --resume to start a new run"
                )
            if not (self.path / self.CONFIG).is_file():
                raise RunDirError(
                    f"{self.path} has no {self.CONFIG}, so it is not a run directory; pass the directory of an earlier run"
                )
            ckpt.clean_checkpoint_dir(self.path)
        elif self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise RunDirError(
                f"run directory {self.path} exists; pass --resume to continue it or choose another --run-dir"
            )
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            self.tb.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(
                f"cannot create run directory {self.path} ({e.strerror}); choose a writable --run-dir"
            ) from None
        if config is not None:
            self.write_config(config)

    @classmethod
    def open(
        cls,
        run_dir: str | os.PathLike[str] | None,
        *,
        algo: str,
        stages: str | Sequence[str],
        resume: bool = False,
        config: Mapping[str, Any] | None = None,
        root: str | os.PathLike[str] = "runs",
    ) -> RunDir:
        """The run directory a trainer asked for: ``run_dir``, or a fresh default under ``root``."""
        if run_dir:
            return cls(run_dir, resume=resume, config=config)
        if resume:
            raise RunDirError("--resume needs --run-dir naming the run to continue")
        path = cls.default_path(algo, stages, root=root)
        base, n = path, 1
        while path.exists():  # two runs started in the same second
            n += 1
            path = base.with_name(f"{base.name}-{n}")
        return cls(path, config=config)

    @staticmethod
    def default_path(
        algo: str,
        stages: str | Sequence[str],
        *,
        root: str | os.PathLike[str] = "runs",
        now: _dt.datetime | None = None,
    ) -> Path:
        """``<root>/<algo>-<stages>-<YYYYmmdd-HHMMSS>``."""
        stamp = (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
        return Path(root) / f"{algo}-{_stages_label(stages)}-{stamp}"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def tb(self) -> Path:
        return self.path / "tb"

    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / self.METRICS

    def write_config(self, config: Mapping[str, Any]) -> Path:
        """Snapshot the config: ``config.json`` for a new run, ``config.resume-<n>.json`` when a
        resumed run's config differs from the original.

        The original ``config.json`` is never overwritten, so a resumed run keeps a record of
        what it started with and of every change made when continuing.
        """
        if not self.config_path.exists():
            target = self.config_path
        elif json.loads(json.dumps(dict(config), default=str)) == self.saved_config():
            return self.config_path  # resumed unchanged: nothing new to record
        else:
            n = 1
            while (self.path / f"config.resume-{n}.json").exists():
                n += 1
            target = self.path / f"config.resume-{n}.json"
        _write_json_atomic(target, dict(config))
        return target

    def saved_config(self) -> dict[str, Any]:
        """The config the run started with."""
        return json.loads(self.config_path.read_text())

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint to resume from, or None (see :func:`checkpoint.latest_checkpoint`)."""
        return ckpt.latest_checkpoint(self.checkpoints)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"


# --------------------------------------------------------------------------------------------
# logging
# --------------------------------------------------------------------------------------------


def _scalar(v: Any) -> float | None:
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
        p = p / RunDir.METRICS
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
        if isinstance(run_dir, RunDir):
            tb_dir, self.metrics_path = run_dir.tb, run_dir.metrics_path
        else:
            tb_dir, self.metrics_path = Path(run_dir) / "tb", Path(run_dir) / RunDir.METRICS
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
            v = _scalar(value)
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


# --------------------------------------------------------------------------------------------
# progress
# --------------------------------------------------------------------------------------------


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
    ) -> None:
        from rich.console import Console

        self.total = int(total_steps)
        self.timer = timer if timer is not None else PhaseTimer()
        self.title = title
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
        parts = [f"{self.sps:,.0f} SPS", f"ETA {_fmt_duration(self.eta_s)}"]
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


# --------------------------------------------------------------------------------------------
# signals
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# non-finite guard
# --------------------------------------------------------------------------------------------


class NonFiniteError(FloatingPointError):
    """A training metric became NaN or infinite; the run should stop without saving."""


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
        f"{k}={_scalar(v) if _scalar(v) is not None else 'non-finite'}"
        for k, v in metrics.items()
        if _is_finite(v) is False
    ]
    if bad:
        at = f" at step {step}" if step is not None else ""
        raise NonFiniteError(
            f"non-finite training values{at}: {', '.join(bad)}; stopping without saving so the last good "
            "checkpoint stays the latest (try a lower learning rate or check reward/advantage scaling)"
        )


# --------------------------------------------------------------------------------------------
# checkpoint schedule
# --------------------------------------------------------------------------------------------


def flag_rate_then_mean_x(metrics: Mapping[str, Any]) -> tuple[float, float] | None:
    """Default "best" key: flag (clear) rate first, mean x as tie-break; None if unusable."""
    rate = metrics.get("flag_rate", metrics.get("clear_rate"))
    x = metrics.get("mean_x")
    rate, x = _scalar(rate), _scalar(x)
    if rate is None or x is None or not (math.isfinite(rate) and math.isfinite(x)):
        return None
    return (rate, x)


def _jsonable(obj: Any) -> Any:
    """A strict-JSON copy of evaluation results (numpy/tensor scalars to numbers, NaN to None)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, bool | str | int):
        return obj
    v = _scalar(obj)
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
        best_key: Callable[[Mapping[str, Any]], tuple[float, ...] | None] = flag_rate_then_mean_x,
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
            with contextlib.suppress(ckpt.CheckpointError):
                score = ckpt.read_meta(best).get("best", {}).get("score")
                if isinstance(score, list) and all(isinstance(v, int | float) for v in score):
                    self.best_score = tuple(float(v) for v in score)

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
        path = ckpt.save_checkpoint(
            self.dir / ckpt.periodic_name(step), tensors, {**meta, "step": int(step)}
        )
        ckpt.keep_last(self.dir, self.keep)
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
        return ckpt.save_checkpoint(self.final_path, tensors, {**meta, "step": int(step)})

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
        ckpt.promote_checkpoint(checkpoint, self.best_path, {"best": record})
        self.best_score = tuple(float(v) for v in score)
        return True


# --------------------------------------------------------------------------------------------
# evaluation in another process
# --------------------------------------------------------------------------------------------


@dataclass
class EvalResult:
    """The outcome of evaluating one checkpoint in the evaluation process."""

    step: int
    checkpoint: Path
    """The checkpoint as submitted (it may since have been removed by retention)."""
    metrics: dict[str, Any] | None
    error: str | None = None
    """One line: what went wrong (the function raised, the process died, a timeout)."""
    seconds: float = 0.0
    is_best: bool = False
    traceback: str | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None


def one_line(e: BaseException) -> str:
    """An exception as one line for a user-facing message: its type and first line of text."""
    return f"{type(e).__name__}: {e}".splitlines()[0] if str(e) else type(e).__name__


def _eval_worker(
    fn: Callable[..., Mapping[str, Any]],
    kwargs: dict[str, Any],
    jobs: Any,
    results: Any,
    parent: int,
) -> None:
    # The terminal's Ctrl+C reaches the whole process group; the trainer decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            job = jobs.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:  # the trainer died without closing us
                return
            continue
        if job is None:
            return
        job_id, path = job
        results.put(("started", job_id, None, 0.0))
        start = time.monotonic()
        try:
            out = dict(fn(path, **kwargs))
            pickle.dumps(out)  # fail here, with a message, rather than in the queue's thread
            results.put(("ok", job_id, out, time.monotonic() - start))
        except BaseException as e:  # report everything; the trainer must never wait forever
            tb = traceback.format_exc()
            summary = one_line(e)
            results.put(("error", job_id, (summary, tb), time.monotonic() - start))


@dataclass
class _Job:
    job_id: int
    step: int
    source: Path
    snapshot: Path
    started: float = 0.0
    """When the child began the job; until it says so, when the job was handed over."""
    confirmed: bool = False


class EvalProcess:
    """Evaluate checkpoints in a child process so training never waits for evaluation.

    ``fn(checkpoint_path: Path, **kwargs) -> dict`` must be picklable (a module-level function)
    and runs in a ``spawn``-ed child. :meth:`submit` hands over a checkpoint (a hard-linked
    snapshot, so retention cannot delete it mid-evaluation); at most one runs at a time and
    only the newest waiting one is kept. :meth:`poll` never blocks. With a ``schedule``, each
    good result is offered to :meth:`CheckpointSchedule.consider_best`. A child that dies or
    exceeds ``timeout_s`` is reported as an error result and replaced on the next job, up to
    ``max_restarts`` times. The timeout counts from when the child starts the job, so a fresh
    child's start-up (imports) gets an extra ``startup_s``.
    """

    def __init__(
        self,
        fn: Callable[..., Mapping[str, Any]],
        *,
        kwargs: Mapping[str, Any] | None = None,
        schedule: CheckpointSchedule | None = None,
        timeout_s: float | None = None,
        max_restarts: int = 3,
        startup_s: float = 120.0,
    ) -> None:
        self.fn = fn
        self.startup_s = startup_s
        self.kwargs = dict(kwargs or {})
        self.schedule = schedule
        self.timeout_s = timeout_s
        self.max_restarts = max_restarts
        self.restarts = 0
        self.disabled_reason: str | None = None
        self._ctx = mp.get_context("spawn")
        self._proc: Any = None
        self._jobs: Any = None
        self._results: Any = None
        self._running: _Job | None = None
        self._waiting: _Job | None = None
        self._next_id = 0
        self._snapshots: set[Path] = set()
        self._closed = False

    @property
    def busy(self) -> bool:
        """True while an evaluation runs or waits."""
        return self._running is not None or self._waiting is not None

    def _start(self) -> None:
        self._jobs = self._ctx.Queue()
        self._results = self._ctx.Queue()
        self._proc = self._ctx.Process(
            target=_eval_worker,
            args=(self.fn, self.kwargs, self._jobs, self._results, os.getpid()),
            name="mario-rl-eval",
            daemon=True,
        )
        try:
            self._proc.start()
        except (pickle.PicklingError, AttributeError, TypeError) as e:
            self._proc = None
            raise TypeError(
                f"evaluation function {self.fn!r} or its kwargs cannot be sent to the evaluation process ({e}); "
                "use a module-level function and picklable kwargs"
            ) from None

    def submit(self, checkpoint: str | os.PathLike[str], step: int) -> bool:
        """Queue ``checkpoint`` for evaluation; replaces an older one still waiting.

        Returns False (and does nothing) once evaluation was disabled after repeated crashes.
        """
        if self._closed:
            raise RuntimeError("EvalProcess is closed")
        if self.disabled_reason is not None:
            return False
        source = Path(checkpoint)
        self._next_id += 1
        snapshot = source.parent / ".eval" / f"{source.name}-{self._next_id}"
        ckpt.snapshot_checkpoint(source, snapshot)
        self._snapshots.add(snapshot)
        if self._waiting is not None:
            self._drop(self._waiting)
        self._waiting = _Job(self._next_id, int(step), source, snapshot)
        self._dispatch()
        return True

    def _dispatch(self) -> None:
        if self._running is not None or self._waiting is None:
            return
        if self._proc is None or not self._proc.is_alive():
            self._stop_process()
            self._start()
        job, self._waiting = self._waiting, None
        job.started = time.monotonic()
        self._jobs.put((job.job_id, job.snapshot))
        self._running = job

    def _drop(self, job: _Job) -> None:
        shutil.rmtree(job.snapshot, ignore_errors=True)
        self._snapshots.discard(job.snapshot)

    def _failed(self, job: _Job, error: str, tb: str | None = None) -> EvalResult:
        return EvalResult(
            job.step, job.source, None, error, time.monotonic() - job.started, traceback=tb
        )

    def _crashed(self, why: str) -> EvalResult:
        job = self._running
        assert job is not None
        self._running = None
        self._stop_process(graceful=False)
        self.restarts += 1
        if self.restarts > self.max_restarts:
            self.disabled_reason = (
                f"evaluation disabled after {self.restarts} failures of the evaluation process"
            )
            why += f"; {self.disabled_reason}"
            if self._waiting is not None:
                self._drop(self._waiting)
                self._waiting = None
        else:
            why += "; a new evaluation process starts with the next checkpoint"
        self._drop(job)
        return self._failed(job, why)

    def poll(self) -> list[EvalResult]:
        """Results that arrived since the last call (never blocks)."""
        out: list[EvalResult] = []
        if self._results is not None:
            while True:
                try:
                    kind, job_id, payload, seconds = self._results.get_nowait()
                except (queue.Empty, EOFError, OSError):
                    break
                if kind == "started":
                    if self._running is not None and self._running.job_id == job_id:
                        self._running.started, self._running.confirmed = time.monotonic(), True
                    continue
                out.extend(self._finish(kind, job_id, payload, seconds))
        job = self._running
        if job is not None and (self._proc is None or not self._proc.is_alive()):
            code = None if self._proc is None else self._proc.exitcode
            out.append(
                self._crashed(
                    f"evaluation process died (exit code {code}) while evaluating {job.source.name} at step {job.step}"
                )
            )
        elif (
            job is not None
            and self.timeout_s is not None
            and time.monotonic() - job.started
            > self.timeout_s + (0.0 if job.confirmed else self.startup_s)
        ):
            out.append(
                self._crashed(
                    f"evaluation of {job.source.name} at step {job.step} exceeded {self.timeout_s:g}s and was stopped"
                )
            )
        self._dispatch()
        return out

    def _finish(self, kind: str, job_id: int, payload: Any, seconds: float) -> list[EvalResult]:
        job = self._running
        if job is None or job.job_id != job_id:
            return []  # a late answer from a process already replaced
        self._running = None
        try:
            if kind == "ok":
                result = EvalResult(job.step, job.source, payload, None, seconds)
                if self.schedule is not None:
                    result.is_best = self.schedule.consider_best(job.snapshot, payload, job.step)
                return [result]
            summary, tb = payload
            return [
                EvalResult(
                    job.step,
                    job.source,
                    None,
                    f"evaluation raised {summary}",
                    seconds,
                    traceback=tb,
                )
            ]
        finally:
            self._drop(job)

    def wait(self, timeout_s: float) -> list[EvalResult]:
        """Poll until nothing is pending or ``timeout_s`` passed (for the end of a run)."""
        deadline = time.monotonic() + timeout_s
        out = self.poll()
        while self.busy and time.monotonic() < deadline:
            time.sleep(0.05)
            out += self.poll()
        return out

    def _stop_process(self, timeout_s: float = 3.0, *, graceful: bool = True) -> None:
        proc, jobs, results = self._proc, self._jobs, self._results
        self._proc = self._jobs = self._results = None
        if proc is not None:
            # Only an idle child reads the stop sentinel; a busy or hung one is terminated.
            if graceful and proc.is_alive() and jobs is not None:
                with contextlib.suppress(Exception):
                    jobs.put(None)
                proc.join(timeout_s / 2)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout_s / 4)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout_s / 4)
            with contextlib.suppress(Exception):
                proc.close()
        for q in (jobs, results):
            if q is not None:
                # Never let interpreter exit wait on a queue whose reader is gone.
                q.cancel_join_thread()
                q.close()

    def close(self, timeout_s: float = 3.0) -> None:
        """Stop the child (gracefully, then terminate, then kill) within about ``timeout_s``."""
        if self._closed:
            return
        self._closed = True
        busy = self._running is not None
        self._running = self._waiting = None
        self._stop_process(timeout_s, graceful=not busy)
        for snap in list(self._snapshots):
            shutil.rmtree(snap, ignore_errors=True)
        self._snapshots.clear()

    def __enter__(self) -> EvalProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
