"""GPU benchmark of the triton backend against the mamba_ssm 2.3.2 anchor, in one run.

Builds (first calls compile and autotune), checks correctness against the PyTorch reference (forward,
final states and every gradient), then times ours and the anchor on the same card and prints a table.
Writes everything as JSON to $OUT/gpu_bench.json (or ./gpu_bench.json).

    PYTHONPATH=.:.anchor python3 bench/gpu_bench.py [--quick]

The anchor is mamba_ssm's Triton SSD laid out by shared/tools/mamba_ssm_anchor.sh in .anchor/ (it needs
einops). Shapes (DESIGN §5): LM b8 L2048 H32 P64 N128 bf16 (chunk 256), RL b64 L256 H4 P64 N64 fp32
(chunk 64), decode 64 x H4 P64 N64 and 4096 x H4 P64 N64 fp32 state.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys

import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mamba_compat.ops.ssd import reference, triton as ours  # noqa: E402
from mamba_compat.ops.state_update import reference as su_ref, triton as su_ours  # noqa: E402

try:
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as anchor_scan
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update as anchor_decode
    ANCHOR_ERR = None
except Exception as e:  # noqa: BLE001
    anchor_scan = anchor_decode = None
    ANCHOR_ERR = repr(e)

DEV = "cuda"


def rel(a, b):
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all():
        return float("nan")
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def make_inputs(b, L, h, p, n, g, dtype, seed=0, dt_scale=1.0):
    gen = torch.Generator(device=DEV).manual_seed(seed)
    r = lambda *s, dt=dtype: torch.randn(*s, device=DEV, generator=gen, dtype=torch.float32).to(dt)  # noqa: E731
    x = r(b, L, h, p)
    dt = (r(b, L, h, dt=torch.float32) * 0.5 - 1.0) * dt_scale
    A = -torch.exp(torch.rand(h, device=DEV, generator=gen) * math.log(16))  # A in [-16, -1], as Mamba2's init
    B = r(b, L, g, n)
    C = r(b, L, g, n)
    D = r(h, dt=torch.float32)
    z = r(b, L, h, p)
    dtb = r(h, dt=torch.float32) * 0.5
    return x, dt, A, B, C, D, z, dtb


def check_scan(name, b, L, h, p, n, g, dtype, chunk, seq=False, init=True, tol=None):
    """Forward, final states and all gradients of ours vs the fp32 reference on the same inputs."""
    x, dt, A, B, C, D, z, dtb = make_inputs(b, L, h, p, n, g, dtype, seed=1)
    initial = torch.randn(b, h, p, n, device=DEV) if init else None
    seq_idx = None
    if seq:
        seq_idx = (torch.rand(b, L, device=DEV) < 0.01).int().cumsum(1).int()
    kw = dict(D=D, z=z, dt_bias=dtb, initial_states=initial, seq_idx=seq_idx, dt_softplus=True,
              dt_min=0.0, dt_max=math.inf)
    ins = [t for t in (x, dt, A, B, C, D, z, dtb, initial) if t is not None]
    outs = {}
    for impl, mod, cast in (("ours", ours, None), ("ref", reference, torch.float32)):
        leaf = [t.detach().clone().to(cast or t.dtype).requires_grad_(True) for t in ins]
        lx, ldt, lA, lB, lC, lD, lz, ldtb = leaf[:8]
        linit = leaf[8] if init else None
        kw2 = dict(kw, D=lD, z=lz, dt_bias=ldtb, initial_states=linit)
        y, fin = mod.chunk_scan(lx, ldt, lA, lB, lC, chunk, **kw2)
        torch.manual_seed(5)
        gy = torch.randn(y.shape, device=DEV)
        gf = torch.randn(fin.shape, device=DEV)
        grads = torch.autograd.grad((y.float() * gy).sum() + (fin * gf).sum(), leaf)
        outs[impl] = (y, fin, grads)
    names = ["y", "final"] + ["dx", "ddt", "dA", "dB", "dC", "dD", "dz", "ddt_bias", "dinit"][:len(ins)]
    a = [outs["ours"][0], outs["ours"][1], *outs["ours"][2]]
    r_ = [outs["ref"][0], outs["ref"][1], *outs["ref"][2]]
    errs = {nm: rel(u, v) for nm, u, v in zip(names, a, r_)}
    tol = tol or (1e-2 if dtype == torch.float32 else 5e-2)
    ok = all(e <= tol for e in errs.values())
    worst = max(errs, key=lambda k: errs[k] if errs[k] == errs[k] else 1e9)
    print(f"check {name}: {'OK' if ok else 'FAIL'} worst {worst}={errs[worst]:.2e} (tol {tol:.0e})", flush=True)
    return dict(name=name, ok=ok, errs=errs)


def time_ms(fn, graph=False):
    if graph:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(s)
        gph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(gph):
            fn()
        return do_bench(lambda: gph.replay(), warmup=50, rep=300, return_mode="median")
    return do_bench(fn, warmup=50, rep=300, return_mode="median")


def scan_timings(label, b, L, h, p, n, g, dtype, chunk, anchor=True):
    x, dt, A, B, C, D, z, dtb = make_inputs(b, L, h, p, n, g, dtype)
    leaf = [t.detach().clone().requires_grad_(True) for t in (x, dt, A, B, C, D)]
    gy = torch.randn_like(x)
    res = {}

    def ours_f():
        return ours.chunk_scan(x, dt, A, B, C, chunk, D, None, dtb, None, None, True, 0.0, math.inf)

    def ours_fb():
        y, _ = ours.chunk_scan(*leaf[:5], chunk, leaf[5], None, dtb, None, None, True, 0.0, math.inf)
        torch.autograd.grad(y, leaf, gy)

    res["ours_fwd"] = time_ms(ours_f)
    res["ours_fwdbwd"] = time_ms(ours_fb)
    if anchor and anchor_scan is not None:
        def anc_f():
            return anchor_scan(x, dt, A, B, C, chunk, D=D, dt_bias=dtb, dt_softplus=True)

        def anc_fb():
            y = anchor_scan(*leaf[:5], chunk, D=leaf[5], dt_bias=dtb, dt_softplus=True)
            torch.autograd.grad(y, leaf, gy)

        res["anchor_fwd"] = time_ms(anc_f)
        res["anchor_fwdbwd"] = time_ms(anc_fb)
    if anchor:
        for nm, fn in (("ours_fwd_graph", ours_f), ("ours_fwdbwd_graph", ours_fb)):
            try:
                res[nm] = time_ms(fn, graph=True)
            except Exception as e:  # noqa: BLE001
                res[nm + "_err"] = repr(e)[:200]
    # bytes: x, dt, B, C read, y written (fwd); flops: 2*Q*(N+P) per (b, l, h) intra + 4*P*N state terms
    esz = x.element_size()
    q = ours.kernel_chunk(chunk, L)
    res["fwd_bytes"] = (2 * b * L * h * p + 2 * b * L * g * n) * esz + b * L * h * 4
    res["fwd_flops"] = b * L * h * (2 * q * n + 2 * q * p + 4 * p * n)
    print(f"timed {label}: " + ", ".join(f"{k}={v:.4f}" for k, v in res.items() if isinstance(v, float)), flush=True)
    return res


def decode_timings(label, batch, h, p, n, dtype=torch.float32):
    g = 1
    state = torch.randn(batch, h, p, n, device=DEV, dtype=dtype)
    x = torch.randn(batch, h, p, device=DEV)
    dt = torch.randn(batch, h, device=DEV)[..., None].expand(batch, h, p)
    A = (-torch.rand(h, device=DEV))[:, None, None].expand(h, p, n)
    B = torch.randn(batch, g, n, device=DEV)
    C = torch.randn(batch, g, n, device=DEV)
    D = torch.randn(h, device=DEV)[:, None].expand(h, p)
    dtb = torch.randn(h, device=DEV)[:, None].expand(h, p)
    s_ref = state.clone()
    o_ref = su_ref.state_update(s_ref, x, dt, A, B, C, D, None, dtb, True, None)
    s_ours = state.clone()
    o_ours = su_ours.state_update(s_ours, x, dt, A, B, C, D, None, dtb, True, None)
    err = max(rel(o_ours, o_ref), rel(s_ours, s_ref))
    from mamba_compat.ops.state_update import selective_state_update as public
    res = {"check_rel": err}
    res["ours_kernel_call"] = time_ms(lambda: su_ours.state_update(state, x, dt, A, B, C, D, None, dtb, True, None))
    res["ours_public"] = time_ms(lambda: public(state, x, dt, A, B, C, D=D, dt_bias=dtb, dt_softplus=True))
    res["ours_graph"] = time_ms(lambda: su_ours.state_update(state, x, dt, A, B, C, D, None, dtb, True, None),
                                graph=True)
    if anchor_decode is not None:
        res["anchor"] = time_ms(lambda: anchor_decode(state, x, dt, A, B, C, D=D, dt_bias=dtb, dt_softplus=True))
        res["anchor_graph"] = time_ms(lambda: anchor_decode(state, x, dt, A, B, C, D=D, dt_bias=dtb,
                                                            dt_softplus=True), graph=True)
    res["state_bytes_rw"] = 2 * state.numel() * state.element_size()
    print(f"timed {label}: " + ", ".join(f"{k}={v:.4g}" for k, v in res.items()), flush=True)
    return res


def copy_bandwidth():
    a = torch.empty(2 ** 28, device=DEV, dtype=torch.float32)  # 1 GiB
    bb = torch.empty_like(a)
    ms = do_bench(lambda: bb.copy_(a), warmup=20, rep=200, return_mode="median")
    return 2 * a.numel() * 4 / (ms * 1e-3) / 1e9  # GB/s, read + write


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="skip the LM shape")
    ap.add_argument("--decode-only", action="store_true", help="only the decode-step timings (fast)")
    ap.add_argument("--variants", type=lambda v: [tuple(map(int, p.split(":"))) for p in v.split(",")], default=[],
                    help="extra LM timings of ours at kernel chunk lengths 'QFWD:QBWD,...', e.g. 128:32")
    args = ap.parse_args()
    props = torch.cuda.get_device_properties(0)
    card = f"{props.name} ({props.multi_processor_count} SMs)"
    print(f"card: {card}; torch {torch.__version__}, triton {triton.__version__}; anchor: "
          f"{'ok' if ANCHOR_ERR is None else ANCHOR_ERR}", flush=True)
    out = {"card": card, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "torch": torch.__version__, "triton": triton.__version__, "checks": [], "times": {}}
    checks = out["checks"]
    t = out["times"]
    bw = copy_bandwidth()
    out["copy_GBps"] = bw
    print(f"copy bandwidth {bw:.0f} GB/s", flush=True)
    # decode first: fast to build, and the numbers arrive even if a later step runs out of time
    t["decode64"] = decode_timings("decode 64xH4P64N64", 64, 4, 64, 64)
    t["decode4096"] = decode_timings("decode 4096xH4P64N64", 4096, 4, 64, 64)
    if not args.decode_only:
        checks.append(check_scan("rl-fp32 seq init", 4, 256, 4, 64, 64, 1, torch.float32, 64, seq=True))
        checks.append(check_scan("lm-bf16 b2 L512 H8 G2 seq", 2, 512, 8, 64, 128, 2, torch.bfloat16, 256, seq=True))
        t["rl"] = scan_timings("RL b64 L256 H4 P64 N64 fp32", 64, 256, 4, 64, 64, 1, torch.float32, 64)
    if not (args.quick or args.decode_only):
        t["lm"] = scan_timings("LM b8 L2048 H32 P64 N128 bf16", 8, 2048, 32, 64, 128, 1, torch.bfloat16, 256)
        for qf, qb in args.variants:
            os.environ["MAMBA_COMPAT_TRITON_QFWD"], os.environ["MAMBA_COMPAT_TRITON_QBWD"] = str(qf), str(qb)
            t[f"lm_q{qf}_{qb}"] = scan_timings(f"LM Qfwd={qf} Qbwd={qb}", 8, 2048, 32, 64, 128, 1, torch.bfloat16,
                                               256, anchor=False)
        os.environ.pop("MAMBA_COMPAT_TRITON_QFWD", None)
        os.environ.pop("MAMBA_COMPAT_TRITON_QBWD", None)

    path = os.path.join(os.environ.get("OUT", "."), "gpu_bench.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)

    print(f"\n== {card}, {out['date']} (median ms; ratio = anchor / ours) ==")
    print(f"{'what':34s} {'ours':>9s} {'anchor':>9s} {'ratio':>6s}")
    rows = []
    for key, lab in (("lm", "LM fwd"), ("rl", "RL fwd")):
        if key in t:
            rows.append((lab, t[key]["ours_fwd"], t[key].get("anchor_fwd")))
            rows.append((lab.replace("fwd", "fwd+bwd"), t[key]["ours_fwdbwd"], t[key].get("anchor_fwdbwd")))
            for gk in ("ours_fwd_graph", "ours_fwdbwd_graph"):
                if gk in t[key]:
                    rows.append((lab + (" fwd+bwd" if "bwd" in gk else "") + " (graph)", t[key][gk], None))
    for key in t:
        if key.startswith("lm_q"):
            rows.append((key + " fwd", t[key]["ours_fwd"], t["lm"].get("anchor_fwd")))
            rows.append((key + " fwd+bwd", t[key]["ours_fwdbwd"], t["lm"].get("anchor_fwdbwd")))
    for key, lab in (("decode64", "decode 64"), ("decode4096", "decode 4096")):
        rows.append((lab + " (kernel call)", t[key]["ours_kernel_call"], t[key].get("anchor")))
        rows.append((lab + " (public op)", t[key]["ours_public"], t[key].get("anchor")))
        rows.append((lab + " (graph replay)", t[key]["ours_graph"], t[key].get("anchor_graph")))
    for lab, o, a in rows:
        print(f"{lab:34s} {o:9.4f} {a if a is not None else float('nan'):9.4f} "
              f"{(a / o) if a else float('nan'):6.2f}")
    if "lm" in t:
        lm = t["lm"]
        print(f"LM fwd: {lm['fwd_bytes'] / lm['ours_fwd'] / 1e6:.0f} GB/s, {lm['fwd_flops'] / lm['ours_fwd'] / 1e9:.1f} "
              f"TFLOP/s (floor ~48 us)")
    d = t["decode4096"]
    print(f"decode 64: kernel call {1e3 * t['decode64']['ours_kernel_call']:.1f} us, graph replay "
          f"{1e3 * t['decode64']['ours_graph']:.1f} us")
    print(f"decode 4096: {d['state_bytes_rw'] / d['ours_graph'] / 1e6:.0f} GB/s = "
          f"{100 * d['state_bytes_rw'] / d['ours_graph'] / 1e6 / bw:.0f}% of copy {bw:.0f} GB/s")
    print("checks: " + ", ".join(f"{c['name']}={'OK' if c['ok'] else 'FAIL'}" for c in checks))


if __name__ == "__main__":
    main()
