"""Recurrent controllers with one interface: batch-first state dicts and per-env resets.

    state = ctrl.init_state(batch, device)                        # {name: (batch, ...)}
    h, state = ctrl.step(x, state, reset)                         # x (B, D), reset (B,) bool
    h, state = ctrl.forward_seq(x, state, reset)                  # x (B, L, D), reset (B, L) bool

reset[b, t] zeroes env b's state before token t (an episode starts there). The two calls agree.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def _keep(reset: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) bool reset -> multiplier (B, 1, ..., 1) that zeroes the reset rows of `like`."""
    return (~reset).to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


class Mamba2Controller(nn.Module):
    """A stack of pre-norm residual Mamba2 blocks (mamba_compat, whatever backend the device has)."""

    graph_safe = True  # forward_seq: the same kernels whatever the resets (they become seq_idx)

    def __init__(self, d_model: int = 64, n_layers: int = 1, d_state: int = 16, headdim: int = 32, expand: int = 2,
                 d_conv: int = 4, chunk_size: int = 64):
        super().__init__()
        from mamba_compat import Mamba2
        self.layers = nn.ModuleList(Mamba2(d_model=d_model, d_state=d_state, d_conv=d_conv, expand=expand,
                                           headdim=headdim, chunk_size=chunk_size) for _ in range(n_layers))
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(n_layers))
        self.out_norm = nn.LayerNorm(d_model)

    def init_state(self, batch: int, device=None) -> dict:
        state = {}
        for i, layer in enumerate(self.layers):
            conv, ssm = layer.allocate_inference_cache(batch, 1, dtype=torch.float32)
            state[f"conv{i}"], state[f"ssm{i}"] = conv.to(device).zero_(), ssm.to(device).zero_()
        return state

    def step(self, x, state, reset):
        new = {}
        for i, (layer, norm) in enumerate(zip(self.layers, self.norms)):
            conv = state[f"conv{i}"] * _keep(reset, state[f"conv{i}"])  # fresh tensors: step writes in place
            ssm = state[f"ssm{i}"] * _keep(reset, state[f"ssm{i}"])
            y, conv, ssm = layer.step(norm(x).unsqueeze(1), conv, ssm)  # (B, 1, D)
            x = x + y.squeeze(1)
            new[f"conv{i}"], new[f"ssm{i}"] = conv, ssm
        return self.out_norm(x), new

    def forward_seq(self, x, state, reset):
        new = {}
        for i, (layer, norm) in enumerate(zip(self.layers, self.norms)):
            y, conv, ssm = layer.forward_with_state(norm(x), state[f"conv{i}"], state[f"ssm{i}"], reset=reset)
            x = x + y
            new[f"conv{i}"], new[f"ssm{i}"] = conv, ssm
        return self.out_norm(x), new


class _TorchRNNController(nn.Module):
    """nn.GRU / nn.LSTM with per-env resets: the sequence is cut where any env resets (one call when
    episodes are aligned with the sequence start) and the reset rows are zeroed at each cut."""

    rnn_cls = nn.GRU
    state_names = ("h",)
    graph_safe = False  # forward_seq picks its cuts on the host from the resets

    def __init__(self, d_model: int = 64, n_layers: int = 1, **_):
        super().__init__()
        self.rnn = self.rnn_cls(d_model, d_model, num_layers=n_layers, batch_first=True)
        self.n_layers = n_layers

    def init_state(self, batch: int, device=None) -> dict:
        d = self.rnn.hidden_size
        return {n: torch.zeros(batch, self.n_layers, d, device=device) for n in self.state_names}

    def _run(self, x, state):
        hx = tuple(state[n].transpose(0, 1).contiguous() for n in self.state_names)  # (layers, B, D)
        y, out = self.rnn(x, hx[0] if len(hx) == 1 else hx)
        out = (out,) if len(self.state_names) == 1 else out
        return y, {n: o.transpose(0, 1) for n, o in zip(self.state_names, out)}

    def step(self, x, state, reset):
        state = {n: s * _keep(reset, s) for n, s in state.items()}
        y, state = self._run(x.unsqueeze(1), state)
        return y.squeeze(1), state

    def forward_seq(self, x, state, reset):
        length = x.shape[1]
        cuts = [0] + [t for t in range(1, length) if bool(reset[:, t].any())] + [length]
        ys = []
        for t0, t1 in zip(cuts[:-1], cuts[1:]):
            state = {n: s * _keep(reset[:, t0], s) for n, s in state.items()}
            y, state = self._run(x[:, t0:t1], state)
            ys.append(y)
        return torch.cat(ys, dim=1), state


class GRUController(_TorchRNNController):
    rnn_cls = nn.GRU
    state_names = ("h",)


class LSTMController(_TorchRNNController):
    rnn_cls = nn.LSTM
    state_names = ("h", "c")


CONTROLLERS = {"mamba2": Mamba2Controller, "gru": GRUController, "lstm": LSTMController}
