"""Any gymnasium env: space emulation, the GymVectorEnv adapter against gymnasium itself, MultiDiscrete actions,
truncation in GAE and in rollouts, and training / evaluation / resume through the trainer and the CLI."""
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from memrl.config import Config
from memrl.envs import make_env
from memrl.envs.base import BoxActions
from memrl.envs.emulation import UnsupportedSpace, action_dims, action_spec, decode_actions, encode_obs, obs_size
from memrl.envs.gym_vector import GymVectorEnv
from memrl.models import ActorCritic, Categoricals
from memrl.ppo import PPOTrainer, evaluate_policy, gae
from memrl.ppo.rollout import RolloutActor


# ----------------------------------------------------------------------------------------------- emulation
def test_encode_every_supported_space():
    space = spaces.Dict({"a": spaces.Box(-1, 1, (2, 2)), "b": spaces.Discrete(3, start=1),
                         "c": spaces.Tuple((spaces.MultiDiscrete([2, 3]), spaces.MultiBinary(2)))})
    assert obs_size(space) == 4 + 3 + (2 + 3) + 2
    batched = {"a": np.arange(8, dtype=np.float32).reshape(2, 2, 2), "b": np.array([1, 3]),
               "c": (np.array([[1, 0], [0, 2]]), np.array([[1, 0], [0, 1]], dtype=np.int8))}
    flat = encode_obs(space, batched)
    assert flat.dtype == np.float32 and flat.shape == (2, 14)
    assert flat.tolist() == [[0, 1, 2, 3, 1, 0, 0, 0, 1, 1, 0, 0, 1, 0],
                             [4, 5, 6, 7, 0, 0, 1, 1, 0, 0, 0, 1, 0, 1]]


@pytest.mark.parametrize("space,name", [(spaces.Text(5), "Text"), (spaces.Sequence(spaces.Discrete(2)), "Sequence"),
                                        (spaces.Graph(spaces.Discrete(2), None), "Graph")])
def test_unsupported_observation_space_is_named(space, name):
    nested = spaces.Dict({"ok": spaces.Discrete(2), "bad": space})
    with pytest.raises(UnsupportedSpace, match=rf"observation space \['bad'\] {name}\(.*is not supported "
                                               r"\(supported: Box, MultiBinary, Discrete, MultiDiscrete, Tuple, Dict\)"):
        obs_size(nested)


def test_action_spaces():
    assert action_dims(spaces.Discrete(4)) == (4,) and action_dims(spaces.MultiDiscrete([3, 5])) == (3, 5)
    assert decode_actions(spaces.Discrete(3, start=2), np.array([0, 2])).tolist() == [2, 4]
    assert decode_actions(spaces.MultiDiscrete([3, 5], start=[1, 0]), np.array([[2, 4]])).tolist() == [[3, 4]]
    with pytest.raises(UnsupportedSpace, match=r"action space Box\(.*is continuous: it has no categorical"):
        action_dims(spaces.Box(-1, 1, (2,)))
    assert action_spec(spaces.Discrete(4)) == 4 and action_spec(spaces.MultiDiscrete([3, 5])) == (3, 5)
    assert action_spec(spaces.Box(-1, 1, (2, 3))) == BoxActions(6)
    with pytest.raises(UnsupportedSpace, match=r"action space Box\(0, 5, \(2,\), int64\) is an integer Box"):
        action_spec(spaces.Box(0, 5, (2,), dtype=np.int64))
    with pytest.raises(UnsupportedSpace, match=r"action space Text\(.*not supported"):
        action_dims(spaces.Text(3))


def test_box_actions_map_onto_the_bounds():
    """[-1, 1] -> [low, high] affinely where both bounds are finite, clipped; an unbounded component passes through;
    a half-bounded one is clipped to its bound; the result has the space's shape and dtype."""
    space = spaces.Box(np.array([-2.0, 0.0, -np.inf, -np.inf]), np.array([2.0, 1.0, np.inf, 3.0]), dtype=np.float32)
    a = np.array([[-1.0, 1.0, 7.5, 5.0], [0.0, 0.0, -9.0, -4.0], [3.0, -3.0, 0.25, 2.0]])
    out = decode_actions(space, a)
    assert out.dtype == np.float32 and out.shape == (3, 4)
    np.testing.assert_allclose(out, [[-2.0, 1.0, 7.5, 3.0], [0.0, 0.5, -9.0, -4.0], [2.0, 0.0, 0.25, 2.0]])
    square = spaces.Box(-1.0, 1.0, (2, 2), dtype=np.float64)
    assert decode_actions(square, np.arange(8.0).reshape(2, 4) / 10).shape == (2, 2, 2)


