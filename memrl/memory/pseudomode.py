"""PseudoMode memory: M damped modes (slots) with learned retention, a sparse write gate and a content read.

Named after the pseudomode method of open quantum systems, where a bath's memory kernel is reproduced
by a few auxiliary damped modes. Per step, from the controller output h_t (DESIGN §3):

    g_t   = sigmoid(w . h_t + b)                  write gate, b initialised so g ~ 0.02
    a_t   = softmax(W_a h_t)                      address over the M slots
    v_t   = W_v h_t                               value, (Dm,)
    m_i  <- lambda_i (1 - g_t a_ti) m_i + g_t a_ti v_t        lambda_i = sigmoid(rho_i) in (0, 1)
    r_t   = sum_i softmax_i(q_t . m_i / sqrt(Dm)) m_i         q_t = W_q h_t

Timescales 1/(1 - lambda_i) start log-spaced from `min_timescale` to `max_timescale`. The memory is
zeroed at episode starts (`reset`). Reads go to the heads only, never back into the controller, so the
update is a linear time-varying recurrence in m with per-(step, slot) scalar decay
d_ti = lambda_i (1 - g_t a_ti) and input u_ti v_t (u = g a). Training evaluates it with a chunked
parallel scan (`pseudomode_scan`: log-space cumulative decays per chunk, an intra-chunk weighted sum
and a short inter-chunk recurrence, as SSD does) which equals the step loop (`pseudomode_loop`).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

_U_MAX = 1.0 - 1e-6  # keeps log1p(-u) and its gradient finite
LOG_DECAY_MIN = -5.0  # per-step decay lambda (1 - g a) is floored at e^-5 = 0.0067 (bounds the chunked scan)


def write_weights(gate: torch.Tensor, address: torch.Tensor) -> torch.Tensor:
    """u = g * a, clamped below 1. gate: (..., ) in (0,1); address: (..., M) -> (..., M)."""
    return (gate.unsqueeze(-1) * address).clamp(max=_U_MAX)


def decay(u: torch.Tensor, log_lam: torch.Tensor) -> torch.Tensor:
    """Per-step, per-slot decay d = max(lambda (1 - u), e^LOG_DECAY_MIN). u: (..., M), log_lam: (M,)."""
    return (log_lam.exp() * (1 - u)).clamp_min(math.exp(LOG_DECAY_MIN))


def log_decay(u: torch.Tensor, log_lam: torch.Tensor) -> torch.Tensor:
    """log of `decay`, computed stably: max(log lambda + log1p(-u), LOG_DECAY_MIN)."""
    return (log_lam + torch.log1p(-u)).clamp_min(LOG_DECAY_MIN)


def read(mem: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Content read. mem: (..., M, Dm), query: (..., Dm) -> (..., Dm)."""
    scores = (mem @ query.unsqueeze(-1)).squeeze(-1) / math.sqrt(mem.shape[-1])  # (..., M)
    weights = scores.softmax(dim=-1)
    return (weights.unsqueeze(-2) @ mem).squeeze(-2)  # (..., Dm)


def pseudomode_loop(u, v, log_lam, reset=None, mem0=None):
    """Step-by-step oracle. u: (B, L, M), v: (B, L, Dm), log_lam: (M,), reset: (B, L) bool, mem0: (B, M, Dm).

    Returns mems (B, L, M, Dm): the memory after each step's write.
    """
    b, length, m = u.shape
    mem = u.new_zeros(b, m, v.shape[-1]) if mem0 is None else mem0
    out = []
    for t in range(length):
        if reset is not None:
            mem = mem * (~reset[:, t]).to(mem.dtype)[:, None, None]
        mem = decay(u[:, t], log_lam).unsqueeze(-1) * mem + u[:, t].unsqueeze(-1) * v[:, t].unsqueeze(1)
        out.append(mem)
    return torch.stack(out, dim=1)


