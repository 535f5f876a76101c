"""For the POPGym tests: copy the state of popgym's envs (inside a GymVectorEnv's SyncVectorEnv) into a port's
declared state, row by row, so both continue from the same cards / cart state; shared noise; a cart-pole controller."""
import numpy as np
import torch


def popgym_envs(adapter):
    """The unwrapped popgym envs of a GymVectorEnv (SyncVectorEnv), one per row."""
    return [e.unwrapped for e in adapter.vector_env.envs]


def _order(deck) -> torch.Tensor:
    """popgym deals from the end of deck.idx: the port's dealing order is deck.idx reversed."""
    return torch.from_numpy(deck.idx[::-1].copy())


def copy_popgym_state(port, popgym_env, row: int) -> None:
    """Make row `row` of `port` the episode popgym_env has just begun (right after its reset)."""
    name = type(port).__name__
    if name in ("RepeatFirst", "RepeatPrevious", "Autoencode"):
        assert len(popgym_env.deck) == popgym_env.deck.num_cards - 1  # one card dealt: a fresh episode
        port.cards[row] = _order(popgym_env.deck)
        port.t[row] = 0
    elif name == "CountRecall":
        port.value_cards[row] = _order(popgym_env.value_deck)
        port.query_cards[row] = _order(popgym_env.query_deck)
        port.counts[row] = torch.from_numpy(popgym_env.counts)
        port.t[row] = 0
    elif name in ("PositionOnlyCartPole", "NoisyPositionOnlyCartPole"):
        assert popgym_env.num_steps == 0
        port.state[row] = torch.from_numpy(np.asarray(popgym_env.state, dtype=np.float64))
        port.steps[row] = 0
    else:
        raise AssertionError(f"no state copy for {name}")


class SharedNormals:
    """Stands in for a popgym env's np_random (everything else delegated): normal(loc, scale) returns
    loc + scale * z[row], z set by the test for each step, so popgym's own noise code adds the noise the port adds."""

    def __init__(self, rng, row: int, holder: dict):
        self._rng, self._row, self._holder = rng, row, holder

    def normal(self, loc, scale):
        return loc + np.asarray(scale) * self._holder["z"][self._row].numpy()

    def __getattr__(self, name):
        return getattr(self._rng, name)


def balance_cartpole(states: torch.Tensor) -> torch.Tensor:
    """Actions (N,) of a linear controller on the true cart-pole state (N, 4) [x, x_dot, theta, theta_dot]: keeps the
    pole up for hundreds of steps, so episodes reach max_episode_length."""
    x, x_dot, theta, theta_dot = states.unbind(1)
    return (0.05 * x + 0.2 * x_dot + 8.0 * theta + 1.5 * theta_dot > 0).long()
