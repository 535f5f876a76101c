"""The ops: `mamba_chunk_scan_combined` (chunked selective scan) and `selective_state_update` (decode step)."""
from .ssd import mamba_chunk_scan_combined
from .state_update import selective_state_update

__all__ = ["mamba_chunk_scan_combined", "selective_state_update"]
