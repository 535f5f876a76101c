"""Benchmarks: `pytest bench/` times every backend this machine can run, side by side (pytest-benchmark).
Correctness against the reference is checked before anything is timed. Nothing here sets
TRITON_INTERPRET: interpreted Triton is a test tool, not something to time."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
