"""RolloutActor: the buffered acting loop equals a plain step loop; on CUDA, graph replay equals eager launches.

The CUDA tests are skipped here (no GPU in CI) and run on the device; they also check the Mamba2 controller on
CUDA (Triton decode step and SSD) against the CPU reference with the same weights.
"""
import pytest
import torch

from memrl.config import Config
from memrl.envs import make_env
from memrl.models import ActorCritic
from memrl.ppo import PPOTrainer
from memrl.ppo.rollout import RolloutActor, sample_actions

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="CUDA graphs and the CUDA backends need a GPU")


def _plain_loop(model, env, gen, obs, reset, state, length):
    """The acting loop written plainly (lists + stack), as the trainer did before RolloutActor."""
    rec = {k: [] for k in ("obs", "reset", "actions", "logp", "values", "rewards", "dones", "gate")}
    with torch.inference_mode():
        for _ in range(length):
            out = model.act(obs, state, reset)
            actions, logp = sample_actions(out.logits, gen)
            next_obs, reward, term, trunc, _ = env.step(actions)
            for k, v in (("obs", obs), ("reset", reset), ("actions", actions), ("logp", logp),
                         ("values", out.value), ("rewards", reward), ("dones", term | trunc), ("gate", out.gate)):
                rec[k].append(v)
            obs, reset, state = next_obs, term | trunc, out.state
        last_value = model.act(obs, state, reset).value
    return {k: torch.stack(v, 1) for k, v in rec.items()}, obs, state, last_value


class _ReplayOnCPU(RolloutActor):
    """The CUDA-graph path (static buffers, pieces, env re-pointing, copies out) with the capture replaced by a
    function that re-runs the body on the static buffers: what a replay does, minus the GPU."""

    GRAPH_STEPS = 4

    def __init__(self, *args):
        super().__init__(*args)
        self.use_cuda_graph = True

    def _warmup(self, obs, reset, state):
        pass

    def _make_graph(self, sb):
        class Replay:
            replay = staticmethod(lambda: self._graphed_body(sb))
        return Replay()


@pytest.mark.parametrize("actor_cls", [RolloutActor, _ReplayOnCPU])
@pytest.mark.parametrize("env_name", ["DelayedCue", "TMaze", "RepeatFirst"])
def test_buffered_rollout_equals_plain_loop(env_name, actor_cls):
    torch.manual_seed(0)
    n, length = 16, 13
    envs = [make_env(env_name, num_envs=n, horizon=5) for _ in range(2)]
    model = ActorCritic(envs[0].single_observation_space.shape[0], envs[0].single_action_space.n,
                        controller="mamba2", d_model=32, headdim=16, ssm_chunk=8)
    gens = [torch.Generator().manual_seed(5) for _ in range(2)]
    starts = [e.reset(seed=3)[0] for e in envs]
    state = model.init_state(n)
    reset = torch.ones(n, dtype=torch.bool)
    ref, ref_obs, ref_state, ref_last = _plain_loop(model, envs[0], gens[0], starts[0], reset, state, length)
    actor = actor_cls(model, envs[1], gens[1])
    out = actor.run(starts[1], reset, state, length, snap_at=4)
    if actor_cls is _ReplayOnCPU:
        assert actor.captures == 2  # pieces 0-4 | 4-8, 8-12 (one 4-step graph, replayed) | 12-13
        assert out["snapshot"] is not None
    for k, v in ref.items():
        assert torch.equal(out[k], v), k
    assert torch.equal(out["last_value"], ref_last)
    assert torch.equal(out["next_obs"], ref_obs)
    for k in ref_state:
        assert torch.equal(out["next_state"][k], ref_state[k]), k
    assert ref["dones"].any() and ref["rewards"].sum() >= 0  # episodes of 5 steps end inside the 13
    # the env continues from where the actor left it: one more step agrees in both copies
    a = torch.zeros(n, dtype=torch.long)
    assert all(torch.equal(x, y) for x, y in zip(envs[0].step(a)[:3], envs[1].step(a)[:3]))


