"""memrl: memory RL on top of mamba_compat — batched memory tasks, PseudoMode memory, Mamba2 actor-critic,
recurrent PPO and the `memrl` CLI (train / eval / plot)."""
from .config import Config

__all__ = ["Config"]
__version__ = "0.1.0"
