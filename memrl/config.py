"""Training configuration: one dataclass, every field documented by the string under it.

`field_docs()` reads those strings (the CLI uses them as help text; a test checks none is missing).
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import re
from dataclasses import dataclass

DEVICES = ("auto", "cpu", "cuda", "mps")  # and cuda:N


class ConfigError(ValueError):
    """A Config field outside its range. str(): '<field> must be <rule>, got <value>'; `field`, `rule` and `value`
    let the CLI say the same with the flag's name (flag_message)."""

    def __init__(self, field: str, rule: str, value):
        self.field, self.rule, self.value = field, rule, value
        super().__init__(f"{field} must be {rule}, got {value!r}")

    def flag_message(self) -> str:
        return f"--{self.field.replace('_', '-')} must be {self.rule}, got {self.value!r}"


# integer fields: smallest allowed value
_INT_MIN = {"horizon": 2, "num_cues": 2, "num_envs": 1, "d_model": 1, "n_layers": 1, "d_state": 1, "headdim": 1,
            "expand": 1, "ssm_chunk": 1, "mem_slots": 1, "mem_dim": 1, "mem_chunk": 1, "head_hidden": 1,
            "curriculum_start": 0, "rollout_len": 0, "burn_in": 0, "total_steps": 1, "update_epochs": 1,
            "num_minibatches": 1, "eval_episodes": 1, "eval_interval": 1, "checkpoint_interval": 1,
            "debug_nan_at_update": 0, "env_workers": 0}
# float fields: the rule they must satisfy (and be finite)
_RULES = {">= 0": lambda v: v >= 0, "> 0": lambda v: v > 0, "> 1": lambda v: v > 1,
          "in [0, 1]": lambda v: 0 <= v <= 1, "in (0, 1)": lambda v: 0 < v < 1}
_FLOAT_RULE = {"noise": ">= 0", "mem_timescale_factor": "> 0", "mem_gate_init": "in (0, 1)",
               "curriculum_factor": "> 1", "curriculum_success": "in [0, 1]", "lr": "> 0", "gamma": "in [0, 1]",
               "gae_lambda": "in [0, 1]", "clip_coef": "> 0", "vf_coef": ">= 0", "ent_coef": ">= 0",
               "gate_coef": ">= 0", "gate_penalty_after": "in [0, 1]", "max_grad_norm": "> 0", "target_kl": ">= 0",
               "eval_trigger": ">= 0", "target_success": "> 0"}