def test_diag_gaussian_matches_torch_normal():
    from memrl.models import DiagGaussian
    dist = DiagGaussian(3)
    torch.manual_seed(0)
    out = torch.randn(5, 7, 6)
    out[..., 3:] = out[..., 3:].clamp(-4, 1.5)  # log-stds inside the clamp range
    ref = torch.distributions.Normal(out[..., :3], out[..., 3:].exp())
    a = torch.randn(5, 7, 3)
    torch.testing.assert_close(dist.log_prob(out, a), ref.log_prob(a).sum(-1))
    torch.testing.assert_close(dist.entropy(out), ref.entropy().sum(-1))
    assert torch.equal(dist.mode(out), out[..., :3])
    # samples: reproducible from the generator, distributed as the normal (means and stds within 4 standard errors)
    big = torch.tensor([0.5, -1.0, 2.0, -0.3, 0.0, 0.7]).expand(40_000, 6)
    s1, lp1 = dist.sample(big, torch.Generator().manual_seed(3))
    s2, _ = dist.sample(big, torch.Generator().manual_seed(3))
    assert torch.equal(s1, s2) and s1.dtype == torch.float32
    torch.testing.assert_close(lp1, dist.log_prob(big, s1))
    std = torch.tensor([-0.3, 0.0, 0.7]).exp()
    assert ((s1.mean(0) - torch.tensor([0.5, -1.0, 2.0])).abs() < 4 * std / 200).all()
    assert ((s1.std(0) - std).abs() < 4 * std / 280).all()
    with pytest.raises(ValueError, match="size >= 1"):
        DiagGaussian(0)


def test_adapter_takes_box_actions_and_checks_them():
    env = GymVectorEnv("Pendulum-v1", num_envs=3)
    assert env.action_components == BoxActions(1)
    env.reset(seed=0)
    _, reward, *_ = env.step(torch.tensor([[0.0], [1.0], [-1.0]]))
    assert reward.shape == (3,) and torch.isfinite(reward).all()
    with pytest.raises(ValueError, match=r"actions must be a float tensor of shape \(3, 1\), got \(3, 1\) torch.int64"):
        env.step(torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"actions must be a float tensor of shape \(3, 1\), got \(3,\)"):
        env.step(torch.zeros(3))
    env.close()


@pytest.mark.slow
def test_box_actions_learn():
    """PPO with the Gaussian head on ReachTarget (act a = u shown in the obs): greedy return from -2.6 (a ~ 0 at
    init) to better than -0.5 in 25 updates of 256 env steps (measured 2026-12-02: -0.13 after 20)."""
    trainer = PPOTrainer(_gym_cfg("gym_helpers:ReachTarget", num_envs=16, update_epochs=4, memory=False,
                                  head_hidden=32, eval_interval=1000, lr=3e-3))
    before = trainer.evaluate(episodes=50, seed=7)["mean_return"]
    for _ in range(25):
        trainer.train_step()
    after = trainer.evaluate(episodes=50, seed=7)["mean_return"]
    trainer.close()
    assert before < -2.0 and after > -0.5, (before, after)


def test_adapter_refuses_unsupported_spaces_by_name():
    with pytest.raises(UnsupportedSpace, match=r"observation space Text\("):
        GymVectorEnv("gym_helpers:TextObs", num_envs=2)
    with pytest.raises(ValueError, match=r"env 'NoSuchEnv-v0' is not a registered gymnasium id"):
        GymVectorEnv("NoSuchEnv-v0")
    with pytest.raises(ValueError, match=r"env 'gym_helpers:Nope': cannot load class 'Nope' from module 'gym_helpers'"):
        GymVectorEnv("gym_helpers:Nope")


# ----------------------------------------------------------------------------------------------- the adapter
@pytest.mark.parametrize("name,steps", [("CartPole-v1", 60), ("gym_helpers:ChooseTwo", 12),
                                        ("gym_helpers:DictObs", 8)])
