"""POPGym's CountRecall (popgym/envs/count_recall.py), batched on tensors.

Two shuffled decks of 52 * num_decks cards, a value deck and a query deck, deal one card each per step; the
observation is (value card's kind, query card's kind), MultiDiscrete([d, d]) encoded as two one-hots, where the
kind is the card's colour (d = 2), suit (4) or rank (13). The action must be how many value cards of the queried
kind have been shown so far (the one shown with the query included): +1/(num_cards - 1) if right, -1/(num_cards - 1)
if wrong (returns in [-1, 1]); actions are counts in [0, num_cards / d]. num_cards - 1 steps, then terminated.
Easy/Medium/Hard: (num_decks, kind) = (1, colors) / (2, suits) / (4, ranks): 51 / 103 / 207 steps, Discrete(27) /
Discrete(27) / Discrete(17) actions. (popgym's error_clamp argument is unused there, so it is not ported.)
"""
from __future__ import annotations

import torch
from gymnasium import spaces

from ..common import check_positive
from .cards import CARD_FIELDS, CardGame
from .port import one_hots


class CountRecall(CardGame):
    """Batched POPGym CountRecall. State: value_cards, query_cards (num_envs, num_cards) in dealing order,
    t (num_envs,), counts (num_envs, d): value cards of each kind shown so far in the episode."""

    deck_names = ("value_cards", "query_cards")

    def __init__(self, num_envs: int = 1, num_decks: int = 1, deck_type: str = "colors", device="cpu"):
        num_decks = check_positive("num_decks", num_decks, 1)
        if deck_type not in CARD_FIELDS:
            raise ValueError(f"deck_type must be one of {', '.join(CARD_FIELDS)}, got {deck_type!r}")
        self.kind_of, self.num_kinds = CARD_FIELDS[deck_type]
        self.deck_type = deck_type
        max_count = 52 * num_decks // self.num_kinds
        super().__init__(num_envs, device, num_decks, spaces.MultiDiscrete([self.num_kinds] * 2),
                         spaces.Discrete(max_count + 1))
        self.register_state("counts", torch.zeros(self.num_envs, self.num_kinds, dtype=torch.long,
                                                  device=self.device))
        self.episode_length = self.num_cards - 1
        self.reward_scale = 1 / (self.num_cards - 1)

    def _kinds(self):
        """(value kind, query kind) of the cards dealt last, each (num_envs,)."""
        return self.kind_of(self.dealt("value_cards", self.t)), self.kind_of(self.dealt("query_cards", self.t))

    def _start_counts(self, mask: torch.Tensor) -> None:
        first = torch.nn.functional.one_hot(self._kinds()[0], self.num_kinds)  # (num_envs, d)
        self.counts = torch.where(mask.unsqueeze(1), first, self.counts)

    def _observe(self) -> torch.Tensor:
        value, query = self._kinds()
        return one_hots((value, self.num_kinds), (query, self.num_kinds))

    def _advance(self, actions: torch.Tensor):
        asked = self.counts.gather(1, self._kinds()[1].unsqueeze(1)).squeeze(1)  # count of the queried kind
        reward = torch.where(actions == asked, self.reward_scale, -self.reward_scale).float()
        self.t = self.t + 1
        self.counts = self.counts + torch.nn.functional.one_hot(self._kinds()[0], self.num_kinds)
        terminated = self.t == self.num_cards - 1  # popgym: the value deck is empty after this deal
        return reward, terminated, torch.zeros_like(terminated)
