"""Videos of a policy playing: full-colour 256x240 GIF or MP4 per stage, and a grid of stages.

Screens are taken during an evaluation (same seeds, same rules: see evaluate.py) as copies,
since the emulator reuses its screen buffer. Each is stored at once as palette indices (the NES
draws from at most 64 colours) and zlib-compressed, a few KB per frame, so even a 32-stage
grid fits in memory. GIFs get that exact palette (no dithering, no colour loss) and Pillow
stores only the changed rectangle of each frame; MP4 is H.264 through imageio-ffmpeg.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..envs import EnvConfig
from ..envs.stages import parse_stages
from .evaluate import Policy, StageReport, evaluate

SCREEN_H, SCREEN_W = 240, 256
NES_FPS = 60
GRID_GAP = 2
"""Pixels of background between grid tiles (even, so H.264's even sizes stay even)."""
FORMATS = ("gif", "mp4")
SHRINKS = (1, 2, 4)
"""Allowed tile shrink factors: they keep 256x240 sizes even."""


class Palette:
    """RGB screens to palette indices through a 2^24-entry table grown as colours appear."""

    MAX_COLOURS = 255  # index 255 marks "not seen yet"

    def __init__(self) -> None:
        self._lut = np.full(1 << 24, 255, np.uint8)
        self._colours: list[tuple[int, int, int]] = []
        self.index(np.zeros((1, 1, 3), np.uint8))  # black first: the grid's background

    @property
    def colours(self) -> np.ndarray:
        """(k, 3) uint8 RGB of indices 0..k-1."""
        return np.array(self._colours, np.uint8).reshape(-1, 3)

    def index(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (H, W) uint8 palette indices."""
        packed = (
            rgb[..., 0].astype(np.uint32) << 16 | rgb[..., 1].astype(np.uint32) << 8 | rgb[..., 2]
        )
        idx = self._lut[packed]
        missing = idx == 255
        if missing.any():
            for c in np.unique(packed[missing]):
                if len(self._colours) >= self.MAX_COLOURS:
                    raise ValueError("more than 255 colours: not an NES screen")
                self._lut[c] = len(self._colours)
                self._colours.append((int(c) >> 16 & 255, int(c) >> 8 & 255, int(c) & 255))
            idx = self._lut[packed]
        return idx

    def rgb(self, idx: np.ndarray) -> np.ndarray:
        """Palette indices back to (H, W, 3) RGB."""
        return self.colours[idx]


@dataclass
class Clip:
    """Frames of one video as compressed palette-index images."""

    name: str
    shape: tuple[int, int] = (SCREEN_H, SCREEN_W)
    _frames: list[bytes] = field(default_factory=list, repr=False)
    _last: bytes | None = field(default=None, repr=False)
    _last_kept: bool = field(default=True, repr=False)

    def add(self, idx: np.ndarray, keep: bool = True) -> None:
        """Append a frame (``keep=False``: only remembered as a candidate last frame)."""
        data = zlib.compress(np.ascontiguousarray(idx, np.uint8).tobytes(), 1)
        if keep:
            self._frames.append(data)
        self._last, self._last_kept = data, keep

    def finish(self) -> None:
        """Make sure the final screen (death, flag) is the clip's last frame."""
        if self._last is not None and not self._last_kept:
            self._frames.append(self._last)
            self._last_kept = True

    def __len__(self) -> int:
        return len(self._frames)

    def frame(self, k: int) -> np.ndarray:
        """Frame ``k`` as (H, W) uint8 palette indices."""
        return np.frombuffer(zlib.decompress(self._frames[k]), np.uint8).reshape(self.shape)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self.frame(k) for k in range(len(self)))


class Recorder:
    """A FrameSink for evaluate(): keeps every ``every``-th screen of each job, shrunk by
    ``shrink`` (nearest pixel, so palette indices stay exact), plus each episode's last."""

    def __init__(self, names: Sequence[str], every: int = 1, shrink: int = 1) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if shrink not in SHRINKS:
            raise ValueError(f"shrink must be one of {SHRINKS}, got {shrink}")
        self.palette = Palette()
        self.every = every
        self.shrink = shrink
        shape = (SCREEN_H // shrink, SCREEN_W // shrink)
        self.clips = [Clip(name, shape) for name in names]
        self._seen = [0] * len(names)

    def __call__(self, job: int, rgb: np.ndarray) -> None:
        if self.shrink > 1:
            rgb = rgb[:: self.shrink, :: self.shrink]
        self.clips[job].add(self.palette.index(rgb), keep=self._seen[job] % self.every == 0)
        self._seen[job] += 1

    def finish(self) -> list[Clip]:
        """The clips, each ending on its episode's final screen."""
        for c in self.clips:
            c.finish()
        return self.clips


def clip_names(stages: str, episodes: int) -> list[str]:
    """File stems of the videos evaluate() jobs become: ``1-1`` (or ``1-1-ep2``), ``game``."""
    sel = parse_stages(stages)
    keys = ["game"] if sel.game else list(sel.stages)
    return [k if episodes == 1 else f"{k}-ep{e + 1}" for k in keys for e in range(episodes)]


def record(
    policy: Policy,
    env_config: EnvConfig,
    stages: str,
    episodes: int = 1,
    seed: int = 0,
    workers: int = 1,
    every: int = 1,
    shrink: int = 1,
    max_envs: int = 32,
) -> tuple[list[Clip], Palette, dict[str, StageReport]]:
    """Play and film ``episodes`` evaluation episodes per stage (``game``: whole-game runs).

    Returns one clip per episode (named by :func:`clip_names`), their palette, and the
    evaluation reports of the same episodes.
    """
    rec = Recorder(clip_names(stages, episodes), every=every, shrink=shrink)
    reports = evaluate(
        policy, env_config, stages, episodes, seed=seed, workers=workers, max_envs=max_envs,
        on_frame=rec,
    )  # fmt: skip
    return rec.finish(), rec.palette, reports


def realtime_fps(env_config: EnvConfig, every: int = 1) -> float:
    """Frames per second that play a recording at the game's own speed."""
    return NES_FPS / (env_config.frame_skip * every)


# -- layout --------------------------------------------------------------------------------------
def grid_shape(n: int) -> tuple[int, int]:
    """(rows, cols) for ``n`` tiles: one row up to 4, else 4 rows (32 stages: 8 columns, one
    world per column, its stages top to bottom)."""
    if n < 1:
        raise ValueError("a grid needs at least one clip")
    rows = 1 if n <= 4 else 4
    return rows, math.ceil(n / rows)


def grid_position(k: int, n: int) -> tuple[int, int]:
    """(row, col) of tile ``k`` of ``n``: column by column."""
    rows, _ = grid_shape(n)
    return k % rows, k // rows


def grid_frames(clips: Sequence[Clip], gap: int = GRID_GAP) -> Iterator[np.ndarray]:
    """Frames of all clips side by side; a clip that ended shows its last frame."""
    rows, cols = grid_shape(len(clips))
    h, w = clips[0].shape
    if any(c.shape != (h, w) for c in clips):
        raise ValueError("grid clips must have the same frame size")
    canvas = np.zeros((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap), np.uint8)
    for t in range(max(len(c) for c in clips)):
        for k, clip in enumerate(clips):
            if t >= len(clip) and t > 0:
                continue  # already shows its last frame
            r, c = grid_position(k, len(clips))
            y, x = r * (h + gap), c * (w + gap)
            canvas[y : y + h, x : x + w] = clip.frame(min(t, len(clip) - 1))
        yield canvas.copy()


# -- writers -------------------------------------------------------------------------------------
def write_gif(path: Path, frames: Iterable[np.ndarray], palette: Palette, fps: float) -> Path:
    """An endlessly looping GIF of palette-index frames (exact colours).

    The frames must have been indexed by ``palette`` before writing starts: its colours are
    the GIF's one global colour table.
    """
    from PIL import Image

    colours = palette.colours
    pal = colours.tobytes()
    # GIF delays are whole centiseconds; browsers slow down anything under 20 ms.
    duration = max(20, 10 * round(100 / fps))

    def image(idx: np.ndarray) -> Image.Image:
        if idx.max() >= len(colours):
            raise ValueError("a frame uses colours added to the palette after writing began")
        im = Image.frombytes("P", (idx.shape[1], idx.shape[0]), np.ascontiguousarray(idx))
        im.putpalette(pal, rawmode="RGB")
        return im

    it = iter(frames)
    first = image(next(it))
    first.save(
        path,
        save_all=True,
        append_images=(image(f) for f in it),
        duration=duration,
        loop=0,
        optimize=False,
        disposal=1,
    )
    return path


def write_mp4(path: Path, frames: Iterable[np.ndarray], palette: Palette, fps: float) -> Path:
    """An H.264 MP4 (yuv420p, plays everywhere) of palette-index frames."""
    import imageio_ffmpeg

    writer = None
    try:
        for idx in frames:
            if writer is None:
                writer = imageio_ffmpeg.write_frames(
                    str(path),
                    (idx.shape[1], idx.shape[0]),
                    fps=fps,
                    codec="libx264",
                    pix_fmt_out="yuv420p",
                    quality=7,
                    macro_block_size=2,
                    ffmpeg_log_level="error",
                )
                writer.send(None)
            writer.send(np.ascontiguousarray(palette.rgb(idx)))
    finally:
        if writer is not None:
            writer.close()
    return path


def write_video(
    path: Path, frames: Iterable[np.ndarray], palette: Palette, fps: float, fmt: str
) -> Path:
    """Write ``frames`` as ``fmt`` ('gif' or 'mp4') at ``path``."""
    if fmt == "gif":
        return write_gif(path, frames, palette, fps)
    if fmt == "mp4":
        return write_mp4(path, frames, palette, fps)
    raise ValueError(f"unknown video format {fmt!r}; expected one of {', '.join(FORMATS)}")


def save_clips(
    clips: Sequence[Clip], palette: Palette, out_dir: Path, fmt: str, fps: float
) -> list[Path]:
    """One video per clip: ``out_dir/<name>.<fmt>``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return [write_video(out_dir / f"{c.name}.{fmt}", c, palette, fps, fmt) for c in clips]


def save_grid(clips: Sequence[Clip], palette: Palette, path: Path, fmt: str, fps: float) -> Path:
    """One video of all clips side by side (see :func:`grid_shape`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_video(path, grid_frames(clips), palette, fps, fmt)