def test_adapter_equals_stepping_the_gymnasium_envs_directly(name, steps):
    """Same seeds and actions: the adapter's obs / rewards / flags / final obs equal single gymnasium envs stepped by
    hand (reset with seed + i, and reset without a seed where an episode ends: SAME_STEP autoreset)."""
    n = 4
    env = GymVectorEnv(name, num_envs=n)
    from memrl.envs.gym_vector import gym_env_factory
    singles = [gym_env_factory(name)() for _ in range(n)]
    space = singles[0].observation_space
    one = lambda o: encode_obs(space, gym.vector.utils.concatenate(space, [o], gym.vector.utils.create_empty_array(space, 1)))[0]  # noqa: E731,E501
    obs, _ = env.reset(seed=5)
    ref = [one(s.reset(seed=5 + i)[0]) for i, s in enumerate(singles)]
    assert np.array_equal(obs.numpy(), np.stack(ref))
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(steps):
        acts = np.stack([singles[0].action_space.sample() for _ in range(n)]) if name.endswith("ChooseTwo") \
            else rng.integers(0, 2, n)
        obs, reward, term, trunc, info = env.step(torch.as_tensor(acts))
        for i, s in enumerate(singles):
            o, r, te, tr, _ = s.step(acts[i])
            assert (reward[i].item(), bool(term[i]), bool(trunc[i])) == (r, te, tr)
            if te or tr:
                ended += 1
                assert np.array_equal(info["final_obs"][i].numpy(), one(o))
                o = s.reset()[0]
            else:
                assert not info["final_obs"][i].any()
            assert np.array_equal(obs[i].numpy(), one(o)), i
    assert ended > 0
    assert obs.dtype == reward.dtype == torch.float32 and term.dtype == trunc.dtype == torch.bool
    env.close()


def test_adapter_protocol_flags_and_bad_actions():
    env = GymVectorEnv("gym_helpers:ChooseTwo", num_envs=3)
    assert (env.truncates, env.capturable, env.checkpointable, env.reports_success) == (True, False, False, False)
    assert env.action_components == (3, 4) and env.single_observation_space.shape == (7,)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(torch.zeros(3, 2, dtype=torch.long))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"actions must be an integer tensor of shape \(3, 2\), got \(3,\)"):
        env.step(torch.zeros(3, dtype=torch.long))
    with pytest.raises(NotImplementedError, match="exact resume is promised only for torch-native envs"):
        env.state_dict()


def test_async_workers_equal_sync():
    outs = []
    for workers in (0, 1):
        env = make_env("CartPole-v1", num_envs=2, workers=workers)
        got = [env.reset(seed=3)[0]] + [env.step(torch.tensor([1, 0]))[0] for _ in range(15)]
        outs.append(torch.stack(got))
        assert type(env.vector_env).__name__ == ("AsyncVectorEnv" if workers else "SyncVectorEnv")
        env.close()
    assert torch.equal(*outs)


# ----------------------------------------------------------------------------------------------- MultiDiscrete head
def test_categoricals_one_and_many():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 7)
    one = Categoricals(7)
    a, logp = one.sample(logits, gen.clone_state())
    u = torch.rand(logits.shape, generator=gen.clone_state())
    expect = (logits - torch.log(-torch.log(u))).argmax(-1)  # Gumbel-max, as sample_actions always did
    assert a.shape == (6,) and torch.equal(a, expect)
    torch.testing.assert_close(logp, logits.log_softmax(-1).gather(-1, a[:, None])[:, 0])
    many = Categoricals((3, 4))
    acts, logp = many.sample(logits, gen)
    assert acts.shape == (6, 2) and (acts[:, 0] < 3).all() and (acts[:, 1] < 4).all()
    l3, l4 = logits[:, :3].log_softmax(-1), logits[:, 3:].log_softmax(-1)
    torch.testing.assert_close(logp, l3.gather(-1, acts[:, :1])[:, 0] + l4.gather(-1, acts[:, 1:])[:, 0])
    ent = -(l3.exp() * l3).sum(-1) - (l4.exp() * l4).sum(-1)
    torch.testing.assert_close(many.entropy(logits), ent)
    assert torch.equal(many.mode(logits), torch.stack([l3.argmax(-1), l4.argmax(-1)], -1))
    model = ActorCritic(5, (3, 4), controller="gru", d_model=8, mem_dim=8)
    assert model.policy[2].out_features == 7


