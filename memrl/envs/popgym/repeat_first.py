"""POPGym's RepeatFirst (popgym/envs/repeat_first.py), batched on tensors.

Each step shows the suit of the next card dealt from a shuffled deck of 52 * num_decks cards (Discrete(4), encoded
one-hot); at every step the agent must name the suit of the FIRST card of the episode: reward +1/(num_cards - 1)
if right, -1/(num_cards - 1) if wrong, so returns lie in [-1, 1]. An episode is num_cards - 1 steps and then
terminates (never truncates). Easy/Medium/Hard: num_decks 1 / 8 / 16 (51 / 415 / 831 steps).
"""
from __future__ import annotations

import torch
from gymnasium import spaces

from ..common import check_positive
from .cards import NUM_SUITS, CardGame, suit
from .port import one_hots


class RepeatFirst(CardGame):
    """Batched POPGym RepeatFirst. State: cards (num_envs, num_cards) in dealing order, t (num_envs,)."""

    def __init__(self, num_envs: int = 1, num_decks: int = 1, device="cpu"):
        num_decks = check_positive("num_decks", num_decks, 1)
        super().__init__(num_envs, device, num_decks, spaces.Discrete(NUM_SUITS), spaces.Discrete(NUM_SUITS))
        self.episode_length = self.num_cards - 1
        self.reward_scale = 1 / (self.num_cards - 1)

    def _observe(self) -> torch.Tensor:
        return one_hots((suit(self.dealt("cards", self.t)), NUM_SUITS))  # the card dealt last

    def _advance(self, actions: torch.Tensor):
        right = actions == suit(self.cards[:, 0])
        reward = torch.where(right, self.reward_scale, -self.reward_scale).float()
        terminated = self.t == self.num_cards - 2  # popgym: one card left in the deck before this deal
        self.t = self.t + 1
        return reward, terminated, torch.zeros_like(terminated)
