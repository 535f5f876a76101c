"""PseudoMode memory (see pseudomode.py)."""
from .pseudomode import PseudoModeMemory, pseudomode_loop, pseudomode_scan, pseudomode_scan_read, read

__all__ = ["PseudoModeMemory", "pseudomode_loop", "pseudomode_scan", "pseudomode_scan_read", "read"]
