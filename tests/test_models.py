"""Models: encoders, actor-critic heads and init, the LSTM core (resets, BPTT), RND, specs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mario_rl.config.ppo import PPOConfig
from mario_rl.models import (
    ENCODERS,
    ActorCritic,
    ModelSpec,
    PixelConv2d,
    RNDModel,
    build_model,
    model_spec,
)
from mario_rl.rl.actions import policy_act

OBS = (4, 84, 84)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Tests share the machine with other jobs; OpenMP threads spinning on a busy core are slow.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _obs(*lead: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (*lead, *OBS), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("network", sorted(ENCODERS))
def test_encoders_take_uint8_and_give_heads(network: str) -> None:
    torch.manual_seed(0)
    model = ActorCritic(ModelSpec(network, OBS, 7))
    out = model(_obs(3))
    assert out.logits.shape == (3, 7) and out.value.shape == (3,)
    assert out.value_int is None and out.state is None
    assert torch.isfinite(out.logits).all()


def test_pixel_conv_folds_the_255_scaling() -> None:
    torch.manual_seed(0)
    conv = PixelConv2d(4, 8, 8, stride=4)
    x = _obs(2)
    ref = F.conv2d(x.float() / 255.0, conv.weight, conv.bias, stride=4)
    torch.testing.assert_close(conv(x), ref, rtol=1e-5, atol=1e-5)


def test_orthogonal_init_gains() -> None:
    torch.manual_seed(0)
    model = ActorCritic(ModelSpec("small", OBS, 7, recurrent=True, hidden_size=32))
    # Orthogonal with gain g: rows of a (7, 32) matrix are orthonormal * g.
    w = model.actor.weight
    torch.testing.assert_close(w @ w.T, 0.01**2 * torch.eye(7), atol=1e-7, rtol=1e-4)
    v = model.critic.weight
    assert math.isclose(float(v.detach().norm()), 1.0, rel_tol=1e-5)
    assert (model.actor.bias == 0).all() and (model.critic.bias == 0).all()
    lstm = model.lstm
    assert lstm is not None
    forget = (lstm.bias_ih_l0 + lstm.bias_hh_l0)[32:64]
    assert (forget == 1).all()
    assert ((lstm.bias_ih_l0 + lstm.bias_hh_l0)[:32] == 0).all()


def _lstm_model(hidden: int = 16) -> ActorCritic:
    torch.manual_seed(0)
    return ActorCritic(ModelSpec("small", OBS, 5, recurrent=True, hidden_size=hidden))


def test_lstm_sequence_equals_step_by_step_and_resets_at_starts() -> None:
    model = _lstm_model()
    t_len, b = 6, 3
    obs = _obs(t_len, b)
    starts = torch.zeros(t_len, b, dtype=torch.bool)
    starts[3, 1] = True  # env 1 begins a new episode at t=3
    g = torch.Generator().manual_seed(1)
    state = (torch.randn(b, 16, generator=g), torch.randn(b, 16, generator=g))
    with torch.no_grad():
        seq = model(obs, state, starts)
        # The same, one step at a time (each call is a length-1 sequence).
        s = state
        logits = []
        for t in range(t_len):
            o = model(obs[t], s, starts[t])
            s = o.state
            logits.append(o.logits)
        torch.testing.assert_close(seq.logits, torch.stack(logits), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(seq.state[0], s[0], rtol=1e-5, atol=1e-6)
        # After the reset env 1 behaves exactly like a fresh episode started at t=3 from zeros.
        fresh = model(obs[3:, 1:2], None, None)
        torch.testing.assert_close(seq.logits[3:, 1:2], fresh.logits, rtol=1e-5, atol=1e-6)
        # ...and envs without a reset do not.
        other = model(obs[3:, 0:1], None, None)
        assert not torch.allclose(seq.logits[3:, 0:1], other.logits)
        # The per-step-state path (used by the LSTM penalty) computes the same outputs.
        every = model(obs, state, starts, return_all_states=True)
        torch.testing.assert_close(every.logits, seq.logits, rtol=1e-5, atol=1e-6)
        assert every.all_states is not None and every.all_states[0].shape == (t_len, b, 16)
        torch.testing.assert_close(every.all_states[0][-1], seq.state[0], rtol=1e-5, atol=1e-6)


def test_bptt_gradient_reaches_earlier_steps_but_not_across_a_reset() -> None:
    model = _lstm_model()
    t_len, b = 5, 2
    obs = _obs(t_len, b, seed=3)
    starts = torch.zeros(t_len, b, dtype=torch.bool)
    starts[2, 1] = True
    h0 = torch.zeros(b, 16, requires_grad=True)
    c0 = torch.zeros(b, 16, requires_grad=True)
    feats: list[torch.Tensor] = []

    def keep_features(_mod, _inp, out):  # the encoder output feeding step t
        out.retain_grad()
        feats.append(out)

    handle = model.encoder.register_forward_hook(keep_features)
    out = model(obs, (h0, c0), starts)
    handle.remove()
    out.logits[-1].sum().backward()  # a loss at the LAST step only
    f = feats[0].grad.reshape(t_len, b, -1)  # type: ignore[union-attr]
    # Env 0 has no reset: the last-step loss reaches step 0's features and the initial state.
    assert f[0, 0].abs().sum() > 0
    assert h0.grad is not None and h0.grad[0].abs().sum() > 0
    # Env 1 was reset at t=2: nothing flows to steps 0-1 or to its initial state.
    assert f[0, 1].abs().sum() == 0 and f[1, 1].abs().sum() == 0 and f[2, 1].abs().sum() > 0
    assert h0.grad[1].abs().sum() == 0


def test_rnd_error_falls_on_a_repeated_observation() -> None:
    torch.manual_seed(0)
    rnd = RNDModel((84, 84), out_features=64)
    rnd.obs_rms.update(_obs(64)[:, -1:].float())
    seen = _obs(1, seed=5)[:, -1].repeat(8, 1, 1)
    novel = _obs(8, seed=6)[:, -1]
    opt = torch.optim.Adam(rnd.predictor.parameters(), lr=1e-3)
    before = rnd.error(seen).mean().item()
    for _ in range(30):
        loss = rnd.error(seen).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = rnd.error(seen).mean().item()
    assert after < 0.2 * before
    assert rnd.error(novel).mean().item() > 2 * after
    assert all(not p.requires_grad for p in rnd.target.parameters())


def test_rnd_normalisation_clips() -> None:
    rnd = RNDModel((84, 84), obs_clip=5.0)
    rnd.obs_rms.mean.fill_(100.0)
    rnd.obs_rms.var.fill_(1.0)
    x = rnd.normalize(torch.full((2, 84, 84), 255, dtype=torch.uint8))
    assert x.shape == (2, 1, 84, 84) and float(x.max()) == 5.0


def test_spec_round_trip_and_refusal() -> None:
    cfg = PPOConfig(algo="ppo-lstm", network="nature", lstm_hidden=64)
    spec = model_spec(cfg, OBS, 12)
    assert spec.recurrent and spec.hidden_size == 64 and not spec.int_value
    d = spec.to_dict()
    assert ModelSpec.from_dict(d) == spec
    torch.manual_seed(0)
    m1 = build_model(d)
    m2 = build_model(cfg, OBS, 12)
    m2.load_state_dict(m1.state_dict())
    other = ModelSpec("small", OBS, 7)
    with pytest.raises(ValueError, match="n_actions: checkpoint has 7, this run needs 12"):
        spec.check_compatible(other)
    with pytest.raises(ValueError, match="unknown ModelSpec fields"):
        ModelSpec.from_dict({**d, "bogus": 1})
    assert model_spec(PPOConfig(algo="ppo-rnd"), OBS, 7).int_value


def test_policy_act_greedy_and_sampled() -> None:
    model = _lstm_model()
    obs = _obs(3).numpy()
    a, state = policy_act(model, obs, None, deterministic=True)
    assert a.shape == (3,) and a.dtype == np.int64 and state is not None
    a2, _ = policy_act(model, obs, None, deterministic=True)
    np.testing.assert_array_equal(a, a2)
    g = torch.Generator().manual_seed(0)
    a3, state3 = policy_act(
        model, obs[0], state=None, deterministic=False, starts=[True], generator=g
    )
    assert a3.shape == (1,) and state3[0].shape == (1, 16)
