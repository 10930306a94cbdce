"""A3G: loss and targets by hand, shaped rewards in rollouts, episode resets, shared-memory
optimizers stepped by two processes, gradients reaching the shared model, stage assignment and
curriculum, checkpoint round trip, and a 2-worker run end to end through the CLI (with eval and
resume)."""

from __future__ import annotations

import itertools
import json
import math
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from fake_env import FakeVectorEnv
from mario_rl.algos.a3g import A3G
from mario_rl.algos.a3g_stages import (
    Curriculum,
    assign_stages,
    curriculum_selection,
    plan_workers,
    publish_weights,
    train_stages_note,
    train_stages_spec,
    untrained_stages,
)
from mario_rl.algos.a3g_worker import (
    A3GRollout,
    EpisodeMsg,
    ErrorMsg,
    ExitMsg,
    UpdateMsg,
    Worker,
    push_gradients,
)
from mario_rl.algos.shared_optim import SharedAdam, SharedRMSprop, make_optimizer, state_is_shared
from mario_rl.cli import main
from mario_rl.config.a3g import A3GConfig
from mario_rl.devices import device_of
from mario_rl.envs import STAGES, EnvConfig, MarioVectorEnv, parse_stages
from mario_rl.io.checkpoint import load_checkpoint, save_checkpoint
from mario_rl.models import ActorCritic, ModelSpec
from mario_rl.rl.advantages import a3g_targets
from mario_rl.rl.losses import a3g_loss
from shipped import assert_env_recipe

TINY_SPEC = ModelSpec("small", (1, 36, 36), 3, recurrent=True, hidden_size=16)


def tiny_cfg(**kw) -> A3GConfig:
    base = dict(rollout_steps=8, lstm_hidden=16, total_steps=1000, seed=3, workers=2)
    return A3GConfig(**(base | kw))


def shared_tiny_model(seed: int = 0) -> ActorCritic:
    torch.manual_seed(seed)
    model = ActorCritic(TINY_SPEC)
    model.share_memory()
    return model


@pytest.fixture(autouse=True)
def _one_thread():
    # Tests run beside other jobs on 2 cores; OpenMP spinning on a busy core is slow.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# -- targets and loss by hand ----------------------------------------------------------------
def test_targets_hand_computed() -> None:
    r = torch.tensor([1.0, 0.0, 2.0])
    v = torch.tensor([0.5, 1.0, 1.5])
    nv = torch.tensor([1.0, 1.5, 3.0])  # V(s1), V(s2), bootstrap V(s3)
    no = torch.zeros(3, dtype=torch.bool)
    adv, ret = a3g_targets(r, v, nv, no, no, gamma=0.9, lam=0.5)
    # deltas 1.4, 0.35, 3.2; gamma*lam = 0.45
    a2 = 3.2
    a1 = 0.35 + 0.45 * a2
    a0 = 1.4 + 0.45 * a1
    torch.testing.assert_close(adv, torch.tensor([a0, a1, a2]))
    # n-step returns: R3 = 3.0 (bootstrap), R2 = 2 + .9*3, R1 = 0 + .9*R2, R0 = 1 + .9*R1
    r2 = 2 + 0.9 * 3.0
    r1 = 0.9 * r2
    torch.testing.assert_close(ret, torch.tensor([1 + 0.9 * r1, r1, r2]))
    # A termination at t=1 cuts the bootstrap and the chains there.
    term = torch.tensor([False, True, False])
    adv, ret = a3g_targets(r, v, nv, term, term, gamma=0.9, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([1.4 + 0.45 * -1.0, -1.0, 3.2]))
    torch.testing.assert_close(ret, torch.tensor([1.0, 0.0, 2 + 0.9 * 3.0]))


def test_loss_hand_computed() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]], requires_grad=True)
    values = torch.tensor([1.0, 2.0], requires_grad=True)
    actions = torch.tensor([1, 0])
    adv = torch.tensor([2.0, -1.0])
    ret = torch.tensor([3.0, 1.0])
    terms = a3g_loss(logits, values, actions, adv, ret, ent_coef=0.1, vf_coef=0.5)
    # pi0 = (1/4, 3/4), a=1: log(3/4); pi1 = (1/2, 1/2), a=0: log(1/2)
    policy = -(math.log(0.75) * 2.0) - (math.log(0.5) * -1.0)
    h0 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    h1 = math.log(2.0)
    value = 0.5 * (3 - 1) ** 2 + 0.5 * (1 - 2) ** 2
    expected = policy - 0.1 * (h0 + h1) + 0.5 * value
    assert float(terms["loss"].detach()) == pytest.approx(expected, rel=1e-5)
    assert float(terms["policy"]) == pytest.approx(policy / 2, rel=1e-5)
    assert float(terms["value"]) == pytest.approx(value / 2, rel=1e-5)
    assert float(terms["entropy"]) == pytest.approx((h0 + h1) / 2, rel=1e-5)
    terms["loss"].backward()
    # dL/dV = -vf_coef * (R - V) per step; advantages and returns carry no gradient.
    torch.testing.assert_close(values.grad, torch.tensor([-1.0, 0.5]))


