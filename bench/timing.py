"""Timing helper shared by the benchmarks."""
import torch


def sync(device) -> None:
    """Wait for the device's queued work (CUDA and MPS run asynchronously; CPU needs nothing)."""
    kind = torch.device(device).type
    if kind == "cuda":
        torch.cuda.synchronize()
    elif kind == "mps":
        torch.mps.synchronize()
