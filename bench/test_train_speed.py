"""Training speed of memrl on whatever device is present: acting (one rollout) and one full PPO update.

    pytest bench/test_train_speed.py --benchmark-columns=mean,stddev,rounds

env-steps/s are attached to each result's extra_info (and printed). Shapes are those of the default
`memrl train` (DelayedCue-200, 512 envs, 1-layer Mamba2 d_model 64 + PseudoMode memory), controller
parametrized; MEMRL_BENCH_ENVS sets the number of envs, MEMRL_BENCH_DEVICE the device (default auto).
"""
import os

import pytest
import torch

from memrl.config import Config
from memrl.ppo import PPOTrainer
from timing import sync as _sync

NUM_ENVS = int(os.environ.get("MEMRL_BENCH_ENVS", "512"))
DEVICE = os.environ.get("MEMRL_BENCH_DEVICE", "auto")


CONTROLLERS = ["mamba2", "gru"]


def _trainer(controller):
    cfg = Config(controller=controller, num_envs=NUM_ENVS, curriculum_start=0, device=DEVICE, progress=False,
                 tensorboard=False)
    trainer = PPOTrainer(cfg)
    trainer.collect_rollout()  # warm-up (allocations, lazy inits)
    return trainer


@pytest.mark.parametrize("controller", CONTROLLERS)
def test_acting_speed(benchmark, record_rate, controller):
    trainer = _trainer(controller)
    steps = trainer.cfg.num_envs * trainer.rollout_len

    def run():
        trainer.collect_rollout()
        _sync(trainer.device)

    benchmark.pedantic(run, rounds=3, iterations=1)
    sps = steps / benchmark.stats.stats.mean
    benchmark.extra_info.update({"env_steps_per_s": sps, "device": str(trainer.device), "num_envs": NUM_ENVS})
    record_rate(f"acting, {controller}, {NUM_ENVS} envs, {trainer.device}", sps, "env-steps/s")


@pytest.mark.parametrize("controller", CONTROLLERS)
def test_ppo_update_speed(benchmark, record_rate, controller):
    trainer = _trainer(controller)
    roll = trainer.collect_rollout()
    steps = trainer.cfg.num_envs * trainer.rollout_len

    def run():
        trainer.update(roll)
        _sync(trainer.device)

    benchmark.pedantic(run, rounds=2, iterations=1)
    sps = steps / benchmark.stats.stats.mean
    benchmark.extra_info.update({"env_steps_per_s": sps, "device": str(trainer.device), "num_envs": NUM_ENVS,
                                 "update_epochs": trainer.cfg.update_epochs})
    record_rate(f"PPO update, {controller}, {NUM_ENVS} envs, {trainer.device} ({trainer.cfg.update_epochs} epochs x "
                f"{trainer.cfg.num_minibatches} minibatches)", sps, "env-steps/s")
