"""Training configuration: dataclasses grouped by concern, presets, overrides, validation.

Every field has a one-line docstring under it. ``TrainConfig.validate()`` runs before any model loads and
raises ``ConfigError`` naming the field and the broken rule. Presets:

| preset | model | what it is for |
|---|---|---|
| ``tiny`` | 2-layer random model (3M params) | tests and CI: seconds |
| ``demo`` | SmolLM2-135M-Instruct (CPU, fp32) | the README's main job: a few minutes on a laptop |
| ``study`` | SmolLM2-135M-Instruct (CPU, fp32) | the paper's three claims in direction: 3 seeds with ``triplay compare --comparison study`` (67-78 min a seed measured on 2 shared cores) |
| ``qwen3-4b`` | Qwen/Qwen3-4B on one GPU, vLLM rollouts | the paper's smallest scale (``pip install 'triplay[vllm]'``) |
| ``qwen3-8b`` | Qwen/Qwen3-8B on one GPU, vLLM rollouts | the paper's middle scale |

Overrides: ``--set grpo.lr=5e-5`` (dotted key = YAML value) and ``--config file.yaml`` (nested mapping).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agents.judge_spec import DEFAULT_PANEL

__all__ = ["ConfigError", "TrainConfig", "PRESETS", "preset", "apply_overrides", "config_diff"]


class ConfigError(ValueError):
    """A configuration that breaks a rule; the message names the field."""


@dataclass
class ModelConfig:
    name: str = "tiny"
    """``tiny`` (random 2-layer model for tests), ``smollm2-135m`` (offline GGUF), a local folder or a hub id"""
    dtype: str = "float32"
    """``float32`` or ``bfloat16`` (bf16 halves memory; on CPUs without AVX512-BF16 it is far slower: measure first)"""
    device: str = "auto"
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``"""
    backend: str = "hf"
    """rollout generation: ``hf`` (transformers, in process) or ``vllm`` (an in-process multi-LoRA engine that
    gets each role's adapter after every update; GPU presets; needs the ``vllm`` extra)"""
    vllm_memory_fraction: float = 0.3
    """vLLM backend: share of GPU memory the engine may take (weights + KV cache); the trainer holds the rest
    (TRL's colocated default 0.3); on CPU vLLM reads it as a share of RAM"""
    vllm_tensor_parallel_size: int = 1
    """vLLM backend: GPUs one engine spans (one process only; under torchrun every rank owns one engine on its
    own GPU, so it must be 1 there)"""
    lora_r: int = 8
    """LoRA rank of every role adapter (our choice for small models)"""
    lora_alpha: int = 16
    """LoRA alpha (scaling alpha / r = 2)"""
    lora_target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    """modules that get adapters"""
    max_prompt_tokens: int = 512
    """longer prompts keep their last tokens (with a warning)"""


@dataclass
class GameConfig:
    num_defenders: int = 1
    """defender_0 is trained; defender_1.. are fixed reference defenders (paper: 3 with weights 0.6/0.2/0.2)"""
    reference_defender: str = "base"
    """who plays defender_1..: ``base`` (the model with adapters disabled) or a scripted agent name"""
    max_rounds: int = 1
    """attack rounds per scenario (multi-turn refinement when > 1)"""
    reward_scheme: str = "triplay"
    """triplay (paper), self_redteam, zero_sum or binary_asr"""
    scenarios: str = "builtin"
    """seed dataset name or local file; training uses its train split, evaluation the held-out split"""
    benign_fraction: float = 0.3
    """share of benign look-alike seeds (our choice: enough that refusing everything does not pay)"""
    pool_capacity: int = 10_000
    """Attack Success Pool size (oldest evicted)"""
    embedder: bool = False
    """use all-MiniLM-L6-v2 for R_sem, the pool's cosine and the relevance judge (needs the embed extra)"""
    verdict_source: str = "evaluator"
    """whose verdict pays attacker and defender: evaluator (the paper's closed loop), panel, or gated (the
    evaluator once its rolling agreement with the panel reaches gate_threshold, the panel until then)"""
    gate_threshold: float = 0.6
    """gated: the evaluator's agreement with the panel at which its verdict starts to pay (our choice: well
    above the 1/3 of guessing, below what a 135M evaluator reaches in minutes)"""
    gate_window: int = 64
    """gated: judged items in the rolling agreement window"""
    gate_min_items: int = 16
    """gated: items the window needs before the evaluator may pay"""
    reward_kwargs: dict = field(default_factory=dict)
    """keyword arguments of the reward scheme (e.g. {sem_bonus: 0.3, k: 2.0} for triplay; see triplay_env.rewards)"""
    defender_weights: tuple[float, ...] = ()
    """attacker-reward weight per defender; empty: 1.0 for one defender, 0.6/0.2/0.2 for three (paper)"""


