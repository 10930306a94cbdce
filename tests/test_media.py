"""Videos: exact palettes, frame counts and sizes of decoded GIF/MP4, grid layout and padding,
and the recording hooks of the envs (the last screen is the episode's, not the next start)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mario_rl.envs import EnvConfig, MarioEnv, MarioVectorEnv, action_meanings
from mario_rl.evaluation.media import (
    SCREEN_H,
    SCREEN_W,
    Clip,
    Palette,
    Recorder,
    clip_names,
    grid_frames,
    grid_position,
    grid_shape,
    record,
    save_clips,
    save_grid,
    write_gif,
    write_mp4,
)

RIGHT_JUMP = action_meanings("simple").index("right+A")


def right_jump(obs, first):
    return np.full(len(obs), RIGHT_JUMP)


def decode_gif(path) -> tuple[tuple[int, int], int, int, list[np.ndarray]]:
    """(size, frames, total duration ms, RGB frames) of a GIF."""
    im = Image.open(path)
    frames, total = [], 0
    for k in range(im.n_frames):
        im.seek(k)
        total += im.info["duration"]
        frames.append(np.asarray(im.convert("RGB")))
    return im.size, im.n_frames, total, frames


def solid_clip(name: str, colours: list[tuple[int, int, int]], palette: Palette, shape=(8, 10)):
    clip = Clip(name, shape)
    for c in colours:
        clip.add(palette.index(np.broadcast_to(np.array(c, np.uint8), (*shape, 3))))
    return clip


def test_palette_is_exact_and_grows_as_colours_appear():
    p = Palette()
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (40, 3), dtype=np.uint8)
    img = colours[rng.integers(0, 40, (30, 20))]
    idx = p.index(img)
    assert idx.dtype == np.uint8 and np.array_equal(p.rgb(idx), img)
    n = len(p.colours)
    assert np.array_equal(p.index(img), idx) and len(p.colours) == n  # stable, nothing new


def test_recorder_keeps_every_kth_frame_and_always_the_last():
    rec = Recorder(["a"], every=3)
    for k in range(7):  # frames 0..6: kept 0, 3, 6
        rec(0, np.full((SCREEN_H, SCREEN_W, 3), k * 10, np.uint8))
    rec2 = Recorder(["b"], every=3, shrink=2)
    for k in range(5):  # kept 0, 3, then the last (4)
        rec2(0, np.full((SCREEN_H, SCREEN_W, 3), k * 10, np.uint8))
    (a,) = rec.finish()
    (b,) = rec2.finish()
    assert [rec.palette.rgb(f)[0, 0, 0] for f in a] == [0, 30, 60]
    assert [rec2.palette.rgb(f)[0, 0, 0] for f in b] == [0, 30, 40]
    assert b.frame(0).shape == (SCREEN_H // 2, SCREEN_W // 2)


def test_grid_layout_puts_worlds_in_columns_and_stages_in_rows():
    assert grid_shape(1) == (1, 1) and grid_shape(3) == (1, 3) and grid_shape(32) == (4, 8)
    assert grid_shape(5) == (4, 2)
    assert grid_position(0, 32) == (0, 0)  # 1-1 top left
    assert grid_position(3, 32) == (3, 0)  # 1-4 bottom of the first column
    assert grid_position(4, 32) == (0, 1)  # 2-1 top of the second
    assert grid_position(31, 32) == (3, 7)  # 8-4 bottom right
    with pytest.raises(ValueError):
        grid_shape(0)


def test_grid_frames_tile_the_clips_and_pad_short_ones_with_their_last_frame():
    p = Palette()
    red, green, blue, white = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
    clips = [
        solid_clip("long", [red, green, blue], p),
        solid_clip("short", [white], p),
    ]
    frames = [p.rgb(f) for f in grid_frames(clips, gap=2)]
    assert len(frames) == 3 and frames[0].shape == (8, 10 + 2 + 10, 3)
    assert [tuple(f[0, 0]) for f in frames] == [red, green, blue]
    assert all(tuple(f[0, 12]) == white for f in frames)  # the short clip holds its last frame
    assert all(tuple(f[0, 10]) == (0, 0, 0) for f in frames)  # the gap is black


def test_gif_decodes_with_the_right_size_frames_and_timing(tmp_path):
    p = Palette()
    rng = np.random.default_rng(1)
    screens = [rng.integers(0, 4, (SCREEN_H, SCREEN_W)) * 60 for _ in range(6)]
    rgb = [np.stack([s, s, 255 - s], -1).astype(np.uint8) for s in screens]
    path = write_gif(tmp_path / "x.gif", [p.index(f) for f in rgb], p, fps=10)
    size, n, total, decoded = decode_gif(path)
    assert size == (SCREEN_W, SCREEN_H) and n == 6 and total == 600
    assert all(np.array_equal(d, f) for d, f in zip(decoded, rgb, strict=True))  # exact colours


def test_mp4_decodes_with_the_right_size_and_frame_count(tmp_path):
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    p = Palette()
    frames = [
        np.full((SCREEN_H, SCREEN_W, 3), (k * 20, 100, 200 - k * 20), np.uint8) for k in range(9)
    ]
    path = write_mp4(tmp_path / "x.mp4", [p.index(f) for f in frames], p, fps=15)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    decoded = [np.frombuffer(b, np.uint8).reshape(SCREEN_H, SCREEN_W, 3) for b in reader]
    assert tuple(meta["size"]) == (SCREEN_W, SCREEN_H) and len(decoded) == 9
    assert np.abs(decoded[4].astype(int) - frames[4]).mean() < 8  # lossy, but the same picture


def test_vector_env_reports_the_last_screen_before_the_autoreset():
    env = MarioVectorEnv(EnvConfig(noop_max=0), num_envs=1)
    env.keep_final_rgb(True)
    try:
        env.reset(seed=0)
        start = env.rgb(0)
        while True:
            _, _, term, trunc, info = env.step(np.array([RIGHT_JUMP]))
            if term[0] or trunc[0]:
                break
            assert "final_rgb" not in info
        last = info["final_rgb"][0]
        assert last.shape == (SCREEN_H, SCREEN_W, 3)
        assert np.array_equal(env.rgb(0), start)  # already the next episode's start
        assert not np.array_equal(last, start)
    finally:
        env.close()


def test_single_env_renders_the_finished_episode_until_reset():
    env = MarioEnv(EnvConfig(noop_max=0), render_mode="rgb_array")
    try:
        env.reset(seed=0)
        start = env.render()
        while True:
            *_, term, trunc, _ = env.step(RIGHT_JUMP)
            if term or trunc:
                break
        assert not np.array_equal(env.render(), start)
        env.reset()
        assert np.array_equal(env.render(), start)
    finally:
        env.close()


def test_record_films_every_step_of_each_episode(tmp_path):
    cfg = EnvConfig(noop_max=0)
    clips, palette, reports = record(right_jump, cfg, "1-1,1-2", episodes=1, workers=2)
    assert [c.name for c in clips] == ["1-1", "1-2"] == clip_names("1-1,1-2", 1)
    for clip in clips:
        (ep,) = reports[clip.name].episodes
        assert len(clip) == ep.steps + 1  # the start, then one screen per agent step
    paths = save_clips(clips, palette, tmp_path / "v", "gif", fps=10)
    for clip, path in zip(clips, paths, strict=True):
        size, n, total, _ = decode_gif(path)
        assert path.name == f"{clip.name}.gif" and size == (SCREEN_W, SCREEN_H)
        # Pillow merges identical consecutive frames into one longer frame; time is kept.
        assert n <= len(clip) and total == 100 * len(clip)
    grid = save_grid(clips, palette, tmp_path / "v" / "grid.gif", "gif", fps=10)
    size, _, total, _ = decode_gif(grid)
    assert size == (2 * SCREEN_W + 2, SCREEN_H) and total == 100 * max(len(c) for c in clips)
