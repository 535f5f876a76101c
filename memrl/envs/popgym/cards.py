"""popgym's card decks (popgym/core/deck.py) on tensors: decks of 52 * num_decks cards, card c of suit c % 4,
colour c % 2 and rank (c % 52) // 4, as popgym numbers them; one shuffled deck per env.

popgym deals from the end of its shuffled index array (deck.idx[-1] first); a port keeps the cards in dealing
order instead: cards[:, i] is the i-th card dealt in the episode (so popgym's deck.idx[::-1]).
"""
from __future__ import annotations

import torch

from .port import PopgymPort

DECK_SIZE = 52
NUM_SUITS, NUM_COLORS, NUM_RANKS = 4, 2, 13


def suit(cards: torch.Tensor) -> torch.Tensor:
    return cards % NUM_SUITS


def color(cards: torch.Tensor) -> torch.Tensor:
    return cards % NUM_COLORS


def rank(cards: torch.Tensor) -> torch.Tensor:
    return (cards % DECK_SIZE) // NUM_SUITS


CARD_FIELDS = {"suits": (suit, NUM_SUITS), "colors": (color, NUM_COLORS), "ranks": (rank, NUM_RANKS)}
"""popgym's deck_type names -> (card -> its value, number of values)."""


def shuffled_decks(num_envs: int, num_cards: int, generator: torch.Generator, device) -> torch.Tensor:
    """(num_envs, num_cards) long: a uniformly random order of the cards 0..num_cards-1 per env (argsort of float64
    uniforms, so ties have probability ~ num_cards^2 / 2^53)."""
    keys = torch.rand(num_envs, num_cards, dtype=torch.float64, device=device, generator=generator)
    return keys.argsort(dim=1)


class CardGame(PopgymPort):
    """A port whose episodes deal from shuffled decks: declares t (num_envs,) (steps taken in the episode) and one
    (num_envs, num_cards) deck per name in `deck_names`, all in dealing order.

    Every episode of a card game has the same length and all envs start together, so every env ends at the same
    step: a new deck is drawn for all envs then. On the CPU the draw is skipped on the other steps; on CUDA it is
    drawn at every step and kept only where an episode ended (no host sync, so CUDA graphs can capture it)."""

    deck_names = ("cards",)

    def __init__(self, num_envs: int, device, num_decks: int, gym_observation_space, action_space):
        super().__init__(num_envs, device, gym_observation_space, action_space)
        self.num_decks = num_decks
        self.num_cards = DECK_SIZE * num_decks
        self.register_state("t", torch.zeros(self.num_envs, dtype=torch.long, device=self.device))
        for name in self.deck_names:
            self.register_state(name, torch.zeros(self.num_envs, self.num_cards, dtype=torch.long,
                                                  device=self.device))

    def _start(self, mask: torch.Tensor) -> None:
        if self.device.type != "cuda" and not bool(mask.any()):
            return
        for name in self.deck_names:
            fresh = shuffled_decks(self.num_envs, self.num_cards, self.generator, self.device)
            setattr(self, name, torch.where(mask.unsqueeze(1), fresh, getattr(self, name)))
        self.t = torch.where(mask, torch.zeros_like(self.t), self.t)
        self._start_counts(mask)

    def _start_counts(self, mask: torch.Tensor) -> None:
        """Reset any per-episode tallies where mask is True (none by default)."""

    def dealt(self, name: str, index: torch.Tensor) -> torch.Tensor:
        """(num_envs,) the card at position index (num_envs,) of deck `name` in each env."""
        return getattr(self, name).gather(1, index.clamp(0, self.num_cards - 1).unsqueeze(1)).squeeze(1)