# -- rollouts on the real env ----------------------------------------------------------------
def _right_only_worker(cfg: A3GConfig, env_cfg: EnvConfig) -> Worker:
    """A worker whose policy always presses right (a deterministic walk into the first Goomba)."""
    env = MarioVectorEnv(env_cfg, num_envs=cfg.envs_per_worker, workers=1, seed=0)
    torch.manual_seed(0)
    model = ActorCritic(ModelSpec("small", (4, 84, 84), 5, recurrent=True, hidden_size=16))
    with torch.no_grad():
        model.actor.weight.zero_()
        model.actor.bias.fill_(-30.0)
        model.actor.bias[1] = 30.0
    model.share_memory()
    opt = make_optimizer(cfg, model.parameters(), shared=True)
    return Worker(cfg, env, model, opt)


def test_rollout_carries_the_shaped_reward() -> None:
    cfg = tiny_cfg(rollout_steps=20)
    worker = _right_only_worker(cfg, EnvConfig(stages="1-1", actions="right-only", noop_max=0))
    try:
        ro = worker.rollout()
        # The seed's defect: training rewards were always 0. Walking right earns progress.
        assert ro.rewards.abs().sum() > 0
        assert (ro.rewards >= 0).all() and ro.rewards.max() > 0
        assert float(ro.rewards.sum()) == pytest.approx(sum(ro.components.values()), abs=1e-4)
        assert ro.components["progress"] > 0
        metrics = worker.learn(ro)
        assert all(math.isfinite(v) for v in metrics.values())
    finally:
        worker.close()


def test_episode_state_is_reset_between_episodes() -> None:
    cfg = tiny_cfg(rollout_steps=20)
    worker = _right_only_worker(cfg, EnvConfig(stages="1-1", actions="right-only", noop_max=0))
    try:
        rollouts = [worker.rollout() for _ in range(4)]
    finally:
        worker.close()
    # One env per worker: column 0 of each (T, N) rollout field.
    rewards = torch.cat([ro.rewards[:, 0] for ro in rollouts])
    dones = torch.cat([ro.dones[:, 0] for ro in rollouts])
    starts = torch.cat([ro.starts[:, 0] for ro in rollouts])
    episodes = [ep for ro in rollouts for ep in ro.episodes]
    ends = torch.nonzero(dones).flatten().tolist()
    assert len(episodes) == len(ends) >= 2
    # Each episode's record covers that episode alone, and the penalty of one death does not
    # follow Mario into the next episode (the seed never reset its flag/penalty state).
    bounds = [0, *[e + 1 for e in ends]]
    for ep, (a, b) in zip(episodes, itertools.pairwise(bounds), strict=True):
        assert ep["reason"] == "death" and not ep["flag"]
        assert ep["l"] == b - a
        assert ep["r"] == pytest.approx(float(rewards[a:b].sum()), abs=1e-4)
        assert rewards[b - 1] < 0 and (rewards[a : b - 1] >= 0).all()
    first = rewards[bounds[0] : bounds[1]]
    second = rewards[bounds[1] : bounds[2]]
    torch.testing.assert_close(first, second)  # same start, same actions: same rewards
    # The step after each end starts an episode: the LSTM state is zeroed there.
    for e in ends:
        if e + 1 < len(starts):
            assert starts[e + 1]
    assert starts.sum() == len([e for e in ends if e + 1 < len(starts)]) + 1


_WORKER_ENV_CHILD = """
import json, sys, threading
from mario_rl.envs import STAGES, EnvConfig, MarioVectorEnv
from mario_rl.envs.emulator import native_start_state

made = []

def watch(frame, event, arg):
    # Any Python-level constructor of nes-py or gym-super-mario-bros (NESEnv, SuperMarioBrosEnv,
    # VectorNESEmulator, ...) or gymnasium.make would show here.
    code = frame.f_code
    path = code.co_filename.replace("\\\\", "/")
    theirs = "/nes_py/" in path or "/gym_super_mario_bros/" in path
    if event == "call" and (
        (theirs and code.co_name in ("__init__", "__new__", "make"))
        or (path.endswith("gymnasium/envs/registration.py") and code.co_name == "make")
    ):
        made.append(f"{path.rsplit('/', 2)[-2]}.{code.co_qualname}")

threading.setprofile_all_threads(watch)
env = MarioVectorEnv(EnvConfig(stages="4-2,8-4", emulator="native"), num_envs=1, workers=1, seed=0)
obs, info = env.reset(seed=0)
threading.setprofile_all_threads(None)
print(json.dumps({
    "stage": STAGES[int(info["stage"][0])],
    "native_starts": native_start_state.cache_info().currsize,
    "made": made,
    "modules": sorted(m for m in sys.modules if m.split(".")[0] in (
        "gym", "nes_py", "gym_super_mario_bros", "mario_rl")),
}))
env.close()
"""


