"""MinibatchUpdater: the graphed minibatch step (static buffers, warm-up step, capture, replays, gradient
re-pointing) equals the eager one; on CUDA, graph replay equals eager launches.

The CUDA tests are skipped here (no GPU in CI) and run on the device (bench/gpu_memrl.sh).
"""
import pytest
import torch

from memrl.config import Config
from memrl.ppo import PPOTrainer
from memrl.ppo.loss import ppo_loss
from memrl.ppo.update import MinibatchUpdater

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="CUDA graphs need a GPU")


class _ReplayOnCPU(MinibatchUpdater):
    """The CUDA-graph path with the capture replaced by a function that re-runs the body on the static buffers:
    what a replay does, minus the GPU."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.use_cuda_graph = True

    def _warmup(self, sb):
        self._body(sb)
        sb["warm"] = True

    def _make_graph(self, sb):
        def replay():  # a graph writes its gradients into the buffers captured (sb["grads"]), wherever .grad points
            self._body(sb)
            for p, g in zip(self.params, sb["grads"]):
                if g is not None and p.grad is not g:
                    g.copy_(p.grad)

        class Replay:
            pass
        Replay.replay = staticmethod(replay)
        return Replay()


def _cfg(**kw):
    base = dict(horizon=12, num_envs=32, num_minibatches=4, update_epochs=2, curriculum_start=0, d_model=32,
                headdim=16, ssm_chunk=8, mem_dim=16, progress=False, tensorboard=False, device="cpu")
    base.update(kw)
    return Config(**base)


def _train(cfg, updater_cls=None, steps=3, between=None):
    torch.manual_seed(0)
    trainer = PPOTrainer(cfg)
    if updater_cls is not None:
        trainer.updater = updater_cls(trainer.model, trainer.optimizer, cfg)
    logs = []
    for i in range(steps):
        logs.append(trainer.train_step())
        if between is not None:
            between(trainer, i)
    return trainer, logs


@pytest.mark.parametrize("kw", [{}, {"burn_in": 4, "rollout_len": 6}, {"gate_penalty_after": 0.0}])
def test_graph_path_equals_eager_on_cpu(kw):
    """Same parameters, optimizer state and logged losses, bit for bit, through several updates; the shape key
    changes when the burn-in prefix appears (one more warm-up and capture)."""
    cfg = _cfg(**kw)
    eager, eager_logs = _train(cfg)
    graphed, graphed_logs = _train(cfg, _ReplayOnCPU)
    assert graphed.updater.captures == (2 if kw.get("burn_in") else 1)
    for (name, p), q in zip(eager.model.named_parameters(), graphed.model.parameters()):
        assert torch.equal(p, q), name
    for a, b in zip(eager_logs, graphed_logs):
        for k in ("pg_loss", "v_loss", "entropy", "gate_loss", "grad_norm", "approx_kl", "clipfrac", "gate_coef"):
            assert a[k] == b[k], k
    assert eager_logs[0]["pg_loss"] != eager_logs[1]["pg_loss"]  # the updates did something


def test_grads_pointed_at_again_after_replay():
    """Something setting .grad to None between replays (a user's zero_grad) does not stop the optimizer step: the
    captured gradient buffers are what Adam reads."""
    cfg = _cfg()
    ref, _ = _train(cfg, _ReplayOnCPU)
    reset, _ = _train(cfg, _ReplayOnCPU, between=lambda t, i: t.optimizer.zero_grad(set_to_none=True))
    for (name, p), q in zip(ref.model.named_parameters(), reset.model.parameters()):
        assert torch.equal(p, q), name


def test_eager_reasons():
    model = PPOTrainer(_cfg(controller="gru")).model
    assert "GRUController" in MinibatchUpdater.graph_unavailable(model, torch.device("cuda"), 1)
    mamba = PPOTrainer(_cfg()).model
    assert MinibatchUpdater.graph_unavailable(mamba, torch.device("cuda"), 1) is None
    assert "data parallel" in MinibatchUpdater.graph_unavailable(mamba, torch.device("cuda"), 2)
    assert "cpu" in MinibatchUpdater.graph_unavailable(mamba, torch.device("cpu"), 1)


def test_nonfinite_minibatch_is_reported_through_the_buffers():
    """The first bad minibatch is found on the device and named after the update (graph path on the CPU)."""
    from memrl.ppo import NonFiniteError
    cfg = _cfg()
    torch.manual_seed(0)
    trainer = PPOTrainer(cfg)
    trainer.updater = _ReplayOnCPU(trainer.model, trainer.optimizer, cfg)
    trainer.train_step()  # warm-up step and capture
    roll = trainer.collect_rollout()
    roll["rewards"] = roll["rewards"].clone()
    roll["rewards"][:, -1] = float("nan")  # every env: the first minibatch's loss is NaN
    with pytest.raises(NonFiniteError, match=r"update 2, epoch 0, minibatch 0; last minibatch: pg=nan"):
        trainer.update(roll)


def test_ppo_loss_terms_by_hand():
    """ppo_loss on a tiny hand-made case: ratio 1 everywhere, so the clipped surrogate is -mean(normalised adv)
    = 0, approx_kl and clipfrac are 0, the value loss is half the mean squared error."""
    from types import SimpleNamespace
    from memrl.models.distributions import action_distribution
    dist = action_distribution(2)
    logits = torch.tensor([[[0.0, 1.0], [2.0, 0.0], [0.5, 0.5]]])  # (1, 3, 2)
    actions = torch.tensor([[1, 0, 1]])
    logp = dist.log_prob(logits, actions)
    out = SimpleNamespace(logits=logits, value=torch.tensor([[1.0, 2.0, 3.0]]), gate=None)
    batch = {"actions": actions, "logp": logp, "adv": torch.tensor([[1.0, -1.0, 3.0]]),
             "returns": torch.tensor([[2.0, 2.0, 1.0]]), "values": torch.tensor([[1.0, 2.0, 3.0]])}
    cfg = SimpleNamespace(clip_coef=0.2, norm_adv=True, clip_vloss=True, ent_coef=0.01, vf_coef=0.5)
    loss, terms = ppo_loss(out, 0, batch, dist, cfg, 0.0)
    assert abs(float(terms["pg_loss"])) < 1e-6
    assert float(terms["approx_kl"]) == 0.0 and float(terms["clipfrac"]) == 0.0
    assert float(terms["v_loss"]) == pytest.approx(0.5 * (1 + 0 + 4) / 3)
    ent = float(dist.entropy(logits).mean())
    assert float(loss) == pytest.approx(-0.01 * ent + 0.5 * 0.5 * 5 / 3, abs=1e-6)


@needs_cuda
@pytest.mark.parametrize("kw", [{}, {"burn_in": 8, "rollout_len": 20}])
def test_cuda_graph_update_equals_eager(kw):
    """Three train steps with the update graphed and eager on CUDA: the same rollouts (actions, rewards) and
    parameters equal to fp32 rounding; one graph per shape."""
    runs = []
    for graph in (True, False):
        cfg = Config(horizon=40, num_envs=256, num_minibatches=4, curriculum_start=0, progress=False,
                     tensorboard=False, device="cuda", update_graph=graph, **kw)
        torch.manual_seed(0)
        trainer = PPOTrainer(cfg)
        logs = [trainer.train_step() for _ in range(3)]
        runs.append((trainer, logs))
    (g, g_logs), (e, e_logs) = runs
    assert g.updater.use_cuda_graph and not e.updater.use_cuda_graph
    assert g.updater.captures == (2 if kw else 1)
    for (name, p), q in zip(g.model.named_parameters(), e.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
    for a, b in zip(g_logs, e_logs):
        assert a["pg_loss"] == pytest.approx(b["pg_loss"], rel=1e-3, abs=1e-5)
        assert a["v_loss"] == pytest.approx(b["v_loss"], rel=1e-3, abs=1e-6)
