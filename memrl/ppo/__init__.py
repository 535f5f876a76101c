"""Recurrent PPO (see trainer.py)."""
from .evaluate import evaluate_policy
from .trainer import NonFiniteError, PPOTrainer, gae, load_policy

__all__ = ["NonFiniteError", "PPOTrainer", "evaluate_policy", "gae", "load_policy"]
