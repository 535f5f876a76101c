"""The POPGym ports' own semantics (no popgym package needed), their routing in the env registry, and training on
them. Equality with the popgym package itself: test_popgym_equivalence.py."""
import math

import gymnasium as gym
import pytest
import torch

from memrl.config import Config, defaults_for
from memrl.envs import POPGYM_PORTS, check_env_name, make_env
from memrl.envs.popgym import make_port
from memrl.envs.popgym.cards import color, rank, suit
from popgym_sync import balance_cartpole


def _play(env, policy, steps):
    """Step `env` `steps` times with actions policy(env) -> (rewards (steps, N), terminated (steps, N))."""
    rewards, terms = [], []
    for _ in range(steps):
        _, r, term, _, _ = env.step(policy(env))
        rewards.append(r)
        terms.append(term)
    return torch.stack(rewards), torch.stack(terms)


def test_card_kinds_follow_popgyms_numbering():
    cards = torch.tensor([0, 1, 5, 51, 52, 103])
    assert suit(cards).tolist() == [0, 1, 1, 3, 0, 3]
    assert color(cards).tolist() == [0, 1, 1, 1, 0, 1]
    assert rank(cards).tolist() == [0, 0, 1, 12, 0, 12]


def test_decks_are_permutations():
    env = make_env("popgym-RepeatFirstMedium-v0", num_envs=4)
    env.reset(seed=3)
    assert torch.equal(env.cards.sort(dim=1).values, torch.arange(416).expand(4, 416))
    assert not torch.equal(env.cards[0], env.cards[1])


def test_repeat_first_rewards_the_first_suit():
    env = make_env("popgym-RepeatFirstEasy-v0", num_envs=4)
    obs, _ = env.reset(seed=0)
    first = suit(env.cards[:, 0])
    assert torch.equal(obs.argmax(1), first)
    right, term = _play(env, lambda e: first, 51)
    assert torch.allclose(right, torch.full_like(right, 1 / 51))
    assert term[-1].all() and not term[:-1].any()
    assert torch.allclose(right.sum(0), torch.ones(4))
    env.reset(seed=0)
    wrong, _ = _play(env, lambda e: (first + 1) % 4, 51)
    assert torch.allclose(wrong.sum(0), -torch.ones(4))


def test_repeat_previous_rewards_the_card_k_minus_1_back():
    env = make_env("popgym-RepeatPreviousEasy-v0", num_envs=2)  # k = 4
    obs, _ = env.reset(seed=1)
    shown = [obs.argmax(1)]

    def policy(e):  # the suit shown 3 steps before the current card (hand[-4])
        return shown[-4] if len(shown) >= 4 else torch.zeros(2, dtype=torch.long)
    rewards = []
    for _ in range(51):
        obs, r, term, _, info = env.step(policy(env))
        shown.append(torch.where(term.unsqueeze(1), info["final_obs"], obs).argmax(1))
        rewards.append(r)
    rewards = torch.stack(rewards)
    assert torch.equal(rewards[:3], torch.zeros(3, 2))  # fewer than k cards in hand: nothing
    assert torch.allclose(rewards[3:], torch.full((48, 2), 1 / 48))
    assert term.all()


def test_autoencode_watch_then_play_in_reverse():
    env = make_env("popgym-AutoencodeEasy-v0", num_envs=2)
    obs, _ = env.reset(seed=2)
    seen, modes = [obs[:, 2:].argmax(1)], [obs[:, :2].argmax(1)]
    rewards = []
    for _ in range(51):  # WATCH: actions earn nothing
        obs, r, _, _, _ = env.step(torch.zeros(2, dtype=torch.long))
        seen.append(obs[:, 2:].argmax(1))
        modes.append(obs[:, :2].argmax(1))
        rewards.append(r)
    assert torch.equal(torch.stack(rewards), torch.zeros(51, 2))
    assert all((m == 1).all() for m in modes[:-1]) and (modes[-1] == 0).all()  # last card shown with PLAY
    assert torch.equal(torch.stack(seen), suit(env.cards).T)
    for i in range(52):  # PLAY: the suits in reverse order
        obs, r, term, _, info = env.step(seen[51 - i])
        assert torch.allclose(r, torch.full((2,), 1 / 52))
        assert bool(term.all()) == (i == 51)
    assert torch.equal(info["final_obs"], torch.tensor([[1.0, 0, 1, 0, 0, 0]] * 2))  # (PLAY, suit 0)
    assert torch.equal(obs[:, :2], torch.tensor([[0.0, 1]] * 2))  # next episode: WATCH


