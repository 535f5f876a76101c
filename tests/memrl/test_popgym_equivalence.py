"""Each POPGym port equals the popgym package step by step: popgym's envs run through GymVectorEnv (the adapter
any gymnasium env goes through), their state after every reset is copied into the port (popgym_sync.py), then both
take the same actions; observations (the port's vs the adapter's encoding of popgym's), rewards, terminated,
truncated and final_obs must be equal, for a whole episode and into the next at every difficulty, 3 envs a batch."""
import numpy as np
import pytest
import torch

popgym = pytest.importorskip("popgym", reason="the equivalence tests need the popgym package (pip install popgym)")

from memrl.envs import POPGYM_PORTS, make_env  # noqa: E402
from memrl.envs.gym_vector import GymVectorEnv  # noqa: E402
from popgym_sync import SharedNormals, balance_cartpole, copy_popgym_state, popgym_envs  # noqa: E402

NUM_ENVS = 3


@pytest.mark.parametrize("name", POPGYM_PORTS)
def test_port_equals_popgym(name):
    adapter = GymVectorEnv(f"popgym:{name}", num_envs=NUM_ENVS)
    port = make_env(name, num_envs=NUM_ENVS)
    assert port.gym_observation_space == adapter.gym_observation_space
    assert port.single_action_space == adapter.gym_action_space
    assert port.obs_dim == adapter.obs_dim
    envs = popgym_envs(adapter)
    noise = {"z": torch.zeros(NUM_ENVS, 2, dtype=torch.float64)}
    noisy = hasattr(port, "noise_sigma")
    if noisy:  # the same standard normals on both sides: popgym's np_random.normal and the port's draw
        for i, e in enumerate(envs):
            e._np_random = SharedNormals(np.random.default_rng(i), i, noise)
        port._standard_normal = lambda: noise["z"]
    gen = torch.Generator().manual_seed(0)
    if noisy:
        noise["z"] = torch.randn(NUM_ENVS, 2, dtype=torch.float64, generator=gen)
    ref_obs, _ = adapter.reset(seed=None if noisy else 0)  # seeded np_random would replace the stand-in
    port.reset(seed=0)
    for i, e in enumerate(envs):
        copy_popgym_state(port, e, i)
    assert torch.equal(port._observe(), ref_obs)
    length = port.episode_length or port.max_episode_length
    ends = truncations = 0
    for step in range(length + 20):
        if noisy:
            noise["z"] = torch.randn(NUM_ENVS, 2, dtype=torch.float64, generator=gen)
        if hasattr(port, "state"):  # cart-pole: row 0 random, the others balanced
            actions = balance_cartpole(port.state)
            actions[0] = int(torch.randint(0, 2, (1,), generator=gen))
        else:
            actions = torch.randint(0, port.single_action_space.n, (NUM_ENVS,), generator=gen)
        ref_obs, ref_rew, ref_term, ref_trunc, ref_info = adapter.step(actions)
        obs, rew, term, trunc, info = port.step(actions)
        at = f"{name} step {step}"
        assert torch.equal(rew, ref_rew), at
        assert torch.equal(term, ref_term), at
        assert torch.equal(trunc, ref_trunc), at
        assert torch.equal(info["final_obs"], ref_info["final_obs"]), at
        done = term | trunc
        assert torch.equal(obs[~done], ref_obs[~done]), at
        for i in torch.nonzero(done).flatten().tolist():
            copy_popgym_state(port, envs[i], i)
        assert torch.equal(port._observe()[done], ref_obs[done]), at
        ends += int(done.sum())
        truncations += int(trunc.sum())
    assert ends >= NUM_ENVS  # every env finished at least one episode
    if port.truncates:
        assert truncations >= 1, "no episode reached max_episode_length"
    adapter.close()
