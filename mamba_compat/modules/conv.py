"""The causal depthwise conv of Mamba-2, as the module uses it: re-exported from mamba_compat.ops.conv1d
(dispatching `causal_conv1d` / `causal_conv1d_update`, PyTorch `conv_state_after`, the segment helpers) and
its PyTorch reference `conv_step`. The PyTorch definitions live in ops/conv1d/reference.py."""
from ..ops.conv1d import (causal_conv1d, causal_conv1d_update, conv_state_after, conv_step, segments_from_cu_seqlens,
                          segments_from_reset, segments_from_seq_idx)

__all__ = ["causal_conv1d", "causal_conv1d_update", "conv_state_after", "conv_step", "segments_from_seq_idx",
           "segments_from_reset", "segments_from_cu_seqlens"]
