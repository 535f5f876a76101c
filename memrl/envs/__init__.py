"""Memory tasks as batched torch environments: DelayedCue (delayed_cue.py), passive TMaze (tmaze.py),
RepeatFirst (repeat_first.py).

When gymnasium is installed, single-env versions are registered:
    gymnasium.make("memrl/DelayedCue-v0", horizon=200)     # also memrl/TMaze-v0, memrl/RepeatFirst-v0
"""
from .delayed_cue import DelayedCue
from .repeat_first import RepeatFirst
from .tmaze import TMaze

__all__ = ["DelayedCue", "RepeatFirst", "TMaze", "ENVS", "make_env"]

_BUILDERS = {  # name -> builder(num_envs, device, horizon, num_cues, noise): the one list of known envs
    "DelayedCue": lambda n, device, horizon, num_cues, noise: DelayedCue(num_envs=n, horizon=horizon, num_cues=num_cues,
                                                                         noise=noise, device=device),
    "TMaze": lambda n, device, horizon, num_cues, noise: TMaze(num_envs=n, horizon=horizon, noise=noise, device=device),
    "RepeatFirst": lambda n, device, horizon, num_cues, noise: RepeatFirst(num_envs=n, horizon=horizon,
                                                                           num_symbols=num_cues, noise=noise,
                                                                           device=device),
}
ENVS = tuple(_BUILDERS)
"""Names make_env knows (Config and the CLI validate --env against this)."""


def make_env(name: str, num_envs: int = 1, device="cpu", horizon: int = 200, num_cues: int = 2,
             noise: float = 0.0):
    """Build a batched env by name with the trainer's options (num_cues is RepeatFirst's num_symbols;
    TMaze always has 2 arms)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown env {name!r}; available: {', '.join(ENVS)}")
    return _BUILDERS[name](num_envs, device, horizon, num_cues, noise)


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