# ----------------------------------------------------------------------------------------------- truncation
def test_gae_bootstraps_at_truncation_and_not_at_termination():
    rewards = torch.tensor([[1.0, 0.0, 1.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 0.4, 0.3, 0.2, 0.1]])
    truncated = torch.tensor([[False, True, False, False, False]])
    dones = torch.tensor([[False, True, False, True, False]])  # step 1 truncated, step 3 terminated
    final_values = torch.tensor([[0.0, 0.9, 0.0, 0.0, 0.0]])  # V(final obs) of the truncated episode
    g, lam = 0.9, 0.8
    adv, ret = gae(rewards, values, dones, torch.tensor([0.6]), g, lam, truncated=truncated, final_values=final_values)
    d4 = 2.0 + g * 0.6 - 0.1
    d3 = 0.0 - 0.2  # terminated: no bootstrap
    d2 = 1.0 + g * 0.2 - 0.3
    d1 = 0.0 + g * 0.9 - 0.4  # truncated: bootstrap with V(final obs), not with the next episode's value
    d0 = 1.0 + g * 0.4 - 0.5
    a1 = d1
    expect = torch.tensor([[d0 + g * lam * a1, a1, d2 + g * lam * d3, d3, d4]])
    torch.testing.assert_close(adv, expect)
    torch.testing.assert_close(ret, expect + values)
    plain, _ = gae(rewards, values, dones, torch.tensor([0.6]), g, lam)  # without the flags: every done is an end
    assert plain[0, 1].item() == pytest.approx(-0.4)
    with pytest.raises(ValueError, match="truncated and final_values together"):
        gae(rewards, values, dones, torch.tensor([0.6]), g, lam, truncated=truncated)


def test_rollout_records_the_value_of_the_final_obs_at_truncation():
    torch.manual_seed(0)
    env = GymVectorEnv("gym_helpers:ChooseTwo", num_envs=3)  # truncates every 5 steps
    model = ActorCritic(7, (3, 4), controller="gru", d_model=8, mem_dim=8, mem_slots=2, head_hidden=8)
    obs, _ = env.reset(seed=1)
    out = RolloutActor(model, env, torch.Generator().manual_seed(0)).run(obs, torch.ones(3, dtype=torch.bool),
                                                                         model.init_state(3), 7)
    assert out["truncated"][:, 4].all() and not out["truncated"][:, :4].any() and out["dones"][:, 4].all()
    assert out["actions"].shape == (3, 7, 2) and out["success"] is None
    # replay: the value of step 4's final obs from the state after step 4 (before the reset)
    ref = GymVectorEnv("gym_helpers:ChooseTwo", num_envs=3)
    o, _ = ref.reset(seed=1)
    state, reset = model.init_state(3), torch.ones(3, dtype=torch.bool)
    with torch.inference_mode():
        for t in range(5):
            step = model.act(o, state, reset)
            o, _, _, trunc, info = ref.step(out["actions"][:, t])
            state, reset = step.state, trunc
        expect = model.act(info["final_obs"], state, torch.zeros(3, dtype=torch.bool)).value
    torch.testing.assert_close(out["final_values"][:, 4], expect)
    assert (out["final_values"][:, :4] == 0).all()


# ----------------------------------------------------------------------------------------------- trainer, CLI
def _gym_cfg(env, **kw):
    base = dict(env=env, num_envs=8, num_minibatches=2, rollout_len=16, update_epochs=1, controller="gru", d_model=16,
                mem_slots=4, mem_dim=8, head_hidden=16, eval_episodes=6, eval_interval=1, device="cpu",
                progress=False, tensorboard=False)
    base.update(kw)
    return Config(**base)


@pytest.mark.parametrize("env", ["CartPole-v1", "gym_helpers:ChooseTwo", "gym_helpers:DictObs"])
def test_trainer_smoke_on_gymnasium_envs(env):
    trainer = PPOTrainer(_gym_cfg(env))
    assert not trainer.curriculum and trainer.rollout_len == 16
    for i in range(2):
        stats = trainer.train_step()
        assert trainer.env_steps == 8 * 16 * (i + 1)
        assert all(math.isfinite(stats[k]) for k in ("pg_loss", "v_loss", "entropy", "approx_kl"))
        assert math.isnan(stats["success"]) and "eval_success" not in stats and stats["gate_coef"] == 0.0
    again = evaluate_policy(trainer.model, {"workers": 0}, 6, trainer.cfg.seed * 100_003 + 2, "cpu", env_name=env)
    assert stats["eval_return"] == again["mean_return"] and again["success_rate"] is None
    assert trainer.last_eval == {**again, "horizon": trainer.cfg.horizon}
    trainer.close()


