"""Actor-critic models and recurrent controllers."""
from .actor_critic import ACOutput, ActorCritic
from .controllers import CONTROLLERS, GRUController, LSTMController, Mamba2Controller

__all__ = ["ACOutput", "ActorCritic", "CONTROLLERS", "GRUController", "LSTMController", "Mamba2Controller"]
