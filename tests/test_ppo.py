"""PPO family: GAE and loss against hand-computed values, truncation bootstrapping, config
validation, checkpoint round trips, and tiny smoke runs of ppo / ppo-lstm / ppo-rnd."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fake_env import FakeVectorEnv, GroupedFakeVectorEnv
from mario_rl.algos.ppo import PPO
from mario_rl.algos.ppo_family import TRAINERS, make_ppo
from mario_rl.bench import measure_learn_speed
from mario_rl.config.ppo import PPOConfig
from mario_rl.devices import torch_threads
from mario_rl.io.state_codec import load_optimizer_state, optimizer_state_tensors
from mario_rl.rl.advantages import discounted_running_returns, gae
from mario_rl.rl.losses import ppo_losses
from mario_rl.rl.stats import RunningMeanStd, explained_variance, linear_schedule


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """What an entry point does with tiny()'s torch_threads=1 (tests run beside other jobs;
    OpenMP spinning on a busy core is slow)."""
    with torch_threads(1):
        yield


def tiny(algo: str = "ppo", **kw) -> PPOConfig:
    base = dict(
        algo=algo,
        num_envs=2,
        rollout_steps=16,
        minibatch_size=16,
        epochs=2,
        bptt_len=8,
        lstm_hidden=32,
        rnd_init_steps=4,
        total_steps=1000,
        seed=3,
        torch_threads=1,  # tests run beside other jobs; OpenMP spinning on a busy core is slow
    )
    return PPOConfig(**(base | kw))


# -- GAE -------------------------------------------------------------------------------------
def _col(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float32).unsqueeze(1)  # (T, N=1)


def test_gae_hand_computed() -> None:
    r, v, nv = _col(1, 0, 2), _col(0.5, 1.0, 1.5), _col(1.0, 1.5, 3.0)
    no = torch.zeros(3, 1, dtype=torch.bool)
    adv, ret = gae(r, v, nv, no, no, gamma=0.9, lam=0.95)
    # deltas 1.4, 0.35, 3.2; A2 = 3.2, A1 = 0.35 + .855*3.2, A0 = 1.4 + .855*A1
    expected = _col(1.4 + 0.855 * (0.35 + 0.855 * 3.2), 0.35 + 0.855 * 3.2, 3.2)
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + v)


def test_gae_termination_vs_truncation() -> None:
    r, v = _col(1, 0, 2), _col(0.5, 1.0, 1.5)
    done = torch.tensor([[False], [True], [False]])
    # Terminated at t=1: no bootstrap there, and the chain is cut.
    nv = _col(1.0, 99.0, 3.0)  # 99 must not be used
    adv, _ = gae(r, v, nv, done, done, 0.9, 0.95)
    torch.testing.assert_close(adv, _col(1.4 + 0.855 * -1.0, -1.0, 3.2))
    # Truncated at t=1: bootstrap from V(final_obs) = 2.0 (put in next_values), chain still cut.
    nv = _col(1.0, 2.0, 3.0)
    adv, _ = gae(r, v, nv, torch.zeros_like(done), done, 0.9, 0.95)
    torch.testing.assert_close(adv, _col(1.4 + 0.855 * 0.8, 0.8, 3.2))


def test_running_returns_and_stats() -> None:
    rets, last = discounted_running_returns(_col(1, 1, 1), torch.zeros(1), 0.5)
    torch.testing.assert_close(rets, _col(1, 1.5, 1.75))
    torch.testing.assert_close(last, torch.tensor([1.75]))
    rms = RunningMeanStd(())
    data = np.random.default_rng(0).normal(3, 2, 1000)
    for chunk in np.split(data, 10):
        rms.update(torch.from_numpy(chunk))
    assert abs(float(rms.mean) - data.mean()) < 1e-3
    assert abs(float(rms.var) - data.var()) < 1e-2
    assert math.isclose(
        explained_variance(torch.tensor([1.0, 2, 3, 3]), torch.tensor([1.0, 2, 3, 4])),
        1 - 0.25 / (5 / 3),
        rel_tol=1e-5,
    )
    assert math.isnan(explained_variance(torch.zeros(3), torch.ones(3)))
    assert linear_schedule(1.0, 0.0, 0.25) == 0.75 and linear_schedule(1.0, 0.0, 2.0) == 0.0


# -- the loss --------------------------------------------------------------------------------
def test_ppo_loss_hand_computed() -> None:
    logits = torch.zeros(2, 2)  # pi = (0.5, 0.5)
    actions = torch.tensor([0, 1])
    old = torch.log(torch.tensor([0.25, 0.5]))  # ratios 2 (clipped to 1.2) and 1
    adv = torch.tensor([1.0, -2.0])
    values, returns = torch.tensor([3.0, 2.0]), torch.tensor([0.0, 2.0])
    t = ppo_losses(logits, actions, old, adv, values, returns, clip=0.2, vf_loss="mse")
    # sample 0: -min(2*1, 1.2*1) = -1.2; sample 1: -min(-2, -2) = 2
    assert math.isclose(float(t["policy"]), 0.4, rel_tol=1e-6)
    assert math.isclose(float(t["entropy"]), math.log(2), rel_tol=1e-6)
    assert math.isclose(float(t["value"]), 0.5 * 9 / 2, rel_tol=1e-6)
    assert math.isclose(float(t["approx_kl"]), (1 - math.log(2)) / 2, rel_tol=1e-6)
    assert math.isclose(float(t["clipfrac"]), 0.5)
    huber = ppo_losses(logits, actions, old, adv, values, returns, clip=0.2, vf_loss="huber")
    assert math.isclose(float(huber["value"]), (3 - 0.5) / 2, rel_tol=1e-6)
    # A negative advantage with a ratio below 1-clip is clipped too (pessimistic bound).
    t2 = ppo_losses(
        logits,
        torch.tensor([0]),
        torch.log(torch.tensor([0.8])),
        torch.tensor([-1.0]),
        values[:1],
        returns[:1],
        0.2,
    )
    assert math.isclose(float(t2["policy"]), 0.8, rel_tol=1e-6)  # -min(-0.625, -0.8)


# -- config ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        (
            dict(minibatch_size=300),
            r"minibatch_size 300 must divide num_envs\*rollout_steps = 4096",
        ),
        (dict(lr=0.0), "lr must be > 0"),
        (dict(epochs=0), "epochs must be a positive integer"),
        (dict(algo="a2c"), "algo must be one of"),
        (dict(network="resnet"), "network must be one of"),
        (dict(algo="ppo-lstm", bptt_len=24), "bptt_len 24 must divide rollout_steps 512"),
        (
            dict(algo="ppo-lstm", bptt_len=32, minibatch_size=16),
            "minibatch must be whole sequences",
        ),
        (dict(gamma=1.5), r"gamma must be in \[0, 1\]"),
        (dict(target_kl=0.0), "target_kl must be > 0 or None"),
        (dict(vf_loss="l1"), "vf_loss must be 'mse' or 'huber'"),
        (dict(precision="fp16"), "precision must be 'fp32', 'bf16' or 'auto'"),
    ],
)
def test_config_validation_messages(kw: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        PPOConfig(**kw).validate()


def test_config_defaults_valid_and_round_trip() -> None:
    for algo in ("ppo", "ppo-lstm", "ppo-rnd"):
        cfg = PPOConfig(algo=algo)
        cfg.validate()
        assert PPOConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown PPOConfig fields"):
        PPOConfig.from_dict({"lr": 1e-4, "learning_rate": 1})


# -- collection details ----------------------------------------------------------------------
class Recorder:
    """Wraps an env and keeps every step's outputs."""

    def __init__(self, env):
        self.env, self.steps = env, []
        self.num_envs = env.num_envs
        self.single_observation_space = env.single_observation_space
        self.single_action_space = env.single_action_space

    def reset(self, **kw):
        return self.env.reset(**kw)

    def step(self, a):
        out = self.env.step(a)
        self.steps.append(out)
        return out


