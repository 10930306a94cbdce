"""One group of emulators stepped together: frame skip, observations, rules and resets.

A group owns N machines of one emulator backend (``emulator.py``: the native core by default,
or nes-py); their step releases the GIL, so groups in different threads run in parallel. The
vector env is a set of groups; the single env is a group of one. Both therefore give the same
observations, rewards and terminations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from .actions import BUTTONS, action_bytes
from .config import EnvConfig
from .demos import demo_paths, demo_states
from .emulator import make_emulators
from .rules import (
    BUSY_STATES,
    CHANGE_AREA_TIMER,
    COMPONENTS,
    FLOAT_STATE,
    GAME_MODE,
    LIVES,
    PLAYER_STATE,
    PRELEVEL_TIMER,
    STAGE,
    STATE_DEAD,
    STATE_DYING,
    SWIMMING,
    WORLD,
    Y_VIEWPORT,
    Episode,
    Outcome,
    Rules,
    stage_number,
)
from .stages import StageSelection, parse_stages

# OpenCV's own thread pool would fight the env threads for the same cores on an 84x84 resize.
cv2.setNumThreads(1)

HUD_ROWS = 32
_INTERP = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "nearest": cv2.INTER_NEAREST}
# Bound on frames spent fast-forwarding one cut-scene, so a stuck game cannot hang a step.
_FAST_FORWARD_LIMIT = 2000
# Progress starts: states are kept per (stage, area, x // _BUCKET_PX), a few per bucket, so
# every part of a stage the agent has reached is practised about equally often.
_BUCKET_PX = 256
_PER_BUCKET = 4
# With progress_cells, states are kept per (stage, area, x // _CELL_PX, y // _CELL_PX) instead.
_CELL_PX = 32


def mark_stage(frame: np.ndarray, index: int) -> None:
    """Write stage ``index`` (0..31, STAGES order) into ``frame``'s top-left corner in place: five
    squares of size // 16 px (at least 2) in a row, bit 4 first, 255 for a one and 0 for a zero."""
    side = max(2, frame.shape[-1] // 16)
    for bit in range(5):
        on = (index >> (4 - bit)) & 1
        frame[:side, bit * side : (bit + 1) * side] = 255 if on else 0


def read_stage_mark(frame: np.ndarray) -> int:
    """The stage index :func:`mark_stage` wrote into ``frame``."""
    side = max(2, frame.shape[-1] // 16)
    bits = [int(frame[:side, b * side : (b + 1) * side].mean() > 127) for b in range(5)]
    return sum(bit << (4 - k) for k, bit in enumerate(bits))


@dataclass
class StepResult:
    """Arrays for the group's envs after one step (owned by the caller)."""

    obs: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    components: dict[str, np.ndarray]
    final_obs: dict[int, np.ndarray]
    finished: dict[int, dict]
    """Episode stats of the envs whose episode ended this step."""
    final_rgb: dict[int, np.ndarray] = field(default_factory=dict)
    """Full-colour last screens of the envs whose episode ended (only with ``keep_final_rgb``)."""


class EmulatorGroup:
    """``n`` emulators with the same configuration; stepped with one native call per frame."""

    def __init__(self, config: EnvConfig, n: int, seeds: Sequence[int | Sequence[int]]) -> None:
        self.cfg = config  # validated by the env that owns the group
        self.n = n
        self.selection: list[StageSelection] = [parse_stages(config.stages)] * n
        self.emu = make_emulators(config.emulator, n)
        self.action_map = action_bytes(config.actions)
        self.interp = _INTERP[config.interpolation]
        self.crop = HUD_ROWS if config.crop_hud else 0
        s = config.size
        self.gray = np.zeros((n, 240, 256), np.uint8)
        self.prev_gray = np.zeros((n, 240, 256), np.uint8)
        self.stack = np.zeros((n, config.frame_stack, s, s), np.uint8)
        self.rngs = [np.random.default_rng(seed) for seed in seeds]
        self.episodes: list[Episode] = []
        self.rules = [Rules(config, sel.game) for sel in self.selection]
        self.reached: dict[tuple, list[object]] = {}
        """Progress starts: saved native states by (stage, area, x bucket) or, with
        ``progress_cells``, by (stage, area, x cell, y cell)."""
        self.visits: dict[tuple, int] = {}
        """Progress cells: how many episodes stood in each cell (draws favour the rare ones)."""
        self._bucket = np.full(n, -1, np.int64)
        self._seen: list[set[tuple]] = [set() for _ in range(n)]
        self.restored = np.zeros(n, bool)
        """Whether env ``i``'s current episode began from a saved progress or demo state."""
        self.demo_states: dict[str, list[object]] = {}
        """Demo starts: the states along each stage's demos (``EnvConfig.demos``)."""
        if config.demo_starts:
            for path in demo_paths(config.demos, config.stages):
                stage, states = demo_states(path, config)
                self.demo_states[stage] = self.demo_states.get(stage, []) + states
        self.prev_buttons = np.zeros(n, np.uint8)
        """Buttons of each env's last step (for ``jump_repress``)."""
        self.last_x: list[int] = [-1] * n
        """Each env's x when its last step began (for ``jump_unblock``; -1 after a reset)."""
        self.frames = 0
        """Emulated frames so far (including fast-forwarded cut-scenes and no-op starts)."""
        self.keep_final_rgb = False
        """Recording hook: when set, ``step`` copies the screen of each env whose episode ends
        before the automatic reset draws over it (``StepResult.final_rgb``). Off in training,
        where it costs one flag test per finished episode."""

    # -- observations -------------------------------------------------------------------------
    def _observe(self, i: int) -> np.ndarray:
        """Env ``i``'s current screen as one observation frame (cropped, resized, marked)."""
        s = self.cfg.size
        frame = cv2.resize(self.gray[i][self.crop :], (s, s), interpolation=self.interp)
        if self.cfg.stage_marker:
            ram = self.emu.rams[i]
            mark_stage(frame, 4 * (int(ram[WORLD]) & 7) + (int(ram[STAGE]) & 3))
        return frame

    def _push(self, i: int, frame: np.ndarray) -> None:
        st = self.stack[i]
        st[:-1] = st[1:]
        st[-1] = frame

    def rgb(self, i: int) -> np.ndarray:
        """A copy of env ``i``'s current full-colour screen (240x256x3)."""
        return self.emu.rgb(i)

    # -- episodes -----------------------------------------------------------------------------
    def set_selection(self, i: int, selection: StageSelection) -> None:
        """Stages env ``i`` draws from at its next reset."""
        self.selection[i] = selection
        self.rules[i] = Rules(self.cfg, selection.game)

    def reseed(self, seeds: Sequence[int | Sequence[int]]) -> None:
        """New random streams for stage draws and no-op starts."""
        self.rngs = [np.random.default_rng(seed) for seed in seeds]

    @staticmethod
    def _in_cut_scene(ram: bytes | np.ndarray) -> bool:
        """Whether the game is in something to fast-forward (checked on every step: cheap)."""
        state = ram[PLAYER_STATE]
        return ram[LIVES] != 0xFF and (
            state in BUSY_STATES
            or state in (STATE_DEAD, STATE_DYING)
            or ram[Y_VIEWPORT] > 1
            or ram[GAME_MODE] == 2
            or 1 < ram[CHANGE_AREA_TIMER] < 255
        )

    def _fast_forward(self, i: int) -> None:
        """Skip death animations, pipe/area transitions and other cut-scenes of env ``i``."""
        ram = self.emu.rams[i]
        for _ in range(_FAST_FORWARD_LIMIT):
            if not self._in_cut_scene(ram):
                return
            state = ram[PLAYER_STATE]
            if (state == STATE_DYING or ram[Y_VIEWPORT] > 1) and state != STATE_DEAD:
                ram[PLAYER_STATE] = STATE_DEAD
            elif 1 < ram[CHANGE_AREA_TIMER] < 255:
                ram[CHANGE_AREA_TIMER] = 1
            ram[PRELEVEL_TIMER] = 0
            self.emu.step_one(i, 0)
            self.frames += 1

    def reset_env(self, i: int, restart: bool = True) -> None:
        """Start a new episode in env ``i``: load its stage's start (or continue the game)."""
        sel = self.selection[i]
        rng = self.rngs[i]
        if restart:
            stage = None if sel.game else sel.sample(rng)
            saved = self._demo_start(stage, rng)
            if saved is None:
                saved = self._progress_start(stage, rng)
            self.restored[i] = saved is not None
            self.emu.load_state(i, self.emu.start_state(stage) if saved is None else saved)
            k = int(rng.integers(0, self.cfg.noop_max + 1)) if self.cfg.noop_max else 0
            if saved is not None:
                k = 0
            for j in range(k):
                a = (
                    self.action_map[rng.integers(len(self.action_map))]
                    if self.cfg.noop_random
                    else 0
                )
                # Only the last start frame's screen is looked at.
                self.emu.step_one(i, a, draw=j == k - 1)
            self.frames += k
        self._fast_forward(i)
        self.prev_buttons[i] = 0
        self.last_x[i] = -1
        ep = self.rules[i].start(self.emu.rams[i].tobytes())
        if i < len(self.episodes):
            self.episodes[i] = ep
        else:
            self.episodes.append(ep)
        self._bucket[i] = ep.x // _BUCKET_PX
        self._seen[i] = set()
        self.emu.gray(i, self.gray[i])
        self.stack[i] = self._observe(i)

    def _demo_start(self, stage: str | None, rng: np.random.Generator) -> object | None:
        """A state along ``stage``'s demo (uniform over its steps), with chance demo_starts."""
        states = self.demo_states.get(stage) if stage is not None else None
        if not states or rng.random() >= self.cfg.demo_starts:
            return None
        return states[int(rng.integers(len(states)))]

    def _progress_start(self, stage: str | None, rng: np.random.Generator) -> object | None:
        """A saved state of ``stage`` to start from, or None. The bucket is drawn uniformly; a
        cell (``progress_cells``) with weight 1/sqrt(episodes that stood in it), so places few
        episodes reach, such as the far side of a hard jump, are practised most."""
        p = self.cfg.progress_starts
        if stage is None or not p or rng.random() >= p:
            return None
        keys = [k for k in self.reached if k[0] == stage]
        if not keys:
            return None
        if self.cfg.progress_cells:
            w = 1.0 / np.sqrt(np.array([self.visits[k] for k in keys], np.float64))
            key = keys[int(rng.choice(len(keys), p=w / w.sum()))]
        else:
            key = keys[int(rng.integers(len(keys)))]
        states = self.reached[key]
        return states[int(rng.integers(len(states)))]

    def _remember(self, i: int, ep: Episode) -> None:
        """Keep env ``i``'s state when it first enters a farther x bucket in this episode, or
        (``progress_cells``) a cell of x and y it has not stood in yet this episode."""
        if self.cfg.progress_cells:
            key = (ep.stage, ep.area, ep.x // _CELL_PX, ep.y // _CELL_PX)
            # Only where Mario stands: a state in mid-air is often already lost (a short jump).
            if key in self._seen[i] or self.emu.rams[i][FLOAT_STATE] != 0:
                return
            self._seen[i].add(key)
            self.visits[key] = self.visits.get(key, 0) + 1
        else:
            b = ep.x // _BUCKET_PX
            if b <= self._bucket[i]:
                return
            self._bucket[i] = b
            key = (ep.stage, ep.area, b)
        states = self.reached.setdefault(key, [])
        if len(states) < _PER_BUCKET:
            states.append(self.emu.dump_state(i))
        else:
            # Replace at random so the kept states follow the current policy's play.
            states[int(self.rngs[i].integers(_PER_BUCKET))] = self.emu.dump_state(i)

    def reset(self) -> np.ndarray:
        """Start every env; returns a copy of the stacked observations."""
        self.episodes = []
        for i in range(self.n):
            self.reset_env(i)
        return self.stack.copy()

    # -- stepping -----------------------------------------------------------------------------
    def step(self, actions: np.ndarray) -> StepResult:
        """One agent step of every env: repeat each action for frame_skip frames, apply rules."""
        n, cfg = self.n, self.cfg
        actions = np.asarray(actions)
        if actions.size and not (actions.min() >= 0 and actions.max() < len(self.action_map)):
            raise ValueError(
                f"actions must be integers in 0..{len(self.action_map) - 1} "
                f"({self.cfg.actions} action set), got {actions.tolist()}"
            )
        buttons = self.action_map[actions.astype(np.int64)]
        first = self._repress(buttons) if cfg.jump_repress or cfg.jump_unblock else buttons
        skip = cfg.frame_skip
        pool = cfg.max_pool and skip > 1
        self.emu.step(
            buttons, skip, first=first, gray=self.gray, gray_prev=self.prev_gray if pool else None
        )
        self.emu.check()
        self.frames += skip * n

        rewards = np.zeros(n, np.float32)
        terminated = np.zeros(n, bool)
        truncated = np.zeros(n, bool)
        components = {c: np.zeros(n, np.float32) for c in COMPONENTS}
        outcomes: list[Outcome] = []
        moved = np.zeros(n, bool)
        remember = cfg.progress_starts > 0
        for i in range(n):
            ram = self.emu.rams[i].tobytes()
            out = self.rules[i].step(self.episodes[i], ram)
            outcomes.append(out)
            rewards[i] = out.reward
            terminated[i] = out.terminated
            truncated[i] = out.truncated
            for name, v in out.components.items():
                if v:
                    components[name][i] = v
            if not (out.terminated or out.truncated):
                if self._in_cut_scene(ram):
                    before = self.frames
                    self._fast_forward(i)
                    moved[i] = self.frames != before
                elif remember:
                    self._remember(i, self.episodes[i])

        for i in np.flatnonzero(moved):
            self.emu.gray(i, self.gray[i])
        if pool:
            # Envs that just fast-forwarded show a new scene: pooling with the old frame would smear it.
            if moved.any():
                idx = np.flatnonzero(~moved)
                self.gray[idx] = np.maximum(self.gray[idx], self.prev_gray[idx])
            else:
                np.maximum(self.gray, self.prev_gray, out=self.gray)
        final_obs: dict[int, np.ndarray] = {}
        finished: dict[int, dict] = {}
        final_rgb: dict[int, np.ndarray] = {}
        for i in range(n):
            self._push(i, self._observe(i))
            out = outcomes[i]
            if out.terminated or out.truncated:
                final_obs[i] = self.stack[i].copy()
                finished[i] = self._episode_stats(i, self.episodes[i], out)
                if self.keep_final_rgb:
                    final_rgb[i] = self.rgb(i)
                self.reset_env(i, restart=self._restart_after(i, out))
        return StepResult(
            self.stack.copy(),
            rewards,
            terminated,
            truncated,
            components,
            final_obs,
            finished,
            final_rgb,
        )

    def _repress(self, buttons: np.ndarray) -> np.ndarray:
        """First-frame buttons: A released where it is still held from the last step and Mario
        could jump (standing or swimming; with only ``jump_unblock``, standing where the last
        step left him), so that the step's A is a new press."""
        held = np.flatnonzero(buttons & self.prev_buttons & BUTTONS["A"])
        self.prev_buttons = buttons
        xs = [ep.x for ep in self.episodes]
        last_x, self.last_x = self.last_x, xs
        if not len(held):
            return buttons
        first = buttons.copy()
        for i in held:
            ram = self.emu.rams[i]
            if self.cfg.jump_repress:
                press = ram[FLOAT_STATE] == 0 or ram[SWIMMING]
            else:
                press = ram[FLOAT_STATE] == 0 and xs[i] == last_x[i]
            if press:
                first[i] &= ~BUTTONS["A"] & 0xFF
        return first

    def _restart_after(self, i: int, out: Outcome) -> bool:
        """In whole-game mode a lost life or a flag ends an episode but the game goes on."""
        if not self.selection[i].game:
            return True
        return out.reason not in ("death", "flag")

    def _episode_stats(self, i: int, ep: Episode, out: Outcome) -> dict:
        return {
            "r": ep.ret,
            "l": ep.steps,
            "x_max": ep.x_max,
            "x_end": ep.x,
            "flag": ep.stages_cleared > 0,
            "stages_cleared": ep.stages_cleared,
            "stage": stage_number(ep.stage),
            "start_stage": stage_number(ep.start_stage),
            "reason": out.reason,
            "time_left": ep.time,
            "restored": bool(self.restored[i]),
            "components": dict(ep.sums),
        }

    def close(self) -> None:
        """Release the native emulators."""
        self.emu.close()