def test_a_worker_env_starts_its_stage_from_the_native_core_alone() -> None:
    """What an A3G worker builds (one native-core env on a list of stages) starts its stage from
    the native core's own start state, in a fresh process, with no gym env or nes-py emulator.

    Finding the ROM file still imports gym_super_mario_bros (``emulator.rom_path``, and its
    ``decode_target`` for the stage's RAM values); that package's import brings in nes_py and
    registers gymnasium ids, but constructs nothing."""
    r = subprocess.run(
        [sys.executable, "-c", _WORKER_ENV_CHILD], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["stage"] in ("4-2", "8-4")
    assert got["native_starts"] == 1  # made by the native core (cached per process)
    assert got["made"] == []  # no env class, no nes-py emulator, no gymnasium.make
    assert "gym" not in got["modules"]  # the old gym package
    # The nes-py backend's start states come from a SuperMarioBrosEnv: not loaded here.
    assert "mario_rl.envs.snapshots" not in got["modules"]


def test_a_worker_with_several_envs_plays_them_together() -> None:
    cfg = tiny_cfg(rollout_steps=30, envs_per_worker=3)
    worker = _right_only_worker(cfg, EnvConfig(stages="1-1", actions="right-only", noop_max=0))
    try:
        rollouts = [worker.rollout() for _ in range(3)]
        metrics, _ = worker.update()
    finally:
        worker.close()
    ro = rollouts[0]
    assert ro.obs.shape[:2] == (30, 3) and ro.actions.shape == (30, 3)
    assert ro.init_state[0].shape == (3, 16) and ro.last_value.shape == (3,)
    assert worker.steps == 4 * 30 * 3 and metrics["steps"] == 90
    # Same start, same actions: the three envs walk into the Goomba in lock-step, and each
    # env's episode is recorded once, with that env's own steps.
    rewards = torch.cat([r.rewards for r in rollouts])
    dones = torch.cat([r.dones for r in rollouts])
    for i in (1, 2):
        torch.testing.assert_close(rewards[:, i], rewards[:, 0])
        assert torch.equal(dones[:, i], dones[:, 0])
    episodes = [ep for r in rollouts for ep in r.episodes]
    ends = torch.nonzero(dones[:, 0]).flatten().tolist()
    assert len(ends) >= 1 and len(episodes) == 3 * len(ends)
    assert [ep["l"] for ep in episodes[:3]] == [ends[0] + 1] * 3
    assert all(math.isfinite(v) for v in metrics.values())


def test_an_update_of_n_envs_is_the_mean_of_their_single_env_updates() -> None:
    """The batched loss sums over steps and averages over envs: its gradient is the mean of the
    gradients of each env's rollout taken alone (the seed's one-env update)."""
    cfg = tiny_cfg(rollout_steps=12, envs_per_worker=2, max_grad_norm=0.0)
    env = FakeVectorEnv(num_envs=2, size=84, n_actions=5, seed=1, death_p=0.2, max_len=7)
    torch.manual_seed(0)
    shared = ActorCritic(ModelSpec("small", (4, 84, 84), 5, recurrent=True, hidden_size=16))
    shared.share_memory()
    opt = make_optimizer(cfg, shared.parameters(), shared=True)
    for group in opt.param_groups:
        group["lr"] = 0.0
    worker = Worker(cfg, env, shared, opt, seed=5)
    worker.optimizer = torch.optim.SGD(shared.parameters(), lr=0.0)
    ro = worker.rollout()
    assert ro.dones.any()
    worker.learn(ro)
    batched = [p.grad.clone() for p in shared.parameters()]
    singles = []
    worker.n = 1
    for i in range(2):
        cols = {
            name: getattr(ro, name)[:, i : i + 1]
            for name in (
                "obs",
                "actions",
                "rewards",
                "terminations",
                "dones",
                "starts",
                "next_values",
            )
        }
        one = A3GRollout(
            **cols,
            init_state=(ro.init_state[0][i : i + 1], ro.init_state[1][i : i + 1]),
            last_value=ro.last_value[i : i + 1],
        )
        worker.learn(one)
        singles.append([p.grad.clone() for p in shared.parameters()])
    for b, s0, s1 in zip(batched, singles[0], singles[1], strict=True):
        torch.testing.assert_close(b, (s0 + s1) / 2, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("norm_adv", [False, True])
def test_norm_adv_normalises_the_policys_advantages_over_an_update(norm_adv, monkeypatch) -> None:
    import mario_rl.algos.a3g_worker as worker_module

    seen: list[torch.Tensor] = []

    def spy(logits, values, actions, adv, returns, ent_coef, vf_coef):
        seen.append(adv.detach().clone())
        return a3g_loss(logits, values, actions, adv, returns, ent_coef, vf_coef)

    monkeypatch.setattr(worker_module, "a3g_loss", spy)
    cfg = tiny_cfg(rollout_steps=10, envs_per_worker=2, norm_adv=norm_adv)
    env = FakeVectorEnv(num_envs=2, size=84, n_actions=5, seed=1, death_p=0.2, max_len=7)
    torch.manual_seed(0)
    shared = ActorCritic(ModelSpec("small", (4, 84, 84), 5, recurrent=True, hidden_size=16))
    shared.share_memory()
    worker = Worker(cfg, env, shared, make_optimizer(cfg, shared.parameters(), shared=True))
    worker.learn(worker.rollout())
    (adv,) = seen
    assert adv.shape == (20,)
    if norm_adv:
        assert abs(float(adv.mean())) < 1e-5 and float(adv.std()) == pytest.approx(1.0, abs=1e-4)
    else:
        assert abs(float(adv.std()) - 1.0) > 1e-3  # the raw advantages, as the seed takes them


def test_targets_of_n_envs_are_each_envs_targets() -> None:
    g = torch.Generator().manual_seed(0)
    rewards, values, nxt = (torch.randn(9, 3, generator=g) for _ in range(3))
    terms = torch.rand(9, 3, generator=g) < 0.2
    dones = terms | (torch.rand(9, 3, generator=g) < 0.2)
    adv, ret = a3g_targets(rewards, values, nxt, terms, dones, gamma=0.9, lam=0.95)
    for i in range(3):
        cols = (rewards[:, i], values[:, i], nxt[:, i], terms[:, i], dones[:, i])
        a, r = a3g_targets(*cols, gamma=0.9, lam=0.95)
        torch.testing.assert_close(adv[:, i], a)
        torch.testing.assert_close(ret[:, i], r)


def test_a_whole_game_worker_plays_on_into_the_next_stage(monkeypatch) -> None:
    """--stages game: after the flag of 1-1 the worker's next episode is 1-2, as the seed's
    whole-game workers play (the actions are a recorded run to 1-1's flag, then no-ops)."""
    import mario_rl.algos.a3g_worker as worker_module

    run = [
        int(c) for c in (Path(__file__).parent / "data" / "1-1-flag.actions").read_text().strip()
    ]
    played = iter(run)

    def replay(logits, generator=None):
        a = torch.tensor([next(played, 0)] * logits.shape[0])
        return a, torch.zeros(len(a))

    monkeypatch.setattr(worker_module, "sample_actions", replay)
    cfg = tiny_cfg(rollout_steps=50)
    env_cfg = EnvConfig(stages="game", actions="right-only", noop_max=0)
    worker = _right_only_worker(cfg, env_cfg)
    episodes: list[dict] = []
    try:
        for _ in range(30):
            episodes += worker.rollout().episodes
            if len(episodes) >= 2:
                break
    finally:
        worker.close()
    first, second = episodes[:2]
    assert (first["reason"], first["stage"], first["stages_cleared"]) == ("flag", "1-1", 1)
    assert first["start_stage"] == "1-1" and first["x_max"] > 3000
    assert (second["start_stage"], second["stage"], second["stages_cleared"]) == ("1-2", "1-2", 0)


# -- shared optimizers -------------------------------------------------------------------------
def _reference(kind: str, model: ActorCritic) -> tuple[ActorCritic, torch.optim.Optimizer]:
    reference = ActorCritic(TINY_SPEC)
    reference.load_state_dict(model.state_dict())
    if kind == "rmsprop":
        return reference, torch.optim.RMSprop(reference.parameters(), lr=1e-2, eps=0.1)
    amsgrad = kind == "amsgrad"
    return reference, torch.optim.Adam(reference.parameters(), lr=1e-2, eps=1e-3, amsgrad=amsgrad)


def _assert_same_state(opt, model, ref_opt, reference, steps: int) -> None:
    for p, rp in zip(model.parameters(), reference.parameters(), strict=True):
        st, ref = opt.state[p], ref_opt.state[rp]
        assert float(st["step"]) == steps
        assert set(st) == set(ref)
        for k, v in ref.items():
            torch.testing.assert_close(st[k], v)
        torch.testing.assert_close(p.detach(), rp.detach())


@pytest.mark.parametrize("kind", ["adam", "amsgrad", "rmsprop"])
def test_shared_optimizers_allocate_shared_state_and_match_torch(kind) -> None:
    model = shared_tiny_model()
    reference, ref_opt = _reference(kind, model)
    if kind == "rmsprop":
        opt: torch.optim.Optimizer = SharedRMSprop(model.parameters(), lr=1e-2)
    else:
        opt = SharedAdam(model.parameters(), lr=1e-2, amsgrad=kind == "amsgrad")
    # State exists before any step, in shared memory; steps keep it there and follow torch.
    assert state_is_shared(opt)
    for value in (1.0, -2.0, 0.5):
        for m in (model, reference):
            for p in m.parameters():
                p.grad = torch.full_like(p, value)
        opt.step()
        ref_opt.step()
    _assert_same_state(opt, model, ref_opt, reference, 3)
    assert state_is_shared(opt)


def test_shared_optimizer_is_updated_by_two_processes() -> None:
    from a3g_children import hogwild_steps

    model = shared_tiny_model()
    reference, ref_opt = _reference("amsgrad", model)
    opt = SharedAdam(model.parameters(), lr=1e-2, amsgrad=True)
    ctx = mp.get_context("spawn")
    first_done, second_done = ctx.Event(), ctx.Event()
    n = 3
    # Two processes step the one shared state, one after the other so the result is exact.
    procs = [
        ctx.Process(target=hogwild_steps, args=(model, opt, n, 1.0, None, first_done)),
        ctx.Process(target=hogwild_steps, args=(model, opt, n, -2.0, first_done, second_done)),
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)
        assert p.exitcode == 0
    for value in (1.0, -2.0):
        for p in reference.parameters():
            p.grad = torch.full_like(p, value)
        for _ in range(n):
            ref_opt.step()
    _assert_same_state(opt, model, ref_opt, reference, 2 * n)  # both processes' steps add up
    assert state_is_shared(opt)


def test_non_shared_optimizer_has_private_state() -> None:
    model = shared_tiny_model()
    opt = make_optimizer(tiny_cfg(), model.parameters(), shared=False)
    assert type(opt) is torch.optim.Adam and not opt.state  # lazily created, in this process
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    assert not state_is_shared(opt)
    rms = make_optimizer(tiny_cfg(optimizer="rmsprop"), model.parameters(), shared=True)
    assert isinstance(rms, SharedRMSprop) and state_is_shared(rms)


# -- gradients reach the shared model ---------------------------------------------------------
def _fake_worker(device: str, optimizer_cls=torch.optim.SGD) -> tuple[Worker, ActorCritic]:
    cfg = tiny_cfg(rollout_steps=6, max_grad_norm=0.0, lr=0.5)
    shared = ActorCritic(ModelSpec("small", (4, 84, 84), 3, recurrent=True, hidden_size=16))
    shared.share_memory()
    opt = optimizer_cls(shared.parameters(), lr=0.5)
    env = FakeVectorEnv(num_envs=1, seed=0, death_p=0.2, max_len=5)
    return Worker(cfg, env, shared, opt, device=device), shared


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
        ),
    ],
)
def test_gradients_from_a_worker_land_on_the_shared_parameters(device) -> None:
    worker, shared = _fake_worker(device)
    for update in range(3):  # every update, not just the first (the seed's CPU aliasing bug)
        before = [p.detach().clone() for p in shared.parameters()]
        worker.sync()
        ro = worker.rollout()
        worker.learn(ro)
        for lp, sp, b in zip(worker.local.parameters(), shared.parameters(), before, strict=True):
            assert sp.grad is not None and sp.grad.device.type == "cpu"
            assert not sp.grad.is_shared()  # process-local: workers never overwrite each other
            assert sp.grad.data_ptr() != lp.grad.data_ptr()
            torch.testing.assert_close(sp.grad, lp.grad.cpu())
            torch.testing.assert_close(sp.detach(), b - 0.5 * lp.grad.cpu())  # SGD, lr 0.5
            assert sp.is_shared()
        assert any(float(p.grad.abs().sum()) > 0 for p in shared.parameters()), update