@pytest.mark.parametrize("algo", ["ppo", "ppo-lstm"])
def test_truncated_episodes_bootstrap_from_final_obs(algo: str) -> None:
    env = Recorder(FakeVectorEnv(num_envs=2, goal=1000, max_len=5, death_p=0.0))
    ppo = make_ppo(tiny(algo), env)
    ppo.collect()
    assert len(env.steps) == 16
    checked = 0
    for t, (_obs, _r, term, trunc, infos) in enumerate(env.steps):
        assert not term.any()
        for i in np.flatnonzero(trunc):
            final = torch.from_numpy(infos["final_obs"][i]).unsqueeze(0)
            state = None
            if algo == "ppo-lstm":
                # Replay env i's episode from its start to get the state before the cut.
                t0 = t - 4
                seq = ppo.rollout.obs[t0 : t + 1, i : i + 1]
                state = ppo.model(seq, None, None).state
            with torch.no_grad():
                v = ppo.model(final, state, None).value
            torch.testing.assert_close(
                ppo.rollout.next_values[t, i : i + 1], v, rtol=1e-4, atol=1e-5
            )
            assert (
                ppo.rollout.dones[t, i]
                and not ppo.rollout.terminations[t, i]
                and ppo.rollout.starts[t + 1, i]
            )
            checked += 1
    assert checked >= 4
    # Not truncated: next value is V(obs[t+1]).
    torch.testing.assert_close(ppo.rollout.next_values[0], ppo.rollout.values[1])


