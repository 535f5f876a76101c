"""Actor-critic: obs encoder -> controller -> h_t -> PseudoMode memory -> [h_t, r_t] -> policy / value heads.

    model = ActorCritic(obs_dim=3, num_actions=2, controller="mamba2")   # num_actions=(3, 5): MultiDiscrete;
                                                                         # BoxActions(2): two reals (Gaussian)
    state = model.init_state(num_envs, device)
    out = model.act(obs, state, reset)          # one step for a batch of envs, (B, obs_dim)
    seq = model.evaluate(obs_seq, state0, reset_seq)   # whole sequences, (B, L, obs_dim)

Both return an `ACOutput` (logits, value, gate, state); `evaluate` from the states `act` started from
gives the same logits and values as stepping `act` (tested to 1e-5, resets inside the sequence).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from ..memory import PseudoModeMemory
from .controllers import CONTROLLERS
from .distributions import action_distribution


class ACOutput(NamedTuple):
    logits: torch.Tensor  # (B, A) or (B, L, A); A = action_dist.num_logits (the components' logits, concatenated)
    value: torch.Tensor  # (B,) or (B, L)
    gate: torch.Tensor | None  # write gate, (B,) or (B, L); None without memory
    state: dict  # recurrent state after the last step, {name: (B, ...)}


def _head(d_in: int, d_hidden: int, d_out: int, out_std: float) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(d_in, d_hidden), nn.Tanh(), nn.Linear(d_hidden, d_out))
    nn.init.orthogonal_(net[2].weight, out_std)  # small policy init as in CleanRL's PPO
    nn.init.zeros_(net[2].bias)
    return net


class ActorCritic(nn.Module):
    def __init__(self, obs_dim: int, num_actions, controller: str = "mamba2", memory: bool = True,
                 d_model: int = 64, n_layers: int = 1, d_state: int = 16, headdim: int = 32, expand: int = 2,
                 mem_slots: int = 16, mem_dim: int = 64, mem_max_timescale: float = 2000.0,
                 mem_gate_init: float = 0.02, mem_chunk: int = 16, head_hidden: int = 64, ssm_chunk: int = 50):
        super().__init__()
        if controller not in CONTROLLERS:
            raise ValueError(f"controller must be one of {sorted(CONTROLLERS)}, got {controller!r}")
        self.encoder = nn.Sequential(nn.Linear(obs_dim, d_model), nn.Tanh())
        kw = (dict(d_state=d_state, headdim=headdim, expand=expand, chunk_size=ssm_chunk) if controller == "mamba2"
              else {})
        self.controller = CONTROLLERS[controller](d_model=d_model, n_layers=n_layers, **kw)
        self.memory = (PseudoModeMemory(d_model, mem_slots, mem_dim, max_timescale=mem_max_timescale,
                                        gate_init=mem_gate_init, chunk_size=mem_chunk) if memory else None)
        self.read_norm = nn.LayerNorm(mem_dim) if memory else None
        d_head = d_model + (mem_dim if memory else 0)
        # int n: one categorical; tuple: one per MultiDiscrete component; BoxActions(K): a diagonal Gaussian
        self.action_dist = action_distribution(num_actions)
        self.policy = _head(d_head, head_hidden, self.action_dist.num_logits, 0.01)
        self.value = _head(d_head, head_hidden, 1, 1.0)

    @property
    def graph_safe(self) -> bool:
        """Whether `evaluate` launches the same kernels whatever the data (no host sync): it can be captured as a
        CUDA graph. The GRU/LSTM's sequence pass cuts the sequence where episodes reset; Mamba2's does not."""
        return self.controller.graph_safe

    def init_state(self, batch: int, device=None) -> dict:
        state = {f"ctrl.{k}": v for k, v in self.controller.init_state(batch, device).items()}
        if self.memory is not None:
            state["mem"] = self.memory.init_state(batch, device)
        return state

    @staticmethod
    def _split(state: dict):
        ctrl = {k[5:]: v for k, v in state.items() if k.startswith("ctrl.")}
        return ctrl, state.get("mem")

    def _heads(self, h, read):
        feats = h if read is None else torch.cat([h, self.read_norm(read)], dim=-1)
        return self.policy(feats), self.value(feats).squeeze(-1)

    def act(self, obs: torch.Tensor, state: dict, reset: torch.Tensor) -> ACOutput:
        """One step. obs: (B, obs_dim), state: {name: (B, ...)}, reset: (B,) bool (episode starts now)."""
        ctrl, mem = self._split(state)
        h, ctrl = self.controller.step(self.encoder(obs), ctrl, reset)
        new = {f"ctrl.{k}": v for k, v in ctrl.items()}
        read = gate = None
        if self.memory is not None:
            read, new["mem"], gate = self.memory.step(h, mem, reset)
        logits, value = self._heads(h, read)
        return ACOutput(logits, value, gate, new)

    def evaluate(self, obs: torch.Tensor, state: dict, reset: torch.Tensor) -> ACOutput:
        """Whole sequences. obs: (B, L, obs_dim), state: states before step 0, reset: (B, L) bool."""
        ctrl, mem = self._split(state)
        h, ctrl = self.controller.forward_seq(self.encoder(obs), ctrl, reset)  # (B, L, D)
        new = {f"ctrl.{k}": v for k, v in ctrl.items()}
        read = gate = None
        if self.memory is not None:
            read, new["mem"], gate = self.memory(h, mem, reset)  # (B, L, Dm)
        logits, value = self._heads(h, read)
        return ACOutput(logits, value, gate, new)