def test_episode_return_counts_whole_episodes_across_rollouts():
    """ChooseTwo episodes are 5 steps; rollouts of 3 steps cut them, and the return is still per whole episode."""
    trainer = PPOTrainer(_gym_cfg("gym_helpers:ChooseTwo", rollout_len=3, eval_interval=100))
    totals = []
    for _ in range(5):
        roll = trainer.collect_rollout()
        totals.append((float(roll["rewards"].sum()), int(roll["dones"].sum()), float(roll["ended_return"].sum())))
    rewards = sum(t[0] for t in totals[:5])  # 15 steps = 3 whole episodes per env
    assert sum(t[1] for t in totals) == 3 * 8 and sum(t[2] for t in totals) == pytest.approx(rewards)


def test_target_return_stops(tmp_path):
    trainer = PPOTrainer(_gym_cfg("gym_helpers:ChooseTwo", target_return=-1.0))
    trainer.train_step()
    assert trainer.solved


def test_cli_module_class_env_and_resume_says_it_is_not_exact(tmp_path, capsys):
    from memrl.cli import main
    run = tmp_path / "run"
    flags = ["--env", "gym_helpers:DictObs", "--d-model", "16", "--no-progress", "--eval-interval", "2",
             "--eval-episodes", "10", "--rollout-len", "16", "--update-epochs", "1"]
    assert main(["train", "--out", str(run), "--total-steps", "512", *flags]) == 0
    out = capsys.readouterr().out
    assert "memrl train: gym_helpers:DictObs (gymnasium, 10 obs)" in out
    assert "16 envs, rollouts of 16 steps" in out  # GYMNASIUM_DEFAULTS' num_envs
    assert "update 2, 512 env steps" in out and "eval mean return" in out
    assert main(["train", "--resume", str(run), "--total-steps", "1024", *flags]) == 0
    out = capsys.readouterr().out
    assert ("resume is not exact: the state of gymnasium env gym_helpers:DictObs cannot be saved, so its envs start "
            "fresh episodes (re-seeded)") in out
    assert "done: 1024 env steps" in out
    assert main(["eval", str(run / "checkpoint.pt"), "--episodes", "5", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("gym_helpers:DictObs: mean return ")


def test_cli_refuses_env_workers_for_torch_native(tmp_path, capsys):
    from memrl.cli import main
    assert main(["train", "--out", str(tmp_path / "r"), "--env-workers", "2"]) == 2
    assert capsys.readouterr().err == ("memrl train: error: --env-workers must be 0 for the torch-native env "
                                       "DelayedCue (batched in one process), got 2\n")


@pytest.mark.slow
def test_cartpole_learns(tmp_path):
    """memrl train --env CartPole-v1 with the gymnasium defaults: far above random (~22) in 12k env steps (the
    60k-step CLI run is in docs/memrl.md)."""
    from memrl.config import GYMNASIUM_DEFAULTS
    trainer = PPOTrainer(Config(env="CartPole-v1", total_steps=12_288, device="cpu", progress=False,
                                tensorboard=False, eval_interval=1000, **GYMNASIUM_DEFAULTS))
    while trainer.env_steps < trainer.cfg.total_steps:
        trainer.train_step()
    res = trainer.evaluate(episodes=50, seed=7)
    trainer.close()
    print("CartPole-v1 after", trainer.env_steps, "env steps:", res)
    assert res["mean_return"] >= 150, res


def test_ended_return_by_hand():
    """_ended_return sums each env's episodes that end in the rollout (the part begun earlier included) and carries
    the open episode's rewards to the next rollout."""
    trainer = PPOTrainer(_gym_cfg("gym_helpers:ChooseTwo", rollout_len=3, eval_interval=100))
    trainer.running_return = torch.tensor([10.0, 0.0, 5.0] + [0.0] * (trainer.cfg.num_envs - 3))
    rewards = torch.zeros(trainer.cfg.num_envs, 4)
    dones = torch.zeros(trainer.cfg.num_envs, 4, dtype=torch.bool)
    rewards[:3] = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    dones[0, 1] = True  # env 0: 10 + 1 + 2 ends; 3 + 4 stays open
    dones[1, 0] = dones[1, 3] = True  # env 1: two episodes end: 1, then 1 + 1 + 1
    ended = trainer._ended_return(rewards, dones)  # env 2: nothing ends, 5 + 8 stays open
    assert ended[:3].tolist() == [13.0, 4.0, 0.0]
    assert trainer.running_return[:3].tolist() == [7.0, 0.0, 13.0]