def test_push_gradients_zeroes_missing_grads() -> None:
    local, shared = ActorCritic(TINY_SPEC), shared_tiny_model()
    for p in shared.parameters():
        p.grad = torch.ones_like(p)
    push_gradients(local, shared)  # local has no grads yet
    assert all(float(p.grad.abs().sum()) == 0 for p in shared.parameters())


def test_device_round_robin() -> None:
    assert [device_of(r, [-1]) for r in range(2)] == ["cpu", "cpu"]
    assert [device_of(r, [0, 1, -1]) for r in range(4)] == ["cuda:0", "cuda:1", "cpu", "cuda:0"]


# -- stages and curriculum ---------------------------------------------------------------------
@pytest.mark.parametrize("workers", [1, 2, 5, 31])
def test_train_stages_with_fewer_than_32_workers_trains_every_stage(workers: int) -> None:
    """The seed's -ts trains only the first W stages with W < 32 workers; ours shares all 32:
    rank r plays stages r, r+W, r+2W, …, one drawn uniformly at each episode start."""
    specs = assign_stages("all", workers, train_stages=True, curriculum=False)
    shares = [parse_stages(spec).stages for spec in specs]
    assert len(shares) == workers
    assert sorted(s for share in shares for s in share) == sorted(STAGES)  # each stage once
    sizes = [len(share) for share in shares]
    assert max(sizes) - min(sizes) <= 1
    for r, share in enumerate(shares):
        assert share == STAGES[r::workers]
    assert untrained_stages(workers, True) == ()
    assert train_stages_spec(workers) == "all"  # evaluated and recorded: every stage
    # A list is drawn uniformly, every one of its stages in turn.
    sel = parse_stages(specs[0])
    assert len(set(sel.weights)) == 1
    rng = np.random.default_rng(0)
    assert {sel.sample(rng) for _ in range(400)} == set(sel.stages)
    note = train_stages_note(workers, True)
    assert note and "\n" not in note and "uniformly" in note
    assert "curriculum" in (train_stages_note(workers, True, curriculum=True) or "")


