"""POPGym's Autoencode (popgym/envs/autoencode.py), batched on tensors.

Two phases. WATCH: the cards of a shuffled deck of 52 * num_decks are shown one per step, as (mode, suit) with
mode 1 (WATCH), except the last card, which is shown with mode 0 (PLAY); actions earn nothing. PLAY: the agent
must name the suits in reverse order (the last card seen first), one per step, +1/num_cards if right and
-1/num_cards if wrong (returns in [-1, 1]), and sees (0, 0). Observation Tuple(Discrete(2), Discrete(4)), encoded
as [one-hot of mode (2), one-hot of suit (4)]. An episode is num_cards - 1 WATCH steps and num_cards PLAY steps
(2 * num_cards - 1), then terminated. Easy/Medium/Hard: num_decks 1 / 2 / 3 (103 / 207 / 311 steps).
"""
from __future__ import annotations

import torch
from gymnasium import spaces

from ..common import check_positive
from .cards import NUM_SUITS, CardGame, suit
from .port import one_hots

PLAY, WATCH = 0, 1  # popgym's Mode


class Autoencode(CardGame):
    """Batched POPGym Autoencode. State: cards (num_envs, num_cards) in dealing order, t (num_envs,)."""

    def __init__(self, num_envs: int = 1, num_decks: int = 1, device="cpu"):
        num_decks = check_positive("num_decks", num_decks, 1)
        super().__init__(num_envs, device, num_decks,
                         spaces.Tuple((spaces.Discrete(2), spaces.Discrete(NUM_SUITS))), spaces.Discrete(NUM_SUITS))
        self.episode_length = 2 * self.num_cards - 1
        self.reward_scale = 1 / self.num_cards

    def _observe(self) -> torch.Tensor:
        last = self.num_cards - 1  # t at which the last card is dealt (and shown with mode PLAY)
        mode = torch.where(self.t < last, WATCH, PLAY)
        shown = torch.where(self.t <= last, suit(self.dealt("cards", self.t)), 0)  # popgym shows card 0 in PLAY
        return one_hots((mode, 2), (shown, NUM_SUITS))

    def _advance(self, actions: torch.Tensor):
        playing = self.t >= self.num_cards - 1
        asked = 2 * (self.num_cards - 1) - self.t  # the card to name now: the last dealt first
        right = actions == suit(self.dealt("cards", asked))
        reward = torch.where(right, self.reward_scale, -self.reward_scale) * playing
        terminated = self.t == 2 * self.num_cards - 2
        self.t = self.t + 1
        return reward.float(), terminated, torch.zeros_like(terminated)
