"""Actor-critic models and recurrent controllers."""
from .actor_critic import ACOutput, ActorCritic
from .controllers import CONTROLLERS, GRUController, LSTMController, Mamba2Controller
from .distributions import Categoricals, DiagGaussian, action_distribution

__all__ = ["ACOutput", "ActorCritic", "Categoricals", "CONTROLLERS", "DiagGaussian", "GRUController",
           "LSTMController", "Mamba2Controller", "action_distribution"]
