"""GPU benchmark of the Triton causal conv1d and gated RMSNorm against the PyTorch reference and upstream.

Checks first (ours and upstream vs the reference evaluated in fp32 on the same bf16 inputs: relative RMSE of
the output and of every gradient), then times (CUDA events, warmup, median of N) at Mamba2 shapes in bf16:
conv fwd, fwd+bwd, the decode update (eager, one call per token, host time included); norm fwd, fwd+bwd.
x and z are the strided slices of in_proj's output that Mamba2 passes. GB/s = bytes that must move / time.

    PYTHONPATH=. python3 bench/gpu_conv_norm.py            (source bench/gpu_setup_anchor.sh for upstream)

Upstream: causal_conv1d_fn / causal_conv1d_update (package causal_conv1d) and mamba_ssm's
ops.triton.layernorm_gated.rmsnorm_fn (upstream tree on PYTHONPATH), each skipped with a note if absent.
"""
from __future__ import annotations

import importlib
import os
import statistics
import sys
import types

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mamba_compat.ops import conv1d, rmsnorm  # noqa: E402
from mamba_compat.ops.conv1d import reference as conv_ref, triton as conv_tri  # noqa: E402
from mamba_compat.ops.rmsnorm import reference as norm_ref, triton as norm_tri  # noqa: E402

DEV, DT, N = "cuda", torch.bfloat16, int(os.environ.get("BENCH_REPS", 50))
try:
    from causal_conv1d import causal_conv1d_fn, causal_conv1d_update
except Exception as e:  # noqa: BLE001
    causal_conv1d_fn = causal_conv1d_update = None
    print(f"note: upstream causal_conv1d not importable ({e!r}): skipped")


def _upstream_rmsnorm():
    try:
        return importlib.import_module("mamba_ssm.ops.triton.layernorm_gated").rmsnorm_fn
    except Exception as e:  # noqa: BLE001  (mamba_ssm/__init__ may need its CUDA extensions: mount the tree bare)
        for root in sys.path:
            if os.path.isfile(os.path.join(root or ".", "mamba_ssm", "ops", "triton", "layernorm_gated.py")):
                pkg = types.ModuleType("mamba_ssm")
                pkg.__path__ = [os.path.join(root or ".", "mamba_ssm")]
                sys.modules["mamba_ssm"] = pkg
                return importlib.import_module("mamba_ssm.ops.triton.layernorm_gated").rmsnorm_fn
        print(f"note: upstream mamba_ssm.ops.triton.layernorm_gated not importable ({e!r}): skipped")
        return None


rmsnorm_fn = _upstream_rmsnorm()
# name: (batch, seqlen, d_ssm, ngroups, d_state, headdim)
SHAPES = {"b8 L2048 d1024": (8, 2048, 2048, 1, 128, 64), "b1 L8192 d2560": (1, 8192, 5120, 1, 128, 64)}


def timed(fn, reps=N, warm=10, gpu=True):
    """Median ms of `reps` calls, each between its own CUDA events. gpu: the GPU time (a 0.5 ms spin kernel
    first lets the host queue the call's kernels, so launch overheads are not counted); else the mean over
    back-to-back calls (what eager decode sees: the slower of host and GPU)."""
    for _ in range(warm):
        fn()
    if not gpu:
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            fn()
        b.record()
        b.synchronize()
        return a.elapsed_time(b) / reps
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if gpu:
            torch.cuda._sleep(1_000_000)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def rel(a, r):
    a, r = a.float(), r.float()
    return ((a - r).norm() / r.norm().clamp_min(1e-30)).item()