@dataclass
class Config:
    # --- environment -------------------------------------------------------------------------------------
    env: str = "DelayedCue"
    """Task: DelayedCue, TMaze, RepeatFirst (torch-native), a registered gymnasium id (CartPole-v1) or module:Class."""
    env_workers: int = 0
    """gymnasium envs: 0 = SyncVectorEnv in this process; N > 0 = AsyncVectorEnv (gymnasium: one process per env)."""
    horizon: int = 200
    """Episode length: cue at t=0, query at t=horizon-1."""
    num_cues: int = 2
    """Number of distinct cues (and actions); RepeatFirst's num_symbols; TMaze has 2 (only 2 is accepted)."""
    noise: float = 0.0
    """Std of Gaussian noise in the blank observations (0 = zeros)."""
    num_envs: int = 512
    """Parallel environments per rollout."""
    # --- model -------------------------------------------------------------------------------------------
    controller: str = "mamba2"
    """Recurrent controller: mamba2, gru or lstm."""
    memory: bool = True
    """Use the PseudoMode memory (False = controller only)."""
    d_model: int = 64
    """Width of the encoder and controller."""
    n_layers: int = 1
    """Controller layers."""
    d_state: int = 16
    """Mamba2 state size N."""
    headdim: int = 32
    """Mamba2 head dim P (heads = expand * d_model / headdim)."""
    expand: int = 2
    """Mamba2 inner expansion."""
    ssm_chunk: int = 50
    """Mamba2 SSD chunk length in training (50 divides the default horizon, so nothing is padded)."""
    mem_slots: int = 16
    """PseudoMode slots M."""
    mem_dim: int = 64
    """PseudoMode slot dim Dm."""
    mem_timescale_factor: float = 10.0
    """Longest initial slot timescale, in horizons (shortest is 2 steps)."""
    mem_gate_init: float = 0.02
    """Initial write-gate value g."""
    mem_chunk: int = 16
    """Chunk length of the memory's parallel scan."""
    head_hidden: int = 64
    """Hidden width of the policy and value heads."""
    curriculum_start: int = 20
    """First training horizon of the curriculum (0 = train at `horizon` from the start; else >= 2)."""
    curriculum_factor: float = 2.5
    """Multiply the training horizon by this whenever a stage is solved (capped at `horizon`)."""
    curriculum_success: float = 0.9
    """Rollout success rate that completes a curriculum stage."""
    # --- PPO ---------------------------------------------------------------------------------------------
    rollout_len: int = 0
    """Steps per rollout T (0 = the training horizon: episode-aligned rollouts; 128 for envs without a horizon knob)."""
    burn_in: int = 0
    """Steps of the previous rollout replayed with gradient before each sequence (0 = none)."""
    total_steps: int = 20_000_000
    """Stop after this many env steps if the target is not reached."""
    lr: float = 2e-3
    """Adam learning rate."""
    anneal_lr: bool = False
    """Decay the learning rate linearly to 0 over total_steps."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    update_epochs: int = 2
    """Passes over each rollout."""
    num_minibatches: int = 8
    """Minibatches per epoch, split by env so sequences stay whole."""
    clip_coef: float = 0.2
    """PPO ratio clip."""
    clip_vloss: bool = True
    """Clip the value loss around the old values."""
    vf_coef: float = 0.5
    """Value loss weight."""
    ent_coef: float = 0.01
    """Entropy bonus weight."""
    gate_coef: float = 1e-3
    """L1 penalty weight on the memory write gate."""
    gate_penalty_after: float = 0.75
    """Apply the gate penalty only once rollout success reaches this (0 = always)."""
    max_grad_norm: float = 0.5
    """Global gradient norm clip."""
    norm_adv: bool = True
    """Normalise advantages per minibatch."""
    target_kl: float = 0.0
    """Stop an update's epochs early when approx-KL exceeds this (0 = never)."""
    # --- evaluation, stopping, logging --------------------------------------------------------------------
    eval_episodes: int = 1000
    """Fresh episodes per evaluation (greedy actions)."""
    eval_interval: int = 10
    """Evaluate every this many updates, at the current training horizon (a curriculum stage or the full horizon)."""
    eval_trigger: float = 0.9
    """At the full horizon, also evaluate after any rollout whose success rate reaches this (> 1: never)."""
    target_success: float = 0.99
    """Stop when evaluation success at the full horizon reaches this (> 1: never stop early)."""
    target_return: float = float("inf")
    """Stop when the evaluation mean return at the full horizon reaches this (inf: never); for envs without success."""
    checkpoint_interval: int = 5
    """Save RUN_DIR/checkpoint.pt every this many updates (and at the end)."""
    seed: int = 1
    """Seed of the model init, the envs and action sampling."""
    device: str = "auto"
    """auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps."""
    cuda_graph: bool = True
    """On CUDA, capture each rollout's acting loop as one CUDA graph and replay it (False = eager launches)."""
    update_graph: bool = True
    """On CUDA, capture the PPO minibatch step (evaluate, loss, backward, clipping) as a CUDA graph and replay it
    for every minibatch (False = eager launches; GRU/LSTM and data parallel always run it eagerly)."""
    out: str = ""
    """Run directory: checkpoint.pt, metrics.jsonl, config.json, curves.png, tb/ ('' = new runs/ENV-H-CONTROLLER-N)."""
    tensorboard: bool = True
    """Write TensorBoard events when tensorboard is installed."""
    progress: bool = True
    """On a terminal, show a tqdm counter of env steps with the curriculum stage and the latest evaluation."""
    debug_nan_at_update: int = 0
    """Testing aid: poison a parameter with NaN before this update (0 = never)."""

    def __post_init__(self):
        from .envs import ENVS, POPGYM_PORTS, check_env_name  # the registries (here: `memrl --help` needs no torch)
        from .models.controllers import CONTROLLERS
        try:
            check_env_name(self.env)
        except ValueError as err:
            detail = f"; {err}" if ":" in str(self.env) or str(self.env).startswith("popgym-") else ""
            raise ConfigError("env", f"one of {', '.join(ENVS)}, a registered gymnasium id or module:Class{detail}",
                              self.env) from None
        if self.controller not in CONTROLLERS:
            raise ConfigError("controller", "one of " + ", ".join(CONTROLLERS), self.controller)
        if self.device not in DEVICES and not re.fullmatch(r"cuda:\d+", str(self.device)):
            raise ConfigError("device", "one of " + ", ".join(DEVICES) + " or cuda:N", self.device)
        for name, low in _INT_MIN.items():
            v = getattr(self, name)
            is_int = isinstance(v, int) and not isinstance(v, bool)
            if not is_int or v < low:
                raise ConfigError(name, f">= {low}" if is_int else f"an integer >= {low}", v)
        for name, rule in _FLOAT_RULE.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not _RULES[rule](v):
                raise ConfigError(name, f"a finite number {rule}", v)
        if isinstance(self.target_return, bool) or not isinstance(self.target_return, (int, float)) \
                or math.isnan(self.target_return):
            raise ConfigError("target_return", "a number (inf: never stop on the return)", self.target_return)
        if self.env_workers and (self.env in ENVS or self.env in POPGYM_PORTS):
            raise ConfigError("env_workers", f"0 for the torch-native env {self.env} (batched in one process)",
                              self.env_workers)
        if self.env == "TMaze" and self.num_cues != 2:
            raise ConfigError("num_cues", "2 for TMaze (it has 2 arms)", self.num_cues)
        if self.num_envs % self.num_minibatches:
            raise ConfigError("num_envs", f"a multiple of num_minibatches ({self.num_minibatches})", self.num_envs)
        if self.curriculum_start == 1:
            raise ConfigError("curriculum_start", "0 (no curriculum) or >= 2", 1)
        if self.rollout_len and self.burn_in > self.rollout_len:
            raise ConfigError("burn_in", f"<= rollout_len ({self.rollout_len})", self.burn_in)
        if self.controller == "mamba2" and (self.expand * self.d_model) % self.headdim:
            raise ConfigError("headdim", f"a divisor of expand * d_model = {self.expand * self.d_model} for the "
                              "mamba2 controller", self.headdim)

    @property
    def torch_native(self) -> bool:
        """Whether env is one of the torch-native tasks (with a horizon knob and a success metric)."""
        from .envs import ENVS
        return self.env in ENVS

    @property
    def first_horizon(self) -> int:
        """The training horizon of the first curriculum stage."""
        return min(self.curriculum_start, self.horizon) if self.curriculum_start else self.horizon

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