def test_target_kl_stops_the_update_early() -> None:
    ppo = make_ppo(tiny(epochs=5, target_kl=1e-9, lr=1e-2), FakeVectorEnv(num_envs=2))
    ppo.collect()
    m = ppo.learn()
    assert m["debug/early_stop"] == 1.0 and m["debug/epochs"] < 5


def test_linear_schedules_follow_updates() -> None:
    cfg = tiny(
        lr_schedule="linear",
        lr=1e-3,
        lr_final=0.0,
        ent_schedule="linear",
        ent_coef=0.1,
        ent_coef_final=0.0,
        total_steps=128,
    )
    ppo = make_ppo(cfg, FakeVectorEnv(num_envs=2))  # 4 updates in total
    lrs = []
    for _ in range(3):
        ppo.collect()
        lrs.append(ppo.learn()["charts/lr"])
    assert lrs == pytest.approx([1e-3, 0.75e-3, 0.5e-3])
    assert ppo.current_ent_coef() == pytest.approx(0.025)


# -- smoke runs and checkpoints ---------------------------------------------------------------
@pytest.mark.parametrize("algo", ["ppo", "ppo-lstm", "ppo-rnd"])
def test_smoke_metrics(algo: str) -> None:
    ppo = make_ppo(
        tiny(algo, lstm_penalty=0.01 if algo == "ppo-lstm" else 0.0),
        FakeVectorEnv(num_envs=2, max_len=12),
    )
    for _ in range(2):
        m = ppo.collect() | ppo.learn()
    for tag in ("losses/policy", "losses/value", "losses/entropy", "debug/approx_kl", "debug/clipfrac",
                "debug/explained_variance", "charts/lr", "time/env", "time/inference", "time/learn"):  # fmt: skip
        assert tag in m and (math.isfinite(m[tag]) or tag == "debug/explained_variance"), tag
    assert ppo.global_step == 64 and ppo.update == 2
    assert ppo.episodes and {"r", "l", "x_max", "flag", "env", "step"} <= set(ppo.episodes[0])
    assert "rewards/progress" in m and "charts/episode_return" in m
    if algo == "ppo-rnd":
        assert m["losses/rnd"] > 0 and "charts/intrinsic_reward" in m
    if algo == "ppo-lstm":
        assert m["losses/lstm_penalty"] >= 0


