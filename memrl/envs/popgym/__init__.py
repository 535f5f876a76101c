"""POPGym (Morad et al., ICLR 2023) on the training device: torch-native, batched ports of popgym's envs, and the
routing of popgym's gymnasium ids.

popgym registers gymnasium ids "popgym-<Env><Easy|Medium|Hard>-v0" when imported; the same ids name the ports:

    env = make_port("popgym-RepeatPreviousEasy-v0", num_envs=512, device="cuda")

An id in PORTS builds the port (no popgym package needed); any other "popgym-..." id runs the popgym package
through GymVectorEnv (popgym_gym_name() gives the gymnasium name that imports it). "popgym:popgym-<Env>-v0"
(gymnasium's module:id form) always takes the popgym package, also for a ported env.

Each port has popgym's spaces, rewards (returns in [-1, 1]), episode lengths and terminated/truncated flags; the
parameters of each difficulty are popgym's (its <Env>Easy/Medium/Hard classes), in DIFFICULTIES below.
"""
from __future__ import annotations

import importlib

DIFFICULTIES = {  # popgym env -> (module here, class, {difficulty: popgym's constructor arguments})
    "RepeatFirst": ("repeat_first", "RepeatFirst",
                    {"Easy": {"num_decks": 1}, "Medium": {"num_decks": 8}, "Hard": {"num_decks": 16}}),
    "RepeatPrevious": ("repeat_previous", "RepeatPrevious",
                       {"Easy": {"num_decks": 1, "k": 4}, "Medium": {"num_decks": 2, "k": 32},
                        "Hard": {"num_decks": 3, "k": 64}}),
    "Autoencode": ("autoencode", "Autoencode",
                   {"Easy": {"num_decks": 1}, "Medium": {"num_decks": 2}, "Hard": {"num_decks": 3}}),
    "CountRecall": ("count_recall", "CountRecall",
                    {"Easy": {"num_decks": 1, "deck_type": "colors"}, "Medium": {"num_decks": 2, "deck_type": "suits"},
                     "Hard": {"num_decks": 4, "deck_type": "ranks"}}),
    "PositionOnlyCartPole": ("cartpole", "PositionOnlyCartPole",
                             {"Easy": {"max_episode_length": 200}, "Medium": {"max_episode_length": 400},
                              "Hard": {"max_episode_length": 600}}),
    "NoisyPositionOnlyCartPole": ("cartpole", "NoisyPositionOnlyCartPole",
                                  {"Easy": {"noise_sigma": 0.1}, "Medium": {"noise_sigma": 0.2},
                                   "Hard": {"noise_sigma": 0.3}}),
}

PORTS = {f"popgym-{env}{level}-v0": (module, cls, kwargs)
         for env, (module, cls, levels) in DIFFICULTIES.items() for level, kwargs in levels.items()}
"""popgym gymnasium id -> (module, class, constructor arguments) of its port."""


def make_port(name: str, num_envs: int = 1, device="cpu"):
    """The port of popgym id `name` (a key of PORTS) with num_envs envs on `device`."""
    if name not in PORTS:
        raise ValueError(f"env {name!r} has no torch-native port; ported: {', '.join(PORTS)}")
    module, cls, kwargs = PORTS[name]
    env = getattr(importlib.import_module(f"{__name__}.{module}"), cls)(num_envs=num_envs, device=device, **kwargs)
    env.popgym_id = name
    return env


def is_popgym_id(name: str) -> bool:
    """Whether `name` is one of popgym's gymnasium ids by its form ("popgym-...")."""
    return isinstance(name, str) and name.startswith("popgym-")


def popgym_gym_name(name: str) -> str:
    """The gymnasium name that runs popgym id `name` from the popgym package ("popgym:<name>": gymnasium imports
    popgym, which registers its ids). ValueError naming `name` when popgym is not installed."""
    try:
        importlib.import_module("popgym")
    except ImportError:
        raise ValueError(f"env {name!r} has no torch-native port here (ported: {', '.join(PORTS)}) and needs the "
                         f"popgym package: pip install 'mamba-compat[popgym]'") from None
    return f"popgym:{name}"


__all__ = ["DIFFICULTIES", "PORTS", "is_popgym_id", "make_port", "popgym_gym_name"]
