"""Memory tasks as batched torch environments: DelayedCue (delayed_cue.py), passive TMaze (tmaze.py),
RepeatFirst (repeat_first.py).

When gymnasium is installed, single-env versions are registered:
    gymnasium.make("memrl/DelayedCue-v0", horizon=200)     # also memrl/TMaze-v0, memrl/RepeatFirst-v0
"""
from .delayed_cue import DelayedCue
from .repeat_first import RepeatFirst
from .tmaze import TMaze

__all__ = ["DelayedCue", "RepeatFirst", "TMaze", "ENVS", "make_env"]

ENVS = ("DelayedCue", "TMaze", "RepeatFirst")


def make_env(name: str, num_envs: int = 1, device="cpu", horizon: int = 200, num_cues: int = 2,
             noise: float = 0.0):
    """Build a batched env by name with the trainer's options (num_cues is RepeatFirst's num_symbols;
    TMaze always has 2 arms)."""
    if name == "DelayedCue":
        return DelayedCue(num_envs=num_envs, horizon=horizon, num_cues=num_cues, noise=noise, device=device)
    if name == "TMaze":
        return TMaze(num_envs=num_envs, horizon=horizon, noise=noise, device=device)
    if name == "RepeatFirst":
        return RepeatFirst(num_envs=num_envs, horizon=horizon, num_symbols=num_cues, noise=noise, device=device)
    raise ValueError(f"unknown env {name!r}; available: {list(ENVS)}")


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
