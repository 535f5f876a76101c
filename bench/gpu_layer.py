"""The whole Mamba2 layer on a GPU: mamba_compat.Mamba2 vs upstream mamba_ssm.Mamba2, same weights, same process.

For each shape (d_model x batch x length, headdim 64, d_state 128, expand 2, bf16): outputs are compared first
(ours vs upstream's fastest path, relative RMSE of the output and of the input gradient, bf16 tolerance), then
forward and forward+backward are timed (CUDA events, median of interleaved rounds), with the peak memory a
forward+backward adds over the weights. Decode: one token per call at a few batch sizes, eager `step()` and one
step replayed as a CUDA graph over the static cache from `allocate_inference_cache`.

Upstream paths: `use_mem_eff_path=True` (its fused split-conv-scan with the causal-conv1d CUDA extension: its
fastest) when causal_conv1d imports, and `use_mem_eff_path=False` (unfused, conv by causal-conv1d when present).

    PYTHONPATH=.:.anchor[:/tmp/site] python3 bench/gpu_layer.py [--quick]

(.anchor from ../shared/tools/mamba_ssm_anchor.sh; /tmp/site holding causal-conv1d built on the GPU machine.)
Writes $OUT/gpu_layer.json (or ./gpu_layer.json).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mamba_compat import Mamba2  # noqa: E402
from timing import cuda_median_ms  # noqa: E402
import importlib  # noqa: E402
ours_mod = importlib.import_module("mamba_compat.modules.mamba2")
ours_norm = importlib.import_module("mamba_compat.modules.rmsnorm_gated")  # the module (the package exports a function of that name)

try:
    from mamba_ssm.modules.mamba2 import Mamba2 as UpMamba2
    UP_ERR = None
except Exception as e:  # noqa: BLE001
    UpMamba2, UP_ERR = None, repr(e)
try:
    import causal_conv1d  # noqa: F401
    HAVE_CC = True
except Exception:  # noqa: BLE001
    HAVE_CC = False

DEV = "cuda"
DT = torch.bfloat16
CFG = dict(d_state=128, headdim=64, expand=2)


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@contextlib.contextmanager
def torch_conv_norm():
    """Our layer with the PyTorch conv and norm (the references) instead of their Triton kernels: the layer as it
    was before those kernels, for a before/after in the same run."""
    saved = (ours_mod.causal_conv1d, ours_mod.causal_conv1d_update, ours_norm.rmsnorm_gated)
    ours_mod.causal_conv1d = functools.partial(saved[0], backend="reference")
    ours_mod.causal_conv1d_update = functools.partial(saved[1], backend="reference")
    ours_norm.rmsnorm_gated = functools.partial(saved[2], backend="reference")
    try:
        yield
    finally:
        ours_mod.causal_conv1d, ours_mod.causal_conv1d_update, ours_norm.rmsnorm_gated = saved


class Variant:
    """A module and the context it runs in."""

    def __init__(self, module, context=contextlib.nullcontext):
        self.module, self.context = module, context

    def __getattr__(self, name):
        return getattr(self.module, name)

    def __call__(self, *a):
        with self.context():
            return self.module(*a)

    def step(self, *a):
        with self.context():
            return self.module.step(*a)


def layers(d_model, torch_variant=True):
    """{name: module} with one set of weights: upstream's fastest first, then its unfused path, then ours."""
    torch.manual_seed(0)
    out = {}
    if UpMamba2 is not None:
        base = UpMamba2(d_model, use_mem_eff_path=HAVE_CC, layer_idx=0, device=DEV, dtype=DT, **CFG)
        out["upstream fused" if HAVE_CC else "upstream"] = base
        if HAVE_CC:
            slow = UpMamba2(d_model, use_mem_eff_path=False, layer_idx=0, device=DEV, dtype=DT, **CFG)
            slow.load_state_dict(base.state_dict())
            out["upstream unfused"] = slow
    ours = Mamba2(d_model, layer_idx=0, device=DEV, dtype=DT, **CFG)
    if out:
        ours.load_state_dict(next(iter(out.values())).state_dict(), strict=True)
    out = {k: Variant(v) for k, v in out.items()}
    out["ours"] = Variant(ours)
    if torch_variant:
        out["ours, torch conv+norm"] = Variant(ours, torch_conv_norm)
    return out


