"""Recurrent PPO for the batched memory envs.

Gradient path to the cue. DelayedCue episodes have a fixed length, every env starts together, and the
default rollout length T is the horizon, so rollouts are episode-aligned: each one holds exactly one
whole episode per env, and `evaluate` runs it from its stored initial state with full backpropagation
through time from the query back to the cue (T = horizon steps). For other T, `burn_in` > 0 replays
the last `burn_in` steps of the previous rollout with gradient (from the state stored where that
prefix began) before each sequence, so dependencies up to burn_in + 1 steps cross rollout boundaries.

Envs: any TorchVectorEnv (memrl/envs/base.py). The horizon curriculum runs only for a HorizonEnv (the
torch-native memory tasks); other envs (gymnasium, through GymVectorEnv) train at their own episode lengths in
rollouts of cfg.rollout_len (default 128) steps, judged by returns instead of success.

Truncation is not termination: GAE stops at both, but a truncated step bootstraps with the value of the ended
episode's final obs (RolloutActor computes it from the recurrent state before the reset); a terminated one does not.

Sections of `train()`: rollout (acting under inference_mode, rollout.py; on CUDA replayed as CUDA graphs of up
to 100 steps) -> advantages (GAE) -> update (epochs x minibatches of whole env sequences; the loss is loss.py's
pure function, the minibatch step update.py's, on CUDA replayed as a CUDA graph) -> logging / evaluation /
checkpoint.

Data parallel (under torchrun, see memrl/distributed.py and docs/distributed.md): every rank steps its own
`num_envs` envs with its own seed; gradients are averaged by one explicit all-reduce per minibatch (not
DDP, whose hooks only follow `forward()` while PPO trains through `evaluate()`); advantages are
normalised with global statistics; every decision (gate penalty, KL stop, curriculum, evaluation
trigger, stop) is taken from reduced metrics or rank 0's broadcast evaluation. Each `if self.world > 1`
branch below is a collective; with one process none of them runs.
"""
from __future__ import annotations

import os
import time

import torch
from torch.profiler import record_function

from .. import distributed as dist
from ..config import Config, resolve_device
from ..envs import HorizonEnv, make_env
from ..models import ActorCritic
from .evaluate import evaluate_policy
from .gae import gae
from .rollout import RolloutActor
from .update import MinibatchUpdater


DEFAULT_ROLLOUT_LEN = 128  # rollout_len=0 for an env without a horizon knob (CleanRL's PPO default)


class NonFiniteError(RuntimeError):
    """A loss, gradient, parameter or recurrent state became NaN/inf; training stopped."""


def build_model(cfg: Config, obs_dim: int, num_actions) -> ActorCritic:
    """num_actions: env.action_components (n, a tuple of sizes, or BoxActions(K))."""
    return ActorCritic(obs_dim, num_actions, controller=cfg.controller, memory=cfg.memory, d_model=cfg.d_model,
                       n_layers=cfg.n_layers, d_state=cfg.d_state, headdim=cfg.headdim, expand=cfg.expand,
                       mem_slots=cfg.mem_slots, mem_dim=cfg.mem_dim,
                       mem_max_timescale=cfg.mem_timescale_factor * cfg.horizon, mem_gate_init=cfg.mem_gate_init,
                       mem_chunk=cfg.mem_chunk, head_hidden=cfg.head_hidden, ssm_chunk=cfg.ssm_chunk)


def _all_finite(tensors) -> torch.Tensor:
    """0-dim bool tensor: every element of every tensor is finite (no host sync)."""
    return torch.stack([torch.isfinite(t).all() for t in tensors]).all()


def _terms(pg, v, entropy, gate) -> str:
    return f"pg={pg.item()} v={v.item()} entropy={entropy.item()} gate={gate.item()}"