@pytest.mark.parametrize("algo", ["ppo", "ppo-lstm", "ppo-rnd"])
def test_bf16_update_follows_the_fp32_one(algo: str) -> None:
    """A bfloat16-autocast update starts from the same weights and moves them like the float32
    one, up to bf16 rounding; weights, gradients and the losses it reports stay float32."""
    runs = {}
    for precision in ("fp32", "bf16"):
        ppo = make_ppo(tiny(algo, precision=precision), FakeVectorEnv(num_envs=2, max_len=12))
        assert ppo.autocast == (torch.bfloat16 if precision == "bf16" else None)
        before = [p.detach().clone() for p in ppo.model.parameters()]
        m = ppo.collect() | ppo.learn()
        assert all(p.dtype == torch.float32 for p in ppo.model.parameters())
        assert math.isfinite(m["losses/policy"]) and math.isfinite(m["losses/value"])
        runs[precision] = (
            torch.cat(
                [
                    (p.detach() - b).flatten()
                    for p, b in zip(ppo.model.parameters(), before, strict=True)
                ]
            ),
            m,
        )
    d32, m32 = runs["fp32"]
    d16, m16 = runs["bf16"]
    assert torch.count_nonzero(d16) > 0.9 * torch.count_nonzero(d32)  # it trained as much
    cos = torch.nn.functional.cosine_similarity(d32, d16, dim=0)
    assert cos > 0.9, f"bf16 update direction differs: cosine {cos:.3f}"
    assert m16["losses/value"] == pytest.approx(m32["losses/value"], rel=0.05)


