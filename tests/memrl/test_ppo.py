"""Recurrent PPO: learns a short DelayedCue, stops cleanly on NaN, resumes exactly, config docs."""
import dataclasses

import pytest
import torch

from memrl.config import Config, field_docs
from memrl.ppo import NonFiniteError, PPOTrainer, evaluate_policy, gae


def small(**kw):
    base = dict(horizon=10, num_envs=64, num_minibatches=2, controller="gru", d_model=32, mem_dim=32,
                eval_episodes=200, progress=False, tensorboard=False, device="cpu")
    base.update(kw)
    return Config(**base)


def test_every_config_field_has_a_docstring():
    docs = field_docs()
    missing = [f.name for f in dataclasses.fields(Config) if not docs.get(f.name)]
    assert not missing, f"fields without a docstring: {missing}"


def test_every_range_checked_config_field_names_itself():
    from memrl.config import _FLOAT_RULE, _INT_MIN, ConfigError
    bad = {">= 0": -0.1, "> 0": 0.0, "> 1": 1.0, "in [0, 1]": 1.5, "in (0, 1)": 1.0}
    cases = [(name, low - 1, f">= {low}") for name, low in _INT_MIN.items()]
    cases += [(name, value, f"a finite number {rule}") for name, rule in _FLOAT_RULE.items()
              for value in (bad[rule], float("nan"))]
    for name, value, rule in cases:
        with pytest.raises(ConfigError) as err:
            Config(**{name: value})
        assert (err.value.field, str(err.value)) == (name, f"{name} must be {rule}, got {value!r}")
    Config(num_envs=1, num_minibatches=1, total_steps=1, horizon=2, curriculum_start=0, eval_interval=1, lr=1e-9,
           target_success=1.5, eval_trigger=2.0, gamma=1.0, noise=0.0)  # the edges themselves are fine


def test_gae_matches_hand_computation():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.4, 0.3, 0.2]])
    dones = torch.tensor([[False, False, True, False]])
    adv, ret = gae(rewards, values, dones, torch.tensor([0.7]), gamma=0.9, lam=0.8)
    d3 = 0.0 + 0.9 * 0.7 - 0.2
    d2 = 1.0 - 0.3  # episode ends: no bootstrap
    d1 = 0.0 + 0.9 * 0.3 - 0.4
    d0 = 0.0 + 0.9 * 0.4 - 0.5
    a2, a1 = d2, d1 + 0.72 * d2
    expect = torch.tensor([[d0 + 0.72 * a1, a1, a2, d3]])
    torch.testing.assert_close(adv, expect)
    torch.testing.assert_close(ret, expect + values)


def test_ppo_learns_delayed_cue_10():
    torch.manual_seed(0)
    trainer = PPOTrainer(small(num_envs=128, seed=3))
    for _ in range(40):
        trainer.train_step()
        if trainer.solved:
            break
    res = trainer.evaluate(episodes=1000, seed=123)
    assert res["success_rate"] >= 0.95, (trainer.update_idx, res)


def test_evaluation_at_the_training_horizon_and_only_the_full_horizon_stops():
    """Every eval_interval updates the trainer evaluates at its current training horizon (logged as eval_horizon);
    however good, a curriculum stage's evaluation never stops the run; one at the full horizon does. The
    eval_trigger (good rollouts) only applies at the full horizon."""
    stage = PPOTrainer(small(horizon=12, curriculum_start=4, curriculum_success=1.0, eval_interval=1,
                             eval_episodes=50, target_success=0.01))
    stats = stage.train_step()
    assert stage.train_horizon == 4 and stats["eval_horizon"] == 4
    again = evaluate_policy(stage.model, dict(horizon=4, num_cues=2, noise=0.0), 50, stage.cfg.seed * 100_003 + 1)
    assert stats["eval_success"] == again["success_rate"] >= 0.01 and stage.last_eval == {**again, "horizon": 4}
    assert not stage.solved
    full = PPOTrainer(small(horizon=6, curriculum_start=0, eval_interval=1, eval_episodes=50, target_success=0.01))
    stats = full.train_step()
    assert stats["eval_horizon"] == 6 and stats["eval_success"] >= 0.01 and full.solved
    triggered = [PPOTrainer(small(horizon=h, curriculum_start=4, curriculum_success=1.0, eval_interval=100,
                                  eval_trigger=0.0)) for h in (12, 4)]
    assert ["eval_success" in t.train_step() for t in triggered] == [False, True]