def test_train_stages_with_32_or_more_workers_is_the_seeds() -> None:
    assert assign_stages("all", 32, train_stages=True, curriculum=False) == list(STAGES)
    many = assign_stages("all", 36, train_stages=True, curriculum=False)
    assert many[:32] == list(STAGES) and many[32:] == ["game"] * 4
    for workers in (32, 36):
        assert untrained_stages(workers, True) == () and train_stages_spec(workers) == "all"
        assert train_stages_note(workers, True) is None  # nothing to say: rank r plays stage r
    # With a curriculum the extra workers draw from all 32 stages instead of playing the game.
    assert assign_stages("all", 34, True, curriculum=True)[32:] == ["all", "all"]
    # Without --train-stages every worker gets --stages.
    assert assign_stages("1-1,4-2", 3, False, False) == ["1-1,4-2"] * 3
    assert untrained_stages(3, False) == () and train_stages_note(3, False) is None


def test_curriculum_needs_a_worker_to_move() -> None:
    assert plan_workers(tiny_cfg(curriculum=True), "1-1,1-2")[1] == [0, 1]
    assert plan_workers(tiny_cfg(curriculum=True, train_stages=True, workers=33), "all")[1] == [32]
    # Fewer than 32 workers: those with several stages follow the curriculum.
    assert plan_workers(tiny_cfg(curriculum=True, train_stages=True, workers=4), "all")[1] == [
        0, 1, 2, 3,
    ]  # fmt: skip
    assert plan_workers(tiny_cfg(curriculum=True, train_stages=True, workers=31), "all")[1] == [0]
    with pytest.raises(ValueError, match="set of stages"):
        plan_workers(tiny_cfg(curriculum=True), "1-1")
    with pytest.raises(ValueError, match="32 workers each worker plays one stage"):
        plan_workers(tiny_cfg(curriculum=True, train_stages=True, workers=32), "all")
    # The curriculum of 4 train-stages workers weighs all 32 stages, each in its worker's share.
    a3g = A3G(tiny_cfg(curriculum=True, train_stages=True, workers=4), EnvConfig(stages="all"))
    assert a3g.curriculum is not None and a3g.curriculum.stages == STAGES
    for _ in range(25):
        a3g.record([EpisodeMsg(1, {"start_stage": "1-2", "flag": True})])
    sel = curriculum_selection(parse_stages(a3g.assignments[1]), a3g.stage_weights)
    assert sel.stages[0] == "1-2" and sel.weights[0] < sel.weights[1] / 3


