"""`Mamba2`: drop-in for mamba_ssm.Mamba2 (2.3.2): same constructor, parameters and state_dict, forward /
step / allocate_inference_cache / _get_states_from_cache as upstream, on any device and backend; plus
`forward_with_state` for recurrent use (whole sequences from given states, per-step resets).

Data flow (shapes for batch B, length L; d_ssm = nheads * headdim, conv_dim = d_ssm + 2 * ngroups * d_state):
    u (B, L, d_model) -> in_proj -> [z0, x0 (d_mlp each), z (d_ssm), xBC (conv_dim), dt (nheads)]
    xBC -> causal depthwise conv (width d_conv) + SiLU (ops/conv1d) -> x (d_ssm), B, C (ngroups * d_state each)
    y = SSD(x, dt, A = -exp(A_log), B, C, D, dt_bias, softplus, dt_limit)   (z gates here if not rmsnorm)
    y = grouped gated RMSNorm(y, z) (ops/rmsnorm) if rmsnorm;  y = [silu(z0) * x0, y] if d_mlp > 0;  out = out_proj(y)
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import mamba_chunk_scan_combined, selective_state_update
from ..ops.checks import check_dt_limit, check_seq_idx
from ..ops.conv1d import (causal_conv1d, causal_conv1d_update, conv_state_after, segments_from_cu_seqlens,
                          segments_from_reset, segments_from_seq_idx)
from .rmsnorm_gated import RMSNormGated

_INF = float("inf")


def _up(t: torch.Tensor) -> torch.Tensor:
    """t in fp32, or fp64 if it is fp64."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


