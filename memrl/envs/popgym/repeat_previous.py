"""POPGym's RepeatPrevious (popgym/envs/repeat_previous.py), batched on tensors.

Each step shows the suit of the next card dealt from a shuffled deck of 52 * num_decks cards (Discrete(4), encoded
one-hot); the agent must name the suit of the card shown k - 1 steps before the current one (popgym's hand[-k],
the current card being hand[-1]). The first k - 1 steps earn nothing; after that +1/(num_cards - k) if right,
-1/(num_cards - k) if wrong (returns in [-1, 1]). num_cards - 1 steps, then terminated (never truncated).
Easy/Medium/Hard: (num_decks, k) = (1, 4) / (2, 32) / (3, 64): 51 / 103 / 155 steps.
"""
from __future__ import annotations

import torch
from gymnasium import spaces

from ..common import check_positive
from .cards import DECK_SIZE, NUM_SUITS, CardGame, suit
from .port import one_hots


class RepeatPrevious(CardGame):
    """Batched POPGym RepeatPrevious. State: cards (num_envs, num_cards) in dealing order, t (num_envs,)."""

    def __init__(self, num_envs: int = 1, num_decks: int = 1, k: int = 4, device="cpu"):
        num_decks = check_positive("num_decks", num_decks, 1)
        k = check_positive("k", k, 1)
        if k >= DECK_SIZE * num_decks:
            raise ValueError(f"k must be < the number of cards 52 * num_decks = {DECK_SIZE * num_decks}, got {k}")
        super().__init__(num_envs, device, num_decks, spaces.Discrete(NUM_SUITS), spaces.Discrete(NUM_SUITS))
        self.k = k
        self.episode_length = self.num_cards - 1
        self.reward_scale = 1 / (self.num_cards - k)

    def _observe(self) -> torch.Tensor:
        return one_hots((suit(self.dealt("cards", self.t)), NUM_SUITS))

    def _advance(self, actions: torch.Tensor):
        scored = self.t + 1 >= self.k  # popgym: hand_size >= k, the hand being cards[0..t]
        right = actions == suit(self.dealt("cards", self.t + 1 - self.k))
        reward = torch.where(right, self.reward_scale, -self.reward_scale) * scored
        terminated = self.t == self.num_cards - 2
        self.t = self.t + 1
        return reward.float(), terminated, torch.zeros_like(terminated)
