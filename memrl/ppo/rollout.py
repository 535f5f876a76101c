"""Acting for one rollout: T steps of policy + action sampling + env.step, recorded into (N, T, ...) tensors.

    actor = RolloutActor(model, env, gen, use_cuda_graph=True)
    out = actor.run(obs, reset, state, length=T, snap_at=s)   # records + final obs/reset/state (+ snapshot)

One code path on every device: `_body` acts `k` steps from (obs, reset, state) and writes each step into
record tensors. Eagerly (CPU, MPS, or use_cuda_graph=False) it runs once over the rollout (split where a
snapshot is asked for). On CUDA the rollout is cut into pieces of at most GRAPH_STEPS steps; the body of a
piece is captured once as a CUDA graph on static buffers and replayed, so a piece of ~100 steps x ~100 small
kernels (encoder, Mamba2 decode step, memory, heads, sampling, env) costs one launch instead of thousands:
acting at thousands of envs is launch-bound otherwise. Bounded pieces keep capture time and graph size
independent of the horizon (a 5000-step episode replays one 100-step graph 50 times).

What a graph needs, and how it is met:
- static memory: inputs (obs, reset, recurrent state, the env's tensors) are copied into buffers before each
  replay; the body copies its final values into output buffers; records are copied out after each replay.
- randomness: the action sampler's and the env's CUDA generators are registered with the graph, so each
  replay draws fresh numbers and advances them as eager calls would.
- no host syncs and no compilation inside: the body has no `.item()`/`bool(tensor)`; a short eager warm-up
  (on a side stream, every state restored after it) compiles and autotunes the Triton kernels first.
- Python-level constants are baked in (the env's horizon, shapes): they are part of the graph's key, and a
  new horizon (a curriculum stage) drops the old graphs and captures new ones.
"""
from __future__ import annotations

import torch

from ..models.distributions import sample_actions  # noqa: F401  (the one-categorical sampler, re-exported)


def _clone(state: dict) -> dict:
    return {k: v.clone() for k, v in state.items()}