def test_snapshot_is_the_state_after_snap_at_steps():
    torch.manual_seed(0)
    env = make_env("DelayedCue", num_envs=8, horizon=6)
    model = ActorCritic(3, 2, controller="gru", d_model=16, mem_dim=16)
    obs, _ = env.reset(seed=0)
    state, reset = model.init_state(8), torch.ones(8, dtype=torch.bool)
    gen_state = torch.Generator().manual_seed(1)
    env_state = env.state_dict()
    short = RolloutActor(model, env, gen_state).run(obs, reset, state, 4, snap_at=4)
    env.load_state_dict(env_state)
    full = RolloutActor(model, env, torch.Generator().manual_seed(1)).run(obs, reset, state, 9, snap_at=4)
    for k in short["next_state"]:
        assert torch.equal(full["snapshot"][k], short["next_state"][k]), k
        assert not torch.equal(full["snapshot"][k], full["next_state"][k]), k
    at0 = RolloutActor(model, env, torch.Generator().manual_seed(1)).run(obs, reset, state, 3, snap_at=0)
    assert all(torch.equal(at0["snapshot"][k], state[k]) for k in state)


def _cfg(**kw):
    base = dict(horizon=40, num_envs=256, num_minibatches=4, curriculum_start=0, progress=False, tensorboard=False,
                device="cuda")
    base.update(kw)
    return Config(**base)


@needs_cuda
@pytest.mark.parametrize("controller", ["mamba2", "gru"])
def test_cuda_graph_rollouts_equal_eager(controller):
    """Three consecutive rollouts (the graph is replayed: RNGs, env and recurrent state advance) equal eager."""
    runs = []
    for graph in (True, False):
        torch.manual_seed(0)
        trainer = PPOTrainer(_cfg(controller=controller, cuda_graph=graph))
        runs.append([trainer.collect_rollout() for _ in range(3)])
    for i, (g, e) in enumerate(zip(*runs)):
        assert torch.equal(g["actions"], e["actions"]), i
        assert torch.equal(g["rewards"], e["rewards"]), i
        assert torch.equal(g["obs"], e["obs"]), i
        torch.testing.assert_close(g["values"], e["values"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g["logp"], e["logp"], rtol=1e-5, atol=1e-5)
    assert not torch.equal(runs[0][0]["actions"], runs[0][1]["actions"])  # replays draw fresh numbers


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@needs_cuda
@pytest.mark.parametrize("memory", [True, False])
def test_mamba2_actor_critic_cuda_matches_cpu(memory, monkeypatch):
    """Same weights on CUDA (Triton SSD + decode step) and CPU (reference): outputs and every parameter gradient
    agree (fp32 dot products forced, so the comparison is not blurred by TF32), and act stepped over the
    sequence equals evaluate on CUDA, with resets inside."""
    monkeypatch.setenv("MAMBA_COMPAT_TRITON_FP32", "ieee")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    b, length = 64, 50
    cpu = ActorCritic(3, 2, controller="mamba2", memory=memory, ssm_chunk=16)
    gpu = ActorCritic(3, 2, controller="mamba2", memory=memory, ssm_chunk=16).cuda()
    gpu.load_state_dict(cpu.state_dict())
    obs = torch.randn(b, length, 3)
    reset = torch.rand(b, length) < 0.05
    reset[:, 0] = True
    s_cpu, s_gpu = cpu.init_state(b), gpu.init_state(b, "cuda")
    ev_cpu = cpu.evaluate(obs, s_cpu, reset)
    ev_gpu = gpu.evaluate(obs.cuda(), s_gpu, reset.cuda())
    errs = {"logits": _rel(ev_gpu.logits, ev_cpu.logits), "value": _rel(ev_gpu.value, ev_cpu.value)}
    (ev_gpu.value.sum() + ev_gpu.logits.square().sum()).backward()
    (ev_cpu.value.sum() + ev_cpu.logits.square().sum()).backward()
    for (name, p_cpu), p_gpu in zip(cpu.named_parameters(), gpu.parameters()):
        errs[name] = _rel(p_gpu.grad, p_cpu.grad)
    print("relative errors CUDA vs CPU:", {k: f"{v:.1e}" for k, v in errs.items()})
    bad = {k: v for k, v in errs.items() if not v < 1e-4}
    assert not bad, f"relative error above 1e-4: {bad}"
    with torch.no_grad():
        state, values = s_gpu, []
        for t in range(length):
            out = gpu.act(obs[:, t].cuda(), state, reset[:, t].cuda())
            state = out.state
            values.append(out.value)
    assert _rel(torch.stack(values, 1), ev_gpu.value) < 1e-5
