"""Memory tasks beyond DelayedCue-2: passive T-maze, RepeatFirst, multi-cue DelayedCue.

Each env is checked for its observation layout step by step, reward only for the right action at the
decision step, same-step autoreset, seeding, exact resume from state_dict, batched rows against a plain
per-env Python simulation (with envs at different phases), chance level of a random policy, bad arguments,
and the single-env gymnasium versions.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from memrl.envs import DelayedCue, make_env
from memrl.envs.repeat_first import RepeatFirst
from memrl.envs.tmaze import TMaze

FACTORIES = {
    "tmaze": lambda n, h, **kw: TMaze(num_envs=n, horizon=h, **kw),
    "repeat_first": lambda n, h, **kw: RepeatFirst(num_envs=n, horizon=h, **kw),
    "delayed_cue8": lambda n, h, **kw: DelayedCue(num_envs=n, horizon=h, num_cues=8, **kw),
}


def zeros(n):
    return torch.zeros(n, dtype=torch.long)


# ----------------------------------------------------------------------------------------------- T-maze
def test_tmaze_layout_every_step():
    h = 6
    env = TMaze(num_envs=64, horizon=h)
    assert env.obs_dim == 5 and env.corridor_length == 4
    obs, info = env.reset(seed=0)
    assert obs.shape == (64, 5) and obs.dtype == torch.float32 and info == {}
    cue = env.cue.clone()
    assert 10 < int(cue.sum()) < 54  # both cues occur
    for t in range(h):
        expected = torch.zeros(64, 5)
        if t == 0:
            expected[:, :2] = F.one_hot(cue, 2).float()
        expected[:, 2] = float(0 < t < h - 1)
        expected[:, 3] = t / (h - 1)
        expected[:, 4] = float(t == h - 1)
        torch.testing.assert_close(obs, expected, rtol=0, atol=1e-7)
        assert torch.equal(env.cue, cue)
        if t < h - 1:
            obs, rew, term, trunc, _ = env.step(torch.randint(0, 2, (64,)))
            assert torch.all(rew == 0) and not term.any() and not trunc.any()


def test_tmaze_reward_at_junction_and_autoreset():
    env = TMaze(num_envs=256, horizon=4)
    env.reset(seed=1)
    cue = env.cue.clone()
    for _ in range(3):
        env.step(1 - cue)  # wrong turns before the junction cost nothing (no penalty by default)
    guess = torch.where(torch.arange(256) % 2 == 0, cue, 1 - cue)  # half right, half wrong
    obs, rew, term, trunc, info = env.step(guess)
    assert torch.all(term) and not trunc.any()
    assert torch.equal(rew, (guess == cue).float()) and torch.equal(info["success"], guess == cue)
    assert torch.all(info["final_obs"] == 0) and info["final_obs"].shape == (256, 5)
    assert torch.all(env.t == 0)  # same-step autoreset: obs is the first obs of the next episode
    assert torch.equal(obs[:, :2], F.one_hot(env.cue, 2).float()) and torch.all(obs[:, 2:] == 0)
    assert not torch.equal(env.cue, cue)


def test_tmaze_step_penalty_and_shortest_maze():
    env = TMaze(num_envs=8, horizon=5, step_penalty=0.01)
    env.reset(seed=2)
    cue = env.cue.clone()
    total = torch.zeros(8)
    for t in range(5):
        _, rew, term, _, info = env.step(cue)
        assert torch.all(rew == (1.0 if t == 4 else -0.01)) and torch.all(term == (t == 4))
        total += rew
    torch.testing.assert_close(total, torch.full((8,), 1 - 4 * 0.01))
    assert torch.all(info["success"])
    short = TMaze(num_envs=4, horizon=2)  # corridor of length 0: cue, then junction
    obs, _ = short.reset(seed=0)
    assert torch.all(obs[:, 2:] == torch.tensor([0.0, 0.0, 0.0]))
    cue = short.cue.clone()
    obs, rew, term, _, _ = short.step(1 - cue)
    assert torch.all(obs == torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0])) and not term.any() and torch.all(rew == 0)
    obs, rew, term, _, _ = short.step(cue)
    assert torch.all(term) and torch.all(rew == 1) and torch.all(short.t == 0)


def test_tmaze_noise_only_on_cue_channels_after_start():
    env = TMaze(num_envs=200, horizon=5, noise=1.0)
    obs, _ = env.reset(seed=0)
    assert torch.equal(obs[:, :2], F.one_hot(env.cue, 2).float())
    obs, *_ = env.step(zeros(200))
    assert 0.8 < float(obs[:, :2].std()) < 1.2
    assert torch.all(obs[:, 2] == 1) and torch.all(obs[:, 3] == 0.25) and torch.all(obs[:, 4] == 0)


# ----------------------------------------------------------------------------------------------- RepeatFirst
def test_repeat_first_layout_and_reward():
    n, h, k = 512, 7, 4
    env = RepeatFirst(num_envs=n, horizon=h, num_symbols=k)
    assert env.obs_dim == 5 and env.single_action_space.n == 4
    obs, _ = env.reset(seed=0)
    first = obs[:, :k].argmax(-1)
    assert torch.equal(first, env.first)
    shown = [first]
    for t in range(h):
        assert torch.equal(obs[:, :k], F.one_hot(env.symbol, k).float())  # exactly one symbol, no noise
        assert torch.all(obs[:, k] == float(t == h - 1))
        if t < h - 1:
            obs, rew, term, _, _ = env.step(env.symbol)  # repeating the current symbol earns nothing
            assert torch.all(rew == 0) and not term.any()
            shown.append(env.symbol.clone())
    shown = torch.stack(shown, 1)  # (n, h)
    counts = torch.bincount(shown.flatten(), minlength=k).float() / shown.numel()
    assert torch.all((counts - 1 / k).abs() < 0.02)  # uniform symbols
    assert (shown[:, -1] != first).float().mean() > 0.6  # the last symbol is a distractor, not the answer
    guess = torch.where(torch.arange(n) % 2 == 0, first, (first + 1) % k)
    obs, rew, term, trunc, info = env.step(guess)
    assert torch.all(term) and not trunc.any()
    assert torch.equal(rew, (guess == first).float()) and torch.equal(info["success"], guess == first)
    assert torch.all(info["final_obs"] == 0)
    assert torch.all(env.t == 0) and torch.equal(env.first, obs[:, :k].argmax(-1)) and torch.all(obs[:, k] == 0)


def test_repeat_first_noise_keeps_first_symbol_clean():
    env = RepeatFirst(num_envs=300, horizon=4, num_symbols=3, noise=0.5)
    obs, _ = env.reset(seed=4)
    assert torch.equal(obs[:, :3], F.one_hot(env.first, 3).float())
    obs, *_ = env.step(zeros(300))
    resid = obs[:, :3] - F.one_hot(env.symbol, 3).float()
    assert 0.4 < float(resid.std()) < 0.6 and torch.all(obs[:, 3] == 0)


# ----------------------------------------------------------------------------------------------- multi-cue
def test_delayed_cue_eight_cues():
    n, h = 4096, 3
    env = DelayedCue(num_envs=n, horizon=h, num_cues=8)
    assert env.single_action_space.n == 8 and env.single_observation_space.shape == (9,)
    obs, _ = env.reset(seed=5)
    cue = env.cue.clone()
    assert torch.equal(obs[:, :8], F.one_hot(cue, 8).float())
    freq = torch.bincount(cue, minlength=8).float() / n
    assert torch.all((freq - 1 / 8).abs() < 0.03)
    gen = torch.Generator().manual_seed(0)
    for _ in range(h - 1):
        env.step(torch.randint(0, 8, (n,), generator=gen))
    _, rew, term, _, _ = env.step(torch.randint(0, 8, (n,), generator=gen))  # a random policy
    assert torch.all(term)
    sigma = math.sqrt(1 / 8 * 7 / 8 / n)
    assert abs(float(rew.mean()) - 1 / 8) < 4 * sigma
    cue = env.cue.clone()
    for _ in range(h):
        _, rew, _, _, _ = env.step(cue)  # the cue-following policy always wins
    assert torch.all(rew == 1)


@pytest.mark.parametrize("name,chance", [("tmaze", 1 / 2), ("repeat_first", 1 / 4)])
def test_random_policy_is_at_chance(name, chance):
    n, h = 4096, 5
    env = FACTORIES[name](n, h)
    env.reset(seed=6)
    gen = torch.Generator().manual_seed(1)
    returns = torch.zeros(n)
    for _ in range(h):
        _, rew, term, _, _ = env.step(torch.randint(0, env.single_action_space.n, (n,), generator=gen))
        returns += rew
    assert torch.all(term)
    assert abs(float(returns.mean()) - chance) < 4 * math.sqrt(chance * (1 - chance) / n)


# ----------------------------------------------------------------------------------------------- batched vs per env
def _reference_tmaze(t, cue, h, penalty, obs_after, actions):
    """Plain Python, one env: expected rewards/terminations given the start state and the actions; the cue of
    each new episode is read off the first obs it shows (the obs layout is checked on the way)."""
    out = []
    for s, a in enumerate(actions):
        if t >= h - 1:
            out.append((float(a == cue), True))
            t, new = 0, obs_after[s]
            assert sorted(new[:2]) == [0.0, 1.0]
            cue = new.index(1.0)
        else:
            out.append((-penalty, False))
            t += 1
        o = obs_after[s]
        assert o[2:] == [float(0 < t < h - 1), pytest.approx(t / (h - 1)), float(t == h - 1)]
        assert t == 0 or o[:2] == [0.0, 0.0]
    return out, t, cue


def _reference_repeat_first(t, first, h, k, obs_after, actions):
    out = []
    for s, a in enumerate(actions):
        o = obs_after[s]
        assert sorted(o[:k]) == [0.0] * (k - 1) + [1.0]
        if t >= h - 1:
            out.append((float(a == first), True))
            t, first = 0, o.index(1.0)
        else:
            out.append((0.0, False))
            t += 1
        assert o[k] == float(t == h - 1)
    return out, t, first


@pytest.mark.parametrize("name", ["tmaze", "repeat_first"])
def test_batched_rows_match_single_env_simulation(name):
    n, h, steps = 24, 5, 13
    env = FACTORIES[name](n, h, **({"step_penalty": 0.125} if name == "tmaze" else {}))
    env.reset(seed=7)
    state = env.state_dict()
    state["t"] = torch.arange(n) % h  # envs at every phase of their episodes
    env.load_state_dict(state)
    start = {k: v.clone() for k, v in env.state_dict().items() if torch.is_tensor(v)}
    gen = torch.Generator().manual_seed(2)
    acts, obs_l, rew_l, term_l, succ_l = [], [], [], [], []
    for _ in range(steps):
        a = torch.randint(0, env.single_action_space.n, (n,), generator=gen)
        obs, rew, term, _, info = env.step(a)
        acts.append(a), obs_l.append(obs), rew_l.append(rew), term_l.append(term), succ_l.append(info["success"])
    acts, obs_l, rew_l = torch.stack(acts, 1), torch.stack(obs_l, 1), torch.stack(rew_l, 1)  # (n, steps[, O])
    term_l, succ_l = torch.stack(term_l, 1), torch.stack(succ_l, 1)
    for i in range(n):
        a_i, o_i = acts[i].tolist(), obs_l[i].tolist()
        if name == "tmaze":
            ref, t_end, c_end = _reference_tmaze(int(start["t"][i]), int(start["cue"][i]), h, 0.125, o_i, a_i)
            assert (t_end, c_end) == (int(env.t[i]), int(env.cue[i]))
        else:
            ref, t_end, c_end = _reference_repeat_first(int(start["t"][i]), int(start["first"][i]), h, 4, o_i, a_i)
            assert (t_end, c_end) == (int(env.t[i]), int(env.first[i]))
        assert rew_l[i].tolist() == [r for r, _ in ref]
        assert term_l[i].tolist() == [d for _, d in ref]
        assert succ_l[i].tolist() == [d and r == 1.0 for r, d in ref]


# ----------------------------------------------------------------------------------------------- seeding, resume
@pytest.mark.parametrize("name", list(FACTORIES))
def test_seeding_and_exact_resume(name):
    def rollout(env, steps):
        gen = torch.Generator().manual_seed(3)
        out = []
        for _ in range(steps):
            obs, rew, term, trunc, info = env.step(torch.randint(0, env.single_action_space.n, (16,), generator=gen))
            out.append((obs, rew, term, info["success"]))
        return out

    def same(xs, ys):
        return all(torch.equal(a, b) for x, y in zip(xs, ys) for a, b in zip(x, y))

    a, b, c = (FACTORIES[name](16, 4, noise=0.5) for _ in range(3))
    oa, _ = a.reset(seed=11)
    ob, _ = b.reset(seed=11)
    oc, _ = c.reset(seed=12)
    assert torch.equal(oa, ob) and not torch.equal(oa, oc)
    assert same(rollout(a, 6), rollout(b, 6))
    saved = a.state_dict()
    first = rollout(a, 9)
    fresh = FACTORIES[name](16, 4, noise=0.5)  # resume into a new object, as a checkpoint load does
    fresh.load_state_dict(saved)
    assert same(first, rollout(fresh, 9))
    a.load_state_dict(saved)
    assert same(first, rollout(a, 9))


@pytest.mark.parametrize("name", ["tmaze", "repeat_first"])
def test_set_horizon(name):
    env = FACTORIES[name](4, 6)
    env.reset(seed=0)
    for _ in range(4):
        env.step(zeros(4))
    env.set_horizon(3)  # t = 4 is past the new decision step: it decides at the next step
    _, _, term, _, _ = env.step(zeros(4))
    assert torch.all(term)
    assert env.state_dict()["horizon"] == 3
    for _ in range(2):
        _, _, term, _, _ = env.step(zeros(4))
        assert not term.any()
    _, _, term, _, _ = env.step(zeros(4))
    assert torch.all(term)
    with pytest.raises(ValueError, match="horizon"):
        env.set_horizon(1)


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("cls,kwargs,match", [
    (TMaze, {"horizon": 1}, "horizon"), (TMaze, {"num_envs": 0}, "num_envs"), (TMaze, {"horizon": 2.5}, "horizon"),
    (TMaze, {"noise": -0.1}, "noise"), (TMaze, {"step_penalty": float("nan")}, "step_penalty"),
    (RepeatFirst, {"horizon": 1}, "horizon"), (RepeatFirst, {"num_symbols": 1}, "num_symbols"),
    (RepeatFirst, {"num_envs": -3}, "num_envs"), (RepeatFirst, {"noise": float("inf")}, "noise"),
])
def test_bad_constructor_arguments(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize("name", ["tmaze", "repeat_first"])
def test_bad_actions_and_state(name):
    env = FACTORIES[name](4, 5)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(zeros(4))
    env.reset(seed=0)
    for bad in (zeros(5), torch.zeros(4), torch.zeros(4, dtype=torch.bool), zeros(4).view(2, 2)):
        with pytest.raises(ValueError, match=r"actions .*\(4,\)"):
            env.step(bad)
    env.step([0, 1, 0, 1])  # array-likes are accepted
    state = env.state_dict()
    state["t"] = torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="t"):
        env.load_state_dict(state)


# ----------------------------------------------------------------------------------------------- gymnasium, make_env
@pytest.mark.filterwarnings("ignore:.*Box observation space:UserWarning")  # unbounded noise channels, on purpose
@pytest.mark.parametrize("name", ["TMazeEnv", "RepeatFirstEnv"])
def test_single_gymnasium_env(name):
    pytest.importorskip("gymnasium")
    from gymnasium.utils.env_checker import check_env

    from memrl.envs import gym_tasks
    env = getattr(gym_tasks, name)(horizon=5)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    answer = int(obs[:-1].argmax()) if name == "RepeatFirstEnv" else int(obs[:2].argmax())
    total = 0.0
    for t in range(5):
        obs, r, term, trunc, info = env.step(answer)
        total += r
        assert term == (t == 4) and not trunc
    assert total == 1.0 and info["success"] and (obs == 0).all()


@pytest.mark.parametrize("env_id", ["memrl/TMaze-v0", "memrl/RepeatFirst-v0"])
def test_gymnasium_registration(env_id):
    gym = pytest.importorskip("gymnasium")  # the optional dependency (extra "rl")
    import memrl.envs  # noqa: F401  registers on import
    assert env_id in gym.registry
    env = gym.make(env_id, horizon=3)
    obs, _ = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape
    for t in range(3):
        *_, term, trunc, info = env.step(0)
        assert term == (t == 2) and not trunc
    assert isinstance(info["success"], bool)


@pytest.mark.parametrize("name,cls", [("TMaze", TMaze), ("RepeatFirst", RepeatFirst)])
def test_make_env_and_trainer_smoke(name, cls, tmp_path):
    """The trainer builds envs with make_env(name, num_envs, device, horizon, num_cues, noise), trains them and
    logs the evaluation of its model on fresh episodes (seeded by seed * 100_003 + update)."""
    from memrl.config import Config
    from memrl.ppo import PPOTrainer, evaluate_policy
    cues = 4 if name == "RepeatFirst" else 2
    env = make_env(name, num_envs=3, device="cpu", horizon=6, num_cues=cues, noise=0.0)
    assert isinstance(env, cls) and env.num_envs == 3 and env.horizon == 6
    cfg = Config(env=name, horizon=6, num_cues=cues, num_envs=8, num_minibatches=2,
                 update_epochs=1, d_model=16, mem_slots=4, mem_dim=8, head_hidden=16, curriculum_start=0,
                 eval_episodes=16, eval_interval=1, device="cpu", progress=False, tensorboard=False,
                 out=str(tmp_path))
    trainer = PPOTrainer(cfg, run_dir=str(tmp_path))
    stats = trainer.train_step()
    assert trainer.env_steps == 48 and math.isfinite(stats["pg_loss"])
    again = evaluate_policy(trainer.model, dict(horizon=6, num_cues=cues, noise=0.0), 16, cfg.seed * 100_003 + 1,
                            "cpu", env_name=name)
    assert again["episodes"] == 16 and stats["eval_success"] == again["success_rate"]
    assert stats["eval_horizon"] == 6 and trainer.last_eval == {**again, "horizon": 6}


@pytest.mark.parametrize("name", ["DelayedCue", "TMaze", "RepeatFirst"])
def test_load_state_dict_refuses_another_batch(name):
    """A checkpoint of another num_envs is refused with the key and both shapes, before anything changes."""
    small, big = make_env(name, num_envs=4, horizon=5), make_env(name, num_envs=6, horizon=5)
    small.reset(seed=0)
    big.reset(seed=1)
    before = big.state_dict()
    with pytest.raises(ValueError, match=r"state\['t'\] must have shape \(6,\), got \(4,\)"):
        big.load_state_dict(small.state_dict())
    assert all(torch.equal(v, before[k]) for k, v in big.state_dict().items() if torch.is_tensor(v))
