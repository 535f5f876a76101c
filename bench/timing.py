"""Timing helpers shared by the benchmarks."""
import statistics

import torch


def sync(device) -> None:
    """Wait for the device's queued work (CUDA and MPS run asynchronously; CPU needs nothing)."""
    kind = torch.device(device).type
    if kind == "cuda":
        torch.cuda.synchronize()
    elif kind == "mps":
        torch.mps.synchronize()


def cuda_median_ms(fn, reps: int, warm: int = 1) -> float:
    """Median ms of fn() over `reps` calls, each between two CUDA events, after `warm` untimed calls."""
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    return statistics.median(times)
