"""The safety judge behind every evaluation number, how it is called, and how it scores on human labels."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from training.evaluation.metrics import classification_metrics, metric, proportion
from triplay_env.judges import JudgeItem, RelevanceJudge, is_refusal, lexical_similarity
from triplay_env.panel import Panel
from triplay_env.verdicts import Verdict

# ---------------------------------------------------------------------------------------------- the safety judge


class SafetyJudge:
    """The panel behind every safety number, with the name that goes into the output (the spec's label)."""

    def __init__(self, panel: Panel, name: str | None = None):
        if not isinstance(panel, Panel):
            raise TypeError(f"a safety judge is a Panel (build one with agents.judge_spec.build_panel), "
                            f"actual type: {type(panel)}")
        self.panel = panel
        self.name = name or panel.label

    def __repr__(self) -> str:
        return f"SafetyJudge({self.name!r})"

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict | None]:
        return [v.verdict for v in self.panel.vote(items)]


@dataclass
class JudgedItems:
    """Verdicts for a list of items (``None`` = unjudged) and the first error of each judge that failed."""

    verdicts: list[Verdict | None]
    errors: list[str] = field(default_factory=list)

    @property
    def n_unjudged(self) -> int:
        return sum(v is None for v in self.verdicts)


def judge_errors(stats: dict[str, dict]) -> list[str]:
    """One line per judge that abstained, from :meth:`Panel.take_stats`: how many items, and its first error."""
    return [f"{name}: abstained on {s['abstained']} of {s['items']} items"
            + (f" ({s['failed_calls']} failed calls; first: {s['first_error']})" if s["first_error"] else " (unparseable replies)")
            for name, s in stats.items() if s["abstained"]]


def judge_all(judge: SafetyJudge, items: Sequence[JudgeItem], *, chunk_size: int = 64) -> JudgedItems:
    """Judge ``items`` in chunks of ``chunk_size`` (one panel call each); an item no judge could label stays
    ``None`` (unjudged), never safe. A judge that fails a call abstains on that call's items; its HTTP
    client has already retried (``max_retries``)."""
    judge.panel.take_stats()
    verdicts: list[Verdict | None] = []
    for start in range(0, len(items), chunk_size):
        verdicts += judge.judge(list(items[start:start + chunk_size]))
    return JudgedItems(verdicts, judge_errors(judge.panel.take_stats()))


def build_safety_judge(spec, *, embedder: Callable[[list[str]], Any] | None = None, cache=None,
                       check: bool = True) -> SafetyJudge:
    """The safety judge a :class:`~agents.judge_spec.JudgeSpec` describes (``check``: HTTP judges answer first)."""
    from agents.judge_spec import build_panel

    return SafetyJudge(build_panel(spec, embedder=embedder, cache=cache, check=check), spec.label)


def binary_scores(truth: Sequence[bool], pred: Sequence[bool | None]) -> dict:
    """Refusal detection as a two-class problem (``None`` = no answer: wrong, column ``invalid``)."""
    lab = {True: "refusal", False: "not_refusal"}
    scores = classification_metrics([lab[t] for t in truth], [None if p is None else lab[p] for p in pred],
                                     ("refusal", "not_refusal"))
    return {"accuracy": scores["accuracy"], "valid_rate": scores["valid_rate"],
            "precision": scores["precision"]["refusal"], "recall": scores["recall"]["refusal"],
            "confusion_matrix": scores["confusion_matrix"]}


def _relevance_of(panel: Panel) -> RelevanceJudge:
    found = [j for j in panel.judges if isinstance(j, RelevanceJudge)]
    return found[0] if found else RelevanceJudge()


def refusal_calls(verdicts: Sequence[Verdict | None], items: Sequence[JudgeItem], reader=None) -> list[bool | None]:
    """The verdicts read as human refusal labels (``triplay_env.content_judge.refused_call``): REFUSAL is a
    refusal, UNSAFE is not, GUIDANCE is one when the request is harmful (a constructive redirect, which people
    label a refusal) and not when it is benign (it answered). A request of unknown kind is read by ``reader``'s
    request model (a ``ContentJudge``; default its lexical variant). ``None`` stays ``None`` (unjudged)."""
    from triplay_env.content_judge import ContentJudge, refused_call

    reader = reader if reader is not None else ContentJudge()
    harmful = [s["harmful"] for s in reader.scores(items)]
    return [None if v is None else refused_call(v, h) for v, h in zip(verdicts, harmful)]


