"""Tokens/s of an HF Mamba2ForCausalLM (random weights), unpatched (HF's torch path) vs mamba_compat.patch_transformers().

    python bench/transformers_speed.py                     # d_model 1024, 2 layers, batch 1, seqlen 512, CPU
    python bench/transformers_speed.py --d-model 256 --layers 4 --seqlen 1024 --device cuda

train: one forward+backward of model(ids, labels=ids) in train mode (patched: our fused split-conv-scan path);
generate: greedy model.generate of --new-tokens tokens after a --prompt-token prompt (tokens/s counts the new
tokens; prefill included). Each figure is the median of --repeats runs after one warm-up.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import mamba_compat
from timing import sync


def build(d_model: int, layers: int, headdim: int, device: str):
    from transformers import Mamba2Config, Mamba2ForCausalLM

    expand = 2
    config = Mamba2Config(vocab_size=1024, hidden_size=d_model, num_hidden_layers=layers, expand=expand,
                          head_dim=headdim, num_heads=expand * d_model // headdim, state_size=128, n_groups=1,
                          chunk_size=256, conv_kernel=4, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    return Mamba2ForCausalLM(config).float().to(device)


def timed(fn, device, repeats: int) -> float:
    """Median seconds of fn() over `repeats` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(model, args) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 1024, (args.batch, args.seqlen), generator=g).to(args.device)
    prompt = ids[:, :args.prompt_tokens]

    def train():
        model.train()
        model.zero_grad(set_to_none=True)
        model(ids, labels=ids, use_cache=False).loss.backward()

    def generate():
        model.eval()
        with torch.no_grad():
            model.generate(prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)

    t_train, t_gen = timed(train, args.device, args.repeats), timed(generate, args.device, args.repeats)
    return {"train": args.batch * args.seqlen / t_train, "generate": args.batch * args.new_tokens / t_gen}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-model", type=int, default=1024)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--headdim", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    model = build(args.d_model, args.layers, args.headdim, args.device)
    before = measure(model, args)
    mamba_compat.patch_transformers(["mamba2"])
    try:
        after = measure(model, args)
    finally:
        mamba_compat.unpatch_transformers()
    print(f"Mamba2ForCausalLM d_model {args.d_model}, {args.layers} layers, headdim {args.headdim}, state 128, fp32, "
          f"{args.device} ({torch.get_num_threads()} threads), transformers {transformers.__version__}, "
          f"backend {mamba_compat.get_backend() or 'auto'}")
    print(f"{'tokens/s':<48}{'HF torch':>10}{'patched':>10}{'speedup':>9}")
    rows = (("train", f"forward+backward, batch {args.batch} x {args.seqlen}"),
            ("generate", f"generate {args.new_tokens} new after {args.prompt_tokens}, batch {args.batch}"))
    for key, label in rows:
        print(f"{label:<48}{before[key]:>10.1f}{after[key]:>10.1f}{after[key] / before[key]:>8.2f}x")


if __name__ == "__main__":
    main()