def test_curriculum_weights_move_toward_failed_stages() -> None:
    cur = Curriculum(["1-1", "1-2", "1-3"], floor=0.1, decay=0.8)
    w0 = cur.weights()
    assert w0["1-1"] == w0["1-2"] == w0["1-3"]  # nothing seen: all count as failing
    for _ in range(20):
        cur.record("1-1", cleared=True)
        cur.record("1-2", cleared=False)
    cur.record("8-4", cleared=True)  # not a curriculum stage: ignored
    w = cur.weights()
    assert w["1-2"] > w["1-3"] - 1e-9 and w["1-2"] > 5 * w["1-1"]
    assert w["1-1"] >= 0.1  # mastered stages are still revisited
    shared = mp.get_context("spawn").Array("d", len(STAGES), lock=False)
    assert curriculum_selection(parse_stages("1-1,1-2"), shared).weights == (0.5, 0.5)
    publish_weights(cur, shared)
    sel = curriculum_selection(parse_stages("1-1,1-2"), shared)
    assert sel.weights[1] > 5 * sel.weights[0]
    # The main process folds worker episodes in and republishes.
    a3g = A3G(tiny_cfg(curriculum=True, workers=1), EnvConfig(stages="1-1,1-2"))
    for _ in range(25):
        a3g.record([EpisodeMsg(0, {"start_stage": "1-2", "flag": True})])
    arr = list(a3g.stage_weights)
    assert arr[STAGES.index("1-1")] > 3 * arr[STAGES.index("1-2")] > 0
    # A curriculum worker points its env's next reset at those weights.
    env = MarioVectorEnv(EnvConfig(stages="1-1,1-2"), num_envs=1, workers=1, seed=0)
    try:
        worker = Worker(
            a3g.cfg, env, a3g.model, a3g.optimizer, curriculum_weights=a3g.stage_weights
        )
        weights = env.stages_of(0).weights
        assert weights[0] > 3 * weights[1]
        assert worker.base_selection is not None and worker.base_selection.weights == (0.5, 0.5)
    finally:
        env.close()


# -- checkpoints ---------------------------------------------------------------------------------
def test_checkpoint_round_trip_with_shared_optimizer_state(tmp_path: Path) -> None:
    from mario_rl.evaluation.policy import load_policy

    env_cfg = EnvConfig(stages="1-1")
    a3g = A3G(tiny_cfg(curriculum=False), env_cfg)
    env = FakeVectorEnv(num_envs=1, seed=0, death_p=0.2, n_actions=a3g.n_actions)
    worker = Worker(a3g.cfg, env, a3g.model, a3g.optimizer)
    for _ in range(2):
        worker.update()
    a3g.counters[0] = 16
    tensors, meta = a3g.state_dict()
    meta |= {"env_config": env_cfg.to_dict(), "step": a3g.global_step}
    path = save_checkpoint(tmp_path / "ck", tensors, meta)

    loaded_t, loaded_m = load_checkpoint(path)
    other = A3G(tiny_cfg(seed=99), env_cfg)
    other.load_state_dict(loaded_t, loaded_m)
    assert other.global_step == 16
    for p, q in zip(a3g.model.parameters(), other.model.parameters(), strict=True):
        torch.testing.assert_close(p, q)
        assert q.is_shared()
    for p, q in zip(a3g.model.parameters(), other.model.parameters(), strict=True):
        for k, v in a3g.optimizer.state[p].items():
            torch.testing.assert_close(other.optimizer.state[q][k], v)
    assert float(next(iter(other.optimizer.state.values()))["step"]) == 2
    assert state_is_shared(other.optimizer)  # restored in place, still shared
    # `mario-rl eval` builds the recurrent policy from the checkpoint's own metadata.
    policy = load_policy(path)
    assert policy.model.recurrent and policy.model.spec.hidden_size == 16
    obs = np.zeros((2, 4, 84, 84), np.uint8)
    actions = policy(obs, np.array([True, True]))
    assert actions.shape == (2,) and policy.state is not None
    # Another trainer's checkpoint is refused.
    with pytest.raises(ValueError, match="not an A3G"):
        other.load_state_dict(loaded_t, {**loaded_m, "format": "mario-rl/ppo-trainer"})


def test_no_shared_optimizer_worker_trains_the_shared_model() -> None:
    """worker_main with no shared optimizer builds its own over the shared parameters (run in
    this process: spawning is covered by the smoke run below)."""
    import os
    import queue

    from mario_rl.algos.a3g_worker import worker_main

    cfg = tiny_cfg(shared_optimizer=False, total_steps=16, rollout_steps=8, workers=1)
    a3g = A3G(cfg, EnvConfig(stages="1-1"))
    assert a3g.optimizer is None
    before = [p.detach().clone() for p in a3g.model.parameters()]
    messages: queue.Queue = queue.Queue()
    stop = mp.get_context("spawn").Event()
    old = signal.getsignal(signal.SIGINT)
    try:
        worker_main(
            0, cfg, EnvConfig(), "1-1", False, a3g.model, None, a3g.counters, 0, messages,
            stop, a3g.stage_weights, os.getppid(), 5,
        )  # fmt: skip
    finally:
        signal.signal(signal.SIGINT, old)
    got = []
    while not messages.empty():
        got.append(messages.get())
    assert not [m for m in got if isinstance(m, ErrorMsg)], got
    kinds = [type(m).__name__ for m in got if not isinstance(m, EpisodeMsg)]
    assert kinds == ["UpdateMsg", "UpdateMsg", "ExitMsg"]
    assert a3g.global_step == 16 and got[-1] == ExitMsg(0, 16)
    assert all(not torch.equal(b, p) for b, p in zip(before, a3g.model.parameters(), strict=True))
    tensors, meta = a3g.state_dict()
    assert meta["optimizer"] is None and not any(k.startswith("optim.") for k in tensors)


