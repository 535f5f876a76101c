"""The PPO loss of one minibatch: a pure function of the model's outputs and the rollout's records.

    loss, terms = ppo_loss(out, skip, batch, action_dist, cfg, gate_coef)

No host syncs (no .item(), no Python branch on a tensor), so the minibatch step that calls it can be captured as
a CUDA graph (update.py).
"""
from __future__ import annotations

import torch

TERMS = ("approx_kl", "clipfrac", "pg_loss", "v_loss", "entropy", "gate_loss")


def ppo_loss(out, skip: int, batch: dict, action_dist, cfg, gate_coef, adv_mean=None, adv_std=None):
    """Clipped-surrogate PPO loss (Schulman et al. 2017) with clipped value loss, entropy bonus and the L1 penalty
    on the memory's write gate.

    out: the ActorCritic output of `evaluate` on the minibatch's sequences, whose first `skip` steps are a burn-in
    prefix (no loss on them). batch: the minibatch's records, each (b, T) ("actions" (b, T) or (b, T, K)):
    "actions", "logp" (behaviour log-probabilities), "adv", "returns", "values" (the rollout's value estimates).
    gate_coef: float or 0-dim tensor. adv_mean, adv_std: the advantages' normalisation statistics when they come
    from outside the minibatch (data parallel: the global minibatch's); else, with cfg.norm_adv, the minibatch's.
    Returns (loss, terms): terms maps TERMS to 0-dim tensors (approx_kl, clipfrac without gradient).
    """
    logits, values = out.logits[:, skip:], out.value[:, skip:]  # (b, T, A), (b, T)
    new_logp = action_dist.log_prob(logits, batch["actions"])  # (b, T), summed over components
    entropy = action_dist.entropy(logits).mean()
    logratio = new_logp - batch["logp"]
    ratio = logratio.exp()
    with torch.no_grad():
        approx_kl = ((ratio - 1) - logratio).mean()  # k3 estimator, Schulman 2020 "Approximating KL"
        clipfrac = ((ratio - 1).abs() > cfg.clip_coef).float().mean()
    a = batch["adv"]
    if cfg.norm_adv and adv_mean is not None:
        a = (a - adv_mean) / (adv_std + 1e-8)
    elif cfg.norm_adv:
        a = (a - a.mean()) / (a.std() + 1e-8)
    pg_loss = torch.max(-a * ratio, -a * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
    ret, old_v = batch["returns"], batch["values"]
    if cfg.clip_vloss:  # clipped value loss as in OpenAI baselines' PPO2
        v_clip = old_v + (values - old_v).clamp(-cfg.clip_coef, cfg.clip_coef)
        v_loss = 0.5 * torch.max((values - ret) ** 2, (v_clip - ret) ** 2).mean()
    else:
        v_loss = 0.5 * ((values - ret) ** 2).mean()
    gate_loss = out.gate[:, skip:].mean() if out.gate is not None else values.new_zeros(())
    loss = pg_loss - cfg.ent_coef * entropy + cfg.vf_coef * v_loss + gate_coef * gate_loss
    terms = {"approx_kl": approx_kl, "clipfrac": clipfrac, "pg_loss": pg_loss, "v_loss": v_loss,
             "entropy": entropy, "gate_loss": gate_loss}
    return loss, terms