def inputs(b, L, d_ssm, g, n, p, seed=0):
    torch.manual_seed(seed)
    c = d_ssm + 2 * g * n
    zxbcdt = torch.randn(b, L, d_ssm + c + d_ssm // p, device=DEV, dtype=DT)  # [z, xBC, dt], d_mlp = 0
    z, xbc = zxbcdt[..., :d_ssm], zxbcdt[..., d_ssm:d_ssm + c]
    w = (0.3 * torch.randn(c, 4, device=DEV)).to(DT)
    bias = (0.3 * torch.randn(c, device=DEV)).to(DT)
    y = torch.randn(b, L, d_ssm, device=DEV, dtype=DT)
    nw = (1 + 0.1 * torch.randn(d_ssm, device=DEV)).to(DT)
    return xbc, w, bias, z, y, nw


def leaves(*ts):
    return [t.detach().requires_grad_(True) for t in ts]  # detach keeps the strided view: read in place


def conv_impls():
    out = {"ours": lambda x, w, b: conv1d.causal_conv1d(x, w, b, silu=True),
           "torch": lambda x, w, b: F.silu(conv_ref.causal_conv1d(x, w, b))}
    if causal_conv1d_fn is not None:  # channel-last (B, C, L) view of the same memory, as upstream Mamba2 passes it
        out["upstream"] = lambda x, w, b: causal_conv1d_fn(x.transpose(1, 2), w, b, activation="silu").transpose(1, 2)
    return out


def norm_impls(gs):
    out = {"ours": lambda y, w, z: rmsnorm.rmsnorm_gated(y, w, z, 1e-5, gs, False),
           "torch": lambda y, w, z: norm_ref.rmsnorm_gated(y, w, z, 1e-5, gs, False)}
    if rmsnorm_fn is not None:
        out["upstream"] = lambda y, w, z: rmsnorm_fn(y, w, None, z=z, eps=1e-5, group_size=gs, norm_before_gate=False)
    return out


def check(name, impls, args, truth_fn):
    """Output and gradients of each implementation vs truth_fn on the fp32 upcast of the same inputs."""
    ref_in = leaves(*[a.float() for a in args])
    yr = truth_fn(*ref_in)
    dy = torch.randn_like(yr).to(DT)
    gr = torch.autograd.grad(yr, ref_in, dy.float())
    for impl, fn in impls.items():
        ins = leaves(*args)
        y = fn(*ins)
        g = torch.autograd.grad(y, ins, dy)
        errs = [rel(y, yr)] + [rel(a, r) for a, r in zip(g, gr)]
        flag = "ok" if max(errs) < 1e-2 and all(e == e for e in errs) else "FAIL"
        print(f"  check {name:6s} {impl:9s} rel err y/grads: " + " ".join(f"{e:.1e}" for e in errs) + f"  {flag}")


def bench_fwd_bwd(rows, label, shape, impls, args, nbytes_fwd, nbytes_fb):
    for impl, fn in impls.items():
        ins = leaves(*args)
        with torch.no_grad():
            t_f = timed(lambda: fn(*ins))
        dy = torch.randn(args[0].shape, device=DEV, dtype=DT)
        t_fb = timed(lambda: torch.autograd.grad(fn(*ins), ins, dy))
        rows.append((label + " fwd", shape, impl, t_f, nbytes_fwd / t_f / 1e6))
        rows.append((label + " fwd+bwd", shape, impl, t_fb, nbytes_fb / t_fb / 1e6))


def bench_update(rows, shape, c, batch=64):
    """Decode: one token per call, eager; window (B, C, W) as allocate_inference_cache lays it out."""
    x = torch.randn(batch, c, device=DEV, dtype=DT)
    w = torch.randn(c, 4, device=DEV, dtype=DT)
    b = torch.randn(c, device=DEV, dtype=DT)
    st = torch.randn(batch, 4, c, device=DEV, dtype=DT).transpose(1, 2)
    impls = {"ours": lambda: conv1d.causal_conv1d_update(x, st, w, b, silu=True),
             "torch": lambda: F.silu(conv_ref.conv_step(x, st, w, b))}
    if causal_conv1d_update is not None:
        impls["upstream"] = lambda: causal_conv1d_update(x, st, w, b, activation="silu")
    s0 = st.clone()
    y = impls["ours"]()
    s1 = st.clone()
    st.copy_(s0)
    yr = impls["torch"]()
    print(f"  check update {shape}: out rel err {rel(y, yr):.1e}, window equal {torch.equal(st, s1)}")
    nbytes = batch * c * (2 + 2 + 2 * 4 * 2)  # x, out, window read + written
    for impl, fn in impls.items():
        t = timed(fn, reps=200, gpu=False)
        rows.append((f"conv update b{batch}", shape, impl, t, nbytes / t / 1e6))


def main():
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  triton "
          f"{importlib.import_module('triton').__version__}  bf16, median of {N}")
    rows = []
    for shape, (b, L, d_ssm, g, n, p) in SHAPES.items():
        xbc, w, bias, z, y, nw = inputs(b, L, d_ssm, g, n, p)
        print(shape + ":")
        check("conv", conv_impls(), (xbc, w, bias), lambda x, w, b: F.silu(conv_ref.causal_conv1d(x, w, b)))
        check("norm", norm_impls(d_ssm), (y, nw, z), lambda y, w, z: norm_ref.rmsnorm_gated(y, w, z, 1e-5, d_ssm,
                                                                                             False))
        ne = xbc.numel() * 2
        bench_fwd_bwd(rows, "conv", shape, conv_impls(), (xbc, w, bias), 2 * ne, 5 * ne)  # fwd x,y; bwd x,dy,dx
        ne = y.numel() * 2
        bench_fwd_bwd(rows, "norm", shape, norm_impls(d_ssm), (y, nw, z), 3 * ne, 8 * ne)  # bwd x,z,dy,dx,dz
        bench_update(rows, shape, xbc.shape[-1])
    print(f"configs: conv fwd (BT, BC, warps) {conv_tri._cfg('FWD', conv_tri.FWD_CFG)}, bwd "
          f"{conv_tri._cfg('BWD', conv_tri.BWD_CFG)}; norm (BM, warps) fwd/bwd by group size: " + ", ".join(
              f"{n}: {norm_tri._blocks(n, 'FWD')[2:]}/{norm_tri._blocks(n, 'BWD')[2:]}" for n in (2048, 5120)))
    print(f"\n{'op':22s} {'shape':16s} {'impl':9s} {'ms':>9s} {'GB/s':>7s} {'vs upstream':>11s}")
    up = {(r[0], r[1]): r[3] for r in rows if r[2] == "upstream"}
    for op, shape, impl, t, gbs in rows:
        sp = f"{up[(op, shape)] / t:10.2f}x" if (op, shape) in up else ""
        print(f"{op:22s} {shape:16s} {impl:9s} {t:9.4f} {gbs:7.0f} {sp:>11s}")


if __name__ == "__main__":
    main()