# -- the command line ---------------------------------------------------------------------------
def run_cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    # Generous: each run spawns two workers and an evaluation process (seconds on an idle
    # machine, minutes beside a training run).
    return subprocess.run(
        [sys.executable, "-m", "mario_rl", *args], capture_output=True, text=True, timeout=timeout
    )


A3G_TINY = [
    "train", "--algo", "a3g", "--workers", "2", "--rollout-steps", "20", "--lstm-hidden", "32",
    "--log-interval-s", "0.5", "--ent-coef", "0.02",
]  # fmt: skip


def _rows(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def test_two_worker_smoke_run_and_eval(tmp_path: Path) -> None:
    run = tmp_path / "run"
    r = run_cli(
        *A3G_TINY, "--total-steps", "200", "--eval-every", "100", "--eval-episodes", "1",
        "--checkpoint-every", "100", "--run-dir", str(run),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    final = run / "checkpoints" / "final"
    assert (final / "weights.safetensors").is_file()
    config = json.loads((run / "config.json").read_text())
    assert config["algo"] == "a3g" and config["a3g"]["ent_coef"] == 0.02
    meta = json.loads((final / "meta.json").read_text())
    assert meta["algo"] == "a3g" and meta["model_spec"]["recurrent"]
    assert meta["step"] >= 200 and meta["optimizer"] is not None
    rows = _rows(run)
    keys = {k for row in rows for k in row}
    for key in ("charts/SPS", "losses/policy", "losses/value", "losses/entropy", "charts/lr"):
        assert key in keys, key
    assert any(row.get("charts/reward_per_step", 0) != 0 for row in rows)
    assert any(p.name.startswith("events") for p in (run / "tb").iterdir())

    r = run_cli("eval", "--checkpoint", str(final), "--episodes", "1", "--json", "-")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["stages"]["1-1"]["episodes"] == 1

    # SIGINT/SIGTERM, --resume and the final checkpoint: tests/test_reliability.py (every algo).
    assert any("eval/flag_rate" in row for row in _rows(run))
    assert (run / "checkpoints" / "best" / "meta.json").is_file()


# -- workers that fail (raising, killed: test_reliability.py) ----------------------------------
class _Proc:
    def __init__(self) -> None:
        self.alive = True

    def is_alive(self) -> bool:
        return self.alive


def test_a_silent_worker_is_taken_as_hung_after_the_timeout() -> None:
    a3g = A3G(tiny_cfg(workers=3), EnvConfig(stages="1-1"))
    procs = [_Proc(), _Proc(), _Proc()]
    a3g.procs = procs
    a3g.started_at = t0 = time.monotonic()
    a3g.hang_timeout_s, a3g.start_timeout_s = 10.0, 100.0
    # Before its first message a worker has the start limit (spawn, imports, a first update).
    assert a3g.hung(t0 + 50) == []
    a3g.record([UpdateMsg(0, {}), EpisodeMsg(1, {})])
    heard = a3g.last_heard[0]
    assert heard is not None and a3g.hung(heard + 9) == []
    # Each rank has its own clock: 0 and 1 are silent past 10 s, 2 is still starting.
    assert [(r, h) for r, _s, h in a3g.hung(heard + 11)] == [(0, True), (1, True)]
    a3g.record([ExitMsg(1, 8)])  # a worker that finished is not hung
    procs[0].alive = False  # nor one that died (A3G.dead() reports it)
    assert a3g.hung(t0 + 99) == []
    assert [(r, h) for r, _s, h in a3g.hung(t0 + 101)] == [(2, False)]


def test_an_a3g_worker_that_hangs_stops_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Worker 0's env hangs in a step once a checkpoint exists, while worker 1 goes on sending:
    the run stops with one line naming worker 0, writes its final checkpoint and ends both."""
    import faulty_workers
    from mario_rl.algos import a3g as a3g_mod

    monkeypatch.setattr(a3g_mod, "worker_main", faulty_workers.hanging_worker_main)
    monkeypatch.setattr(a3g_mod, "HANG_TIMEOUT_S", 8.0)
    run = tmp_path / "run"
    monkeypatch.setenv("MARIO_RL_TEST_ARM_AFTER", str(run))
    t0 = time.monotonic()
    code = main(
        [*A3G_TINY, "--total-steps", "1000000", "--eval-every", "0", "--checkpoint-every", "40",
         "--run-dir", str(run)]
    )  # fmt: skip
    took = time.monotonic() - t0
    err = capsys.readouterr().err
    assert code == 1 and took < 600, err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert errors == [err.strip().splitlines()[-1]], err  # one line, the last
    assert re.fullmatch(
        r"mario-rl: error: A3G worker 0 sent nothing for \d+ s \(a hung env\?\);"
        r" stopped, final checkpoint .*final",
        errors[0],
    ), err
    assert load_checkpoint(run / "checkpoints" / "final")[1]["step"] >= 40
    assert not [p for p in mp.active_children() if p.name.startswith("mario-rl-a3g")]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--algo", "a3g", "--minibatch-size", "64"], "PPO option"),
        (["--algo", "a3g", "--envs", "4"], "PPO option"),
        (["--num-steps", "10"], "renamed --rollout-steps"),
        (["--algo", "ppo", "--train-stages"], "A3G option"),
        (["--algo", "a3g", "--optimizer", "sgd"], "optimizer"),
        (["--algo", "a3g", "--gpu-ids", "x"], "--gpu-ids"),
        (["--algo", "a3g", "--rollout-steps", "0"], "positive"),
        (["--algo", "a3g", "--entropy-coef", "0.2"], "renamed --ent-coef"),
        (["--algo", "ppo", "--value-coef", "0.2"], "renamed --vf-coef"),
        (["--algo", "a3g", "--amsgrad", "--optimizer", "rmsprop"], "amsgrad"),
        (["--algo", "a3g", "--curriculum"], "--curriculum"),
        (["--algo", "a3g", "--train-stages", "--stages", "1-2"], "drop --stages"),
        (["--algo", "a3g", "--log-every", "3"], "--log-interval-s"),
        (["--algo", "a3g", "--preset", "ppo-seed"], "no [a3g] table"),
        (["--algo", "ppo", "--preset", "a3g-seed"], "use it with --algo a3g"),
    ],
)
def test_a3g_bad_input_is_one_line_and_exit_2(args, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mario-rl: error:") and err.count("\n") == 1, err
    assert needle in err, err
    assert not any(Path(tmp_path).iterdir())  # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_gpu_ids_without_cuda_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--algo", "a3g", "--gpu-ids", "0"]) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and err.count("\n") == 1
    assert not any(Path(tmp_path).iterdir())


def test_one_name_per_knob_for_every_algorithm() -> None:
    from mario_rl.cli import build_parser, train_job

    def job(*args: str):
        return train_job(build_parser().parse_args(["train", *args]))

    a = job("--algo", "a3g", "--ent-coef", "0.03", "--vf-coef", "0.7", "--workers", "3")
    assert (a.a3g.ent_coef, a.a3g.vf_coef, a.a3g.workers) == (0.03, 0.7, 3)
    a = job("--algo", "a3g", "--gpu-ids", "-1", "0", "--no-shared-optimizer", "--lr", "3e-4")
    assert a.a3g.gpu_ids == [-1, 0] and not a.a3g.shared_optimizer and a.a3g.lr == 3e-4
    assert a.a3g.gamma == 0.99  # A3G's defaults, not PPO's
    p = job("--algo", "ppo", "--ent-coef", "0.03", "--vf-coef", "0.7")
    assert (p.ppo.ent_coef, p.ppo.vf_coef) == (0.03, 0.7)


def test_a3g_seed_preset_is_an_a3g_job() -> None:
    from mario_rl.cli import build_parser, train_job

    job = train_job(build_parser().parse_args(["train", "--preset", "a3g-seed", "--workers", "4"]))
    assert job.algo == "a3g" and job.env.actions == "a3g" and job.env.reward.fall == 1.0
    assert (job.a3g.network, job.a3g.lstm_hidden, job.a3g.workers) == ("impala", 512, 4)


def test_a3g_1_1_preset_is_the_recipe_of_the_shipped_model() -> None:
    from mario_rl.cli import build_parser, train_job
    from mario_rl.io.checkpoint import load_checkpoint

    job = train_job(build_parser().parse_args(["train", "--algo", "a3g", "--preset", "a3g-1-1"]))
    assert job.algo == "a3g" and (job.a3g.workers, job.a3g.envs_per_worker) == (2, 8)
    assert job.a3g.norm_adv and job.env.jump_repress and job.run.stop_at_clear_rate == 0.8
    # models/a3g-1-1 was trained with these settings (given as flags; the preset came after).
    _, meta = load_checkpoint(Path(__file__).parents[1] / "models" / "a3g-1-1")
    assert meta["optimizer"] is None  # weights only
    now = job.a3g.to_dict()
    assert {k: v for k, v in meta["config"].items() if k != "total_steps"} == {
        k: now[k] for k in meta["config"] if k != "total_steps"
    }
    # Options added after the model was trained stay at their defaults (off) in the preset.
    assert set(now) - set(meta["config"]) <= {"curriculum_frontier", "curriculum_master"}
    assert job.a3g.curriculum_frontier == 0
    assert_env_recipe(job.env.to_dict(), meta["env_config"])


def test_bench_train_a3g_json():
    # The real worker processes run; steps are counted only after every worker's first update.
    r = subprocess.run(
        [sys.executable, "-m", "mario_rl", "bench", "train", "--algo", "a3g", "--workers", "2",
         "--rollout-steps", "8", "--stages", "1-1", "--seconds", "4", "--json"],
        capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["algo"] == "a3g" and out["workers"] == 2
    assert out["train_steps_per_s"] > 0 and out["env_steps_per_s"] > 0
    assert out["updates"] > 0 and set(out["shares"]) == {"env", "inference", "learn", "sync"}


def test_records_written_before_the_knob_renames_still_load() -> None:
    """An A3G run directory from before one name per knob (config.json with num_steps,
    entropy_coef, value_coef) resumes with the values it was started with."""
    cfg = A3GConfig.from_dict({"num_steps": 7, "entropy_coef": 0.02, "value_coef": 0.3})
    assert (cfg.rollout_steps, cfg.ent_coef, cfg.vf_coef) == (7, 0.02, 0.3)