def test_precision_auto_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    from mario_rl import devices

    monkeypatch.setattr(devices, "_cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert devices.learn_dtype("auto", "cpu") is torch.bfloat16
    monkeypatch.setattr(devices, "_cpu_flags", lambda: {"avx2", "avx512f"})
    assert devices.learn_dtype("auto", "cpu") is None
    assert devices.learn_dtype("bf16", "cpu") is torch.bfloat16
    assert devices.learn_dtype("fp32", "cpu") is None


@pytest.mark.parametrize("algo", ["ppo", "ppo-lstm", "ppo-rnd"])
def test_async_collect_overlaps_and_lags_one_update(algo: str) -> None:
    ppo = make_ppo(tiny(algo, async_collect=True), FakeVectorEnv(num_envs=2, max_len=12))
    try:
        m1 = ppo.collect()
        assert all(0 < ep["step"] <= 32 for ep in ppo.episodes)
        first_actor = {k: v.clone() for k, v in ppo.model.state_dict().items()}
        ppo.learn()
        m2 = ppo.collect()  # collected during learn() with the weights from before it
        assert "time/wait" in m1 and "time/wait" in m2
        assert all(32 < ep["step"] <= 64 for ep in ppo.episodes)
        ppo.learn()
        buf = ppo.rollout
        snapshot = make_ppo(tiny(algo), obs_shape=(4, 84, 84), n_actions=3).model
        snapshot.load_state_dict(first_actor)
        if algo != "ppo-lstm":  # the LSTM's logprobs also depend on the carried state
            with torch.no_grad():
                logits = snapshot(buf.obs[:4].reshape(-1, 4, 84, 84)).logits
            logp = torch.log_softmax(logits, -1).gather(-1, buf.actions[:4].reshape(-1, 1))
            torch.testing.assert_close(logp.reshape(4, 2), buf.logprobs[:4], rtol=1e-4, atol=1e-5)
        m3 = ppo.collect() | ppo.learn()
        assert ppo.global_step == 96 and ppo.update == 3 and math.isfinite(m3["losses/policy"])
    finally:
        ppo.close()


# -- grouped collection: one act-step loop per env worker --------------------------------------
@pytest.mark.parametrize("algo", ["ppo", "ppo-lstm", "ppo-rnd"])
def test_group_collect_stores_each_groups_steps_in_its_own_columns(algo: str) -> None:
    env = GroupedFakeVectorEnv(groups=2, envs_per_group=2, max_len=5, death_p=0.1)
    ppo = make_ppo(tiny(algo, num_envs=4), env)
    ppo.collect()
    buf = ppo.rollout
    with torch.no_grad():
        # Whole rollout as one sequence per env: the LSTM starts from zeros at the first rollout.
        out = ppo.model(buf.obs, None, buf.starts, return_all_states=True)
    logp = torch.log_softmax(out.logits, -1).gather(-1, buf.actions.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logp, buf.logprobs, rtol=1e-4, atol=1e-5)
    truncated = 0
    for k, r in enumerate(env.ranges):
        cols = slice(r.start, r.stop)
        assert len(env.group_steps[k]) == 16
        assert torch.equal(buf.obs[0, cols], torch.from_numpy(env.start_obs[k]))
        for t, (obs, rew, term, trunc, infos) in enumerate(env.group_steps[k]):
            assert torch.equal(buf.rewards[t, cols], torch.from_numpy(rew))
            assert torch.equal(buf.terminations[t, cols], torch.from_numpy(term))
            assert torch.equal(buf.dones[t, cols], torch.from_numpy(term | trunc))
            if t + 1 < 16:
                assert torch.equal(buf.obs[t + 1, cols], torch.from_numpy(obs))
            for j in np.flatnonzero(trunc):
                i = r.start + j
                final = torch.from_numpy(infos["final_obs"][j]).unsqueeze(0)
                state = None
                if out.all_states is not None:
                    state = (out.all_states[0][t, i : i + 1], out.all_states[1][t, i : i + 1])
                with torch.no_grad():
                    v = ppo.model(final, state, None).value
                torch.testing.assert_close(buf.next_values[t, i : i + 1], v, rtol=1e-4, atol=1e-5)
                truncated += 1
    assert truncated >= 2
    envs_seen = {e["env"] for e in ppo.episodes}
    assert envs_seen <= {0, 1, 2, 3} and envs_seen & {2, 3}
    steps = [(e["step"], e["env"]) for e in ppo.episodes]
    assert steps == sorted(steps)
    m = ppo.learn()
    assert math.isfinite(m["losses/policy"])


def test_group_collect_checkpoint_round_trip_gives_the_same_next_update() -> None:
    cfg = tiny("ppo-lstm", num_envs=4)
    a = make_ppo(cfg, GroupedFakeVectorEnv(groups=2, envs_per_group=2, death_p=0.1))
    assert len(a.collector.gens) == 2
    a.collect()
    a.learn()
    tensors, meta = _through_disk(*a.state_dict())
    assert "rng.collect_generator.1" in tensors
    env_at_save = copy.deepcopy(a.envs)
    a.collect()
    ma = a.learn()
    b = make_ppo(cfg, GroupedFakeVectorEnv(groups=2, envs_per_group=2, seed=99))
    b.envs = env_at_save
    b.load_state_dict(tensors, meta, restore_env_state=True)
    b.collect()
    mb = b.learn()
    assert ma["losses/policy"] == mb["losses/policy"]
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


def test_group_collect_off_steps_all_envs_together() -> None:
    ppo = make_ppo(tiny("ppo", num_envs=4, group_collect=False), FakeVectorEnv(num_envs=4))
    assert ppo.collector.groups() == [range(4)] and len(ppo.collector.gens) == 1
    env = GroupedFakeVectorEnv(groups=2, envs_per_group=2, max_len=1000, death_p=0.0)
    ppo = make_ppo(tiny("ppo", num_envs=4, group_collect=False), env)
    ppo.collect()
    assert env.lockstep_calls == 16 and env.group_steps == [[], []]


def _through_disk(tensors: dict, meta: dict) -> tuple[dict, dict]:
    """What checkpoint.py does: safetensors for tensors, JSON for the rest."""
    return st_load(st_save(tensors)), json.loads(json.dumps(meta))


@pytest.mark.parametrize("algo", ["ppo", "ppo-lstm", "ppo-rnd"])
def test_checkpoint_round_trip_gives_the_same_next_update(algo: str) -> None:
    cfg = tiny(algo, lr_schedule="linear", lstm_penalty=0.01 if algo == "ppo-lstm" else 0.0)
    a = make_ppo(cfg, FakeVectorEnv(num_envs=2, death_p=0.1))
    a.collect()
    a.learn()
    tensors, meta = _through_disk(*a.state_dict())
    env_at_save = copy.deepcopy(a.envs)
    a.collect()
    ma = a.learn()

    b = make_ppo(cfg, FakeVectorEnv(num_envs=2, seed=99))
    b.envs = env_at_save
    b.load_state_dict(tensors, meta, restore_env_state=True)
    b.collect()
    mb = b.learn()
    for (name, pa), pb in zip(
        a.model.state_dict().items(), b.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0, msg=name)
    assert ma["losses/policy"] == mb["losses/policy"]
    assert (a.global_step, a.update) == (b.global_step, b.update)
    if algo == "ppo-rnd":
        for pa, pb in zip(a.rnd.state_dict().values(), b.rnd.state_dict().values(), strict=True):
            torch.testing.assert_close(pa, pb, rtol=0, atol=0)


def test_checkpoint_refuses_another_architecture() -> None:
    tensors, meta = make_ppo(tiny("ppo"), FakeVectorEnv(num_envs=2)).state_dict()
    other = make_ppo(tiny("ppo", network="nature"), FakeVectorEnv(num_envs=2))
    with pytest.raises(
        ValueError, match="network: checkpoint has 'small', this run needs 'nature'"
    ):
        other.load_state_dict(tensors, meta)
    with pytest.raises(ValueError, match="checkpoint is for algo 'ppo'"):
        make_ppo(tiny("ppo-lstm"), FakeVectorEnv(num_envs=2)).load_state_dict(tensors, meta)


def test_make_ppo_picks_the_trainer_the_config_names() -> None:
    for algo, cls in TRAINERS.items():
        ppo = make_ppo(tiny(algo), obs_shape=(4, 84, 84), n_actions=3)
        assert type(ppo) is cls and ppo.algo == algo
    with pytest.raises(ValueError, match="PPO trains algo 'ppo', the config says 'ppo-lstm'"):
        PPO(tiny("ppo-lstm"), obs_shape=(4, 84, 84), n_actions=3)


def test_optimizer_flat_round_trip() -> None:
    w = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(w.parameters(), lr=1e-3, eps=1e-5)
    w(torch.ones(1, 3)).sum().backward()
    opt.step()
    t, m = optimizer_state_tensors(opt)
    t, m = _through_disk(t, m)
    opt2 = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=5.0)
    load_optimizer_state(opt2, t, m)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for k in s1["state"]:
        for key, val in s1["state"][k].items():
            torch.testing.assert_close(val, s2["state"][k][key])


