"""Recurrent PPO (see trainer.py)."""
from .evaluate import evaluate_policy
from .gae import gae
from .trainer import NonFiniteError, PPOTrainer, load_policy

__all__ = ["NonFiniteError", "PPOTrainer", "evaluate_policy", "gae", "load_policy"]
