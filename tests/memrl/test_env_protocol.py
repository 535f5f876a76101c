"""The batched-env protocol (memrl/envs/base.py): declared state drives checkpoints and rollout capture."""
import pytest
import torch

from memrl.envs import DelayedCue, HorizonEnv, RepeatFirst, TMaze, TorchVectorEnv, make_env
from memrl.models import ActorCritic
from memrl.ppo.rollout import RolloutActor

DECLARED = {"DelayedCue": ("t", "cue"), "TMaze": ("t", "cue"), "RepeatFirst": ("t", "first", "symbol")}


@pytest.mark.parametrize("name", list(DECLARED))
def test_the_tasks_declare_their_state(name):
    env = make_env(name, num_envs=5, horizon=4)
    assert isinstance(env, HorizonEnv) and isinstance(env, TorchVectorEnv)
    assert env.autoreset_mode == "SameStep" and env.capturable and env.checkpointable and not env.truncates
    assert tuple(env.state_tensors()) == DECLARED[name]
    assert list(env.generators()) == ["generator"] and env.generators()["generator"] is env.generator
    assert set(env.state_dict()) == {*DECLARED[name], "generator", "needs_reset", "horizon"}
    assert env.get_extra_state() == {"horizon": 4}
    env.reset(seed=0)
    assert env.state_tensors()["t"] is env.t  # the live tensor, not a copy
    env.t = torch.full((5,), 2)  # assignment goes to the declaration
    assert torch.equal(env.state_tensors()["t"], torch.full((5,), 2))


class _Counter(TorchVectorEnv):
    """A minimal protocol env: counts steps; `scale` is a constant tensor that is NOT state."""

    def __init__(self, num_envs=3):
        super().__init__(num_envs, "cpu")
        from memrl.envs.spaces import Box, Discrete
        self.single_observation_space, self.single_action_space = Box(-1e9, 1e9, (1,)), Discrete(2)
        self.scale = torch.tensor(2.0)  # a plain attribute: not declared, never touched by capture or checkpoints
        self.register_state("count", torch.zeros(num_envs))
        self.register_generator("noise_gen", torch.Generator().manual_seed(0))

    def reset(self, seed=None, options=None):
        self._needs_reset = False
        return self.count.unsqueeze(1), {}

    def step(self, actions):
        self.count = self.count + actions.float() * self.scale + torch.rand(self.num_envs, generator=self.noise_gen)
        done = torch.zeros(self.num_envs, dtype=torch.bool)
        return self.count.unsqueeze(1), torch.zeros(self.num_envs), done, done, {"final_obs": self.count.unsqueeze(1),
                                                                                 "success": done}


def test_declaration_errors_name_the_problem():
    env = _Counter()
    with pytest.raises(ValueError, match="'count' is already"):
        env.register_state("count", torch.zeros(3))
    with pytest.raises(TypeError, match=r"register_state\('x', \.\.\.\) needs a torch.Tensor, got list"):
        env.register_state("x", [0, 1])
    with pytest.raises(TypeError, match="register_generator"):
        env.register_generator("g", 3)
    with pytest.raises(TypeError, match="state 'count' must stay a torch.Tensor, got int"):
        env.count = 3
    with pytest.raises(AttributeError, match="generator 'noise_gen' is declared"):
        env.noise_gen = torch.Generator()
    with pytest.raises(ValueError, match=r"tensors\['count'\] must have shape \(3,\) and dtype torch.float32, got \(4,\)"):
        env.set_state_tensors({"count": torch.zeros(4)})
    with pytest.raises(ValueError, match=r"exactly the declared names \['count'\], got \['count', 'scale'\]"):
        env.set_state_tensors({"count": torch.zeros(3), "scale": torch.zeros(())})
    with pytest.raises(ValueError, match=r"state is missing \['noise_gen'\]"):
        env.load_state_dict({"count": torch.zeros(3), "needs_reset": False})


def test_checkpoint_holds_the_declared_state_only_and_resumes_exactly():
    env = _Counter()
    env.reset()
    env.step(torch.ones(3, dtype=torch.long))
    saved = env.state_dict()
    assert set(saved) == {"count", "noise_gen", "needs_reset"}
    ahead = [env.step(torch.ones(3, dtype=torch.long))[0] for _ in range(3)]
    fresh = _Counter()
    fresh.load_state_dict(saved)
    assert all(torch.equal(a, fresh.step(torch.ones(3, dtype=torch.long))[0]) for a in ahead)


def test_capture_repoints_only_the_declared_state():
    """The CUDA-graph path (run on the CPU by re-running the body on static buffers) points the env at static copies
    of what it declares; an undeclared tensor attribute stays the env's own object (it used to be found by vars())."""
    from test_rollout import _ReplayOnCPU
    torch.manual_seed(0)
    env = _Counter(4)
    scale = env.scale
    model = ActorCritic(1, 2, controller="gru", d_model=8, mem_dim=8, mem_slots=2, head_hidden=8)
    obs, _ = env.reset()
    actor = _ReplayOnCPU(model, env, torch.Generator().manual_seed(1))
    out = actor.run(obs, torch.ones(4, dtype=torch.bool), model.init_state(4), 8)
    assert env.scale is scale and actor.captures == 1
    static = next(iter(actor._graphs.values()))["env"]
    assert set(static) == {"count"} and env.count is static["count"]
    ref = _Counter(4)
    ref_obs, _ = ref.reset()
    plain = RolloutActor(model, ref, torch.Generator().manual_seed(1)).run(ref_obs, torch.ones(4, dtype=torch.bool),
                                                                            model.init_state(4), 8)
    assert torch.equal(out["obs"], plain["obs"]) and torch.equal(env.count, ref.count)


def test_tasks_are_the_three_classes():
    assert [type(make_env(n)) for n in DECLARED] == [DelayedCue, TMaze, RepeatFirst]
    with pytest.raises(ValueError, match="workers must be 0 for the torch-native env 'TMaze'"):
        make_env("TMaze", workers=2)
