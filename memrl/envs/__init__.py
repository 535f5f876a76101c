"""Envs behind one protocol (base.py: TorchVectorEnv, same-step autoreset, declared state).

Torch-native memory tasks, batched on the training device: DelayedCue (delayed_cue.py), passive TMaze (tmaze.py),
RepeatFirst (repeat_first.py); each a HorizonEnv (a horizon knob for the curriculum). POPGym's envs by popgym's own
gymnasium ids ("popgym-RepeatPreviousEasy-v0"): torch-native ports where popgym/ has one (POPGYM_PORTS), else the
popgym package through GymVectorEnv. Any other gymnasium env (a registered id or "module:Class") runs through
gymnasium's vector API behind GymVectorEnv (gym_vector.py), its spaces encoded by emulation.py.

When gymnasium is installed, single-env versions are registered:
    gymnasium.make("memrl/DelayedCue-v0", horizon=200)     # also memrl/TMaze-v0, memrl/RepeatFirst-v0
"""
from .base import HorizonEnv, TorchVectorEnv
from .delayed_cue import DelayedCue
from .repeat_first import RepeatFirst
from .popgym import PORTS as _POPGYM_PORTS
from .popgym import is_popgym_id, make_port, popgym_gym_name
from .tmaze import TMaze

__all__ = ["DelayedCue", "RepeatFirst", "TMaze", "HorizonEnv", "TorchVectorEnv", "ENVS", "POPGYM_PORTS",
           "check_env_name", "make_env"]

_BUILDERS = {  # name -> builder(num_envs, device, horizon, num_cues, noise): the one list of torch-native envs
    "DelayedCue": lambda n, device, horizon, num_cues, noise: DelayedCue(num_envs=n, horizon=horizon, num_cues=num_cues,
                                                                         noise=noise, device=device),
    "TMaze": lambda n, device, horizon, num_cues, noise: TMaze(num_envs=n, horizon=horizon, noise=noise, device=device),
    "RepeatFirst": lambda n, device, horizon, num_cues, noise: RepeatFirst(num_envs=n, horizon=horizon,
                                                                           num_symbols=num_cues, noise=noise,
                                                                           device=device),
}
ENVS = tuple(_BUILDERS)
"""Names of the torch-native memory tasks with a horizon knob (anything else must be a popgym port, a gymnasium id
or module:Class)."""
POPGYM_PORTS = tuple(_POPGYM_PORTS)
"""popgym ids with a torch-native port (memrl/envs/popgym); make_env builds the port for them."""


def _gym_name(name: str) -> str:
    """The gymnasium name GymVectorEnv runs for `name`: "popgym:<id>" for a popgym id (imports popgym, which
    registers it; ValueError when popgym is not installed), else `name`."""
    return popgym_gym_name(name) if is_popgym_id(name) else name


def check_env_name(name: str) -> None:
    """ValueError unless `name` is a torch-native task, a popgym id (ported, or popgym installed), a registered
    gymnasium id or "module:Class"."""
    if name in _BUILDERS or name in _POPGYM_PORTS:
        return
    try:
        from .gym_vector import gym_env_factory
    except ImportError:  # pragma: no cover - exercised only without gymnasium
        raise ValueError(f"one of {', '.join(ENVS)} (gymnasium envs need the `rl` extra: pip install "
                         f"'mamba-compat[rl]')") from None
    gym_env_factory(_gym_name(name))


def make_env(name: str, num_envs: int = 1, device="cpu", horizon: int = 200, num_cues: int = 2,
             noise: float = 0.0, workers: int = 0):
    """Build a batched env by name with the trainer's options. A torch-native task (ENVS) takes horizon, num_cues
    (RepeatFirst's num_symbols; TMaze always has 2 arms) and noise; a popgym port (POPGYM_PORTS) has popgym's
    parameters and ignores them, as does anything else, a gymnasium env (GymVectorEnv, `workers` > 0 for
    AsyncVectorEnv; a popgym id without a port runs the popgym package)."""
    if name in _BUILDERS or name in _POPGYM_PORTS:
        if workers:
            raise ValueError(f"workers must be 0 for the torch-native env {name!r} (it has no worker processes), "
                             f"got {workers}")
        if name in _POPGYM_PORTS:
            return make_port(name, num_envs=num_envs, device=device)
        return _BUILDERS[name](num_envs, device, horizon, num_cues, noise)
    from .gym_vector import GymVectorEnv
    return GymVectorEnv(_gym_name(name), num_envs=num_envs, device=device, workers=workers)


def _register() -> None:
    try:
        import gymnasium
    except ImportError:
        return
    for env_id, entry in (("memrl/DelayedCue-v0", "memrl.envs.gym_env:DelayedCueEnv"),
                          ("memrl/TMaze-v0", "memrl.envs.gym_tasks:TMazeEnv"),
                          ("memrl/RepeatFirst-v0", "memrl.envs.gym_tasks:RepeatFirstEnv")):
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=entry)


_register()
