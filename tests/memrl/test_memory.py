"""PseudoMode memory: the chunked scans equal the step loop (with resets), init, and the module paths agree."""
import math

import pytest
import torch

from memrl.memory import PseudoModeMemory, pseudomode_loop, pseudomode_scan, pseudomode_scan_read, read


def _inputs(b=3, length=37, m=5, dm=4, seed=0, reset_p=0.1):
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(b, length, m, generator=g, dtype=torch.float64) * 0.9 + 1e-4
    v = torch.randn(b, length, dm, generator=g, dtype=torch.float64)
    q = torch.randn(b, length, dm, generator=g, dtype=torch.float64) * 3
    log_lam = torch.log(torch.rand(m, generator=g, dtype=torch.float64) * 0.9 + 0.05)
    reset = torch.rand(b, length, generator=g) < reset_p
    reset[0, 0] = True
    mem0 = torch.randn(b, m, dm, generator=g, dtype=torch.float64)
    return u, v, q, log_lam, reset, mem0


@pytest.mark.parametrize("length,chunk", [(1, 4), (15, 4), (37, 8), (64, 16), (33, 1)])
def test_scan_equals_loop(length, chunk):
    u, v, q, log_lam, reset, mem0 = _inputs(length=length)
    ref = pseudomode_loop(u, v, log_lam, reset, mem0)
    out = pseudomode_scan(u, v, log_lam, reset, mem0, chunk_size=chunk)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    r, final = pseudomode_scan_read(u, v, q, log_lam, reset, mem0, chunk_size=chunk)
    torch.testing.assert_close(r, read(ref, q), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, ref[:, -1], rtol=1e-10, atol=1e-10)


def test_reset_clears_memory_and_grads_match():
    u, v, q, log_lam, reset, mem0 = _inputs(b=2, length=20, reset_p=0.0)
    reset[1, 9] = True
    ref = pseudomode_loop(u, v, log_lam, reset, mem0)
    # after the reset env 1 does not depend on anything before step 9
    u2, v2 = u.clone(), v.clone()
    u2[1, :9] = 0.5
    v2[1, :9] = -7.0
    ref2 = pseudomode_loop(u2, v2, log_lam, reset, mem0 * 3)
    torch.testing.assert_close(ref[1, 9:], ref2[1, 9:])
    # gradients of the fused scan equal the loop's, for every input
    args = [t.clone().requires_grad_() for t in (u, v, q, log_lam, mem0)]
    r, fin = pseudomode_scan_read(args[0], args[1], args[2], args[3], reset, args[4], chunk_size=8)
    w1, w2 = torch.randn_like(r), torch.randn_like(fin)
    g_scan = torch.autograd.grad((r * w1).sum() + (fin * w2).sum(), args)
    mems = pseudomode_loop(args[0], args[1], args[3], reset, args[4])
    g_loop = torch.autograd.grad((read(mems, args[2]) * w1).sum() + (mems[:, -1] * w2).sum(), args)
    for a, b in zip(g_scan, g_loop):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


def test_init_timescales_and_gate():
    mem = PseudoModeMemory(8, num_slots=16, slot_dim=64, min_timescale=2.0, max_timescale=2000.0)
    lam = torch.sigmoid(mem.retention_logit.double())
    tau = 1 / (1 - lam)
    assert tau[0].item() == pytest.approx(2.0, rel=1e-4) and tau[-1].item() == pytest.approx(2000.0, rel=1e-3)
    ratios = tau[1:] / tau[:-1]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios), rtol=1e-3)  # log-spaced
    h = torch.randn(5, 7, 8)
    _, _, gate = mem(h)
    assert torch.allclose(gate, torch.full_like(gate, 0.02))


def test_module_step_equals_sequence():
    torch.manual_seed(0)
    mem = PseudoModeMemory(6, num_slots=4, slot_dim=8, chunk_size=4)
    h = torch.randn(3, 11, 6)
    reset = torch.zeros(3, 11, dtype=torch.bool)
    reset[:, 0] = True
    reset[2, 5] = True
    m0 = torch.randn(3, 4, 8)
    r_seq, final, gate = mem(h, m0, reset)
    r_loop, final_loop, _ = mem(h, m0, reset, use_loop=True)
    state, rs = m0, []
    for t in range(11):
        r, state, g = mem.step(h[:, t], state, reset[:, t])
        rs.append(r)
    torch.testing.assert_close(torch.stack(rs, 1), r_seq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(r_loop, r_seq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, final, rtol=1e-5, atol=1e-5)
    assert math.isclose(float(gate.detach().mean()), 0.02, rel_tol=1e-5)


@pytest.mark.parametrize("chunk", [8, 16, 17])
def test_saturated_gate_stays_finite_fp32(chunk):
    """g a -> 1 and tiny retention: the decay floor keeps the fp32 chunked scan finite and equal to the loop."""
    b, length, m, dm = 2, 40, 3, 4
    u = torch.full((b, length, m), 1 - 1e-6)  # every decay at the floor: the widest exponent range
    u[:, 30:] = 1e-3
    v, q = torch.randn(b, length, dm), torch.randn(b, length, dm)
    log_lam = torch.log(torch.tensor([0.01, 0.5, 0.999]))
    ref = pseudomode_loop(u, v, log_lam)
    r, final = pseudomode_scan_read(u, v, q, log_lam, chunk_size=chunk)
    assert torch.isfinite(r).all()
    torch.testing.assert_close(r, read(ref, q), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(final, ref[:, -1], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="chunk_size"):
        pseudomode_scan_read(u, v, q, log_lam, chunk_size=18)
