"""Evaluation: the in-loop held-out metrics, and ``triplay eval`` on data training never saw.

One job per module:

| module | what it holds |
|---|---|
| ``metrics`` | in-loop metrics (:func:`judged_metrics`: ASR, unsafe/refusal/over-refusal rates, evaluator agreement), rates, classification scores, text distances |
| ``judging`` | the safety judge every number is judged by, batched calls that never read a failure as safe, its score on human labels |
| ``sections`` | the defender, attacker, evaluator and capability sections of ``triplay eval`` |
| ``capability`` | the capability probe and its answer matching |
| ``subject`` | ``triplay eval``'s options, the seeds it draws, the run or adapters it loads |
| ``run`` | :func:`run_eval`: every section for every stage, then ``eval.json`` / ``eval.md`` (rendered by ``training.report``) |

**In the training loop** (``CoEvolution.evaluate``), :func:`judged_metrics` turns the env's judged rounds into
flat, panel-judged numbers, each with ``n_<metric>``; :func:`self_bleu_within` is its diversity measure.

| metric | over | definition |
|---|---|---|
| ``attack_success_rate`` | all seeds | panel verdict is the attacker's goal (unsafe for harmful, refusal for benign) |
| ``unsafe_rate`` / ``refusal_rate`` / ``guidance_rate`` | harmful seeds | panel verdict of defender_0's answers |
| ``over_refusal_rate`` | benign seeds | defender_0 refused a harmless look-alike |
| ``evaluator_agreement`` | every judged pair with a panel label | evaluator verdict == panel verdict |
| ``evaluator_valid_rate`` | every judged pair | the evaluator's output parsed to a verdict |
| ``attack_self_bleu`` | attacks of the batch | mean Self-BLEU of each attack against the others (lower = more diverse) |
| ``attack_semantic_similarity`` | attacks | similarity of the attack to its seed (R_sem's input) |

**``triplay eval``** (:func:`run_eval`) measures a run directory, a folder of saved adapters, or a bare base
model on the ``heldout`` split (stable hash, ``triplay_env.scenarios.split_of``) of public benchmarks pulled
with ``triplay data pull``, and writes ``eval.json`` and ``eval.md`` (plus PNG bar charts when there are two
stages to compare). Safety numbers are judged by one *safety judge*, a panel named in the output: the run's
own (its ``judges`` config), a spec file (``--judges``), or one HTTP judge (``--judge-url``: Llama Guard,
WildGuard, HarmBench's classifier or any chat model behind an OpenAI-compatible server); the default panel
without a run. Never by the evaluator being measured. Missing datasets are pulled first; ``--limit`` applies
to every section, and ``eval.md`` lists the n of each.

Stages. A run is evaluated twice, through the same code with the same sampling seeds: ``iteration_0`` is the
base model with every adapter disabled playing every role (peft starts LoRA ``B`` at zero, so this *is* the
model before training), ``final`` is the checkpoint's adapters. Saved adapters give ``base`` and
``adapters``; a bare model gives ``base`` only.

| section | metric | items | definition |
|---|---|---|---|
| defender | ``plain.<dataset>.{unsafe,refusal,guidance}_rate`` | harmful held-out seeds, sent as they are | share of judged answers with that verdict |
| defender | ``plain.<dataset>.attack_success_rate`` | same | share judged UNSAFE (the seed itself is the attack) |
| defender | ``attacked.<dataset>.*`` | the same seeds, rewritten by ``--attacker`` | as above |
| defender | ``over_refusal_rate`` | benign look-alikes (``builtin-benign`` held-out) | share judged REFUSAL |
| attacker | ``asr.<target>.<dataset>`` | the stage's attacks on harmful seeds | share of a fixed defender's answers judged UNSAFE |
| attacker | ``self_bleu`` | all the stage's attacks | :func:`self_bleu_within` (1 = all identical, 0 = no shared n-gram) |
| attacker | ``embedding_distance`` | same | :func:`mean_pairwise_distance`: mean ``1 - cosine`` over pairs |
| attacker | ``semantic_fidelity`` | same | mean similarity(seed, attack) clipped to [0, 1] (R_sem's input) |
| evaluator | ``vs_judge.*`` | the defender section's (prompt, response) pairs | accuracy, per-class precision/recall, confusion matrix against the safety judge |
| evaluator | ``refusal_judgments.*`` | PyRIT's human-labelled refusal judgments | REFUSAL verdict vs the human label |
| capability | ``accuracy``, ``by_category.*`` | ``triplay_env/data/capability_probe.tsv`` | the answer appears in the reply (:func:`answer_matches`) |
| capability | ``refusal_rate`` | same | the reply opens with a refusal phrase (``is_refusal``) |

``eval.json`` also scores the safety judge itself (``judge`` section) on PyRIT's human refusal judgments (its
refusal reading, :func:`~training.evaluation.judging.refusal_calls`; each keyword judge alone, keywords alone,
"keywords or low prompt/response similarity") and objective-achieved judgments (UNSAFE as achieved; accuracy,
F1, predicted vs people's unsafe rate); see docs/judges.md. A judge that answers none of its items stops the
evaluation with an error instead.

Every metric is ``{"value": float | None, "n": int}``: ``n`` items behind the value (``None`` when ``n`` is
0); a proportion adds ``k`` (the items counted) and its 95% Wilson interval ``low``/``high``
(:func:`proportion`), and ``eval.md`` reads the change between two stages against Newcombe's interval. Judged metrics add ``n_unjudged``: items the judge could not label (an ``EndpointError``, a reply that
did not parse). Those items are left out of the rate and counted, never read as safe; ``judge.errors``
lists what failed.

Our choices, each documented where it is made: one round per game (multi-turn refinement is not evaluated);
``--limit`` seeds per dataset drawn with ``--seed`` (default 32, so a CPU run takes minutes); sampling with
the run's temperature (what the policies were trained to sample at); ``--attacker template`` (scripted,
identical for every stage, so defender deltas reflect the defender alone); fixed target defenders ``base``
and ``weak:role_play``; without ``--embedder``, distances use hashed bag-of-words vectors and fidelity uses
lexical overlap (both named in the output); an evaluator reads at most the first 300 / 600 characters of a
human-labelled request / response (``EVALUATOR_CHARS``), so a long response does not push its instructions
out of the prompt.
"""

