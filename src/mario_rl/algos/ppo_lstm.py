"""Recurrent PPO: plain PPO (``ppo.py``) with an LSTM core, trained by truncated BPTT.

What it adds, and nothing else:

* the rollout keeps the LSTM state at the start of every ``bptt_len`` sequence (and, with
  ``lstm_penalty``, after every step);
* minibatches are whole sequences (``bptt_len`` consecutive steps of one env), run through the
  LSTM from the state they started from when collected;
* an optional penalty: the mean squared difference between the states recomputed in the update
  and those seen while collecting.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from mario_rl.algos.ppo import PPO, flat
from mario_rl.algos.rollout import Rollout
from mario_rl.config.ppo import PPOConfig
from mario_rl.models import ACOutput, LSTMState

__all__ = ["PPOLSTM", "LSTMRollout"]


class LSTMRollout(Rollout):
    """A rollout that also keeps LSTM states: at each sequence start, and per step if penalised."""

    def __init__(self, cfg: PPOConfig, obs_shape: tuple[int, ...], device: torch.device):
        super().__init__(cfg, obs_shape, device)
        t, n, hs = cfg.rollout_steps, cfg.num_envs, cfg.lstm_hidden
        self.bptt_len = cfg.bptt_len
        self.penalised = cfg.lstm_penalty > 0
        # LSTM state at the start of each bptt_len sequence, before that step's reset mask.
        self.seq_h = torch.zeros((t // cfg.bptt_len, n, hs), device=device)
        self.seq_c = torch.zeros((t // cfg.bptt_len, n, hs), device=device)
        if self.penalised:
            self.step_h = torch.zeros((t, n, hs), device=device)
            self.step_c = torch.zeros((t, n, hs), device=device)

    def keep_state(self, t: int, cols: slice, state: LSTMState | None) -> None:
        if t % self.bptt_len == 0:
            assert state is not None
            # The state *before* this step's reset mask; the model applies starts itself.
            self.seq_h[t // self.bptt_len, cols] = state[0]
            self.seq_c[t // self.bptt_len, cols] = state[1]

    def keep_output(self, t: int, cols: slice, out: ACOutput) -> None:
        if self.penalised:
            assert out.state is not None
            self.step_h[t, cols], self.step_c[t, cols] = out.state


class PPOLSTM(PPO):
    """PPO with an LSTM core (``algo="ppo-lstm"``): sequence minibatches, optional state penalty."""

    algo = "ppo-lstm"
    rollout_class = LSTMRollout
    rollout: LSTMRollout

    def _minibatches(self) -> Iterator[Tensor]:
        """One epoch's minibatches of whole sequences, as sample indices in time-major order:
        (bptt_len, sequences) flattened, where sample (t, e) is row t * num_envs + e."""
        cfg, n, unit = self.cfg, self.cfg.num_envs, self.cfg.bptt_len
        n_seqs = (cfg.rollout_steps // unit) * n
        per_mb = cfg.minibatch_size // unit
        perm = torch.randperm(n_seqs, generator=self.gen)
        for k in range(0, n_seqs, per_mb):
            seqs = perm[k : k + per_mb]  # sequence q is sequence q // n of env q % n
            seq, env = seqs // n, seqs % n
            t_idx = seq.unsqueeze(0) * unit + torch.arange(unit).unsqueeze(1)  # (T, M)
            yield (t_idx * n + env.unsqueeze(0)).reshape(-1)

    def _forward(self, idx: Tensor) -> ACOutput:
        """The sequences ``idx`` through the LSTM from their collected start states."""
        cfg, buf, n, unit = self.cfg, self.rollout, self.cfg.num_envs, self.cfg.bptt_len
        firsts = idx.reshape(unit, -1)[0]  # each sequence's first sample
        seq, env = firsts // n // unit, firsts % n
        obs = self._as_nchw(flat(buf.obs_store)[idx]).reshape(unit, len(firsts), *self.obs_shape)
        state = (buf.seq_h[seq, env], buf.seq_c[seq, env])
        # No detach inside the sequence: gradients flow through all bptt_len steps.
        starts = flat(buf.starts)[idx].reshape(unit, -1)
        return self.model(obs, state, starts, cfg.lstm_penalty > 0)

    def _loss(
        self, terms: dict[str, Tensor], out: ACOutput, idx: Tensor, ent_coef: float
    ) -> Tensor:
        loss = super()._loss(terms, out, idx, ent_coef)
        cfg, buf = self.cfg, self.rollout
        if cfg.lstm_penalty > 0:
            assert out.all_states is not None
            t_of, e_of = idx // cfg.num_envs, idx % cfg.num_envs
            h_old = buf.step_h[t_of, e_of].reshape(*out.all_states[0].shape)
            c_old = buf.step_c[t_of, e_of].reshape(*out.all_states[1].shape)
            # Mean over every step of every sequence (the seed kept only the last step).
            penalty = F.mse_loss(out.all_states[0], h_old) + F.mse_loss(out.all_states[1], c_old)
            terms["lstm_penalty"] = penalty
            loss = loss + cfg.lstm_penalty * penalty
        return loss