def pseudomode_scan(u, v, log_lam, reset=None, mem0=None, chunk_size: int = 16):
    """Chunked parallel scan, equal to `pseudomode_loop` (same arguments and result).

    1. log decays  l_ti = max(log lambda_i + log1p(-u_ti), LOG_DECAY_MIN), cumulated per chunk: Lc_t = sum_{k<=t} l_k
    2. intra-chunk: m_t += sum_{s<=t, same episode} exp(Lc_t - Lc_s) u_s v_s
    3. chunk states: carried across chunks by a short loop over L / chunk_size chunks
    4. state-to-step: m_t += exp(Lc_t) m_chunk_start   (only where no reset happened in the chunk so far)
    """
    b, length, m = u.shape
    dm = v.shape[-1]
    c = int(chunk_size)
    pad = (-length) % c
    if reset is None:
        reset = torch.zeros(b, length, dtype=torch.bool, device=u.device)
    logd = log_decay(u, log_lam)  # (B, L, M)
    if pad:
        u, logd = F.pad(u, (0, 0, 0, pad)), F.pad(logd, (0, 0, 0, pad))
        v, reset = F.pad(v, (0, 0, 0, pad)), F.pad(reset, (0, pad))
    k = (length + pad) // c
    u, logd = u.view(b, k, c, m), logd.view(b, k, c, m)  # (B, K, C, M)
    v = v.view(b, k, c, dm)  # (B, K, C, Dm)
    seg = reset.view(b, k, c).long().cumsum(-1)  # (B, K, C) episode index inside the chunk
    cum = logd.cumsum(dim=2)  # (B, K, C, M)
    # 2. intra-chunk weights W[t, s, i] = exp(Lc_t - Lc_s) u_s for s <= t in the same episode
    same = (seg.unsqueeze(-1) == seg.unsqueeze(-2)) & torch.ones(c, c, dtype=torch.bool, device=u.device).tril()
    diff = cum.unsqueeze(3) - cum.unsqueeze(2)  # (B, K, C_t, C_s, M)
    w = diff.masked_fill(~same.unsqueeze(-1), float("-inf")).exp() * u.unsqueeze(2)
    w = w.permute(0, 1, 4, 2, 3)  # (B, K, M, C_t, C_s)
    intra = w @ v.unsqueeze(2)  # (B, K, M, C_t, Dm)
    # 4. decay from the chunk start, zero after a reset inside the chunk
    carry = cum.exp() * (seg == 0).unsqueeze(-1)  # (B, K, C, M)
    carry = carry.permute(0, 1, 3, 2).unsqueeze(-1)  # (B, K, M, C, 1)
    # 3. inter-chunk recurrence on chunk-start states
    state = u.new_zeros(b, m, dm) if mem0 is None else mem0
    outs = []
    for j in range(k):
        mj = intra[:, j] + carry[:, j] * state.unsqueeze(2)  # (B, M, C, Dm)
        outs.append(mj)
        state = mj[:, :, -1]
    mems = torch.stack(outs, dim=1)  # (B, K, M, C, Dm)
    mems = mems.permute(0, 1, 3, 2, 4).reshape(b, k * c, m, dm)  # (B, L_pad, M, Dm)
    return mems[:, :length]