class Mamba2(nn.Module):
    """Mamba-2 mixer. Arguments, defaults and parameter names/shapes as mamba_ssm.Mamba2:
    in_proj.weight (d_in_proj, d_model) [+ bias], conv1d.weight (conv_dim, 1, d_conv), conv1d.bias (conv_dim,),
    dt_bias (nheads,), A_log (nheads,), D (nheads,) or (d_ssm,) with D_has_hdim, norm.weight (d_ssm,) with rmsnorm,
    out_proj.weight (d_model, d_inner) [+ bias], where d_in_proj = 2 * d_inner + 2 * ngroups * d_state + nheads.

    Tensor parallelism (process_group) is not supported. use_mem_eff_path is accepted and ignored (one path).
    """

    def __init__(self, d_model, d_state=128, d_conv=4, conv_init=None, expand=2, headdim=64, d_ssm=None, ngroups=1,
                 A_init_range=(1, 16), D_has_hdim=False, rmsnorm=True, norm_before_gate=False, dt_min=0.001,
                 dt_max=0.1, dt_init_floor=1e-4, dt_limit=(0.0, _INF), bias=False, conv_bias=True, chunk_size=256,
                 use_mem_eff_path=True, layer_idx=None, process_group=None, sequence_parallel=True, device=None,
                 dtype=None):
        if process_group is not None:
            raise NotImplementedError("mamba_compat.Mamba2 does not support tensor parallelism: pass "
                                      "process_group=None (got a process group)")
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        d_inner = expand * d_model
        if d_inner != int(d_inner) or d_inner < 1:
            raise ValueError(f"expand * d_model must be a positive integer, got expand={expand}, d_model={d_model}")
        self.d_model, self.d_state, self.d_conv, self.conv_init, self.expand = d_model, d_state, d_conv, conv_init, expand
        self.process_group, self.sequence_parallel = None, sequence_parallel
        self.world_size, self.local_rank = 1, 0
        self.d_inner = int(d_inner)
        self.headdim = headdim
        self.d_ssm = self.d_inner if d_ssm is None else d_ssm
        if not 0 < self.d_ssm <= self.d_inner:
            raise ValueError(f"d_ssm must be in (0, d_inner = expand * d_model = {self.d_inner}], got {d_ssm}")
        if self.d_ssm % headdim != 0:
            raise ValueError(f"d_ssm ({self.d_ssm}) must be a multiple of headdim ({headdim})")
        self.ngroups = ngroups
        self.nheads = self.d_ssm // headdim
        if ngroups < 1 or self.nheads % ngroups != 0:
            raise ValueError(f"ngroups ({ngroups}) must divide nheads = d_ssm / headdim = {self.nheads}")
        if d_conv < 1:
            raise ValueError(f"d_conv must be >= 1, got {d_conv}")
        if not (A_init_range[0] > 0 and A_init_range[1] >= A_init_range[0]):
            raise ValueError(f"A_init_range must satisfy 0 < low <= high, got {A_init_range}")
        self.D_has_hdim, self.rmsnorm, self.norm_before_gate = D_has_hdim, rmsnorm, norm_before_gate
        self.dt_limit = tuple(dt_limit)
        check_dt_limit(self.dt_limit)
        self.activation = "silu"
        self.chunk_size, self.use_mem_eff_path, self.layer_idx = chunk_size, use_mem_eff_path, layer_idx

        self.conv_dim = self.d_ssm + 2 * ngroups * d_state
        self.d_mlp = self.d_inner - self.d_ssm
        d_in_proj = 2 * self.d_inner + 2 * ngroups * d_state + self.nheads  # [z0, x0, z, xBC, dt]
        self._split = [self.d_mlp, self.d_mlp, self.d_ssm, self.conv_dim, self.nheads]
        self.in_proj = nn.Linear(d_model, d_in_proj, bias=bias, **factory_kwargs)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, kernel_size=d_conv, groups=self.conv_dim,
                                padding=d_conv - 1, bias=conv_bias, **factory_kwargs)
        if conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -conv_init, conv_init)
        self.act = nn.SiLU()

        # dt_bias = softplus^-1(dt), dt log-uniform in [dt_min, dt_max], floored at dt_init_floor
        dt = torch.exp(torch.rand(self.nheads, **factory_kwargs) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.dt_bias._no_weight_decay = True
        A = torch.empty(self.nheads, dtype=torch.float32, device=device).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A).to(dtype=dtype))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_ssm if D_has_hdim else self.nheads, device=device))  # fp32, as upstream
        self.D._no_weight_decay = True
        if rmsnorm:
            self.norm = RMSNormGated(self.d_ssm, eps=1e-5, norm_before_gate=norm_before_gate,
                                     group_size=self.d_ssm // ngroups, **factory_kwargs)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory_kwargs)

    # ----------------------------------------------------------------------------------------------------------
    # sequence path

    def _A(self) -> torch.Tensor:
        """A = -exp(A_log) (nheads,) in fp32 (fp64 for fp64 parameters): in fp16, exp could overflow."""
        return -torch.exp(_up(self.A_log))

    def _state_dtype(self) -> torch.dtype:
        """SSM states are float32 (float64 for a float64 model), whatever the parameters' dtype."""
        return torch.float64 if self.in_proj.weight.dtype == torch.float64 else torch.float32

    def _D(self) -> torch.Tensor:
        return self.D.view(self.nheads, self.headdim) if self.D_has_hdim else self.D  # (H, P) or (H,)

    def _mix(self, u: torch.Tensor, conv_state: Optional[torch.Tensor], initial_states: Optional[torch.Tensor],
             seg: Optional[torch.Tensor], want_states: bool):
        """u (B, L, d_model) -> (out (B, L, d_model), conv_state (B, conv_dim, d_conv) or None,
        ssm_state (B, H, P, N) fp32 or None). seg: (B, L) segment ids (see conv.py), also the scan's seq_idx."""
        b, seqlen, _ = u.shape
        h, p, g, n = self.nheads, self.headdim, self.ngroups, self.d_state
        zxbcdt = self.in_proj(u)  # (B, L, d_in_proj)
        z0, x0, z, xBC, dt = torch.split(zxbcdt, self._split, dim=-1)
        weight = self.conv1d.weight.squeeze(1)  # (conv_dim, d_conv)
        new_conv = conv_state_after(xBC, conv_state, self.d_conv, seg) if want_states else None
        xBC = causal_conv1d(xBC, weight, self.conv1d.bias, conv_state, seg, silu=True)  # (B, L, conv_dim)
        x, B, C = torch.split(xBC, [self.d_ssm, g * n, g * n], dim=-1)
        y, final = mamba_chunk_scan_combined(
            x.unflatten(-1, (h, p)), dt, self._A(), B.unflatten(-1, (g, n)),
            C.unflatten(-1, (g, n)), self.chunk_size, D=self._D(),
            z=None if self.rmsnorm else z.unflatten(-1, (h, p)), dt_bias=self.dt_bias,
            initial_states=initial_states, seq_idx=seg, dt_softplus=True, dt_limit=self.dt_limit,
            return_final_states=True)  # y (B, L, H, P), final (B, H, P, N)
        y = y.flatten(-2)  # (B, L, d_ssm)
        if self.rmsnorm:
            y = self.norm(y, z)
        if self.d_mlp > 0:
            y = torch.cat([F.silu(z0) * x0, y], dim=-1)  # (B, L, d_inner)
        if want_states and final.requires_grad:  # a fresh tensor: callers may edit the state in place
            final = final.clone()
        return self.out_proj(y), new_conv, (final if want_states else None)

    def forward(self, u, seqlen=None, seq_idx=None, cu_seqlens=None, inference_params=None):
        """u: (batch, seqlen, d_model), or (batch * seqlen, d_model) when `seqlen` is given -> same shape.

        seq_idx: (batch, seqlen) int; where it changes a new sequence starts (no state and no conv window
        crosses it). cu_seqlens: (S+1,) boundaries of packed sequences, batch 1 only (turned into seq_idx).
        inference_params: object with key_value_memory_dict and seqlen_offset (mamba_ssm's InferenceParams):
        seqlen_offset == 0 fills this layer's cache from the prompt (with seq_idx, the cached conv window
        holds only the last sequence's inputs); > 0 continues from it (via `step` for one token).
        """
        seqlen_og = seqlen
        if seqlen is None:
            if u.dim() != 3:
                raise ValueError(f"u must be (batch, seqlen, d_model={self.d_model}), got shape {tuple(u.shape)}")
            batch, seqlen, _ = u.shape
        else:
            if u.dim() != 2 or u.shape[0] % seqlen != 0:
                raise ValueError(f"with seqlen={seqlen}, u must be (batch * seqlen, d_model), got {tuple(u.shape)}")
            batch = u.shape[0] // seqlen
            u = u.view(batch, seqlen, u.shape[-1])  # (B, L, d_model)
        if u.shape[-1] != self.d_model:
            raise ValueError(f"u's last dim must be d_model={self.d_model}, got shape {tuple(u.shape)}")
        if cu_seqlens is not None:
            if inference_params is not None:
                raise NotImplementedError("cu_seqlens with inference_params (varlen cache fill) is not supported")
            if batch != 1 or seq_idx is not None:
                raise ValueError(f"cu_seqlens needs batch 1 and no seq_idx, got u {tuple(u.shape)}")
            seq_idx = segments_from_cu_seqlens(cu_seqlens, seqlen)
        if seq_idx is not None:
            check_seq_idx(seq_idx, batch, seqlen)
        seg = None if seq_idx is None else segments_from_seq_idx(seq_idx)  # (B, L)
        if inference_params is None:
            out = self._mix(u, None, None, seg, want_states=False)[0]
        else:
            conv_state, ssm_state = self._get_states_from_cache(inference_params, batch)
            if inference_params.seqlen_offset > 0:
                if seqlen == 1 and seg is None:
                    out = self.step(u, conv_state, ssm_state)[0]
                else:
                    out, new_conv, new_ssm = self._mix(u, conv_state, _up(ssm_state), seg, want_states=True)
                    conv_state.copy_(new_conv)
                    ssm_state.copy_(new_ssm)
            else:
                out, new_conv, new_ssm = self._mix(u, None, None, seg, want_states=True)
                conv_state.copy_(new_conv)
                ssm_state.copy_(new_ssm)
        return out if seqlen_og is None else out.reshape(batch * seqlen, -1)

    def forward_with_state(self, u: torch.Tensor, conv_state: Optional[torch.Tensor] = None,
                           ssm_state: Optional[torch.Tensor] = None, reset: Optional[torch.Tensor] = None):
        """Run a whole sequence from given recurrent states, with per-step resets; nothing is written in place.

        Args:
            u: (B, L, d_model)
            conv_state: (B, conv_dim, d_conv) conv window as `allocate_inference_cache` gives (None = zeros)
            ssm_state: (B, nheads, headdim, d_state) (None = zeros)
            reset: (B, L) bool or None; reset[b, t] clears both states before token t (an episode starts at t)
        Returns:
            out (B, L, d_model), conv_state (B, conv_dim, d_conv) in u's compute dtype, ssm_state
            (B, nheads, headdim, d_state) float32: the states after token L-1, equal to what `step` token by
            token gives (states zeroed where reset). Differentiable w.r.t. parameters and the given states.

        Example:
            >>> out, conv, ssm = layer.forward_with_state(u, conv, ssm, reset=dones)
        """
        if not isinstance(u, torch.Tensor) or u.dim() != 3 or u.shape[-1] != self.d_model:
            raise ValueError(f"u must be (batch, seqlen, d_model={self.d_model}), got "
                             f"{tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__}")
        b, seqlen, _ = u.shape
        if conv_state is not None and tuple(conv_state.shape) != (b, self.conv_dim, self.d_conv):
            raise ValueError(f"conv_state must be (batch, conv_dim, d_conv) = {(b, self.conv_dim, self.d_conv)}, "
                             f"got {tuple(conv_state.shape)}")
        if ssm_state is not None and tuple(ssm_state.shape) != (b, self.nheads, self.headdim, self.d_state):
            raise ValueError(f"ssm_state must be (batch, nheads, headdim, d_state) = "
                             f"{(b, self.nheads, self.headdim, self.d_state)}, got {tuple(ssm_state.shape)}")
        if reset is not None:
            if not isinstance(reset, torch.Tensor) or tuple(reset.shape) != (b, seqlen):
                raise ValueError(f"reset must be a (batch, seqlen) = {(b, seqlen)} bool tensor, got "
                                 f"{tuple(reset.shape) if isinstance(reset, torch.Tensor) else type(reset).__name__}")
            reset = reset.bool()
        if seqlen == 1 and not (torch.is_grad_enabled() and self._any_requires_grad(u, conv_state, ssm_state)):
            return self._decode_one(u, conv_state, ssm_state, reset)
        seg = None
        init = None if ssm_state is None else _up(ssm_state)
        if reset is not None:
            seg = segments_from_reset(reset)  # (B, L); the carried window is segment 0
            if init is not None:
                init = init * (~reset[:, 0]).to(init.dtype)[:, None, None, None]
        return self._mix(u, conv_state, init, seg, want_states=True)

    def _any_requires_grad(self, *tensors) -> bool:
        return any(t is not None and t.requires_grad for t in tensors) or any(
            p.requires_grad for p in self.parameters())

    def _decode_one(self, u, conv_state, ssm_state, reset):
        """forward_with_state for L == 1 without autograd: `step` (the decode op) on fresh copies of the states."""
        b = u.shape[0]
        if conv_state is None:
            conv = torch.zeros(b, self.d_conv, self.conv_dim, device=u.device, dtype=u.dtype).transpose(1, 2)
        else:
            conv = conv_state.to(u.dtype, copy=True)
        ssm = (torch.zeros(b, self.nheads, self.headdim, self.d_state, device=u.device, dtype=torch.float32)
               if ssm_state is None else _up(ssm_state).clone())
        if reset is not None:
            keep = ~reset[:, 0]  # (B,)
            conv.mul_(keep[:, None, None].to(conv.dtype))
            ssm.mul_(keep[:, None, None, None].to(ssm.dtype))
        return self.step(u, conv, ssm)

    # ----------------------------------------------------------------------------------------------------------
    # decode path

    def step(self, hidden_states, conv_state, ssm_state):
        """One token: hidden_states (B, 1, d_model); conv_state (B, conv_dim, d_conv) and ssm_state
        (B, nheads, headdim, d_state) are updated in place. Returns (out (B, 1, d_model), conv_state, ssm_state)."""
        if hidden_states.dim() != 3 or hidden_states.shape[1] != 1:
            raise ValueError(f"step decodes one token: hidden_states must be (batch, 1, d_model), "
                             f"got {tuple(hidden_states.shape)}")
        dtype = hidden_states.dtype
        h, p, g, n = self.nheads, self.headdim, self.ngroups, self.d_state
        zxbcdt = self.in_proj(hidden_states.squeeze(1))  # (B, d_in_proj)
        z0, x0, z, xBC, dt = torch.split(zxbcdt, self._split, dim=-1)
        xBC = causal_conv1d_update(xBC, conv_state, self.conv1d.weight.squeeze(1), self.conv1d.bias,
                                   silu=True).to(dtype)  # conv_state shifted in place
        x, B, C = torch.split(xBC, [self.d_ssm, g * n, g * n], dim=-1)
        b = x.shape[0]
        A = self._A()  # (H,)
        if self.dt_limit != (0.0, _INF):  # process dt here so that the clamp applies, as in forward
            dt = F.softplus(_up(dt) + _up(self.dt_bias)).clamp(*self.dt_limit)
            dt_bias, softplus = None, False
        else:
            dt_bias, softplus = self.dt_bias[:, None].expand(h, p), True
        D = self._D()
        y = selective_state_update(
            ssm_state, x.reshape(b, h, p), dt[:, :, None].expand(b, h, p), A[:, None, None].expand(h, p, n),
            B.reshape(b, g, n), C.reshape(b, g, n), D=D if D.dim() == 2 else D[:, None].expand(h, p),
            z=None if self.rmsnorm else z.reshape(b, h, p), dt_bias=dt_bias, dt_softplus=softplus)  # (B, H, P)
        y = y.reshape(b, self.d_ssm)
        if self.rmsnorm:
            y = self.norm(y, z)
        if self.d_mlp > 0:
            y = torch.cat([F.silu(z0) * x0, y], dim=-1)  # (B, d_inner)
        return self.out_proj(y).unsqueeze(1), conv_state, ssm_state

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None, **kwargs):
        """-> conv_state (batch_size, conv_dim, d_conv) (a transposed view, as upstream) in the conv weight's
        dtype, ssm_state (batch_size, nheads, headdim, d_state) in float32 (upstream: in_proj's dtype; fp32
        keeps bf16/fp16 models' decode as accurate as their forward); `dtype` overrides both, as upstream."""
        device = self.out_proj.weight.device
        conv_dtype = self.conv1d.weight.dtype if dtype is None else dtype
        conv_state = torch.zeros(batch_size, self.d_conv, self.conv_dim, device=device, dtype=conv_dtype).transpose(1, 2)
        ssm_dtype = self._state_dtype() if dtype is None else dtype
        ssm_state = torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device, dtype=ssm_dtype)
        return conv_state, ssm_state

    def _get_states_from_cache(self, inference_params, batch_size, initialize_states=False):
        """This layer's (conv_state, ssm_state) in inference_params.key_value_memory_dict[layer_idx],
        allocated (zeros, dtypes as allocate_inference_cache's) on first use."""
        if self.layer_idx is None:
            raise ValueError("inference_params needs the layer's layer_idx: construct Mamba2(..., layer_idx=i)")
        cache = inference_params.key_value_memory_dict
        if self.layer_idx not in cache:
            conv_state = torch.zeros(batch_size, self.d_conv, self.conv_dim, device=self.conv1d.weight.device,
                                     dtype=self.conv1d.weight.dtype).transpose(1, 2)
            ssm_state = torch.zeros(batch_size, self.nheads, self.headdim, self.d_state,
                                    device=self.in_proj.weight.device, dtype=self._state_dtype())
            cache[self.layer_idx] = (conv_state, ssm_state)
        else:
            conv_state, ssm_state = cache[self.layer_idx]
            if initialize_states:
                conv_state.zero_()
                ssm_state.zero_()
        return conv_state, ssm_state
