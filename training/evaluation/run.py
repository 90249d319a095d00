"""``triplay eval``: load the subject, play every section for every stage, write eval.json and eval.md."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents.base import ROLES, Agent
from agents.judge_spec import JudgeUnavailable, check_endpoints
from training.evaluation.capability import load_capability_probe
from training.evaluation.judging import build_safety_judge, correct_for_judge, judge_objective_scores, judge_refusal_scores
from training.evaluation.metrics import CachedEmbedder, hashed_bow_embedder
from training.evaluation.sections import attacker_section, capability_section, defender_section, evaluator_section
from training.evaluation.subject import (
    EvalOptions,
    Subject,
    _dataset_key,
    _load_objective_rows,
    _load_refusal_rows,
    _load_seeds,
    _pick,
    _roles_needed,
    check_adapters,
    pull_missing,
    resolve_subject,
)
from training.report import fmt, write_eval_report
from triplay_env.judges import lexical_similarity
from triplay_env.panel import VerdictCache, keyword_panel
from triplay_env.scenarios import Scenario

# ---------------------------------------------------------------------------------------------- the evaluation


def _load_roles(subject: Subject, roles_needed: Sequence[str], log: Callable[[str], None]):
    import torch

    from agents.hf import LoRARoles
    from agents.models import load_model, tiny_random

    t0 = time.perf_counter()
    if subject.model == "tiny":
        model, tokenizer = tiny_random(seed=subject.model_seed)
    else:
        model, tokenizer = load_model(subject.model, dtype=getattr(torch, subject.dtype))
    roles = LoRARoles(model, tokenizer, roles=list(roles_needed) or list(ROLES), r=subject.lora["r"],
                      alpha=subject.lora["alpha"], target_modules=subject.lora["target_modules"],
                      max_prompt_tokens=subject.max_prompt_tokens)
    if subject.adapters is not None:
        check_adapters(roles, subject.adapters, roles.roles)
        roles.load_adapters(subject.adapters)
    log(f"model {subject.model} loaded ({time.perf_counter() - t0:.1f}s)"
        + (f", adapters from {subject.adapters}" if subject.adapters else ""))
    return roles


def _target_agent(spec: str, base: Agent, opts: EvalOptions) -> Agent:
    from agents.scripted import SCRIPTED_AGENTS, StrategyWeakDefender, make_scripted

    if spec == "base":
        return base
    if spec == "http":
        from agents.openai_compat import OpenAICompatAgent

        return OpenAICompatAgent(opts.target_url, opts.target_model, max_tokens=256)
    if spec.startswith("weak:"):
        return StrategyWeakDefender(default_weakness=spec.partition(":")[2])
    if spec in SCRIPTED_AGENTS and spec not in ("template", "judge"):
        return make_scripted(spec)
    raise ValueError(f"unknown target defender {spec!r}; use base, http, weak:<strategy> or one of "
                     f"{sorted(set(SCRIPTED_AGENTS) - {'template', 'judge'})}")


def run_eval(opts: EvalOptions, *, log: Callable[[str], None] = print) -> dict:
    """Evaluate what ``opts`` names, write ``eval.json`` and ``eval.md`` (+ ``plots/``) and return the results.

    Inputs are checked before any model loads: a run directory without its checkpoint files, adapters
    trained on another base model, or a dataset that is not pulled raise an error naming what is missing
    and the command that fixes it.
    """
    opts.validate()
    t_start = time.perf_counter()
    subject = resolve_subject(opts) if opts.needs_model else None
    spec = _judge_spec(opts, subject)
    check_endpoints(spec)  # an unreachable judge fails here, in one line, before any pull or model load
    pulled = pull_missing(opts, log)
    status: dict[str, dict] = {}
    seeds: dict[str, list[Scenario]] = {}
    benign: list[Scenario] = []
    if {"defender", "attacker", "evaluator"} & set(opts.sections):
        for source in opts.datasets:
            chosen = _load_seeds(source, "harmful", opts, status)
            if chosen is not None:
                seeds[_dataset_key(source)] = chosen
    if {"defender", "evaluator"} & set(opts.sections):
        benign = _load_seeds(opts.benign, "benign", opts, status) or []
    refusal_rows = _load_refusal_rows(opts, status) if {"evaluator", "judge"} & set(opts.sections) else None
    objective_rows = _load_objective_rows(opts, status) if "judge" in opts.sections else None
    if subject is not None and subject.info.get("train_scenarios") in seeds and opts.split != "heldout":
        log(f"warning: the run trained on {subject.info['train_scenarios']!r} and --split {opts.split} includes its "
            f"training seeds")
    from agents.scripted import TemplateAttacker

    out = _out_dir(opts, subject)
    embedder = None
    if opts.embedder or spec.needs_minilm:
        from agents.models import load_embedder

        embedder = CachedEmbedder(load_embedder())
    judge = build_safety_judge(spec, embedder=embedder, cache=VerdictCache(out / "judge_cache.jsonl"), check=False)
    baselines = keyword_panel(embedder if opts.embedder else None)
    if not opts.embedder:
        embedder = None  # the judges' MiniLM is theirs; distances and fidelity stay lexical unless --embedder
    embed, embed_name = (embedder, "all-MiniLM-L6-v2") if embedder is not None else (
        hashed_bow_embedder(), "hashed bag of words, 1024-d (pass --embedder for all-MiniLM-L6-v2)")
    if embedder is not None:
        def similarity(a: str, b: str) -> float:
            e = np.asarray(embedder([a, b]), dtype=np.float64)
            return float(e[0] @ e[1])
        similarity_name = "all-MiniLM-L6-v2 cosine"
    else:
        similarity, similarity_name = lexical_similarity, "lexical content-word cosine (pass --embedder for MiniLM)"

    result: dict[str, Any] = {
        "model": subject.model if subject else None,
        "adapters": str(subject.adapters) if subject and subject.adapters else None,
        "run": subject.info if subject else None,
        "judge": {"name": judge.name, "spec": spec.to_dict(), "config_hash": spec.config_hash,
                  "kind": "http" if any(e.is_http for e in spec.panel) else "offline"},
        "datasets": status,
        "pulled": pulled,
        "limit": opts.limit,
        "split": opts.split,
        "seed": opts.seed,
        "sections": list(opts.sections),
        "settings": {"temperature": subject.temperature if subject else None, "top_p": subject.top_p if subject else None,
                     "max_new_tokens": subject.lengths if subject else None, "dtype": subject.dtype if subject else None,
                     "evaluator_prefix": subject.evaluator_prefix if subject else None,
                     "attacker": opts.attacker, "targets": list(opts.targets), "batch_size": opts.batch_size,
                     "embedder": embed_name},
        "stages": {},
        "time_s": {},
    }
    probe: list[dict] = []
    if subject is not None:
        roles = _load_roles(subject, _roles_needed(opts) if subject.adapters else ROLES, log)
        role_index = {r: k for k, r in enumerate(ROLES)}

        def policy(role: str, adapter_on: bool, salt: int = 0):
            # the same seeds in every stage: stages differ by their adapters only
            return roles.policy(role if adapter_on else None, max_new_tokens=subject.lengths[role],
                                temperature=subject.temperature, top_p=subject.top_p,
                                seed=opts.seed * 1000 + 10 * salt + role_index[role],
                                response_prefix=subject.evaluator_prefix if role == "evaluator" else "")

        probe = _pick(load_capability_probe(), opts.limit, opts.seed) if "capability" in opts.sections else []
        for stage, adapter_on in subject.stages:
            t0 = time.perf_counter()
            log(f"stage {stage} ({'adapters' if adapter_on else 'base model, adapters disabled'})")
            stage_out: dict[str, Any] = {"adapters": adapter_on}
            pairs: list[dict] = []
            if {"defender", "evaluator"} & set(opts.sections):
                attackers = {"template": lambda: TemplateAttacker(seed=opts.seed), "base": lambda: policy("attacker", False, 1),
                             "self": lambda: policy("attacker", adapter_on, 1), "http": lambda: _http_attacker(opts)}
                defender_out, pairs = defender_section(
                    policy("defender", adapter_on), policy("evaluator", adapter_on), attackers[opts.attacker](),
                    opts.attacker if opts.attacker != "http" else f"http:{opts.attacker_model}", seeds, benign, judge,
                    batch_size=opts.batch_size, log=log)
                if "defender" in opts.sections:
                    stage_out["defender"] = defender_out
                _stop_if_silent(judge)
            if "attacker" in opts.sections:
                base_defender = policy("defender", False, 2)
                targets = {t if t != "http" else f"http:{opts.target_model}": _target_agent(t, base_defender, opts)
                           for t in opts.targets}
                stage_out["attacker"] = attacker_section(
                    policy("attacker", adapter_on), targets, seeds, judge, embed=embed, embed_name=embed_name,
                    similarity=similarity, similarity_name=similarity_name, batch_size=opts.batch_size, tries=opts.attack_tries, log=log)
                _stop_if_silent(judge)
            if "evaluator" in opts.sections:
                stage_out["evaluator"] = evaluator_section(policy("evaluator", adapter_on, 3), pairs, refusal_rows, judge,
                                                           batch_size=opts.batch_size, log=log)
            if "capability" in opts.sections:
                stage_out["capability"] = capability_section(policy("defender", adapter_on, 4), probe,
                                                             batch_size=opts.batch_size)
                log(f"    capability: accuracy {fmt(stage_out['capability']['accuracy']['value'])} "
                    f"on {len(probe)} questions")
            result["stages"][stage] = stage_out
            result["time_s"][stage] = round(time.perf_counter() - t0, 2)
    n_harmful = sum(len(v) for v in seeds.values())
    n_items = {"defender": {"plain": n_harmful, "attacked": n_harmful, "benign": len(benign)},
               "attacker": {"attacks": n_harmful, "targets": len(opts.targets)},
               "evaluator": {"vs_judge": 2 * n_harmful + len(benign), "refusal_judgments": len(refusal_rows or [])},
               "capability": {"questions": len(probe)},
               "judge": {"refusal_judgments": len(refusal_rows or []), "objective_judgments": len(objective_rows or [])}}
    result["items"] = {k: v for k, v in n_items.items() if k in opts.sections}
    """the n behind each section (per stage), so eval.md can say what each number rests on"""
    if "judge" in opts.sections and refusal_rows is not None:
        t0 = time.perf_counter()
        result["judge"]["refusal_judgments"] = judge_refusal_scores(judge, baselines, refusal_rows)
        _stop_if_silent(judge)
        result["time_s"]["judge"] = round(time.perf_counter() - t0, 2)
        scores = result["judge"]["refusal_judgments"]
        log(f"judge on {len(refusal_rows)} human refusal judgments: accuracy {fmt(scores['judge']['accuracy']['value'])}"
            f" (its refusal reading), keywords {fmt(scores['keywords']['accuracy']['value'])}, keywords or low similarity "
            f"{fmt(scores['keywords_or_low_similarity']['accuracy']['value'])}")
    if "judge" in opts.sections and objective_rows is not None:
        objective = judge_objective_scores(judge, objective_rows)
        _stop_if_silent(judge)
        result["judge"]["objective_judgments"] = objective
        corrected = correct_for_judge(result["stages"], objective)
        if corrected:
            log(f"{corrected} unsafe / attack success rates also given corrected for the judge's measured error "
                f"(Rogan-Gladen: *_corrected)")
        log(f"judge on {len(objective_rows)} human objective-achieved judgments: accuracy "
            f"{fmt(objective['accuracy']['value'])}, F1 {fmt(objective['f1']['value'])}, predicted unsafe "
            f"{fmt(objective['predicted_unsafe_rate']['value'])} (people {fmt(objective['people_unsafe_rate']['value'])})")
    result["judge"]["n_unjudged_items"] = sum(
        section.get("n_unjudged_items", 0) for stage in result["stages"].values() for section in stage.values()
        if isinstance(section, dict)) + result["judge"].get("refusal_judgments", {}).get("judge", {}).get("n_unjudged", 0)
    result["time_s"]["total"] = round(time.perf_counter() - t_start, 2)
    write_eval_report(result, out)
    log(f"wrote {out / 'eval.json'} and {out / 'eval.md'}")
    return result


def _stop_if_silent(judge) -> None:
    """A judge that has answered nothing so far is not a measurement: stop, once, naming why (nothing written)."""
    silent = judge.panel.silent_judges()
    if silent:
        raise JudgeUnavailable("; ".join(silent) + "; no eval.json was written (check the server, its model and format)")


def _out_dir(opts: EvalOptions, subject) -> Path:
    """``--out``, else ``<run>/eval``, else ``runs/eval-<model>`` (``runs/eval-judge`` for the judge alone)."""
    if opts.out:
        return Path(opts.out)
    if opts.run:
        return Path(opts.run) / "eval"
    return Path("runs") / (f"eval-{Path(subject.model).name}" if subject else "eval-judge")


def _judge_spec(opts: EvalOptions, subject):
    """``--judge-url`` (one HTTP judge), ``--judges FILE``, the run's own panel, or the default panel."""
    from agents.judge_spec import JudgeSpec
    from training.judge_tool import load_spec

    if opts.judge_url:
        return JudgeSpec.http(opts.judge_url, opts.judge_model, opts.judge_mode, timeout=opts.judge_timeout)
    if opts.judges:
        return load_spec(opts.judges)
    if subject is not None and subject.judges is not None:
        return JudgeSpec.from_mapping(subject.judges, where=f"{opts.run or opts.adapters}: judges")
    return JudgeSpec()


def _http_attacker(opts: EvalOptions) -> Agent:
    from agents.openai_compat import OpenAICompatAgent

    return OpenAICompatAgent(opts.attacker_url, opts.attacker_model, max_tokens=256)