@pytest.mark.parametrize("level, kinds, actions", [("Easy", 2, 27), ("Medium", 4, 27), ("Hard", 13, 17)])
def test_count_recall_counts_the_queried_kind(level, kinds, actions):
    env = make_env(f"popgym-CountRecall{level}-v0", num_envs=3)
    assert env.single_action_space.n == actions and env.obs_dim == 2 * kinds
    obs, _ = env.reset(seed=4)
    tally = torch.zeros(3, kinds, dtype=torch.long)
    total = torch.zeros(3)
    for step in range(env.episode_length):
        value, query = obs[:, :kinds].argmax(1), obs[:, kinds:].argmax(1)
        tally[torch.arange(3), value] += 1
        obs, r, term, _, _ = env.step(tally[torch.arange(3), query])
        total += r
    assert term.all()
    assert torch.allclose(total, torch.ones(3))


def test_position_only_cartpole_observes_x_and_theta_with_gymnasiums_physics():
    env = make_env("popgym-PositionOnlyCartPoleEasy-v0", num_envs=4)
    ref = gym.make("CartPole-v1").unwrapped
    obs, _ = env.reset(seed=5)
    gen = torch.Generator().manual_seed(0)
    for _ in range(8):
        before = env.state.clone()
        assert torch.equal(obs, before[:, [0, 2]].float())
        actions = torch.randint(0, 2, (4,), generator=gen)
        obs, r, term, trunc, info = env.step(actions)
        for i in range(4):
            ref.reset()
            ref.state = before[i].numpy().copy()
            full, _, ref_term, _, _ = ref.step(int(actions[i]))
            after = info["final_obs"][i] if term[i] else obs[i]
            assert torch.equal(after, torch.from_numpy(full[[0, 2]]))
            assert bool(term[i]) == ref_term
        assert torch.allclose(r, torch.full((4,), 1 / 200))


def test_position_only_cartpole_truncates_at_max_episode_length():
    env = make_env("popgym-PositionOnlyCartPoleMedium-v0", num_envs=2)
    env.reset(seed=0)
    for step in range(400):
        _, r, term, trunc, _ = env.step(balance_cartpole(env.state))
        assert not term.any()
        assert bool(trunc.all()) == (step == 399)
    assert torch.equal(env.steps, torch.zeros(2, dtype=torch.long))


def test_noisy_cartpole_noise_has_sigma_and_stays_in_the_box():
    env = make_env("popgym-NoisyPositionOnlyCartPoleHard-v0", num_envs=4096)
    obs, _ = env.reset(seed=6)
    noise = obs - env.state[:, [0, 2]].float()
    assert abs(float(noise[:, 0].std()) - 0.3) < 0.02  # x: |x| < 0.05, far from the 4.8 clip
    assert float(obs[:, 1].abs().max()) <= 2 * 12 * 2 * math.pi / 360 + 1e-6  # theta clipped to +-0.419


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"k must be < the number of cards 52 \* num_decks = 52, got 52"):
        from memrl.envs.popgym.repeat_previous import RepeatPrevious
        RepeatPrevious(num_decks=1, k=52)
    with pytest.raises(ValueError, match=r"deck_type must be one of suits, colors, ranks, got 'jokers'"):
        from memrl.envs.popgym.count_recall import CountRecall
        CountRecall(deck_type="jokers")
    with pytest.raises(ValueError, match=r"num_envs must be an integer >= 1, got 0"):
        make_env("popgym-RepeatFirstEasy-v0", num_envs=0)
    with pytest.raises(ValueError, match=r"workers must be 0 for the torch-native env 'popgym-AutoencodeEasy-v0'"):
        make_env("popgym-AutoencodeEasy-v0", num_envs=2, workers=1)
    with pytest.raises(ValueError, match=r"env 'popgym-Nope-v0' has no torch-native port"):
        make_port("popgym-Nope-v0")


def test_port_checkpoint_round_trip():
    env = make_env("popgym-CountRecallMedium-v0", num_envs=3)
    env.reset(seed=7)
    _play(env, lambda e: torch.zeros(3, dtype=torch.long), 10)
    saved = env.state_dict()
    after = _play(env, lambda e: torch.ones(3, dtype=torch.long), 100)
    env.load_state_dict(saved)
    assert all(torch.equal(a, b) for a, b in zip(after, _play(env, lambda e: torch.ones(3, dtype=torch.long), 100)))