class PPOTrainer:
    def __init__(self, cfg: Config, run_dir: str | None = None):
        self.cfg = cfg
        self.run_dir = run_dir
        self.world, self.rank = dist.world_size(), dist.rank()
        self.device = dist.local_device(resolve_device(cfg.device))
        torch.manual_seed(cfg.seed)  # same on every rank: identical model init (broadcast from rank 0 below)
        seed = cfg.seed + dist.RANK_SEED_STRIDE * self.rank  # envs and action sampling differ per rank
        self.env_kwargs = dict(horizon=cfg.horizon, num_cues=cfg.num_cues, noise=cfg.noise, workers=cfg.env_workers)
        self.env = make_env(cfg.env, num_envs=cfg.num_envs, device=self.device,
                            **{**self.env_kwargs, "horizon": cfg.first_horizon})
        self.curriculum = isinstance(self.env, HorizonEnv)  # only an env with a horizon knob has one
        # the curriculum stage (also the horizon of the periodic evaluation); the full horizon without a knob
        self.train_horizon = cfg.first_horizon if self.curriculum else cfg.horizon
        self.model = build_model(cfg, self.env.single_observation_space.shape[0],
                                 self.env.action_components).to(self.device)
        dist.broadcast_params(self.model)
        # CUDA: the fused Adam (one multi-tensor kernel per step: the update's host time; the same Adam to rounding)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, eps=1e-5,
                                          fused=True if self.device.type == "cuda" else None)
        self.gen = torch.Generator(device=self.device)  # action sampling and minibatch order
        self.gen.manual_seed(seed)
        self.actor = RolloutActor(self.model, self.env, self.gen, use_cuda_graph=cfg.cuda_graph)
        self.updater = MinibatchUpdater(self.model, self.optimizer, cfg, use_cuda_graph=cfg.update_graph,
                                        world=self.world)
        self.env_seed = seed
        self.obs, _ = self.env.reset(seed=seed)
        self.next_reset = torch.ones(cfg.num_envs, dtype=torch.bool, device=self.device)
        self.state = self.model.init_state(cfg.num_envs, self.device)
        self.running_return = torch.zeros(cfg.num_envs, device=self.device)  # of each env's current episode
        self.prefix = None  # burn-in: {"obs" (N, B, O), "reset" (N, B), "state"} from the previous rollout
        self.update_idx = 0
        self.env_steps = 0
        self.wall_time = 0.0
        self.last_eval: dict | None = None
        self.solved = False

    @property
    def rollout_len(self) -> int:
        """T: cfg.rollout_len, or the current training horizon (episode-aligned rollouts), or
        DEFAULT_ROLLOUT_LEN for an env without a horizon knob."""
        return self.cfg.rollout_len or (self.train_horizon if self.curriculum else DEFAULT_ROLLOUT_LEN)

    # ------------------------------------------------------------------------------------------- rollout
    def collect_rollout(self) -> dict:
        cfg, n, length = self.cfg, self.cfg.num_envs, self.rollout_len
        state0 = {k: v.clone() for k, v in self.state.items()}
        snap_at = length - min(cfg.burn_in, length)  # burn-in: the state where next update's prefix begins
        out = self.actor.run(self.obs, self.next_reset, self.state, length, snap_at)
        self.obs, self.next_reset, self.state = out.pop("next_obs"), out.pop("next_reset"), out.pop("next_state")
        roll = {**out, "state0": state0, "ended_return": self._ended_return(out["rewards"], out["dones"])}
        finite = bool(_all_finite([roll["values"], *self.state.values()]))
        if self.world > 1:
            finite = dist.all_true(finite)
        if not finite:
            raise NonFiniteError(f"non-finite recurrent state or value during rollout {self.update_idx + 1}")
        self.env_steps += n * length * self.world
        return roll

    def _ended_return(self, rewards: torch.Tensor, dones: torch.Tensor) -> torch.Tensor:
        """(N,): per env, the sum of the whole returns of its episodes that ended in this rollout ((N, T) rewards
        and dones; episodes begun in earlier rollouts included, via running_return)."""
        counted = dones.int().flip(1).cummax(1).values.flip(1).bool()  # (N, T): an episode end at or after t
        ended_any = counted[:, 0]  # (N,)
        ended = self.running_return * ended_any + (rewards * counted).sum(1)
        self.running_return = self.running_return * ~ended_any + (rewards * ~counted).sum(1)  # the open episode's
        return ended

    # ------------------------------------------------------------------------------------------- update
    def _update_data(self, roll: dict, adv: torch.Tensor, returns: torch.Tensor) -> dict:
        """The update's inputs for all envs (MinibatchUpdater.begin): sequences with the burn-in prefix in front."""
        data = {"obs": roll["obs"], "reset": roll["reset"], "state": roll["state0"], "skip": 0,
                "actions": roll["actions"], "logp": roll["logp"], "adv": adv, "returns": returns,
                "values": roll["values"]}
        if self.prefix is not None:
            p = self.prefix
            data.update(obs=torch.cat([p["obs"], roll["obs"]], 1), reset=torch.cat([p["reset"], roll["reset"]], 1),
                        state=p["state"], skip=p["obs"].shape[1])  # (N, B+T, O), (N, B+T)
        return data

    def update(self, roll: dict, success: float | None = None) -> dict:
        """Epochs x minibatches of PPO on `roll`. success: the (global) rollout success rate, if known."""
        cfg, model = self.cfg, self.model
        with record_function("memrl.gae"):  # labels for torch.profiler (bench/memrl_speed.py --profile)
            adv, returns = gae(roll["rewards"], roll["values"], roll["dones"], roll["last_value"], cfg.gamma,
                               cfg.gae_lambda, truncated=roll["truncated"], final_values=roll["final_values"])
        n = cfg.num_envs
        mb = n // cfg.num_minibatches
        # Adam follows any consistent gradient whatever its weight, so an L1 penalty on the gate from the start
        # drives the writes to zero before the policy has learned to use them (the prototype's failure).
        # It is switched on once the task is being solved; without a success metric (success is NaN) only with
        # gate_penalty_after = 0 (always).
        if success is None:
            success = self.rollout_stats(roll)["success"]
        gate_coef = cfg.gate_coef if cfg.gate_penalty_after == 0 or success >= cfg.gate_penalty_after else 0.0
        # Statistics and finite checks stay on the device until the end of the update (update.py): a host sync
        # per minibatch would stall the host until the GPU drains, so its launches could not overlap the GPU's work.
        with record_function("memrl.update_begin"):
            self.updater.begin(self._update_data(roll, adv, returns), gate_coef)
        with record_function("memrl.minibatches"):
            stop = self._epochs(adv, n, mb)
        res = self.updater.finish()
        count, (pg_loss, v_loss, entropy, gate_loss) = res["steps"], res["last"]
        # one host sync for the flags, the parameters' finite check and the statistics (each a 0-dim tensor)
        stats = res["stats"]
        params_finite = _all_finite(list(model.parameters()))
        local = [res["first_bad"].float(), params_finite.float(), *(v / count for v in stats.values())]
        if self.world == 1:
            var_ret, var_res = returns.var(), (returns - roll["values"]).var()
            local += [1 - var_res / var_ret, var_ret]
        with record_function("memrl.update_sync"):  # the host waits here for the GPU to drain
            host = torch.stack(local).tolist()
        first = int(host[0])  # equal on every rank: the loss flags were all-reduced and the gradients are identical
        if first >= 0:
            per_epoch = -(-n // mb)
            raise NonFiniteError(f"non-finite loss or gradient norm at update {self.update_idx + 1}, epoch "
                                 f"{first // per_epoch}, minibatch {first % per_epoch}"
                                 + (f" (on some of {self.world} ranks)" if self.world > 1 else "")
                                 + f"; last minibatch: {_terms(pg_loss, v_loss, entropy, gate_loss)}")
        if not host[1]:
            raise NonFiniteError(f"non-finite parameters after update {self.update_idx + 1}")
        stats = dict(zip(stats, host[2:2 + len(stats)]))
        if self.world > 1:
            stats = dict(zip(stats, dist.mean_values(*stats.values())))
            var_ret = dist.global_mean_std(returns)[1] ** 2
            var_res = dist.global_mean_std(returns - roll["values"])[1] ** 2
            explained, var_ret = float(1 - var_res / var_ret), float(var_ret)
        else:
            explained, var_ret = host[-2:]
        stats["explained_var"] = explained if var_ret > 0 else float("nan")
        stats["kl_stop"] = stop
        stats["gate_coef"] = gate_coef
        if cfg.burn_in > 0:
            b = min(cfg.burn_in, roll["obs"].shape[1])
            self.prefix = {"obs": roll["obs"][:, -b:], "reset": roll["reset"][:, -b:], "state": roll["snapshot"]}
        return stats

    def _epochs(self, adv: torch.Tensor, n: int, mb: int) -> bool:
        """cfg.update_epochs passes over the envs in random minibatches of mb. Returns whether the KL early stop
        ended them."""
        cfg = self.cfg
        for epoch in range(cfg.update_epochs):
            perm = torch.randperm(n, device=self.device, generator=self.gen)
            if cfg.norm_adv and self.world > 1:  # statistics of each global minibatch (union over ranks), all at once
                mb_mean, mb_std = dist.global_mean_std(adv[perm].view(n // mb, -1), per_row=True)  # (n_mb,) each
            for start in range(0, n, mb):
                norm = (mb_mean[start // mb], mb_std[start // mb]) if cfg.norm_adv and self.world > 1 else ()
                self.updater.step(perm[start:start + mb], *norm)
            if cfg.target_kl > 0:  # one host sync per epoch, only with the early stop on
                kl = float(self.updater.sb["stats"]["approx_kl"]) / self.updater.steps
                if self.world > 1:  # decided from the rank mean: identical on every rank
                    kl = dist.mean_values(kl)[0]
                if kl > cfg.target_kl:
                    return True
        return False

    # ------------------------------------------------------------------------------------------- loop
    def rollout_stats(self, roll: dict) -> dict:
        """Episodes, mean return, success rate (NaN without a success metric), gate mean of the rollout (over all
        ranks when distributed). The return counts the rewards of the rollout's steps per episode ended in it."""
        dones = roll["dones"]
        episodes = int(dones.sum())
        total = float(roll["ended_return"].sum())
        successes = float(roll["success"].sum()) if roll["success"] is not None else float("nan")
        if self.world > 1:  # sums of counts: exact in float64, so every rank takes the same decisions
            gate = roll["gate"]
            gate_sum, gate_n = (float(gate.double().sum()), gate.numel()) if gate is not None else (0.0, 0)
            episodes, total, successes, gate_sum, gate_n = dist.sum_values(episodes, total, successes, gate_sum,
                                                                           gate_n)
            episodes = int(episodes)
            gate_mean = gate_sum / gate_n if gate_n else float("nan")
        else:
            gate_mean = float(roll["gate"].mean()) if roll["gate"] is not None else float("nan")
        return {"episodes": episodes, "return": total / episodes if episodes else float("nan"),
                "success": successes / max(episodes, 1),
                "gate_mean": gate_mean}

    def evaluate(self, episodes: int | None = None, seed: int | None = None, horizon: int | None = None) -> dict:
        """evaluate_policy on fresh episodes of `horizon` (default: the full cfg.horizon), plus "horizon"."""
        seed = self.cfg.seed * 100_003 + self.update_idx if seed is None else seed
        horizon = horizon or self.cfg.horizon
        kwargs = {**self.env_kwargs, "horizon": horizon, "workers": 0}  # evaluation steps gymnasium envs in-process
        res = evaluate_policy(self.model, kwargs, episodes or self.cfg.eval_episodes, seed, self.device,
                              env_name=self.cfg.env)
        return {**res, "horizon": horizon}

    def train_step(self) -> dict:
        """One rollout + one update (+ evaluation when due). Returns the logged metrics."""
        cfg = self.cfg
        t0 = time.perf_counter()
        if cfg.anneal_lr:
            frac = max(0.0, 1.0 - self.env_steps / cfg.total_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = frac * cfg.lr
        if cfg.debug_nan_at_update == self.update_idx + 1:
            with torch.no_grad():
                next(self.model.parameters()).view(-1)[0] = float("nan")
        roll = self.collect_rollout()
        t_roll = time.perf_counter() - t0
        rstats = self.rollout_stats(roll)
        stats = self.update(roll, success=rstats["success"])
        self.update_idx += 1
        stats.update(rstats)
        dt = time.perf_counter() - t0
        self.wall_time += dt
        sps = cfg.num_envs * roll["obs"].shape[1] / dt
        if self.world > 1:  # env-steps/s of all ranks together
            sps = dist.sum_values(sps)[0]
        stats.update({"update": self.update_idx, "sps": sps,
                      "rollout_s": t_roll, "update_s": dt - t_roll, "wall": self.wall_time,
                      "train_horizon": self.train_horizon})
        # evaluation at the current training horizon; only one at the full horizon can stop the run
        full = self.train_horizon >= cfg.horizon
        if self.update_idx % cfg.eval_interval == 0 or (full and stats["success"] >= cfg.eval_trigger):  # NaN: no
            t1 = time.perf_counter()
            self.last_eval = self.evaluate(horizon=self.train_horizon) if self.rank == 0 else None
            if self.world > 1:  # rank 0 evaluates; its result (and so the stop decision) goes to every rank
                self.last_eval = dist.broadcast_object(self.last_eval)
            self.wall_time += time.perf_counter() - t1
            ev = self.last_eval
            stats["eval_return"], stats["eval_horizon"] = ev["mean_return"], self.train_horizon
            if ev["success_rate"] is not None:
                stats["eval_success"] = ev["success_rate"]
            self.solved = full and ((ev["success_rate"] is not None and ev["success_rate"] >= cfg.target_success)
                                    or ev["mean_return"] >= cfg.target_return)
        if not full and stats["success"] >= cfg.curriculum_success:  # curriculum: stage solved, lengthen episodes
            self.train_horizon = min(cfg.horizon, int(round(self.train_horizon * cfg.curriculum_factor)))
            self.env.set_horizon(self.train_horizon)
        return stats

    def close(self) -> None:
        """Release the env (a gymnasium AsyncVectorEnv's worker processes)."""
        self.env.close()

    # ------------------------------------------------------------------------------------------- checkpoints
    def _rank_state(self) -> dict:
        """What differs between ranks: RNGs, envs, current obs, recurrent states, burn-in prefix (on CPU)."""
        cpu = lambda d: {k: v.detach().clone().cpu() for k, v in d.items()}  # noqa: E731
        return {
            "gen": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
            "env": self.env.state_dict() if self.env.checkpointable else None, "obs": self.obs.cpu(), "next_reset": self.next_reset.cpu(),
            "state": cpu(self.state), "running_return": self.running_return.cpu(),
            "prefix": None if self.prefix is None else {"obs": self.prefix["obs"].cpu(),
                                                        "reset": self.prefix["reset"].cpu(),
                                                        "state": cpu(self.prefix["state"])},
        }

    def state_dict(self) -> dict:
        """The checkpoint. Distributed (a collective): rank 0's per-rank fields at the top level, every rank's
        under "ranks"; model, optimizer and counters are the same on all ranks and stored once."""
        ckpt = {"version": 1, "config": self.cfg.to_dict(), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), **self._rank_state(), "world_size": self.world,
                "counters": {"train_horizon": self.train_horizon, "update": self.update_idx,
                             "env_steps": self.env_steps, "wall_time": self.wall_time, "solved": self.solved,
                             "last_eval": self.last_eval}}
        if self.world > 1:
            ckpt["env"] = _to_cpu(ckpt["env"])
            ckpt["ranks"] = dist.gather_objects(_to_cpu(self._rank_state()))
        return ckpt

    def load_state_dict(self, ckpt: dict) -> None:
        check_world_size(ckpt, self.world)
        dev = self.device
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        mine = ckpt["ranks"][self.rank] if self.world > 1 else ckpt
        self.gen.set_state(mine["gen"])
        torch.set_rng_state(mine["torch_rng"])
        c = ckpt["counters"]
        if mine["env"] is None:  # a gymnasium env's state was not saved: fresh episodes, re-seeded (not exact)
            self.obs, _ = self.env.reset(seed=self.env_seed + 1_000_003 * int(c["update"]))
            self.next_reset = torch.ones(self.cfg.num_envs, dtype=torch.bool, device=dev)
            self.state, self.prefix = self.model.init_state(self.cfg.num_envs, dev), None
            self.running_return = torch.zeros(self.cfg.num_envs, device=dev)
        else:
            self.env.load_state_dict(mine["env"])
            self.obs, self.next_reset = mine["obs"].to(dev), mine["next_reset"].to(dev)
            self.state = {k: v.to(dev) for k, v in mine["state"].items()}
            self.running_return = mine["running_return"].to(dev)
            p = mine["prefix"]
            self.prefix = None if p is None else {"obs": p["obs"].to(dev), "reset": p["reset"].to(dev),
                                                  "state": {k: v.to(dev) for k, v in p["state"].items()}}
        self.train_horizon = c["train_horizon"]
        self.update_idx, self.env_steps, self.wall_time = c["update"], c["env_steps"], c["wall_time"]
        self.solved, self.last_eval = c["solved"], c["last_eval"]

    def save(self, path: str) -> None:
        """Atomic write: a crash mid-save never leaves a broken checkpoint. Distributed: a collective; rank 0
        writes."""
        ckpt = self.state_dict()
        if self.rank != 0:
            return
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + ".tmp"
        torch.save(ckpt, tmp)
        os.replace(tmp, path)

    @staticmethod
    def read_checkpoint(path: str) -> dict:
        """The checkpoint at `path` for a resume. Distributed: rank 0 reads the file and broadcasts it (no shared
        filesystem needed); a checkpoint of another world size raises ValueError (check_world_size)."""
        if dist.world_size() == 1:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        else:
            ckpt = dist.broadcast_object(torch.load(path, map_location="cpu", weights_only=False)
                                         if dist.is_main() else None)
        check_world_size(ckpt, dist.world_size(), path)
        return ckpt

    @classmethod
    def from_checkpoint(cls, path: str, run_dir: str | None = None, **overrides) -> "PPOTrainer":
        """Resume from `path` (read_checkpoint), its config updated with `overrides`."""
        ckpt = cls.read_checkpoint(path)
        trainer = cls(Config(**{**ckpt["config"], **overrides}), run_dir=run_dir)
        trainer.load_state_dict(ckpt)
        return trainer


def _to_cpu(obj):
    """Tensors in nested dicts/lists moved to the CPU (for gathering per-rank state)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def check_world_size(ckpt: dict, world: int, path: str = "the checkpoint") -> None:
    """Resume needs the world size that wrote the checkpoint: each rank's envs, RNGs and recurrent states are
    in it, and the batch (num_envs per rank x world size) would change. ValueError otherwise."""
    saved = int(ckpt.get("world_size", 1))
    if saved != world:
        how = ("without torchrun (or with --nproc-per-node=1)" if saved == 1 else
               f"under torchrun with {saved} processes in all (--nnodes x --nproc-per-node = {saved})")
        raise ValueError(f"cannot resume {path}: it was written by a run of world size {saved} and this run has "
                         f"world size {world}; resume it {how}")


def load_policy(path: str, device="cpu"):
    """(model, config) from a checkpoint, model in eval mode on `device`."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    cfg = Config(**{**ckpt["config"], "device": str(device)})
    env = make_env(cfg.env, num_envs=1, horizon=cfg.horizon, num_cues=cfg.num_cues, noise=cfg.noise)
    model = build_model(cfg, env.single_observation_space.shape[0], env.action_components)
    env.close()
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), cfg


