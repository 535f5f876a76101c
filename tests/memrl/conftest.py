"""Shared by the CLI tests: a tiny `memrl train` (GRU, DelayedCue-6, 16 envs; well under a second per update)."""
import pytest

TINY = ["--horizon", "6", "--num-envs", "16", "--num-minibatches", "2", "--controller", "gru", "--d-model", "16",
        "--eval-episodes", "20", "--seed", "0"]


@pytest.fixture
def tiny_train():
    """tiny_train(*flags) -> exit code of `memrl train` with TINY and then `flags` (a later flag wins)."""
    from memrl.cli import main

    def run(*flags):
        return main(["train", *TINY, *map(str, flags)])
    return run