GYMNASIUM_DEFAULTS = {"num_envs": 16, "num_minibatches": 4, "rollout_len": 128, "update_epochs": 4,
                      "eval_episodes": 100}
"""Defaults that replace Config's for a gymnasium env (no horizon knob, no curriculum; Config's are DelayedCue's)."""


def defaults_for(env: str) -> dict:
    """The Config values that differ from the dataclass defaults for this env: GYMNASIUM_DEFAULTS for a
    gymnasium env, {} for a torch-native task; a popgym port keeps Config's batch (512 envs) and, where all its
    episodes have one length (the card games), gets rollouts of exactly one episode (episode-aligned, as the memory
    tasks' rollouts are), else the 128-step rollouts of an env without a horizon knob."""
    from .envs import ENVS, POPGYM_PORTS, make_env
    if env in ENVS:
        return {}
    if env in POPGYM_PORTS:
        length = make_env(env, num_envs=1).episode_length
        return {"rollout_len": length} if length else {}
    return dict(GYMNASIUM_DEFAULTS)


def field_docs(cls=Config) -> dict[str, str]:
    """{field name: its docstring}, read from the class source."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr)
                and isinstance(getattr(nxt, "value", None), ast.Constant) and isinstance(nxt.value.value, str)):
            docs[node.target.id] = nxt.value.value.strip()
    return docs


def resolve_device(name: str):
    """auto -> cuda if available, else mps if available, else cpu. Raises if a named device is missing."""
    import torch
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' requested but torch.backends.mps.is_available() is False")
    if name not in ("cpu", "cuda", "mps") and not re.fullmatch(r"cuda:\d+", name):
        raise ValueError(f"device must be one of {', '.join(DEVICES)} or cuda:N, got {name!r}")
    return torch.device(name)