@dataclass
class DistConfig:
    """Several processes (``torchrun`` or ``triplay train --nproc N``); ignored by a single process."""

    timeout_s: float = 600.0
    """how long a rank waits in a collective for a peer that stopped answering before it gives up (gloo/NCCL)"""
    check_sync: bool = False
    """after every update, compare a checksum of the trained adapter across ranks and stop loudly on drift"""


@dataclass
class JudgesConfig:
    aggregation: str = "majority"
    """how the panel combines its judges: majority, weighted or two_stage (safety judges, then helpfulness)"""
    panel: tuple = DEFAULT_PANEL
    """the judges: offline ({name: content, embedder: minilm}) or HTTP ({url, model, format, ...}); see
    agents.judge_spec for every key. Used by the rewards, the evaluator's labels, held-out and `triplay eval`"""
    cache: bool = True
    """keep every verdict in runs/<name>/judge_cache.jsonl, so a resumed run asks no judge twice"""
    measure_error: str = "offline"
    """before training, judge PyRIT's 395 human objective judgments (when pulled: ``triplay data pull
    objective-judgments``; nothing is downloaded during training) and give every held-out unsafe rate also
    corrected for the panel's measured error (Rogan-Gladen: ``heldout/unsafe_rate_corrected``): ``offline`` (when
    no judge is an HTTP endpoint: seconds), ``always`` (also through HTTP judges: 395 requests) or ``never``"""

    def spec(self):
        """The validated :class:`~agents.judge_spec.JudgeSpec`."""
        from agents.judge_spec import JudgeSpec

        return JudgeSpec.from_mapping({"aggregation": self.aggregation, "panel": list(self.panel)})


@dataclass
class GenerationConfig:
    attacker_max_new_tokens: int = 48
    """attack length cap in tokens"""
    defender_max_new_tokens: int = 64
    """response length cap in tokens"""
    evaluator_max_new_tokens: int = 24
    """verdict length cap in tokens (the format is one short line)"""
    evaluator_prefix: str = ""
    """text every evaluator answer starts with, e.g. ``"VERDICT:"`` so a small model only picks the label
    (the demo's 135M model almost never writes the format unprompted); empty: the evaluator writes it all"""
    temperature: float = 1.0
    """sampling temperature for every role (GRPO needs diverse groups)"""
    top_p: float = 1.0
    """nucleus sampling threshold"""