def test_measure_learn_speed_runs() -> None:
    r = measure_learn_speed(
        "small", threads=1, num_envs=2, rollout_steps=32, minibatch_size=32, repeats=1
    )
    assert r["learn_samples_per_s"] > 0 and r["inference_ms_per_step"] > 0


# -- the real env (skipped only while mario_rl.envs has no make_vector_env) -----------------------
def test_smoke_on_the_real_env() -> None:
    envs_mod = pytest.importorskip("mario_rl.envs")
    if not hasattr(envs_mod, "make_vector_env"):
        pytest.skip("mario_rl.envs.make_vector_env does not exist yet")
    env = envs_mod.make_vector_env(envs_mod.EnvConfig(stages="1-1"), num_envs=2, workers=1, seed=0)
    try:
        for algo in ("ppo", "ppo-lstm", "ppo-rnd"):
            ppo = make_ppo(tiny(algo, rnd_init_steps=2), env)
            m = ppo.collect() | ppo.learn()
            assert math.isfinite(m["losses/policy"]) and ppo.global_step == 32
            assert ppo.rollout.obs.dtype == torch.uint8 and int(ppo.rollout.obs.max()) > 0
    finally:
        env.close()


def test_group_collect_on_the_real_env_replays_in_lockstep() -> None:
    from mario_rl.envs import EnvConfig, make_vector_env

    cfg = EnvConfig(stages="1-1", stall_steps=6)
    env = make_vector_env(cfg, num_envs=4, workers=2, seed=0)
    ppo = make_ppo(tiny("ppo", num_envs=4), env)
    ppo.collect()
    env.close()
    buf = ppo.rollout
    replay = make_vector_env(cfg, num_envs=4, workers=1, seed=0)
    obs, _ = replay.reset(seed=tiny().seed)
    ends = 0
    for t in range(16):
        np.testing.assert_array_equal(buf.obs[t].numpy(), obs)
        obs, rew, term, trunc, _ = replay.step(buf.actions[t].numpy())
        np.testing.assert_array_equal(buf.rewards[t].numpy(), rew)
        np.testing.assert_array_equal(buf.dones[t].numpy(), term | trunc)
        ends += int((term | trunc).sum())
    replay.close()
    assert ends >= 1 and len(ppo.episodes) == ends
