"""Evaluation on fresh episodes (greedy or sampled actions), no gradient."""
from __future__ import annotations

import itertools

import torch

from ..envs import make_env


SYNC_EVERY = 16  # steps between checks that every episode has ended (finished envs keep stepping, masked out)


@torch.inference_mode()
def evaluate_policy(model, env_kwargs: dict, episodes: int = 1000, seed: int = 0, device="cpu",
                    greedy: bool = True, max_batch: int = 1024, env_name: str = "DelayedCue") -> dict:
    """Run `episodes` fresh episodes in parallel batches of at most `max_batch` envs.

    Args:
        model: an ActorCritic; env_kwargs: make_env's options (horizon, num_cues, noise, workers); seed: seeds the
            envs (and sampling).
    Returns:
        {"episodes", "success_rate" (None for an env without a success metric), "mean_return"}.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed) + 7919)
    done_total, success_total, return_total = 0, 0, 0.0
    chunk = 0
    while done_total < episodes:
        n = min(max_batch, episodes - done_total)
        env = make_env(env_name, num_envs=n, device=device, **env_kwargs)
        obs, _ = env.reset(seed=int(seed) * 1_000_003 + chunk)
        state = model.init_state(n, device)
        reset = torch.ones(n, dtype=torch.bool, device=device)
        finished = torch.zeros(n, dtype=torch.bool, device=device)
        ret = torch.zeros(n, device=device)
        success = torch.zeros(n, dtype=torch.bool, device=device)
        for t in itertools.count(1):
            out = model.act(obs, state, reset)
            if greedy:
                actions = model.action_dist.mode(out.logits)
            else:
                actions = model.action_dist.sample(out.logits, gen)[0]
            obs, reward, term, trunc, info = env.step(actions)
            ret += reward * ~finished
            if env.reports_success:
                success |= info["success"] & (term | trunc) & ~finished
            finished |= term | trunc
            reset, state = term | trunc, out.state
            if t % SYNC_EVERY == 0 and bool(finished.all()):  # a host sync: not every step
                break
        env.close()
        reports_success = env.reports_success
        done_total += n
        success_total += int(success.sum())
        return_total += float(ret.sum())
        chunk += 1
    model.train(was_training)
    return {"episodes": done_total, "success_rate": success_total / done_total if reports_success else None,
            "mean_return": return_total / done_total}
