"""Demonstrations: one stage cleared by a list of actions, found by exploring from saved states
(the first phase of Go-Explore) and replayed into start states for training (``EnvConfig.demos``).

A stage such as 1-3 has one jump that random play almost never makes from the start, so PPO
never sees the far side of it. Exploration that keeps one state per place Mario has stood and
goes on from the rarely chosen ones reaches the flag in minutes of emulation; training episodes
that start from states along that route (``demo_starts``) then practise the jump where it is
made, as learning from a single demonstration does.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .actions import ACTION_SETS
from .config import EnvConfig
from .rules import FLOAT_STATE
from .stages import STAGES, parse_stages

FORMAT = "mario-rl-demo/1"
MAX_NOOPS = 255
_CELL_PX = 32
"""Exploration cells: states kept per (area, x // _CELL_PX, y // _CELL_PX) where Mario stands."""


@dataclass
class Demo:
    """A stage cleared from its start (after ``noops`` no-op frames) by ``steps``, one action
    index a step."""

    stage: str
    actions: str
    """Action set the indices refer to."""
    frame_skip: int
    jump_repress: bool
    steps: list[int]
    x_max: int = 0
    """Farthest x of the run (the flag's x)."""
    noops: int = 0
    """No-op frames from the stage's start before the first step (as after a no-op start)."""
    found_by: str = ""
    """The command that found it."""

    def to_dict(self) -> dict:
        """JSON-able dict, with the format tag."""
        return {"format": FORMAT, **dataclasses.asdict(self)}

    def save(self, path: str | Path) -> None:
        """Write as JSON through a temporary file, so a crash leaves no half-written demo."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict()) + "\n")
        os.replace(tmp, path)


def load_demo(path: str | Path) -> Demo:
    """Read a demo file; ValueError (one line) when it is missing or not a mario-rl demo."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"demo {path}: no such file; give a file written by 'mario-rl explore'")
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(
            f"demo {path}: not JSON ({e}); give a file written by 'mario-rl explore'"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(
            f"demo {path}: not a {FORMAT} file; give one written by 'mario-rl explore'"
        )
    body = {k: v for k, v in data.items() if k != "format"}
    known = {f.name for f in dataclasses.fields(Demo)}
    try:
        if set(body) - known:
            raise TypeError(f"unknown keys {sorted(set(body) - known)}")
        demo = Demo(**body)
        ok = (
            demo.stage in STAGES
            and demo.actions in ACTION_SETS
            and isinstance(demo.frame_skip, int)
            and demo.frame_skip >= 1
            and isinstance(demo.steps, list)
            and len(demo.steps) > 0
            and isinstance(demo.noops, int)
            and 0 <= demo.noops <= MAX_NOOPS
            and all(
                isinstance(a, int) and 0 <= a < len(ACTION_SETS[demo.actions]) for a in demo.steps
            )
        )
    except TypeError as e:
        raise ValueError(f"demo {path}: bad fields ({e})") from None
    if not ok:
        raise ValueError(
            f"demo {path}: bad fields (a stage such as 1-3, a known action set, frame_skip >= 1,"
            f" 0-{MAX_NOOPS} no-op frames and a non-empty list of action indices of that set"
            " are needed)"
        )
    return demo


def demo_paths(spec: str, stages: str = "all") -> list[str]:
    """The files of ``EnvConfig.demos`` (comma-separated): each file named, and from each
    directory named its ``*.json`` demos of the ``stages`` selection (sorted)."""
    out: list[str] = []
    sel = parse_stages(stages)
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if Path(part).is_dir():
            for f in sorted(Path(part).glob("*.json")):
                if sel.game or load_demo(f).stage in sel.stages:
                    out.append(str(f))
        else:
            out.append(part)
    return out


def _play_config(cfg: EnvConfig, stage: str) -> EnvConfig:
    """``cfg`` for playing one stage from its very start, with only death and the flag ending
    the run (the route is what matters, not the training run's time or stall limits). Routes are
    found and replayed without ``jump_unblock``, so one route serves runs with and without it:
    it is only the states along the route that a run starts from."""
    return dataclasses.replace(
        cfg,
        jump_unblock=False,
        stages=stage,
        noop_max=0,
        progress_starts=0.0,
        progress_cells=False,
        demos="",
        demo_starts=0.0,
        stall_steps=0,
        max_steps=0,
        time_per_stage=0,
        life_loss_ends=True,
        flag_ends=True,
    )


def check_demo(demo: Demo, cfg: EnvConfig, path: str) -> None:
    """ValueError unless ``demo`` was found with the action set, frame skip and jump rule of
    ``cfg`` and is of one of its stages."""
    for name in ("actions", "frame_skip", "jump_repress"):
        if getattr(demo, name) != getattr(cfg, name):
            raise ValueError(
                f"demo {path}: found with {name} {getattr(demo, name)!r} but this run has"
                f" {getattr(cfg, name)!r}; explore again with the run's settings"
            )
    sel = parse_stages(cfg.stages)
    if sel.game or demo.stage not in sel.stages:
        raise ValueError(
            f"demo {path}: is of stage {demo.stage}, which this run ({cfg.stages}) does not"
            " start episodes on; give demos of the run's stages"
        )


DELAYS = (0, 3, 7, 10, 14, 17, 21, 25, 30)
"""No-op frames before a demo's replays: training and evaluation episodes start after 0-30
(``noop_max``), which moves the enemies against Mario, so a demo is replayed after each of these
too (one at each phase of the 4-frame action repeat among them) and its replays that still reach
the flag are used."""


def _begin(group, noops: int) -> None:
    """Start each of ``group``'s envs at its stage's start, env ``i`` after ``noops + i`` no-op
    frames."""
    group.reset()
    for i in range(group.n):
        k = noops + i
        for j in range(k):
            group.emu.step_one(i, 0, draw=j == k - 1)
        if k:
            group.reset_env(i, restart=False)  # the episode begins after the no-op frames


@dataclass
class _Replay:
    states: list[object]
    """Emulator state before each step (taken only when asked for)."""
    obs: list[np.ndarray]
    """Stacked observation before each step (taken only when asked for)."""
    flag: bool
    end: str
    """How it ended, for errors: 'end with death at x 640 on step 12, not at the flag'."""


def _replay(
    demo: Demo, cfg: EnvConfig, delay: int, states: bool = False, obs: bool = False
) -> _Replay:
    """Play ``demo.steps`` from its stage's start after ``delay`` no-op frames."""
    from .core import EmulatorGroup  # the group is built on this module's config

    group = EmulatorGroup(_play_config(cfg, demo.stage), 1, [0])
    out = _Replay([], [], False, "")
    try:
        _begin(group, demo.noops + delay)
        cur = group.stack[0].copy()
        for k, a in enumerate(demo.steps):
            if states:
                out.states.append(group.emu.dump_state(0))
            if obs:
                out.obs.append(cur)
            res = group.step(np.array([a]))
            if 0 in res.finished:
                info = res.finished[0]
                # A route found from several starts at once ends with the last of them to
                # reach the flag; from the others it gets there a step or so sooner.
                out.flag = bool(info["flag"])
                out.end = (
                    f"end with {info['reason']} at x {info['x_end']} on step {k + 1}, not at"
                    " the flag"
                )
                return out
            cur = res.obs[0]
        out.end = f"end at x {group.episodes[0].x}, short of the flag"
        return out
    finally:
        group.close()


_REPLAYED: dict[tuple, list[object]] = {}


def demo_states(path: str, cfg: EnvConfig) -> tuple[str, list[object]]:
    """The demo's stage and the emulator states along its replays that reach the flag (one
    before each step; the replay without delay first). ValueError when the file is bad or its
    actions do not reach the flag from the stage's start."""
    demo = load_demo(path)
    check_demo(demo, cfg, path)
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_mtime_ns, st.st_size, cfg.emulator, cfg.actions)
    if key not in _REPLAYED:
        states: list[object] = []
        for delay in DELAYS:
            r = _replay(demo, cfg, delay, states=True)
            if delay == 0 and not r.flag:
                raise ValueError(
                    f"demo {path}: its {len(demo.steps)} steps {r.end}; explore again with"
                    " this version"
                )
            if r.flag:
                states += r.states
        _REPLAYED[key] = states
    return demo.stage, _REPLAYED[key]


def demo_pairs(path: str, cfg: EnvConfig) -> tuple[np.ndarray, np.ndarray]:
    """Behaviour-cloning data of one demo: (observations (N, frame_stack, size, size) uint8,
    the demo's action at each (N,) int64) along its replays after :data:`DELAYS` no-op frames
    that still reach the flag (the others met an enemy that the delay moved into the way)."""
    demo_states(path, cfg)  # the file, its settings and its route are checked here
    demo = load_demo(path)
    obs: list[np.ndarray] = []
    actions: list[int] = []
    for delay in DELAYS:
        r = _replay(demo, cfg, delay, obs=True)
        if r.flag:
            obs += r.obs
            actions += demo.steps[: len(r.obs)]
    return np.stack(obs), np.asarray(actions, np.int64)


def demo_coverage(demo: Demo, cfg: EnvConfig, noop_max: int) -> list[int]:
    """The no-op starts (frames from the stage's start, 0..``noop_max``) after which ``demo``'s
    actions reach the flag: those before its own ``noops`` cannot play it. One route often
    covers every other start only (on 1-3 the even ones: an enemy is a frame out of step on the
    odd), so a policy cloned from it dies at the same spot on the rest."""
    return [n for n in range(demo.noops, noop_max + 1) if _replay(demo, cfg, n - demo.noops).flag]


@dataclass
class _Cell:
    state: list[object]
    """One emulator state per lockstep start."""
    path: list[int]
    x: int
    chosen: int = 0


@dataclass
class ExploreResult:
    """What :func:`explore` did: the demo (None when the budget ran out) and its counts."""

    demo: Demo | None
    steps: int
    cells: int
    x_max: int


def explore(
    cfg: EnvConfig,
    stage: str,
    seed: int = 0,
    max_steps: int = 2_000_000,
    burst: int = 60,
    repeat: float = 0.9,
    x_bias: float = 3.0,
    noops: int = 0,
    on_progress: Callable[[int, int, int], None] | None = None,
    starts: int = 1,
) -> ExploreResult:
    """Search for a route to ``stage``'s flag with random play from an archive of states.

    The archive keeps, per (area, x cell, y cell) where Mario stands, the state reached by the
    shortest action list. Each round picks a cell with weight 1/sqrt(1 + times chosen) times
    (1 + x / farthest x) ** ``x_bias`` (on 1-1 and 1-3, 3 found the flag in about half the steps
    of 0, three seeds each), restores it and plays ``burst`` random steps, an action repeated
    with chance ``repeat`` (jumps need A held). It ends at the first flag or after ``max_steps``
    agent steps. Play starts after ``noops`` no-op frames, so routes can be found for other
    enemy timings. With ``starts`` K > 1 the same actions play K starts in lockstep (after
    ``noops``, ``noops`` + 1, … no-op frames): a route must keep Mario alive in all of them,
    so it does not hang on one enemy timing (1-3's first route dies after every odd start).
    ``on_progress(steps, cells, x_max)`` is called about every 10k steps (steps of the route,
    not of each start).
    """
    from .core import EmulatorGroup

    if not 1 <= starts <= MAX_NOOPS + 1 - noops:
        raise ValueError(
            f"starts must be 1..{MAX_NOOPS + 1 - noops} after {noops} no-ops, got {starts}"
        )
    play = _play_config(cfg, stage)
    group = EmulatorGroup(play, starts, [seed] * starts)
    rng = np.random.default_rng(seed)
    n_actions = len(ACTION_SETS[cfg.actions])
    envs = range(starts)

    def snapshot() -> list[object]:
        return [group.emu.dump_state(i) for i in envs]

    try:
        _begin(group, noops)
        ep = group.episodes[0]
        archive: dict[tuple, _Cell] = {
            (ep.area, ep.x // _CELL_PX, ep.y // _CELL_PX): _Cell(snapshot(), [], ep.x)
        }
        steps, x_max, report = 0, ep.x, 10_000
        while steps < max_steps:
            cells = list(archive.values())
            w = 1.0 / np.sqrt(1.0 + np.array([c.chosen for c in cells], np.float64))
            x = np.array([c.x for c in cells], np.float64)
            w *= (1.0 + x / max(x.max(), 1.0)) ** x_bias
            cell = cells[int(rng.choice(len(cells), p=w / w.sum()))]
            cell.chosen += 1
            for i in envs:
                group.emu.load_state(i, cell.state[i])
                group.reset_env(i, restart=False)
            path = list(cell.path)
            flagged: set[int] = set()
            a = int(rng.integers(n_actions))
            for _ in range(burst):
                if rng.random() >= repeat:
                    a = int(rng.integers(n_actions))
                res = group.step(np.full(starts, a))
                steps += 1
                path.append(a)
                ended = {i: info for i, info in res.finished.items() if i not in flagged}
                if ended:
                    x_max = max([x_max] + [info["x_max"] for info in ended.values()])
                    if not all(info["flag"] for info in ended.values()):
                        break
                    flagged |= set(ended)
                    if len(flagged) == starts:
                        demo = Demo(
                            stage,
                            cfg.actions,
                            cfg.frame_skip,
                            cfg.jump_repress,
                            path,
                            x_max=x_max,
                            noops=noops,
                        )
                        return ExploreResult(demo, steps, len(archive), x_max)
                if flagged:
                    continue  # the flagged starts have begun again: no cell to keep here
                ep = group.episodes[0]
                x_max = max(x_max, ep.x)
                if any(group.emu.rams[i][FLOAT_STATE] != 0 for i in envs):
                    continue
                key = (ep.area, ep.x // _CELL_PX, ep.y // _CELL_PX)
                old = archive.get(key)
                if old is None or len(path) < len(old.path):
                    chosen = 0 if old is None else old.chosen
                    archive[key] = _Cell(snapshot(), list(path), ep.x, chosen)
            if on_progress is not None and steps >= report:
                report += 10_000
                on_progress(steps, len(archive), x_max)
        return ExploreResult(None, steps, len(archive), x_max)
    finally:
        group.close()