def run_shape(d_model, b, L, reps):
    mods = layers(d_model)
    u = torch.randn(b, L, d_model, device=DEV, dtype=DT)
    gy = torch.randn_like(u)
    row = {"d_model": d_model, "b": b, "L": L}
    # correctness first: output and input gradient vs the first (reference) module
    res = {}
    for name, m in mods.items():
        x = u.clone().requires_grad_(True)
        y = m(x)
        y.backward(gy)
        res[name] = (y.detach().float(), x.grad.float(), m.in_proj.weight.grad.float())
        m.zero_grad(set_to_none=True)
    first = next(iter(res))
    for name in res:
        if name != first:
            row[f"err {name}"] = [rel(a, r) for a, r in zip(res[name], res[first])]
    weights = torch.cuda.memory_allocated()
    for rnd in range(2):  # two interleaved rounds, min of the medians
        for name, m in mods.items():
            x = u.clone().requires_grad_(True)

            def fwd():
                with torch.no_grad():
                    m(u)

            def fwdbwd():
                m(x).backward(gy)

            f, fb = cuda_median_ms(fwd, reps, warm=3), cuda_median_ms(fwdbwd, reps, warm=3)
            row[f"{name} fwd"] = min(f, row.get(f"{name} fwd", f))
            row[f"{name} fwdbwd"] = min(fb, row.get(f"{name} fwdbwd", fb))
            if rnd == 0:
                m.zero_grad(set_to_none=True)
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                m(x).backward(gy)
                torch.cuda.synchronize()
                row[f"{name} peak MB"] = (torch.cuda.max_memory_allocated() - base) / 2**20
            m.zero_grad(set_to_none=True)
    del mods, weights
    torch.cuda.empty_cache()
    return row


def decode_row(d_model, batch, reps=200):
    mods = layers(d_model)
    row = {"d_model": d_model, "batch": batch}
    torch.cuda.synchronize()
    tok = torch.randn(batch, 1, d_model, device=DEV, dtype=DT)
    outs = {}
    gen = torch.Generator(device=DEV).manual_seed(1)
    conv_init = ssm_init = None  # one starting cache for every module (each casts it to its cache dtypes)
    for name, m in mods.items():
        conv, ssm = m.allocate_inference_cache(batch, 1)
        if conv_init is None:
            conv_init = torch.randn(conv.shape, device=DEV, generator=gen)
            ssm_init = torch.randn(ssm.shape, device=DEV, generator=gen)
        conv.copy_(conv_init)
        ssm.copy_(ssm_init)
        c0, s0 = conv.clone(), ssm.clone()
        with torch.no_grad():
            outs[name] = (m.step(tok, conv, ssm)[0].float(), ssm.float().clone())
            conv.copy_(c0)
            ssm.copy_(s0)
            row[f"{name} eager us"] = 1e3 * cuda_median_ms(lambda: m.step(tok, conv, ssm), reps, warm=10)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    m.step(tok, conv, ssm)
            torch.cuda.current_stream().wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                m.step(tok, conv, ssm)
            row[f"{name} graph us"] = 1e3 * cuda_median_ms(g.replay, reps, warm=10)
    first = next(iter(outs))
    for name in outs:
        if name != first:
            row[f"err {name}"] = [rel(a, r) for a, r in zip(outs[name], outs[first])]
    return row


def fmt(v):
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="only b8 L2048 d_model 1024 and one decode batch")
    args = ap.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"triton {__import__('triton').__version__}, {datetime.date.today()}; upstream: "
          f"{'ok' if UP_ERR is None else UP_ERR}; causal_conv1d: {HAVE_CC}")
    shapes = [(1024, 8, 2048)] if args.quick else [(d, b, L) for d in (1024, 2560) for b in (1, 8) for L in (2048, 8192)]
    decodes = [(d, bs) for d in ((1024,) if args.quick else (1024, 2560)) for bs in ((16,) if args.quick else (1, 16, 128))]
    path = os.path.join(os.environ.get("OUT", "."), "gpu_layer.json")
    rows, dec = [], []

    def save():
        with open(path, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "date": str(datetime.date.today()),
                       "torch": torch.__version__, "layer": rows, "decode": dec}, f, indent=1)

    # rows are printed as they come (a run cut short keeps what it measured): the headline shape, then decode,
    # then the other layer shapes
    order = [("layer", shapes[0])] + [("decode", d) for d in decodes] + [("layer", s) for s in shapes[1:]]
    for kind, spec in order:
        if kind == "layer":
            r = run_shape(*spec, 10 if args.quick else 20)
            rows.append(r)
            names = [k[:-4] for k in r if k.endswith(" fwd")]
            ref = names[0]
            cells = " | ".join(f"{n}: {r[n + ' fwd']:.3f} {r[n + ' fwdbwd']:.3f} {r[n + ' peak MB']:.0f}MB" for n in names)
            print(f"layer d_model {r['d_model']} b{r['b']} L{r['L']} (ms fwd, fwd+bwd, peak) | {cells} | ours vs {ref}: "
                  f"fwd {r[ref + ' fwd'] / r['ours fwd']:.2f}x fwd+bwd {r[ref + ' fwdbwd'] / r['ours fwdbwd']:.2f}x "
                  f"err(y, dx, dW_in) {[f'{e:.1e}' for e in r.get('err ours', [])]}", flush=True)
        else:
            r = decode_row(*spec)
            dec.append(r)
            names = [k[:-9] for k in r if k.endswith(" eager us")]
            cells = " | ".join(f"{n}: {r[n + ' eager us']:.1f} / {r[n + ' graph us']:.1f}" for n in names)
            print(f"decode d_model {r['d_model']} batch {r['batch']} (us per token, eager / graph) | {cells}   "
                  f"err(out, state) {[f'{e:.1e}' for e in r.get('err ours', [])]}", flush=True)
        save()


if __name__ == "__main__":
    main()