def pseudomode_scan_read(u, v, q, log_lam, reset=None, mem0=None, chunk_size: int = 16):
    """Chunked scan fused with the content read: the per-step memories (B, L, M, Dm) are never built.

    u: (B, L, M), v: (B, L, Dm), q: (B, L, Dm), log_lam: (M,), reset: (B, L) bool, mem0: (B, M, Dm).
    Returns read (B, L, Dm) equal to read(pseudomode_loop(...), q), and the final memory (B, M, Dm).

    Within a chunk, with Lc the cumulative log decay from the chunk start and S the memory there,
    m_t[i] = sum_{s<=t, same episode} e^{Lc_t,i} e^{-Lc_s,i} u_s,i v_s + e^{Lc_t,i} S[i]. The decay factors
    into e^{Lc_t - c} and e^{c - Lc_s} (c = Lc at the chunk middle; any product of the two, even a masked
    one, stays below e^{(chunk_size - 1) |LOG_DECAY_MIN|}, finite in fp32), so, as in linear attention:
        score[t, i] = e^{Lc_t,i} sum_s mask[t, s] (q_t . v_s) e^{-Lc_s,i} u_s,i + carry[t, i] (q_t . S[i])
        p           = softmax_i(score / sqrt(Dm))
        r_t         = sum_s mask[t, s] (sum_i p_t,i e^{Lc_t,i} e^{-Lc_s,i} u_s,i) v_s + sum_i p_t,i carry[t, i] S[i]
    All chunk-local products are (C x C), (C x M) or (C x Dm) matmuls; memory is O(L (C + M + Dm)).
    """
    b, length, m = u.shape
    dm = v.shape[-1]
    c = int(chunk_size)
    if c < 1 or (u.dtype != torch.float64 and (c - 1) * -LOG_DECAY_MIN > 80):
        raise ValueError(f"chunk_size must be in [1, 17] for {u.dtype} (e^((chunk_size - 1) * "
                         f"{-LOG_DECAY_MIN}) must stay finite), got {chunk_size}")
    pad = (-length) % c
    if reset is None:
        reset = torch.zeros(b, length, dtype=torch.bool, device=u.device)
    logd = log_decay(u, log_lam)  # (B, L, M)
    if pad:  # padded steps neither decay nor write: the final memory is the one after step L-1
        u, logd = F.pad(u, (0, 0, 0, pad)), F.pad(logd, (0, 0, 0, pad))
        v, q, reset = F.pad(v, (0, 0, 0, pad)), F.pad(q, (0, 0, 0, pad)), F.pad(reset, (0, pad))
    k = (length + pad) // c
    u, logd = u.view(b, k, c, m), logd.view(b, k, c, m)  # (B, K, C, M)
    v, q = v.view(b, k, c, dm), q.view(b, k, c, dm)  # (B, K, C, Dm)
    seg = reset.view(b, k, c).long().cumsum(-1)  # (B, K, C) episode index inside the chunk
    causal = torch.ones(c, c, dtype=torch.bool, device=u.device).tril()
    mask = ((seg.unsqueeze(-1) == seg.unsqueeze(-2)) & causal).to(u.dtype)  # (B, K, C_t, C_s)
    cum = logd.cumsum(dim=2)  # (B, K, C, M)
    mid = cum[:, :, c // 2].unsqueeze(2)  # (B, K, 1, M): centring halves the exponents' range
    e_pos = (cum - mid).exp()  # e_pos[t] e_neg[s] = exp(Lc_t - Lc_s) u_s
    e_neg = (mid - cum).exp() * u  # (B, K, C, M)
    carry = cum.exp() * (seg == 0).unsqueeze(-1)  # (B, K, C, M) decay since the chunk start, 0 after a reset
    # chunk-start states: S_{j+1} = sum_s W[C-1, s] v_s + carry[C-1] S_j
    end_writes = e_pos[:, :, -1].unsqueeze(-1) * ((e_neg * mask[:, :, -1].unsqueeze(-1)).transpose(-1, -2) @ v)
    state = u.new_zeros(b, m, dm) if mem0 is None else mem0
    starts = []
    # unbind once: indexing inside the loop would make backward write K full-size gradients
    for writes_j, carry_j in zip(end_writes.unbind(1), carry[:, :, -1].unsqueeze(-1).unbind(1)):
        starts.append(state)
        state = writes_j + carry_j * state  # (B, M, Dm)
    starts = torch.stack(starts, dim=1)  # (B, K, M, Dm)
    qv = (q @ v.transpose(-1, -2)) * mask  # (B, K, C_t, C_s)
    scores = e_pos * (qv @ e_neg) + carry * (q @ starts.transpose(-1, -2))  # (B, K, C, M)
    p = (scores / math.sqrt(dm)).softmax(-1)
    mix = ((p * e_pos) @ e_neg.transpose(-1, -2)) * mask  # (B, K, C_t, C_s)
    r = mix @ v + (p * carry) @ starts  # (B, K, C, Dm)
    return r.reshape(b, k * c, dm)[:, :length], state


def log_spaced_retention(num_slots: int, min_timescale: float, max_timescale: float) -> torch.Tensor:
    """rho_i with sigmoid(rho_i) = 1 - 1/tau_i, tau log-spaced in [min_timescale, max_timescale]. (M,)"""
    if not 1.0 < min_timescale <= max_timescale:
        raise ValueError(f"need 1 < min_timescale <= max_timescale, got {min_timescale}, {max_timescale}")
    tau = torch.logspace(math.log10(min_timescale), math.log10(max_timescale), num_slots, dtype=torch.float64)
    lam = 1 - 1 / tau
    return torch.log(lam / (1 - lam)).float()  # logit


class PseudoModeMemory(nn.Module):
    """The memory layer. Input h: (B, L, d_in) or one step (B, d_in); state: (B, num_slots, slot_dim)."""

    def __init__(self, d_in: int, num_slots: int = 16, slot_dim: int = 64, min_timescale: float = 2.0,
                 max_timescale: float = 2000.0, gate_init: float = 0.02, chunk_size: int = 16):
        super().__init__()
        if not 0.0 < gate_init < 1.0:
            raise ValueError(f"gate_init must be in (0, 1), got {gate_init}")
        if not 1 <= chunk_size <= 17:
            raise ValueError(f"chunk_size must be in [1, 17] (fp32 range of the chunked scan), got {chunk_size}")
        self.num_slots, self.slot_dim, self.chunk_size = num_slots, slot_dim, chunk_size
        self.retention_logit = nn.Parameter(log_spaced_retention(num_slots, min_timescale, max_timescale))
        self.gate = nn.Linear(d_in, 1)
        nn.init.zeros_(self.gate.weight)  # g = gate_init exactly at start, then learned
        nn.init.constant_(self.gate.bias, math.log(gate_init / (1 - gate_init)))
        self.address = nn.Linear(d_in, num_slots)
        self.value = nn.Linear(d_in, slot_dim)
        self.query = nn.Linear(d_in, slot_dim)

    def init_state(self, batch: int, device=None) -> torch.Tensor:
        return torch.zeros(batch, self.num_slots, self.slot_dim, device=device)

    def _writes(self, h):
        gate = torch.sigmoid(self.gate(h)).squeeze(-1)  # (...,)
        u = write_weights(gate, self.address(h).softmax(-1))  # (..., M)
        return gate, u, self.value(h)

    def log_retention(self) -> torch.Tensor:
        return F.logsigmoid(self.retention_logit)  # (M,) log lambda

    def step(self, h: torch.Tensor, mem: torch.Tensor, reset: torch.Tensor | None = None):
        """One step. h: (B, d_in), mem: (B, M, Dm), reset: (B,) bool -> (read (B, Dm), mem, gate (B,))."""
        gate, u, v = self._writes(h)
        if reset is not None:
            mem = mem * (~reset).to(mem.dtype)[:, None, None]
        mem = decay(u, self.log_retention()).unsqueeze(-1) * mem + u.unsqueeze(-1) * v.unsqueeze(1)
        return read(mem, self.query(h)), mem, gate

    def forward(self, h: torch.Tensor, mem0: torch.Tensor | None = None, reset: torch.Tensor | None = None,
                use_loop: bool = False):
        """Whole sequence. h: (B, L, d_in), mem0: (B, M, Dm), reset: (B, L) bool.

        Returns read (B, L, Dm), final memory (B, M, Dm), gate (B, L).
        """
        gate, u, v = self._writes(h)
        if mem0 is None:
            mem0 = self.init_state(h.shape[0], h.device)
        if use_loop:
            mems = pseudomode_loop(u, v, self.log_retention(), reset, mem0)  # (B, L, M, Dm)
            return read(mems, self.query(h)), mems[:, -1], gate
        r, mem = pseudomode_scan_read(u, v, self.query(h), self.log_retention(), reset, mem0, self.chunk_size)
        return r, mem, gate
