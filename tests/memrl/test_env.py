"""DelayedCue semantics: cue, query flag, reward, same-step autoreset, seeding, spaces, gymnasium."""
import pytest
import torch

from memrl.envs import DelayedCue


def run_episode(env, actions_fn):
    obs, _ = env.reset(seed=3)
    seen = [obs]
    for t in range(env.horizon):
        obs, rew, term, trunc, info = env.step(actions_fn(t))
        seen.append(obs)
    return seen, rew, term, trunc, info


def test_cue_blank_query_layout():
    env = DelayedCue(num_envs=64, horizon=7, num_cues=3)
    obs, info = env.reset(seed=0)
    assert obs.shape == (64, 4) and obs.dtype == torch.float32
    cue = env.cue.clone()
    assert torch.equal(obs[:, :3], torch.nn.functional.one_hot(cue, 3).float())
    assert torch.all(obs[:, 3] == 0)
    for t in range(1, 7):
        obs, rew, term, trunc, _ = env.step(torch.zeros(64, dtype=torch.long))
        assert torch.all(rew == 0) and not term.any() and not trunc.any()
        assert torch.all(obs[:, :3] == 0)
        assert torch.all(obs[:, 3] == (1.0 if t == 6 else 0.0))


def test_reward_only_for_correct_answer_and_autoreset():
    env = DelayedCue(num_envs=256, horizon=5, num_cues=2)
    env.reset(seed=1)
    cue = env.cue.clone()
    for _ in range(4):
        env.step(torch.zeros(256, dtype=torch.long))
    guess = torch.where(torch.arange(256) % 2 == 0, cue, 1 - cue)  # half right, half wrong
    obs, rew, term, trunc, info = env.step(guess)
    assert torch.all(term) and not trunc.any()
    assert torch.equal(rew, (guess == cue).float())
    assert torch.equal(info["success"], guess == cue)
    assert torch.all(info["final_obs"] == 0)
    # same-step autoreset: the returned obs is the new episode's cue
    assert torch.all(env.t == 0)
    assert torch.equal(obs[:, :2], torch.nn.functional.one_hot(env.cue, 2).float())
    assert 0.3 < env.cue.float().mean() < 0.7


def test_actions_off_query_have_no_effect():
    env = DelayedCue(num_envs=32, horizon=4)
    env.reset(seed=2)
    cue = env.cue.clone()
    for _ in range(3):
        _, rew, _, _, _ = env.step(torch.randint(0, 2, (32,)))
        assert torch.all(rew == 0)
    _, rew, _, _, _ = env.step(cue)
    assert torch.all(rew == 1)


def test_seeding_and_state_dict():
    a, b = DelayedCue(num_envs=50, horizon=3, noise=0.5), DelayedCue(num_envs=50, horizon=3, noise=0.5)
    oa, _ = a.reset(seed=11)
    ob, _ = b.reset(seed=11)
    assert torch.equal(oa, ob)
    c = DelayedCue(num_envs=50, horizon=3, noise=0.5)
    oc, _ = c.reset(seed=12)
    assert not torch.equal(a.cue, c.cue)
    saved = a.state_dict()
    xs = [a.step(torch.zeros(50, dtype=torch.long))[0] for _ in range(5)]
    a.load_state_dict(saved)
    ys = [a.step(torch.zeros(50, dtype=torch.long))[0] for _ in range(5)]
    assert all(torch.equal(x, y) for x, y in zip(xs, ys))


def test_noise_only_on_blanks():
    env = DelayedCue(num_envs=100, horizon=4, noise=1.0)
    obs, _ = env.reset(seed=0)
    assert torch.equal(obs[:, :2], torch.nn.functional.one_hot(env.cue, 2).float())
    obs, *_ = env.step(torch.zeros(100, dtype=torch.long))
    assert obs[:, :2].std() > 0.5 and torch.all(obs[:, 2] == 0)


def test_spaces_and_bad_input():
    env = DelayedCue(num_envs=4, horizon=10, num_cues=3)
    assert env.single_observation_space.shape == (4,) and env.single_action_space.n == 3
    with pytest.raises(RuntimeError, match="reset"):
        env.step(torch.zeros(4, dtype=torch.long))
    env.reset()
    with pytest.raises(ValueError, match="actions"):
        env.step(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="actions"):
        env.step(torch.zeros(4))
    with pytest.raises(ValueError, match="horizon"):
        DelayedCue(horizon=1)


def test_gymnasium_registration():
    gym = pytest.importorskip("gymnasium")
    import memrl.envs  # noqa: F401  registers on import
    env = gym.make("memrl/DelayedCue-v0", horizon=5)
    obs, _ = env.reset(seed=0)
    cue = int(obs[:2].argmax())
    total = 0.0
    for t in range(5):
        obs, r, term, trunc, info = env.step(cue)
        total += r
        assert term == (t == 4)
    assert total == 1.0 and info["success"]


def test_shortened_horizon_ends_running_episodes():
    """set_horizon below a running episode's step counter: that episode queries and ends on its next step."""
    import torch
    from memrl.envs import DelayedCue
    env = DelayedCue(num_envs=3, horizon=50)
    env.reset(seed=0)
    for _ in range(30):
        env.step(torch.zeros(3, dtype=torch.long))
    env.set_horizon(10)
    obs, reward, terminated, truncated, info = env.step(env.cue.clone())
    assert terminated.all() and (reward == 1).all()
    assert (env.t == 0).all()


def test_boolean_actions_are_refused():
    import pytest
    import torch
    from memrl.envs import DelayedCue
    env = DelayedCue(num_envs=2, horizon=5)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"actions must be an integer tensor of shape \(2,\)"):
        env.step(torch.ones(2, dtype=torch.bool))
