"""Data-parallel PPO on CPU with gloo: one `torchrun --standalone --nproc-per-node=2` launch of this file.

Each rank (`_worker`, run when this file is executed as a script):
  A. full-batch equivalence: takes its half (by env) of a rollout the test collected with ONE process
     and 16 envs, runs `update()` on 8 envs with 1 minibatch x 2 epochs; the parameters must equal
     those of the one-process update on all 16 envs (averaged gradients = full-batch gradient, with
     advantages normalised over the global batch). A full 2-rank *run* cannot reproduce a 1-rank run
     step by step: each batched env draws every env's cues from one generator (and actions from one
     generator per trainer), so 2 x 8 envs never see the stream of 16 envs whatever the seeds; feeding
     the same rollout isolates exactly the claim about gradients.
  B. a short training loop (curriculum 4 -> 8 -> 10, evaluation, KL early stop taken, checkpoint after
     2 updates) whose parameters must stay bitwise identical on both ranks, and a same-world-size
     resume that continues bitwise exactly; a NaN on rank 1 only must stop both ranks (no hang); a
     one-process checkpoint must be refused on 2 ranks;
  C. `memrl train` through the CLI (rank 0 logs and writes, the checkpoint holds both ranks' state).
The test then checks that resuming that 2-rank checkpoint with one process refuses with the message.
Every rank runs on the CPU (gloo), so this also passes on a machine with fewer GPUs than ranks; the choice of
backend and device for CUDA is tested without a GPU at the end (choose_backend, init with a faked CUDA).
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from memrl.config import Config
from memrl.ppo import NonFiniteError, PPOTrainer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOTAL_ENVS = 16
# Tolerance of A: the two computations differ only in float32 summation order (split sums, all-reduce,
# float64 vs float32 advantage statistics), ~1e-7 relative per gradient element. Adam's first steps
# move each parameter by ~lr * sign(g) (lr = 2e-3), so a rounding-level difference only matters for an
# element whose gradient is itself at rounding level; 1e-5 absolute is 200x below one Adam step.
ATOL = 1e-5


def _match_cfg(num_envs: int) -> Config:
    return Config(horizon=10, curriculum_start=0, num_envs=num_envs, num_minibatches=1, update_epochs=2,
                  controller="gru", d_model=16, mem_dim=16, head_hidden=16, progress=False, tensorboard=False,
                  device="cpu", seed=5)


def _loop_cfg() -> Config:
    return Config(horizon=10, num_envs=8, num_minibatches=2, controller="gru", d_model=16, mem_dim=16,
                  head_hidden=16, curriculum_start=4, curriculum_factor=2.0, curriculum_success=0.0,
                  eval_interval=1, eval_episodes=40, target_kl=1e-6, progress=False, tensorboard=False,
                  device="cpu", seed=2)


def _rows(x, lo: int, hi: int):
    """Env rows lo:hi of every (N, ...) tensor in a (nested) rollout dict."""
    if isinstance(x, dict):
        return {k: _rows(v, lo, hi) for k, v in x.items()}
    return x[lo:hi] if isinstance(x, torch.Tensor) else x


def _params(trainer):
    return [p.detach().clone() for p in trainer.model.parameters()]


def _worker(tmp: str) -> None:
    from memrl import distributed as dist
    from memrl.cli import main

    assert dist.init("cpu") and dist.world_size() == 2  # gloo only: also on a machine with fewer GPUs than ranks
    rank, world = dist.rank(), dist.world_size()
    out = {}
    # A. the rank's half of the one-process rollout
    ref = torch.load(os.path.join(tmp, "ref.pt"), weights_only=False)
    half = TOTAL_ENVS // world
    trainer = PPOTrainer(_match_cfg(half))
    out["match_stats"] = trainer.update(_rows(ref["roll"], rank * half, (rank + 1) * half))
    out["match_params"] = _params(trainer)
    # B. training loop, checkpoint, same-world-size resume
    trainer = PPOTrainer(_loop_cfg())
    out["kl_stops"] = []
    for i in range(3):
        out["kl_stops"].append(trainer.train_step()["kl_stop"])
        if i == 1:
            trainer.save(os.path.join(tmp, "loop.pt"))
    out["loop_params"], out["loop_horizon"], out["loop_env_steps"] = (_params(trainer), trainer.train_horizon,
                                                                      trainer.env_steps)
    resumed = PPOTrainer.from_checkpoint(os.path.join(tmp, "loop.pt"))
    resumed.train_step()
    out["resumed_params"] = _params(resumed)
    out["loop_eval"] = trainer.last_eval
    # B2. a NaN on rank 1 only: the finite check is collective, so both ranks stop at the same point
    trainer = PPOTrainer(_loop_cfg())
    if rank == 1:
        with torch.no_grad():
            next(trainer.model.parameters()).view(-1)[0] = float("nan")
    try:
        trainer.train_step()
        out["nan_error"] = None
    except NonFiniteError as err:
        out["nan_error"] = str(err)
    # B3. a one-process checkpoint refused on 2 ranks
    try:
        PPOTrainer.from_checkpoint(os.path.join(tmp, "single.pt"))
        out["single_error"] = None
    except ValueError as err:
        out["single_error"] = str(err)
    torch.save(out, os.path.join(tmp, f"rank{rank}.pt"))
    # C. the CLI (tears the process group down when done)
    code = main(["train", "--out", os.path.join(tmp, "run"), "--device", "cpu", "--horizon", "6", "--num-envs", "8",
                 "--controller", "gru", "--d-model", "16", "--num-minibatches", "2", "--total-steps", "400",
                 "--eval-episodes", "20", "--checkpoint-interval", "2", "--no-progress", "--seed", "0"])
    assert code == 0, code


@pytest.fixture(scope="module")
def dist_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    # one-process reference for A: a rollout of 16 envs and the update on it
    ref = PPOTrainer(_match_cfg(TOTAL_ENVS))
    roll = ref.collect_rollout()
    ref_stats = ref.update(roll)
    ref.save(str(tmp / "single.pt"))
    torch.save({"roll": roll}, tmp / "ref.pt")
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           os.path.abspath(__file__), str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    if proc.returncode != 0:
        keep = [ln for ln in proc.stderr.splitlines() if "Error" in ln or "error" in ln or "terminate" in ln
                or "Traceback" in ln or "File " in ln]
        pytest.fail("torchrun failed:\n" + "\n".join(keep[:60]) + "\n" + proc.stderr[-3000:])
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return {"tmp": tmp, "ranks": ranks, "ref_params": _params(ref), "ref_stats": ref_stats, "stdout": proc.stdout}


def test_two_ranks_equal_one_process_full_batch(dist_run):
    r0, r1 = dist_run["ranks"]
    worst = 0.0
    for ref, a, b in zip(dist_run["ref_params"], r0["match_params"], r1["match_params"]):
        assert torch.equal(a, b)  # both ranks apply the same averaged gradient
        worst = max(worst, float((a - ref).abs().max()))
    assert worst <= ATOL, f"2-rank update differs from the 1-process full-batch update by {worst:.2e}"
    for k in ("approx_kl", "pg_loss", "v_loss", "entropy", "grad_norm", "explained_var"):
        assert r0["match_stats"][k] == pytest.approx(dist_run["ref_stats"][k], rel=1e-4, abs=1e-6), k


def test_parameters_stay_identical_and_resume_is_exact(dist_run):
    r0, r1 = dist_run["ranks"]
    for a, b in zip(r0["loop_params"], r1["loop_params"]):
        assert torch.equal(a, b)
    for a, b in zip(r0["loop_params"], r0["resumed_params"]):
        assert torch.equal(a, b)
    assert r0["kl_stops"] == r1["kl_stops"] and any(r0["kl_stops"])  # KL early stop taken, on both ranks alike
    assert r0["loop_horizon"] == r1["loop_horizon"] == 10  # curriculum stepped identically (4 -> 8 -> 10)
    assert r0["loop_env_steps"] == 2 * 8 * (4 + 8 + 10)  # counted over both ranks
    assert r0["loop_eval"] == r1["loop_eval"] is not None  # rank 0's evaluation, broadcast


def test_nan_on_one_rank_stops_every_rank(dist_run):
    for r in dist_run["ranks"]:
        assert r["nan_error"] is not None and "non-finite recurrent state or value during rollout 1" in r["nan_error"]


def test_cli_rank0_writes_and_checkpoint_holds_every_rank(dist_run):
    run = dist_run["tmp"] / "run"
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    updates = [r["update"] for r in rows if r["kind"] == "train"]
    assert updates == list(range(1, len(updates) + 1))  # one writer: no duplicated rows
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert ckpt["world_size"] == 2 and len(ckpt["ranks"]) == 2
    for key in ("gen", "torch_rng"):  # per-rank seeds: different action-sampling streams; own global RNG each
        assert key in ckpt["ranks"][1]
    assert not torch.equal(ckpt["ranks"][0]["gen"], ckpt["ranks"][1]["gen"])
    assert not torch.equal(ckpt["ranks"][0]["env"]["generator"], ckpt["ranks"][1]["env"]["generator"])
    assert (run / "curves.png").exists()


def test_resume_with_another_world_size_refuses(dist_run, capsys):
    from memrl.cli import main
    run = dist_run["tmp"] / "run"
    with pytest.raises(ValueError, match="world size 2 and this run has world size 1"):
        PPOTrainer.from_checkpoint(str(run / "checkpoint.pt"))
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "world size 2" in err and "--nproc-per-node" in err
    for r in dist_run["ranks"]:  # and the other way round: a 1-process checkpoint on 2 ranks
        assert "world size 1 and this run has world size 2" in r["single_error"]
        assert "without torchrun" in r["single_error"]


if __name__ == "__main__":
    _worker(sys.argv[1])


def test_global_mean_std_per_row_in_one_process():
    from memrl import distributed as dist
    x = torch.randn(4, 6, 5, dtype=torch.float32)
    mean, std = dist.global_mean_std(x, per_row=True)
    torch.testing.assert_close(mean, x.reshape(4, -1).mean(1))
    torch.testing.assert_close(std, x.reshape(4, -1).std(1))
    m, s = dist.global_mean_std(x)
    torch.testing.assert_close(m, x.mean())
    torch.testing.assert_close(s, x.std())


def test_choose_backend():
    from memrl.distributed import choose_backend
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose_backend(cpu, local_rank=1, gpu_count=0) == ("gloo", cpu)
    assert choose_backend(cpu, local_rank=3, gpu_count=8) == ("gloo", cpu)  # --device cpu on a GPU machine
    assert choose_backend(cuda, local_rank=1, gpu_count=2) == ("cpu:gloo,cuda:nccl", torch.device("cuda", 1))
    with pytest.raises(ValueError, match=r"LOCAL_RANK 1 has no GPU of its own: this machine has 1 CUDA device.*"
                                         r"--nproc-per-node <= 1\) or .*--device cpu"):
        choose_backend(cuda, local_rank=1, gpu_count=1)
    with pytest.raises(ValueError, match="not mps"):
        choose_backend(torch.device("mps"), local_rank=0, gpu_count=0)
    with pytest.raises(ValueError, match="pass --device cuda, not cuda:1"):
        choose_backend(torch.device("cuda:1"), local_rank=0, gpu_count=2)


@pytest.fixture
def fake_torchrun(monkeypatch):
    """WORLD_SIZE 2, LOCAL_RANK 1, one (fake) GPU; records set_device and init_process_group instead of running."""
    from memrl import distributed as dist
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setattr(dist.tdist, "init_process_group", lambda backend: calls.append(("init", backend)))
    monkeypatch.setattr(dist, "_device", None)
    return calls


def monkeypatch_world(monkeypatch):
    """What world_size() and local_rank() say once the (faked) process group of fake_torchrun runs."""
    from memrl import distributed as dist
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    monkeypatch.setattr(dist, "local_rank", lambda: 1)


def test_init_on_one_gpu_with_two_ranks(fake_torchrun, monkeypatch):
    from memrl import distributed as dist
    for device in ("cuda", "auto"):  # auto resolves to cuda, as Config.device does
        with pytest.raises(ValueError, match="LOCAL_RANK 1 has no GPU of its own: this machine has 1 CUDA device"):
            dist.init(device)
    assert fake_torchrun == []  # refused before touching the device or starting a process group
    assert dist.init("cpu")
    assert fake_torchrun == [("init", "gloo")]  # no set_device, no NCCL
    monkeypatch_world(monkeypatch)
    assert dist.local_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="LOCAL_RANK 1 has no GPU"):
        dist.local_device(torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"started for cpu \(no NCCL\), so this run cannot use cuda:1"):
        dist.local_device(torch.device("cuda"))  # the trainer's device must agree with init's


def test_init_cuda_pins_the_local_rank(fake_torchrun, monkeypatch):
    from memrl import distributed as dist
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert dist.init("cuda")
    assert fake_torchrun == [("set_device", torch.device("cuda", 1)), ("init", "cpu:gloo,cuda:nccl")]
    monkeypatch_world(monkeypatch)
    assert dist.local_device(torch.device("cuda")) == torch.device("cuda", 1)
    assert dist.local_device(torch.device("cpu")) == torch.device("cpu")  # CPU tensors go through gloo
