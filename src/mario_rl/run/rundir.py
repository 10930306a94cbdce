"""A run's directory on disk: creating or resuming it, its config snapshots and where its files go."""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mario_rl.io.files import write_json_atomic
from mario_rl.run import checkpoints as ckpts
from mario_rl.run.logger import METRICS_FILE

__all__ = ["RunDir", "RunDirError"]


class RunDirError(ValueError):
    """A run directory cannot be used as asked; the message says what to do instead."""


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
    METRICS = METRICS_FILE

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
            ckpts.clean_checkpoint_dir(self.path)
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
        write_json_atomic(target, dict(config))
        return target

    def saved_config(self) -> dict[str, Any]:
        """The config the run started with."""
        return json.loads(self.config_path.read_text())

    def last_config(self) -> dict[str, Any]:
        """The config of the latest leg that changed something (the newest
        ``config.resume-<n>.json``), else the one the run started with."""
        n = 1
        while (self.path / f"config.resume-{n}.json").exists():
            n += 1
        path = self.path / f"config.resume-{n - 1}.json" if n > 1 else self.config_path
        return json.loads(path.read_text())

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint to resume from, or None (see :func:`mario_rl.run.checkpoints.latest_checkpoint`)."""
        return ckpts.latest_checkpoint(self.checkpoints)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"