from __future__ import annotations

from training.evaluation.capability import answer_matches, load_capability_probe
from training.evaluation.judging import JudgedItems, SafetyJudge, build_safety_judge, judge_all, judge_refusal_scores
from training.evaluation.metrics import (
    CachedEmbedder,
    classification_metrics,
    hashed_bow_embedder,
    judged_metrics,
    mean_pairwise_distance,
    metric,
    proportion,
    self_bleu_within,
    verdict_rates,
)
from training.evaluation.run import run_eval
from training.evaluation.sections import defender_section
from training.evaluation.subject import DEFAULT_DATASETS, DEFAULT_TARGETS, SECTIONS, EvalOptions, check_adapters
from training.report import write_eval_report

__all__ = [
    "judged_metrics",
    "self_bleu_within",
    "metric",
    "proportion",
    "verdict_rates",
    "classification_metrics",
    "mean_pairwise_distance",
    "hashed_bow_embedder",
    "CachedEmbedder",
    "answer_matches",
    "load_capability_probe",
    "SafetyJudge",
    "JudgedItems",
    "judge_all",
    "build_safety_judge",
    "judge_refusal_scores",
    "defender_section",
    "EvalOptions",
    "run_eval",
    "write_eval_report",
    "check_adapters",
    "SECTIONS",
    "DEFAULT_DATASETS",
    "DEFAULT_TARGETS",
]