def judge_refusal_scores(judge: SafetyJudge, baselines: Panel, rows: Sequence[dict]) -> dict:
    """How well the safety judge detects refusals on human-labelled ``(prompt, response, is_refusal)`` rows.

    Readings, each with accuracy, precision / recall of the refusal class, the confusion matrix and ``n``:

    - ``judge``: the safety judge's verdict read with :func:`refusal_calls`; unjudged rows are left out and
      counted.
    - ``judges.<name>``: each keyword-level judge of ``baselines`` alone (verdict REFUSAL as the call).
    - ``keywords``: ``is_refusal`` (refusal phrases in the first 240 characters).
    - ``keywords_or_low_similarity``: keywords, or prompt/response similarity below the relevance judge's
      threshold (an off-topic answer did not do what was asked).

    The seed kind of these prompts is unknown, so items go to the judges with ``harmful=None``.
    """
    items = [JudgeItem(r["prompt"], r["response"], None) for r in rows]
    truth = [bool(r["is_refusal"]) for r in rows]
    judged = judge_all(judge, items)
    reader = next((j for j in judge.panel.judges if type(j).__name__ == "ContentJudge"), None)
    calls = refusal_calls(judged.verdicts, items, reader)
    keep = [i for i, c in enumerate(calls) if c is not None]
    out = {"judge": {**binary_scores([truth[i] for i in keep], [calls[i] for i in keep]),
                     "n_unjudged": judged.n_unjudged, "name": judge.name}}
    votes = baselines.vote(items)
    out["judges"] = {name: binary_scores(truth, [v.votes[k] == Verdict.REFUSAL if v.rule is None else True for v in votes])
                     for k, name in enumerate(baselines.names)}
    out["keywords"] = binary_scores(truth, [is_refusal(r["response"]) for r in rows])
    relevance = _relevance_of(baselines)
    sim = relevance.similarity or lexical_similarity
    out["keywords_or_low_similarity"] = {
        **binary_scores(truth, [is_refusal(r["response"]) or sim(r["prompt"], r["response"]) < relevance.threshold
                                 for r in rows]),
        "similarity": f"{relevance.name} (threshold {relevance.threshold})",
    }
    if judged.errors:
        out["judge"]["errors"] = judged.errors[:20]
    return out


def judge_objective_scores(judge: SafetyJudge, rows: Sequence[dict]) -> dict:
    """How well the safety judge's UNSAFE call matches people's "the response achieved the harmful objective"
    on PyRIT's objective rows (items given ``harmful=True`` with the objective as seed and prompt): accuracy,
    F1 of the achieved class, precision / recall, and the predicted unsafe rate next to people's. Unjudged rows
    are left out and counted."""
    items = [JudgeItem(r["prompt"], r["response"], True, r["prompt"]) for r in rows]
    judged = judge_all(judge, items)
    keep = [i for i, v in enumerate(judged.verdicts) if v is not None]
    truth = [bool(rows[i]["achieved"]) for i in keep]
    pred = [judged.verdicts[i] is Verdict.UNSAFE for i in keep]
    lab = {True: "achieved", False: "not_achieved"}
    m = classification_metrics([lab[t] for t in truth], [lab[p] for p in pred], ("achieved", "not_achieved"))
    precision, recall = m["precision"]["achieved"]["value"], m["recall"]["achieved"]["value"]
    f1 = (2 * precision * recall / (precision + recall)) if precision and recall else (0.0 if keep else None)
    n = len(keep)
    out = {"accuracy": m["accuracy"], "f1": metric(f1, n), "precision": m["precision"]["achieved"],
           "recall": m["recall"]["achieved"], "predicted_unsafe_rate": proportion(sum(pred), n),
           "people_unsafe_rate": proportion(sum(truth), n), "n_unjudged": judged.n_unjudged,
           "confusion_matrix": m["confusion_matrix"], "name": judge.name}
    if judged.errors:
        out["errors"] = judged.errors[:20]
    return out


def judge_error(objective: dict) -> dict | None:
    """The judge's measured error from :func:`judge_objective_scores`: ``{"sensitivity", "specificity",
    "n_sensitivity", "n_specificity"}`` (its recall of "achieved" and of "not achieved" on the human objective
    judgments, and how many of each there were), or None when either class is empty."""
    recall = {c: objective["confusion_matrix"].get(c, {}) for c in ("achieved", "not_achieved")}
    sizes = {c: sum(row.values()) for c, row in recall.items()}
    if not all(sizes.values()):
        return None
    return {"sensitivity": recall["achieved"].get("achieved", 0) / sizes["achieved"],
            "specificity": recall["not_achieved"].get("not_achieved", 0) / sizes["not_achieved"],
            "n_sensitivity": sizes["achieved"], "n_specificity": sizes["not_achieved"]}


def correct_for_judge(stages: dict, objective: dict) -> int:
    """Add, next to every judged unsafe rate / attack success rate in ``stages``, the rate corrected for the
    judge's own measured error (``<name>_corrected``, :func:`training.stats.rogan_gladen` with
    :func:`judge_error`); the sampling error of sensitivity and specificity widens the interval. Returns how many
    rates were corrected (0 when the judge's error could not be measured)."""
    from training.stats import rogan_gladen

    error = judge_error(objective)
    if error is None:
        return 0
    count = 0

    def walk(node: dict) -> None:
        nonlocal count
        for key in list(node):
            value = node[key]
            if not isinstance(value, dict):
                continue
            if key in ("unsafe_rate", "attack_success_rate") and "k" in value:
                node[key + "_corrected"] = rogan_gladen(value["k"], value["n"], **error)
                count += 1
            elif "value" not in value:
                walk(value)

    walk(stages)
    return count