class RolloutActor:
    """Runs rollouts of `model` (an ActorCritic) in `env` (a batched env), sampling actions with `gen`."""

    GRAPH_STEPS = 100  # longest piece captured as one CUDA graph
    WARMUP_STEPS = 2  # eager steps before a capture (compile + autotune)

    def __init__(self, model, env, gen: torch.Generator, use_cuda_graph: bool = True):
        self.model, self.env, self.gen = model, env, gen
        self.device = torch.device(env.device)
        self.use_cuda_graph = bool(use_cuda_graph) and self.device.type == "cuda" and env.capturable
        self._graphs = {}  # (steps, horizon, N) -> (graph, static buffers)
        self.captures = 0  # graphs captured so far (for tests and benchmarks)

    # ------------------------------------------------------------------------------------------------ body
    def _records(self, obs: torch.Tensor, length: int) -> dict:
        """Empty record tensors (N, length, ...) for obs (N, O)."""
        n = obs.shape[0]
        rec = lambda *shape, dtype=torch.float32: torch.empty(n, length, *shape, dtype=dtype, device=obs.device)  # noqa: E731
        has_gate = getattr(self.model, "memory", None) is not None
        return {"obs": rec(*obs.shape[1:], dtype=obs.dtype), "reset": rec(dtype=torch.bool),
                "actions": rec(*self.model.action_dist.action_shape, dtype=self.model.action_dist.action_dtype), "logp": rec(),
                "values": rec(), "rewards": rec(), "dones": rec(dtype=torch.bool), "truncated": rec(dtype=torch.bool),
                "final_values": rec(), "success": rec(dtype=torch.bool) if self.env.reports_success else None,
                "gate": rec() if has_gate else None}

    def _body(self, obs, reset, state: dict, rec: dict, length: int):
        """Act `length` steps, writing step t into rec[k][:, t]. -> (obs, reset, state, last_value) after them."""
        model, env = self.model, self.env
        for t in range(length):
            out = model.act(obs, state, reset)
            actions, logp = model.action_dist.sample(out.logits, self.gen)
            next_obs, reward, term, trunc, info = env.step(actions)
            done = term | trunc
            rec["truncated"][:, t] = trunc
            # truncation bootstraps: the value of the ended episode's last obs, from the state before the reset
            # (computed only when some episode was truncated; a graph computes it whenever the env can truncate)
            if env.truncates and (self.use_cuda_graph or bool(trunc.any())):
                final_value = model.act(info["final_obs"], out.state, torch.zeros_like(trunc)).value
                rec["final_values"][:, t] = torch.where(trunc, final_value, 0.0)
            else:
                rec["final_values"][:, t] = 0.0
            rec["obs"][:, t] = obs
            rec["reset"][:, t] = reset
            rec["actions"][:, t] = actions
            rec["logp"][:, t] = logp
            rec["values"][:, t] = out.value
            rec["rewards"][:, t] = reward
            rec["dones"][:, t] = done
            if rec["success"] is not None:
                rec["success"][:, t] = info["success"]
            if rec["gate"] is not None:
                rec["gate"][:, t] = out.gate
            obs, reset, state = next_obs, done, out.state
        return obs, reset, state, model.act(obs, state, reset).value

    # ------------------------------------------------------------------------------------------------ graphs
    def _generators(self) -> list:
        gens = [self.gen, *self.env.generators().values()]  # the env's declared generators
        return [g for g in gens if g.device.type == "cuda"]

    def _point_env_at(self, tensors: dict, copy_from: dict | None = None) -> None:
        """Make the env's declared state the given (static) tensors, first copying `copy_from` into them."""
        for k, v in tensors.items():
            src = (copy_from or {}).get(k)
            if src is not None and src is not v:
                v.copy_(src)
        self.env.set_state_tensors(tensors)

    def _graphed_body(self, sb: dict):
        """The body on static buffers sb; its final values are copied into sb's output buffers."""
        obs, reset, state, value = self._body(sb["obs_in"], sb["reset_in"], sb["state_in"], sb["rec"], sb["steps"])
        sb["obs_out"].copy_(obs)
        sb["reset_out"].copy_(reset)
        for k, v in state.items():
            sb["state_out"][k].copy_(v)
        sb["value_out"].copy_(value)
        self._point_env_at(sb["env"], copy_from=self.env.state_tensors())  # the env reassigns its tensors each step

    def _capture(self, obs, reset, state, steps: int) -> dict:
        """Static buffers for pieces of `steps` steps, and their graph (after an eager warm-up)."""
        env_now = self.env.state_tensors()
        sb = {"steps": steps, "obs_in": obs.clone(), "reset_in": reset.clone(), "state_in": _clone(state),
              "rec": self._records(obs, steps), "obs_out": obs.clone(), "reset_out": reset.clone(),
              "state_out": _clone(state), "value_out": torch.empty(obs.shape[0], device=obs.device),
              "env": _clone(env_now)}
        self._warmup(obs, reset, state)
        self._point_env_at(sb["env"], copy_from=env_now)
        sb["graph"] = self._make_graph(sb)
        self.captures += 1
        return sb

    def _warmup(self, obs, reset, state) -> None:
        """A few eager steps on copies, on a side stream (compiles and autotunes the kernels); afterwards the
        generators are restored (the env is pointed back at its own tensors by the caller)."""
        gens = self._generators()
        gen_saved = [g.get_state() for g in gens]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self._point_env_at(_clone(self.env.state_tensors()))
            self._body(obs.clone(), reset.clone(), _clone(state), self._records(obs, self.WARMUP_STEPS),
                       self.WARMUP_STEPS)
        torch.cuda.current_stream(self.device).wait_stream(side)
        torch.cuda.synchronize(self.device)
        for g, s in zip(gens, gen_saved):
            g.set_state(s)

    def _make_graph(self, sb: dict):
        """Capture the body on static buffers sb as a CUDA graph (anything with .replay())."""
        graph = torch.cuda.CUDAGraph()
        for g in self._generators():
            graph.register_generator_state(g)
        # thread_local: CUDA calls of other threads (NCCL's watchdog under torchrun) must not invalidate the capture
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self._graphed_body(sb)
        return graph

    def _replay(self, obs, reset, state, rec: dict, start: int, steps: int):
        key = (steps, repr(self.env.get_extra_state()), obs.shape[0])  # the env's Python-level settings: baked in
        if key not in self._graphs:
            for old in [k for k in self._graphs if k[1:] != key[1:]]:  # a finished curriculum stage: free its pools
                del self._graphs[old]
            self._graphs[key] = self._capture(obs, reset, state, steps)
        sb = self._graphs[key]
        sb["obs_in"].copy_(obs)
        sb["reset_in"].copy_(reset)
        for k, v in state.items():
            sb["state_in"][k].copy_(v)
        self._point_env_at(sb["env"], copy_from=self.env.state_tensors())
        sb["graph"].replay()
        for k, v in rec.items():
            if v is not None:
                v[:, start:start + steps] = sb["rec"][k]
        return sb["obs_out"].clone(), sb["reset_out"].clone(), _clone(sb["state_out"]), sb["value_out"].clone()

    # ------------------------------------------------------------------------------------------------ run
    @torch.inference_mode()
    def run(self, obs: torch.Tensor, reset: torch.Tensor, state: dict, length: int, snap_at: int = -1) -> dict:
        """Act `length` steps from (obs (N, O), reset (N,) bool, state {name: (N, ...)}).

        snap_at in [0, length]: also return the recurrent state after that many steps as "snapshot" (-1: none).
        Returns new tensors: the records "obs", "reset", "actions" ((N, T) or (N, T, K) for K action components),
        "logp", "values", "rewards", "dones" (terminated or truncated), "truncated", "final_values" (the value of
        the final obs where truncated, else 0) (N, T), "success" (N, T) or None (an env without a success metric)
        and "gate" (N, T) or None; "last_value" (N,) of the final obs; "next_obs", "next_reset",
        "next_state" (the final values) and "snapshot" (a state dict, or None).
        """
        rec = self._records(obs, length)
        cuts = sorted({0, length} | ({snap_at} if 0 <= snap_at <= length else set()))
        pieces = []
        for a, b in zip(cuts, cuts[1:]):
            size = self.GRAPH_STEPS if self.use_cuda_graph else b - a
            pieces += [(s, min(s + size, b)) for s in range(a, b, size)]
        snapshot = _clone(state) if snap_at == 0 else None
        value = None
        for a, b in pieces:
            if self.use_cuda_graph:
                obs, reset, state, value = self._replay(obs, reset, state, rec, a, b - a)
            else:
                view = {k: None if v is None else v[:, a:b] for k, v in rec.items()}
                obs, reset, state, value = self._body(obs, reset, state, view, b - a)
            if b == snap_at:
                snapshot = _clone(state)
        if value is None:  # length 0
            value = self.model.act(obs, state, reset).value
        return {**rec, "last_value": value, "next_obs": obs, "next_reset": reset, "next_state": state,
                "snapshot": snapshot}