# ----------------------------------------------------------------------------------------------- registry, training
def test_make_env_builds_the_port_for_a_ported_id():
    env = make_env("popgym-RepeatFirstEasy-v0", num_envs=8)
    assert type(env).__module__ == "memrl.envs.popgym.repeat_first"
    assert env.num_envs == 8 and env.obs_dim == 4 and env.popgym_id == "popgym-RepeatFirstEasy-v0"
    assert not env.reports_success and not hasattr(env, "set_horizon")
    assert len(POPGYM_PORTS) == 18
    check_env_name("popgym-NoisyPositionOnlyCartPoleHard-v0")


def test_unported_popgym_id_goes_through_the_adapter():
    pytest.importorskip("popgym", reason="an unported popgym id needs the popgym package")
    from memrl.envs.gym_vector import GymVectorEnv
    env = make_env("popgym-HigherLowerEasy-v0", num_envs=2)
    assert isinstance(env, GymVectorEnv) and env.name == "popgym:popgym-HigherLowerEasy-v0"
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2, env.obs_dim)
    env.close()
    with pytest.raises(ValueError, match=r"env 'popgym-Nope-v0' is not a registered gymnasium id"):
        check_env_name("popgym-Nope-v0")


def test_popgym_defaults_episode_aligned_rollouts_for_card_games():
    assert defaults_for("popgym-RepeatPreviousMedium-v0") == {"rollout_len": 103}
    assert defaults_for("popgym-AutoencodeHard-v0") == {"rollout_len": 311}
    assert defaults_for("popgym-PositionOnlyCartPoleEasy-v0") == {}  # variable length: 128-step rollouts


def test_training_on_a_port_reports_returns_and_runs_no_curriculum():
    from memrl.ppo import PPOTrainer
    cfg = Config(env="popgym-RepeatFirstEasy-v0", num_envs=16, num_minibatches=2, controller="gru", d_model=16,
                 eval_episodes=16, eval_interval=2, device="cpu", progress=False, tensorboard=False, seed=0,
                 **defaults_for("popgym-RepeatFirstEasy-v0"))
    trainer = PPOTrainer(cfg)
    assert not trainer.curriculum and trainer.rollout_len == 51
    stats = [trainer.train_step() for _ in range(2)]
    assert [s["episodes"] for s in stats] == [16, 16]  # one whole episode per env per rollout
    assert all(-1 <= s["return"] <= 1 for s in stats)
    assert math.isnan(stats[0]["success"]) and "eval_success" not in stats[1]
    assert -1 <= stats[1]["eval_return"] <= 1 and trainer.last_eval["success_rate"] is None
    assert trainer.train_horizon == cfg.horizon and trainer.env_steps == 2 * 16 * 51
    trainer.close()


def test_config_refuses_env_workers_for_a_port():
    from memrl.config import ConfigError
    with pytest.raises(ConfigError, match=r"env_workers must be 0 for the torch-native env popgym-RepeatFirstEasy-v0"):
        Config(env="popgym-RepeatFirstEasy-v0", env_workers=2)


def test_cli_header_names_a_port_torch_native(tmp_path, capsys):
    from memrl.cli import main
    assert main(["train", "--env", "popgym-RepeatFirstEasy-v0", "--device", "cpu", "--num-envs", "8",
                 "--total-steps", "408", "--d-model", "16", "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    assert "memrl train: popgym-RepeatFirstEasy-v0 (torch-native, 4 obs)" in capsys.readouterr().out


EASY_PORTS = [e for e in POPGYM_PORTS if "Easy" in e]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("env_id", EASY_PORTS)
def test_port_rollouts_replay_as_cuda_graphs(env_id):
    """Each port's step captures in the rollout's CUDA graph (no host sync, no CPU tensor copied in: the
    cartpole's list index did that once) and the replayed rollouts equal eager ones."""
    from memrl.ppo import PPOTrainer
    runs = []
    for graph in (True, False):
        torch.manual_seed(0)
        cfg = Config(env=env_id, num_envs=64, num_minibatches=4, rollout_len=24, device="cuda", cuda_graph=graph,
                     progress=False, tensorboard=False)
        trainer = PPOTrainer(cfg)
        runs.append([trainer.collect_rollout() for _ in range(2)])
        assert trainer.actor.use_cuda_graph == graph
    for g, e in zip(*runs):
        assert torch.equal(g["actions"], e["actions"]) and torch.equal(g["rewards"], e["rewards"])
        assert torch.equal(g["obs"], e["obs"])
