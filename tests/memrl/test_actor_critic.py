"""act() step by step equals evaluate() on the whole sequence (1e-5), resets inside the sequence."""
import pytest
import torch

from memrl.models import ActorCritic


CONTROLLERS = ["mamba2", "gru", "lstm"]  # mamba_compat is part of this package: never skipped


@pytest.mark.parametrize("memory", [True, False])
@pytest.mark.parametrize("controller", CONTROLLERS)
def test_act_equals_evaluate(controller, memory):
    torch.manual_seed(0)
    model = ActorCritic(obs_dim=3, num_actions=2, controller=controller, memory=memory, d_model=16, d_state=8,
                        headdim=8, mem_slots=4, mem_dim=8, mem_chunk=4)
    b, length = 4, 19
    obs = torch.randn(b, length, 3)
    reset = torch.zeros(b, length, dtype=torch.bool)
    reset[0, 0] = reset[1, 7] = reset[2, 3] = reset[2, 12] = reset[3, 18] = True
    state0 = {k: torch.randn_like(v) for k, v in model.init_state(b).items()}  # mid-episode states
    with torch.no_grad():
        seq = model.evaluate(obs, state0, reset)
        state, logits, values, gates = state0, [], [], []
        for t in range(length):
            out = model.act(obs[:, t], state, reset[:, t])
            state = out.state
            logits.append(out.logits), values.append(out.value), gates.append(out.gate)
    torch.testing.assert_close(torch.stack(logits, 1), seq.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.stack(values, 1), seq.value, rtol=0, atol=1e-5)
    if memory:
        torch.testing.assert_close(torch.stack(gates, 1), seq.gate, rtol=0, atol=1e-5)
    for k in state:
        torch.testing.assert_close(state[k], seq.state[k], rtol=0, atol=1e-5)


def test_reset_forgets_the_past():
    torch.manual_seed(1)
    model = ActorCritic(obs_dim=3, num_actions=2, controller="gru", d_model=16, mem_slots=4, mem_dim=8)
    obs = torch.randn(2, 10, 3)
    obs[1, 5:] = obs[0, 5:]
    reset = torch.zeros(2, 10, dtype=torch.bool)
    reset[:, 5] = True
    with torch.no_grad():
        out = model.evaluate(obs, model.init_state(2), reset)
    torch.testing.assert_close(out.logits[0, 5:], out.logits[1, 5:])
    assert not torch.allclose(out.logits[0, :5], out.logits[1, :5])


def test_bad_controller():
    with pytest.raises(ValueError, match="controller"):
        ActorCritic(3, 2, controller="transformer")
