"""The policy's action distribution: one categorical per action component over concatenated logits, or a diagonal
Gaussian for continuous (Box) actions.

    dist = action_distribution(spec)  # spec = env.action_components: n, a tuple of sizes, or BoxActions(K)
    dist = Categoricals(4)            # Discrete(4): logits (..., 4), actions (...,)
    dist = Categoricals((3, 5))       # MultiDiscrete([3, 5]): logits (..., 8), actions (..., 2)
    dist = DiagGaussian(2)            # Box of 2 reals: head outputs (..., 4) = means, log-stds; actions (..., 2)
    actions, logp = dist.sample(logits, generator)       # Gumbel-max per component
    dist.log_prob(logits, actions), dist.entropy(logits)  # summed over components (independent factors)
    dist.mode(logits)                                    # argmax per component (greedy evaluation)
"""
from __future__ import annotations

import math

import torch

from ..envs.base import BoxActions


def gumbel_argmax(logits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """logits perturbed by Gumbel noise drawn from `gen` (argmax of a slice samples that slice's categorical)."""
    u = torch.rand(logits.shape, device=logits.device, generator=gen)
    return logits - torch.log(-torch.log(u.clamp_min(1e-20)))


def sample_actions(logits: torch.Tensor, gen: torch.Generator):
    """Gumbel-max sample of one categorical per row -> (actions (N,), log-prob of each action (N,))."""
    return Categoricals(logits.shape[-1]).sample(logits, gen)


class Categoricals:
    """Independent categoricals of sizes `components` (an int n: one, with actions without a component dim)."""

    def __init__(self, components: int | tuple):
        self.multi = isinstance(components, (tuple, list))
        self.sizes = tuple(int(n) for n in components) if self.multi else (int(components),)
        if not self.sizes or min(self.sizes) < 1:
            raise ValueError(f"action components must be sizes >= 1, got {components!r}")
        self.num_logits = sum(self.sizes)
        self.action_shape = (len(self.sizes),) if self.multi else ()
        """Shape of one env's action: () for one categorical, (K,) for K components."""
        self.action_dtype = torch.long

    def _parts(self, logits: torch.Tensor):
        return logits.split(self.sizes, dim=-1)  # K tensors (..., n_k)

    def _pack(self, per_component: torch.Tensor) -> torch.Tensor:
        """(..., K) -> the action layout: (...,) for one categorical, else unchanged."""
        return per_component if self.multi else per_component.squeeze(-1)

    def sample(self, logits: torch.Tensor, gen: torch.Generator):
        """-> (actions, log-prob (...,)) with actions in the action layout."""
        noisy = gumbel_argmax(logits, gen)
        actions = torch.stack([part.argmax(-1) for part in self._parts(noisy)], dim=-1)  # (..., K)
        return self._pack(actions), self.log_prob(logits, self._pack(actions))

    def mode(self, logits: torch.Tensor) -> torch.Tensor:
        return self._pack(torch.stack([part.argmax(-1) for part in self._parts(logits)], dim=-1))

    def log_prob(self, logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Sum over components of log p(action_k); actions in the action layout, logits (..., num_logits)."""
        per = actions if self.multi else actions.unsqueeze(-1)  # (..., K)
        logps = [part.log_softmax(-1).gather(-1, per[..., k:k + 1]).squeeze(-1)
                 for k, part in enumerate(self._parts(logits))]
        return logps[0] if len(logps) == 1 else torch.stack(logps, -1).sum(-1)

    def entropy(self, logits: torch.Tensor) -> torch.Tensor:
        """Sum over components of each categorical's entropy, (...,)."""
        ents = []
        for part in self._parts(logits):
            logp = part.log_softmax(-1)
            ents.append(-(logp.exp() * logp).sum(-1))
        return ents[0] if len(ents) == 1 else torch.stack(ents, -1).sum(-1)


class DiagGaussian:
    """K independent normals whose means and log standard deviations are the policy head's outputs (state-dependent,
    as the rest of the head; log-std clamped to [LOG_STD_MIN, LOG_STD_MAX]). The head's small init gives means ~0
    and stds ~1 at the start. Actions are the raw samples (float32, (..., K)); the env maps and clips them
    (envs/emulation.decode_actions), and log_prob is of the raw sample."""

    LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0

    def __init__(self, size: int):
        if int(size) < 1:
            raise ValueError(f"a continuous action needs size >= 1, got {size!r}")
        self.size = int(size)
        self.num_logits = 2 * self.size
        self.action_shape = (self.size,)
        self.action_dtype = torch.float32

    def _params(self, out: torch.Tensor):
        mean, log_std = out.split(self.size, dim=-1)  # (..., K) each
        return mean, log_std.clamp(self.LOG_STD_MIN, self.LOG_STD_MAX)

    def sample(self, out: torch.Tensor, gen: torch.Generator):
        mean, log_std = self._params(out)
        noise = torch.randn(mean.shape, device=mean.device, generator=gen)
        actions = mean + noise * log_std.exp()
        return actions, self.log_prob(out, actions)

    def mode(self, out: torch.Tensor) -> torch.Tensor:
        return self._params(out)[0]

    def log_prob(self, out: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Sum over the K components of log N(action_k; mean_k, std_k), (...,)."""
        mean, log_std = self._params(out)
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z * z - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def entropy(self, out: torch.Tensor) -> torch.Tensor:
        return (self._params(out)[1] + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)


def action_distribution(spec):
    """The distribution for env.action_components: Categoricals(n or sizes), or DiagGaussian(K) for BoxActions(K)."""
    if isinstance(spec, BoxActions):
        return DiagGaussian(spec.size)
    return Categoricals(spec)