def test_nan_stops_cleanly_and_keeps_last_good_checkpoint(tmp_path):
    from memrl.cli import main
    run = tmp_path / "run"
    args = ["train", "--out", str(run), "--horizon", "6", "--num-envs", "16", "--controller", "gru",
            "--checkpoint-interval", "1", "--debug-nan-at-update", "3", "--no-progress", "--total-steps", "10000"]
    assert main(args) == 3
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert ckpt["counters"]["update"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def _params(trainer):
    return [p.detach().clone() for p in trainer.model.parameters()]


@pytest.mark.parametrize("controller,extra", [
    ("gru", dict(horizon=8, burn_in=4, rollout_len=6)),  # episodes cross rollouts, burn-in replay
    ("mamba2", dict(horizon=12, curriculum_start=4, curriculum_factor=2.0, curriculum_success=0.0)),  # 4 -> 8 -> 12
])
def test_resume_continues_exactly(tmp_path, controller, extra):
    cfg = small(num_envs=16, controller=controller, d_model=16, headdim=8, d_state=8, mem_dim=16, eval_interval=2,
                **extra)
    straight = PPOTrainer(cfg)
    for _ in range(4):
        straight.train_step()
    first = PPOTrainer(cfg)
    for _ in range(2):
        first.train_step()
    first.save(str(tmp_path / "ck.pt"))
    resumed = PPOTrainer.from_checkpoint(str(tmp_path / "ck.pt"))
    for _ in range(2):
        resumed.train_step()
    assert resumed.env_steps == straight.env_steps and resumed.update_idx == 4
    assert resumed.train_horizon == straight.train_horizon == min(cfg.horizon, 16)
    for a, b in zip(_params(straight), _params(resumed)):
        assert torch.equal(a, b)
    assert torch.equal(straight.obs, resumed.obs)


def test_non_finite_state_raises():
    trainer = PPOTrainer(small(horizon=5, num_envs=8, num_minibatches=1, debug_nan_at_update=1))
    with pytest.raises(NonFiniteError):
        trainer.train_step()


def test_non_finite_parameters_after_the_update_raise():
    """A parameter the optimizer step itself makes non-finite (the loss and gradients were finite) is caught by
    the check after the update, in the same host sync as its statistics."""
    trainer = PPOTrainer(small(horizon=5, num_envs=8, num_minibatches=1, update_epochs=1))
    roll = trainer.collect_rollout()
    step = trainer.optimizer.step

    def poisoned_step(*a, **k):
        out = step(*a, **k)
        with torch.no_grad():
            next(trainer.model.parameters()).view(-1)[-1] = float("inf")
        return out

    trainer.optimizer.step = poisoned_step
    with pytest.raises(NonFiniteError, match=r"^non-finite parameters after update 1$"):
        trainer.update(roll)


def test_non_finite_loss_in_the_update_raises_at_its_end():
    """The loss and gradient-norm checks stay on the device during the update (no per-minibatch host sync) and
    raise once it ends, naming the first minibatch that failed; the caller never saves such a state."""
    trainer = PPOTrainer(small(horizon=5, num_envs=8, num_minibatches=2))
    roll = trainer.collect_rollout()
    with torch.inference_mode():
        roll["values"][0, 0] = float("nan")  # env 0's value target: NaN advantages in its minibatch
    perm = torch.randperm(8, generator=trainer.gen.clone_state())  # the update's first minibatch order
    first = 0 if 0 in perm[:4].tolist() else 1  # the minibatch that holds env 0
    with pytest.raises(NonFiniteError, match=rf"non-finite loss or gradient norm at update 1, epoch 0, minibatch {first}"):
        trainer.update(roll)
