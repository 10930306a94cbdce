"""Benchmarks behind ``mario-rl bench``: each measures a reference in the same run and reports a ratio."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np

from .envs import EnvConfig, make_vector_env
from .envs.actions import action_bytes
from .envs.emulator import make_emulators
from .envs.stages import parse_stages


def _raw_fps(
    envs: int, workers: int, seconds: float, stage: str, actions: str, backend: str
) -> float:
    """Emulated frames/s of bare emulators of ``backend`` (no processing, nothing drawn that
    the backend can skip), ``workers`` threads."""
    sizes = [len(r) for r in np.array_split(np.arange(envs), workers)]
    emus = []
    for n in sizes:
        emu = make_emulators(backend, n)
        for i in range(n):
            emu.load_state(i, emu.start_state(stage))
        emus.append(emu)
    buttons = action_bytes(actions)
    counts = [0] * workers
    stop = time.perf_counter() + seconds

    def run(k: int) -> None:
        rng = np.random.default_rng(k)
        emu, n = emus[k], sizes[k]
        frames = 0
        while time.perf_counter() < stop:
            emu.step(buttons[rng.integers(len(buttons), size=n)], 4)
            frames += 4 * n
        counts[k] = frames

    start = time.perf_counter()
    threads = [threading.Thread(target=run, args=(k,)) for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    for emu in emus:
        emu.close()
    return sum(counts) / elapsed


def _pipeline(
    config: EnvConfig, envs: int, workers: int, seconds: float, grouped: bool = False
) -> tuple[float, float]:
    """(emulated frames/s, agent steps/s) through the whole vector env with random actions.

    Lock-step ``env.step()``, or with ``grouped`` every worker stepping its own group of envs
    (``step_group``) as fast as it can: how a collector that runs one policy loop per worker
    drives the env, with no wait for the slowest group at each step.
    """
    env = make_vector_env(config, num_envs=envs, workers=workers, seed=0)
    n_actions = env.single_action_space.n
    env.reset(seed=0)
    env.step(np.zeros(envs, np.int64))  # warm-up
    f0 = env.frames
    start = time.perf_counter()

    def run(k: int, size: int, step: Callable[[np.ndarray], Any]) -> int:
        rng = np.random.default_rng(k)
        steps = 0
        while time.perf_counter() - start < seconds:
            step(rng.integers(n_actions, size=size))
            steps += size
        return steps

    if grouped:
        parts = env.map_groups(lambda k: run(k, len(env.ranges[k]), partial(env.step_group, k)))
        steps = sum(parts)
    else:
        steps = run(0, envs, env.step)
    elapsed = time.perf_counter() - start
    fps = (env.frames - f0) / elapsed
    env.close()
    return fps, steps / elapsed


def bench_env(
    config: EnvConfig,
    envs: int = 8,
    workers: int = 1,
    seconds: float = 10.0,
    slot: float = 3.0,
) -> dict[str, Any]:
    """Raw emulator frame rate vs the full pipeline, and the same pipeline on nes-py (the
    reference backend), phases alternated in slots of about ``slot`` seconds so that load
    changes on a shared machine hit all of them alike.

    ``speedup_vs_nes_py`` is the pipeline's frames/s with ``config.emulator`` over the same
    pipeline's with nes-py, same envs and workers, measured in the same rounds. With more than
    one worker three more phases run: the pipeline with each worker stepping its own group
    freely (``grouped_fps``), and the raw emulator and the pipeline with one worker, for the
    speed-ups. ``raw_speedup`` is the bare emulator's own scaling on the machine: the ceiling
    for any pipeline's.
    """
    stage = parse_stages(config.stages).stages[0]
    reference = config.emulator != "nes-py"
    ref_config = replace(config, emulator="nes-py")
    phases = 2 + 3 * (workers > 1) + reference
    rounds = max(1, round(seconds / (phases * slot)))
    t = seconds / (rounds * phases)
    m: dict[str, list[float]] = {
        k: [] for k in ("raw", "pipe", "steps", "grouped", "gsteps", "raw1", "pipe1", "ref")
    }
    for _ in range(rounds):
        m["raw"].append(_raw_fps(envs, workers, t, stage, config.actions, config.emulator))
        fps, sps = _pipeline(config, envs, workers, t)
        m["pipe"].append(fps)
        m["steps"].append(sps)
        if reference:
            m["ref"].append(_pipeline(ref_config, envs, workers, t)[0])
        if workers > 1:
            fps, sps = _pipeline(config, envs, workers, t, grouped=True)
            m["grouped"].append(fps)
            m["gsteps"].append(sps)
            m["raw1"].append(_raw_fps(envs, 1, t, stage, config.actions, config.emulator))
            m["pipe1"].append(_pipeline(config, envs, 1, t)[0])
    mean = {k: float(np.mean(v)) if v else 0.0 for k, v in m.items()}
    out: dict[str, Any] = {
        "emulator": config.emulator,
        "envs": envs,
        "workers": workers,
        "stages": config.stages,
        "raw_fps": round(mean["raw"], 1),
        "pipeline_fps": round(mean["pipe"], 1),
        "steps_per_s": round(mean["steps"], 1),
        "ratio": round(mean["pipe"] / mean["raw"], 3),
        "seconds": seconds,
        "rounds": rounds,
    }
    if reference:
        out |= {
            "nes_py_pipeline_fps": round(mean["ref"], 1),
            "speedup_vs_nes_py": round(mean["pipe"] / mean["ref"], 2),
        }
    if workers > 1:
        out |= {
            "grouped_fps": round(mean["grouped"], 1),
            "grouped_steps_per_s": round(mean["gsteps"], 1),
            "grouped_ratio": round(mean["grouped"] / mean["raw"], 3),
            "raw_fps_one_worker": round(mean["raw1"], 1),
            "pipeline_fps_one_worker": round(mean["pipe1"], 1),
            "speedup_vs_one_worker": round(mean["pipe"] / mean["pipe1"], 3),
            "grouped_speedup_vs_one_worker": round(mean["grouped"] / mean["pipe1"], 3),
            "raw_speedup": round(mean["raw"] / mean["raw1"], 3),
        }
    return out


def bench_train(job: Any, seconds: float = 60.0) -> dict[str, Any]:
    """Training steps/s of a job's configuration vs the env alone with the same envs/threads.

    The env-only reference steps the same vector env with random actions; both halves get
    ``seconds / 2``. Training runs whole updates (collect + learn), at least one.
    """
    import torch

    from .algos.ppo_family import make_ppo
    from .devices import check_device, set_threads

    cfg, env_cfg = job.ppo, job.env
    check_device(cfg.device)
    set_threads(cfg.torch_threads)  # as a training run does
    # The reference steps the env the way the collector will: by groups or all together.
    grouped = cfg.group_collect and job.workers > 1
    env_fps, env_sps = _pipeline(env_cfg, cfg.num_envs, job.workers, seconds / 2, grouped)
    envs = make_vector_env(env_cfg, num_envs=cfg.num_envs, workers=job.workers, seed=cfg.seed)
    ppo = make_ppo(cfg, envs)
    ppo.collect()  # warm-up: allocator, oneDNN kernels, first episodes
    ppo.learn()
    phases = {"env": 0.0, "inference": 0.0, "learn": 0.0, "other": 0.0}
    steps0 = ppo.global_step
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        m = ppo.collect()
        t1 = time.perf_counter()
        ppo.learn()
        t2 = time.perf_counter()
        phases["env"] += m.get("time/env", 0.0)
        phases["inference"] += m.get("time/inference", 0.0) + m.get("time/rnd", 0.0)
        phases["learn"] += t2 - t1
        phases["other"] += (
            (t1 - t0)
            - m.get("time/env", 0.0)
            - m.get("time/inference", 0.0)
            - m.get("time/rnd", 0.0)
        )
        if t2 - start >= seconds / 2:
            break
    elapsed = time.perf_counter() - start
    envs.close()
    train_sps = (ppo.global_step - steps0) / elapsed
    total = sum(phases.values())
    return {
        "algo": cfg.algo,
        "network": cfg.network,
        "size": env_cfg.size,
        "precision": cfg.precision,
        "learns_in": "bfloat16" if ppo.autocast is not None else "float32",
        "envs": cfg.num_envs,
        "workers": job.workers,
        "rollout_steps": cfg.rollout_steps,
        "epochs": cfg.epochs,
        "minibatch_size": cfg.minibatch_size,
        "torch_threads": torch.get_num_threads(),
        "group_collect": grouped,
        "train_steps_per_s": round(train_sps, 1),
        "env_steps_per_s": round(env_sps, 1),
        "env_fps": round(env_fps, 1),
        "ratio": round(train_sps / env_sps, 3),
        "shares": {k: round(v / total, 3) for k, v in phases.items()},
        "updates": ppo.update,
        "seconds": seconds,
    }


def bench_a3g(job: Any, seconds: float = 60.0) -> dict[str, Any]:
    """A3G's training steps/s (all workers) vs the env alone with as many envs per worker.

    The reference steps ``workers * envs_per_worker`` envs on ``workers`` threads with random
    actions, each thread its own envs at its own pace (``step_group``); A3G then runs its real
    worker processes for ``seconds / 2`` after a warm-up that ends with every
    worker's first update (process spawn and imports are not counted).
    """
    from .algos.a3g import A3G
    from .algos.a3g_worker import ErrorMsg, ExitMsg, UpdateMsg

    cfg, env_cfg = job.a3g, job.env
    # Each worker steps its own envs without waiting for the others, as A3G's workers do.
    env_fps, env_sps = _pipeline(
        env_cfg, cfg.workers * cfg.envs_per_worker, cfg.workers, seconds / 2, grouped=True
    )
    a3g = A3G(cfg, env_cfg)
    phases = {"env": 0.0, "inference": 0.0, "learn": 0.0, "sync": 0.0}
    a3g.start()
    try:
        started: set[int] = set()
        deadline = time.monotonic() + 300
        while len(started) < cfg.workers:
            for msg in a3g.poll(0.5):
                if isinstance(msg, UpdateMsg):
                    started.add(msg.rank)
                elif isinstance(msg, ErrorMsg | ExitMsg):
                    raise RuntimeError(f"A3G worker {msg.rank} stopped during the warm-up: {msg}")
            if time.monotonic() > deadline:
                raise RuntimeError("A3G workers did not start within 300 s")
        steps0, start = a3g.global_step, time.perf_counter()
        updates = 0
        while time.perf_counter() - start < seconds / 2:
            for msg in a3g.poll(0.2):
                if isinstance(msg, UpdateMsg):
                    updates += 1
                    for phase in phases:
                        phases[phase] += msg.metrics.get(f"time/{phase}", 0.0)
        elapsed = time.perf_counter() - start
        steps = a3g.global_step - steps0
    finally:
        a3g.stop()
    train_sps = steps / elapsed
    total = sum(phases.values()) or 1.0
    return {
        "algo": "a3g",
        "network": cfg.network,
        "workers": cfg.workers,
        "envs_per_worker": cfg.envs_per_worker,
        "rollout_steps": cfg.rollout_steps,
        "gpu_ids": list(cfg.gpu_ids),
        "train_steps_per_s": round(train_sps, 1),
        "env_steps_per_s": round(env_sps, 1),
        "env_fps": round(env_fps, 1),
        "ratio": round(train_sps / env_sps, 3),
        "shares": {k: round(v / total, 3) for k, v in phases.items()},
        "updates": updates,
        "seconds": seconds,
    }


def measure_learn_speed(
    network: str = "small",
    algo: str = "ppo",
    threads: int = 2,
    num_envs: int = 8,
    rollout_steps: int = 512,
    minibatch_size: int = 256,
    epochs: int = 1,
    obs_shape: tuple[int, int, int] = (4, 84, 84),
    n_actions: int = 7,
    channels_last: bool = True,
    repeats: int = 2,
    precision: str = "fp32",
) -> dict[str, float]:
    """Time the real learn() (forward + backward + Adam) on a random rollout, and batch-``num_envs``
    inference. Returns best-of-``repeats`` numbers: learn samples/s, inference ms per env step,
    and the parameter count. Uses ``threads`` torch threads (restored afterwards)."""
    import torch

    from .algos.ppo_family import make_ppo
    from .config.ppo import PPOConfig
    from .devices import set_threads, torch_threads
    from .rl.actions import sample_actions

    old_threads = torch.get_num_threads()
    cfg = PPOConfig(
        algo=algo,  # type: ignore[arg-type]
        network=network,  # type: ignore[arg-type]
        num_envs=num_envs,
        rollout_steps=rollout_steps,
        minibatch_size=minibatch_size,
        epochs=epochs,
        torch_threads=threads,
        channels_last=channels_last,
        precision=precision,  # type: ignore[arg-type]
    )
    try:
        set_threads(threads)
        ppo = make_ppo(cfg, obs_shape=obs_shape, n_actions=n_actions)
        ppo.fill_random_rollout()
        ppo.learn()  # warm-up (allocator, oneDNN primitive cache)
        best = 0.0
        for _ in range(repeats):
            ppo.fill_random_rollout()
            t0 = time.perf_counter()
            ppo.learn()
            best = max(best, cfg.batch_size * cfg.epochs / (time.perf_counter() - t0))
        x = ppo.rollout.obs[0]
        state = ppo.model.initial_state(num_envs)
        starts = torch.zeros(num_envs, dtype=torch.bool)
        with torch.inference_mode(), torch_threads(cfg.collect_threads):
            for _ in range(10):
                ppo.model(x, state, starts)
            best_inf = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                for _ in range(50):
                    out = ppo.model(x, state, starts)
                    sample_actions(out.logits, ppo.gen)
                best_inf = min(best_inf, (time.perf_counter() - t0) / 50)
        return {
            "learn_samples_per_s": best,
            "inference_ms_per_step": best_inf * 1e3,
            "params": float(sum(p.numel() for p in ppo.model.parameters())),
        }
    finally:
        torch.set_num_threads(old_threads)


def bench_learn(
    job: Any, sizes: list[int], precisions: list[str], repeats: int = 3
) -> dict[str, Any]:
    """The learner alone (the real ``learn()`` on a random rollout): samples/s for each
    observation size x precision, with the job's network, batch, minibatch and threads.

    The first combination is the reference of every ``ratio``; ``steps_per_s_cap`` is what the
    learner alone allows the training loop at the job's epochs (samples/s / epochs).
    """
    from .devices import learn_dtype

    cfg = job.ppo
    rows = []
    for size in sizes:
        for precision in precisions:
            m = measure_learn_speed(
                network=cfg.network,
                algo=cfg.algo,
                threads=cfg.torch_threads,
                num_envs=cfg.num_envs,
                rollout_steps=cfg.rollout_steps,
                minibatch_size=cfg.minibatch_size,
                epochs=cfg.epochs,
                obs_shape=(job.env.frame_stack, size, size),
                channels_last=cfg.channels_last,
                repeats=repeats,
                precision=precision,
            )
            rows.append(
                {
                    "size": size,
                    "precision": precision,
                    "learns_in": "bfloat16" if learn_dtype(precision, cfg.device) else "float32",
                    "learn_samples_per_s": round(m["learn_samples_per_s"], 1),
                    "steps_per_s_cap": round(m["learn_samples_per_s"] / cfg.epochs, 1),
                    "inference_ms_per_step": round(m["inference_ms_per_step"], 3),
                }
            )
    ref = rows[0]["learn_samples_per_s"]
    for row in rows:
        row["ratio"] = round(row["learn_samples_per_s"] / ref, 2)
    return {
        "network": cfg.network,
        "minibatch_size": cfg.minibatch_size,
        "batch": cfg.batch_size,
        "epochs": cfg.epochs,
        "torch_threads": cfg.torch_threads,
        "reference": f"size {rows[0]['size']}, {rows[0]['precision']}",
        "rows": rows,
    }