@dataclass
class GRPOConfig:
    group_size: int = 4
    """G: samples per group (attacks per scenario, responses per attack, verdicts per pair); TRL default 8"""
    batch_size: int = 8
    """envs per rollout = samples per optimizer step; a multiple of group_size (TRL's rule for num_generations)"""
    loss_type: str = "dapo"
    """grpo (per-sequence mean), dr_grpo (sum / (B*L)) or dapo (sum / tokens); TRL 1.16 default dapo"""
    scale_rewards: str = "group"
    """advantage scaling: group std (GRPO), batch std, or none (Dr. GRPO)"""
    leave_one_out: bool = False
    """RLOO baseline (mean of the other G-1) instead of the group mean"""
    role_baseline: bool = False
    """subtract a per-role EMA of returns before group normalisation (SPIRAL, decay 0.95)"""
    eps_low: float = 0.2
    """lower clip range (TRL default epsilon 0.2)"""
    eps_high: float = 0.2
    """upper clip range (DAPO's clip-higher uses 0.28)"""
    beta: float = 0.0
    """k3 KL coefficient against the adapter-disabled base (TRL default 0: no reference model)"""
    inner_epochs: int = 1
    """passes over each rollout batch with stored old log-probs"""
    lr: float = 1e-4
    """AdamW learning rate of every role adapter (LoRA tolerates higher rates than full fine-tuning)"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    micro_batch_size: int = 8
    """sequences per forward/backward; gradients accumulate up to the whole batch"""
    max_grad_norm: float = 1.0
    """gradient clipping threshold"""
    recompute_old_logprobs: bool = False
    """recompute the old log-probs with the trainer's own forward pass instead of the sampler's (one no-grad
    pass); use it when sampler and trainer differ numerically (vLLM, bf16 kernels): the ratio then starts at 1"""


@dataclass
class LoopConfig:
    iterations: int = 3
    """co-evolution iterations, each P_Red -> P_Blue -> P_Eval"""
    steps_per_phase: int = 1
    """optimizer steps per phase per iteration"""
    phases: tuple[str, ...] = ("red", "blue", "eval")
    """which phases run, in order (red trains the attacker, blue the defender, eval the evaluator)"""
    opponents: str = "latest"
    """who plays the roles a phase does not train: ``latest`` (the current adapters, the paper's choice) or
    ``league`` (each step, one of the role's past snapshots, taken after every iteration; see training.league)"""
    league_size: int = 4
    """league: snapshots kept per role (the most recent; each is one LoRA adapter's weights, on the CPU)"""
    league_sampling: str = "uniform"
    """league: ``uniform`` over the kept snapshots, or ``prioritised``: in proportion to how often each beat the
    trained role so far (Laplace-smoothed, so a new snapshot starts at 1/2)"""
    eval_scenarios: int = 16
    """held-out seeds per evaluation (half harmful, half benign when both exist)"""
    seed: int = 0
    """seeds every RNG (scenarios, sampling, init)"""
    run_name: str = ""
    """folder under runs_dir; empty: derived from preset, model and seed"""
    runs_dir: str = "runs"
    """where runs are written"""
    tensorboard: bool = True
    """also write TensorBoard event files (if tensorboard is installed)"""
    progress: bool = True
    """show progress bars"""


@dataclass
class TrainConfig:
    preset: str = "tiny"
    """the preset these values started from (informational)"""
    model: ModelConfig = field(default_factory=ModelConfig)
    game: GameConfig = field(default_factory=GameConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    judges: JudgesConfig = field(default_factory=JudgesConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    # -------------------------------------------------------------- derived values

    @property
    def run_dir(self) -> Path:
        name = self.loop.run_name or f"{self.preset}-{Path(self.model.name).name}-seed{self.loop.seed}"
        return Path(self.loop.runs_dir) / name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        cfg = cls()
        _merge(cfg, d, "")
        return cfg

    # -------------------------------------------------------------- validation

    def validate(self) -> TrainConfig:
        """Check every rule; raise ConfigError naming the field. Returns self."""
        from training.grpo import LOSS_TYPES, REWARD_SCALES
        from triplay_env.rewards import REWARD_SCHEMES

        g, m, gm, gen, lp = self.grpo, self.model, self.game, self.generation, self.loop
        _rule(g.group_size >= 2, "grpo.group_size", f"must be >= 2 (a group needs a baseline), got {g.group_size}")
        _rule(g.batch_size >= g.group_size and g.batch_size % g.group_size == 0, "grpo.batch_size",
              f"must be a multiple of grpo.group_size={g.group_size} (whole groups), got {g.batch_size}")
        _rule(g.micro_batch_size >= 1, "grpo.micro_batch_size", f"must be >= 1, got {g.micro_batch_size}")
        _rule(g.loss_type in LOSS_TYPES, "grpo.loss_type", f"must be one of {LOSS_TYPES}, got {g.loss_type!r}")
        _rule(g.scale_rewards in REWARD_SCALES, "grpo.scale_rewards", f"must be one of {REWARD_SCALES}, got {g.scale_rewards!r}")
        _rule(g.lr > 0, "grpo.lr", f"must be > 0, got {g.lr}")
        _rule(0 <= g.eps_low < 1, "grpo.eps_low", f"must lie in [0, 1), got {g.eps_low}")
        _rule(g.eps_high >= 0, "grpo.eps_high", f"must be >= 0, got {g.eps_high}")
        _rule(g.beta >= 0, "grpo.beta", f"must be >= 0, got {g.beta}")
        _rule(g.inner_epochs >= 1, "grpo.inner_epochs", f"must be >= 1, got {g.inner_epochs}")
        _rule(g.max_grad_norm > 0, "grpo.max_grad_norm", f"must be > 0, got {g.max_grad_norm}")
        _rule(g.weight_decay >= 0, "grpo.weight_decay", f"must be >= 0, got {g.weight_decay}")
        _rule(m.dtype in ("float32", "bfloat16"), "model.dtype", f"must be float32 or bfloat16, got {m.dtype!r}")
        _rule(m.device == "auto" or m.device == "cpu" or m.device.startswith("cuda"), "model.device",
              f"must be auto, cpu, cuda or cuda:N, got {m.device!r}")
        _rule(m.backend in ("hf", "vllm"), "model.backend", f"must be hf or vllm, got {m.backend!r}")
        _rule(m.backend != "vllm" or m.name != "tiny", "model.backend",
              "vllm needs a model it can load from a folder or hub id; the tiny model lives in memory only "
              "(use model.backend=hf, or model.name=smollm2-135m)")
        _rule(0 < m.vllm_memory_fraction <= 1, "model.vllm_memory_fraction",
              f"must lie in (0, 1], got {m.vllm_memory_fraction}")
        _rule(m.lora_r >= 1 and m.lora_alpha >= 1, "model.lora_r", f"lora_r and lora_alpha must be >= 1, got {m.lora_r}, {m.lora_alpha}")
        _rule(m.max_prompt_tokens >= 16, "model.max_prompt_tokens", f"must be >= 16, got {m.max_prompt_tokens}")
        _rule(gm.num_defenders >= 1, "game.num_defenders", f"must be >= 1, got {gm.num_defenders}")
        _rule(gm.max_rounds >= 1, "game.max_rounds", f"must be >= 1, got {gm.max_rounds}")
        _rule(gm.reward_scheme in REWARD_SCHEMES, "game.reward_scheme", f"must be one of {sorted(REWARD_SCHEMES)}, got {gm.reward_scheme!r}")
        _rule(0 <= gm.benign_fraction <= 1, "game.benign_fraction", f"must lie in [0, 1], got {gm.benign_fraction}")
        _rule(gm.pool_capacity >= 1, "game.pool_capacity", f"must be >= 1, got {gm.pool_capacity}")
        _rule(gm.verdict_source in ("evaluator", "panel", "gated"), "game.verdict_source",
              f"must be evaluator, panel or gated, got {gm.verdict_source!r}")
        _rule(0 <= gm.gate_threshold <= 1, "game.gate_threshold", f"must lie in [0, 1], got {gm.gate_threshold}")
        _rule(1 <= gm.gate_min_items <= gm.gate_window, "game.gate_min_items",
              f"must lie in [1, game.gate_window={gm.gate_window}], got {gm.gate_min_items}")
        _rule(not gm.defender_weights or (len(gm.defender_weights) == gm.num_defenders
                                          and all(isinstance(w, (int, float)) and w >= 0 for w in gm.defender_weights)),
              "game.defender_weights", f"must be empty or {gm.num_defenders} numbers >= 0 (one per defender), "
              f"got {list(gm.defender_weights)}")
        try:
            from triplay_env.rewards import make_reward_scheme

            make_reward_scheme(gm.reward_scheme, **gm.reward_kwargs)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"game.reward_kwargs {e}") from None
        try:
            self.judges.spec()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        _rule(self.judges.measure_error in ("offline", "always", "never"), "judges.measure_error",
              f"must be offline, always or never, got {self.judges.measure_error!r}")
        if gm.reference_defender != "base":
            from agents.scripted import scripted_for

            _rule(gm.reference_defender in scripted_for("defender"), "game.reference_defender",
                  f"must be 'base' or one of {scripted_for('defender')}, got {gm.reference_defender!r}")
        for name in ("attacker_max_new_tokens", "defender_max_new_tokens", "evaluator_max_new_tokens"):
            _rule(getattr(gen, name) >= 1, f"generation.{name}", f"must be >= 1, got {getattr(gen, name)}")
        _rule(gen.temperature > 0, "generation.temperature", f"must be > 0, got {gen.temperature}")
        _rule(0 < gen.top_p <= 1, "generation.top_p", f"must lie in (0, 1], got {gen.top_p}")
        _rule(lp.iterations >= 1, "loop.iterations", f"must be >= 1, got {lp.iterations}")
        _rule(lp.steps_per_phase >= 1, "loop.steps_per_phase", f"must be >= 1, got {lp.steps_per_phase}")
        _rule(lp.eval_scenarios >= 2, "loop.eval_scenarios", f"must be >= 2, got {lp.eval_scenarios}")
        _rule(lp.opponents in ("latest", "league"), "loop.opponents", f"must be latest or league, got {lp.opponents!r}")
        _rule(lp.league_size >= 1, "loop.league_size", f"must be >= 1, got {lp.league_size}")
        _rule(lp.league_sampling in ("uniform", "prioritised"), "loop.league_sampling",
              f"must be uniform or prioritised, got {lp.league_sampling!r}")
        bad = [p for p in lp.phases if p not in ("red", "blue", "eval")]
        _rule(not bad and lp.phases, "loop.phases", f"must be a non-empty subset of ('red', 'blue', 'eval'), got {lp.phases}")
        _rule(self.dist.timeout_s > 0, "dist.timeout_s", f"must be > 0 seconds, got {self.dist.timeout_s}")
        _rule(m.vllm_tensor_parallel_size >= 1, "model.vllm_tensor_parallel_size",
              f"must be >= 1, got {m.vllm_tensor_parallel_size}")
        return self

    def check_world(self, world_size: int, *, gpus: int = 0) -> None:
        """The rules that depend on how many processes share the run (``world_size`` ranks, ``gpus`` per node)."""
        g, lp, m = self.grpo, self.loop, self.model
        groups = g.batch_size // g.group_size
        _rule(groups % world_size == 0, "grpo.batch_size",
              f"is {g.batch_size}: {groups} GRPO groups of {g.group_size}, which {world_size} ranks cannot share evenly "
              f"(a group never straddles ranks): use a multiple of group_size x ranks = {g.group_size * world_size}")
        _rule(lp.eval_scenarios >= world_size, "loop.eval_scenarios",
              f"is {lp.eval_scenarios}: fewer held-out games than the {world_size} ranks; give every rank at least one")
        if m.backend == "vllm":
            tp = m.vllm_tensor_parallel_size
            if world_size > 1:
                _rule(tp == 1, "model.vllm_tensor_parallel_size",
                      f"is {tp}, but under torchrun each of the {world_size} ranks owns one vLLM engine on its own GPU: "
                      f"set it to 1, or run one process with tensor parallel over the node's GPUs")
            elif gpus:
                _rule(tp <= gpus, "model.vllm_tensor_parallel_size", f"is {tp}, but this node has {gpus} GPU(s)")


def _rule(ok: bool, field_name: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{field_name} {message}")


def _merge(obj: Any, values: dict, prefix: str) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {values!r}")
    names = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"unknown config field {prefix + str(key)!r}; valid fields: {sorted(prefix + n for n in names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, f"{prefix}{key}.")
        else:
            setattr(obj, key, _coerce(current, value, f"{prefix}{key}"))


def _coerce(current: Any, value: Any, name: str) -> Any:
    if isinstance(current, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        return dict(value)
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if isinstance(current, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        return tuple(value)
    if isinstance(current, (int, float)) and isinstance(value, str):
        try:  # YAML 1.1 reads "5e-5" as a string
            value = type(current)(value)
        except ValueError:
            raise ConfigError(f"{name} must be {type(current).__name__}, got {value!r}") from None
    for kind in (int, float, str):
        if isinstance(current, kind):
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                return float(value)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ConfigError(f"{name} must be {kind.__name__}, got {value!r}")
            return value
    return value


def _tiny() -> TrainConfig:
    cfg = TrainConfig(preset="tiny")
    cfg.model = ModelConfig(name="tiny", dtype="float32", max_prompt_tokens=256)
    cfg.generation = GenerationConfig(attacker_max_new_tokens=12, defender_max_new_tokens=12, evaluator_max_new_tokens=8)
    cfg.grpo = GRPOConfig(group_size=2, batch_size=4, micro_batch_size=4, lr=1e-3)
    cfg.loop = LoopConfig(iterations=2, steps_per_phase=1, eval_scenarios=4, tensorboard=False)
    cfg.judges = JudgesConfig(panel=({"name": "content", "embedder": "lexical"},))  # seconds: no MiniLM to load
    return cfg


def _demo() -> TrainConfig:
    cfg = TrainConfig(preset="demo")
    # float32: CPUs without AVX512-BF16 (like this project's 2-core machines) run bf16 matmuls ~35x slower
    cfg.model = ModelConfig(name="smollm2-135m", dtype="float32", max_prompt_tokens=256)
    # prompt prefill dominates on CPU: small batches and short completions keep 3 iterations within minutes
    cfg.generation = GenerationConfig(attacker_max_new_tokens=32, defender_max_new_tokens=40, evaluator_max_new_tokens=8,
                                      evaluator_prefix="VERDICT:")
    # lr 1e-3: with 6 updates per role, 2e-4 moved the held-out numbers not at all (measured), 1e-3 did
    cfg.grpo = GRPOConfig(group_size=4, batch_size=8, micro_batch_size=8, lr=1e-3)
    cfg.loop = LoopConfig(iterations=3, steps_per_phase=2, eval_scenarios=16)
    # verdict_source stays "evaluator" (the paper's closed loop), measured against "gated" on the training
    # rollouts (panel-judged, never the held-out split): with gated the gate never opened (rolling agreement
    # 0.40-0.55 < 0.6), so the panel paid throughout and P_Blue's unsafe rate stayed 0.50-0.63; with the
    # evaluator paying (it parses on about half the rounds by iteration 2) it fell to 0.25. Both at 8 games a
    # step, so this is a choice in direction, not a significant difference (README, "The demo run")
    return cfg


def _study() -> TrainConfig:
    cfg = _demo()
    cfg.preset = "study"
    # defender_1 is the untrained base, frozen: the held-out attack success against it (reference_attack_success_rate)
    # is the paper's first claim; the attacker's reward weighs the defenders 0.6 / 0.4 (the env's default for two)
    cfg.game = GameConfig(num_defenders=2, reference_defender="base")
    # one more iteration than the demo and twice its held-out games (32: one game moves a rate by ~0.03-0.06)
    cfg.loop = LoopConfig(iterations=4, steps_per_phase=2, eval_scenarios=32)
    return cfg


def _qwen(size: str) -> TrainConfig:
    cfg = TrainConfig(preset=f"qwen3-{size}")
    cfg.model = ModelConfig(name=f"Qwen/Qwen3-{size.upper()}", dtype="bfloat16", backend="vllm", lora_r=32, lora_alpha=64,
                            lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj"), max_prompt_tokens=2048)
    cfg.game = GameConfig(num_defenders=3, reference_defender="base")
    cfg.generation = GenerationConfig(attacker_max_new_tokens=256, defender_max_new_tokens=512, evaluator_max_new_tokens=256)
    cfg.grpo = GRPOConfig(group_size=8, batch_size=128, micro_batch_size=8, lr=1e-5, beta=0.0, eps_high=0.28,
                          recompute_old_logprobs=True)  # vLLM's bf16 kernels differ from the trainer's
    cfg.loop = LoopConfig(iterations=10, steps_per_phase=20, eval_scenarios=256)
    return cfg


PRESETS = {"tiny": _tiny, "demo": _demo, "study": _study, "qwen3-4b": lambda: _qwen("4b"), "qwen3-8b": lambda: _qwen("8b")}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()


def apply_overrides(cfg: TrainConfig, *, yaml_file: str | Path | None = None, sets: list[str] = ()) -> TrainConfig:
    """Apply a YAML file (nested mapping) and then ``key.sub=value`` strings (values parsed as YAML)."""
    cfg = copy.deepcopy(cfg)
    if yaml_file is not None:
        path = Path(yaml_file)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            values = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}{_yaml_where(e)}: not valid YAML: {getattr(e, 'problem', None) or e}") from None
        try:
            _merge(cfg, values or {}, "")
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} must look like section.field=value (e.g. --set grpo.lr=5e-5)")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set {item!r}: {key.strip()!r} is not a dotted field name like grpo.lr")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({getattr(e, 'problem', None) or e})") from None
        nested: dict = {}
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
        try:
            _merge(cfg, nested, "")
        except ConfigError as e:
            raise ConfigError(f"--set {item!r}: {e}") from None
    return cfg


def _yaml_where(error: Exception) -> str:
    mark = getattr(error, "problem_mark", None)
    return f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""


RUN_CONTROL_KEYS = ("loop.iterations", "loop.progress", "loop.tensorboard", "dist.timeout_s", "dist.check_sync")
"""keys that may change on --resume (extending a run, display)"""


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb and not (isinstance(va, (list, tuple)) and isinstance(vb, (list, tuple)) and list(va) == list(vb)):
            keys.append(f"{prefix}{k}")
    return keys
