"""The safety judge behind every evaluation number, how it is called, and how it scores on human labels."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from training.evaluation.metrics import classification_metrics
from triplay_env.judges import JudgeItem, Panel, RelevanceJudge, is_refusal, lexical_similarity
from triplay_env.verdicts import Verdict

# ---------------------------------------------------------------------------------------------- the safety judge


class SafetyJudge:
    """The judge behind every safety number: a :class:`~triplay_env.judges.Panel` (majority verdict) or any
    single judge with ``judge(items) -> list[Verdict | None]`` (e.g. ``OpenAICompatJudge``), with a name
    that goes into the output."""

    def __init__(self, judge: Any, name: str, *, prime: Callable[[list[str]], None] | None = None):
        if not (isinstance(judge, Panel) or callable(getattr(judge, "judge", None))):
            raise TypeError(f"a safety judge needs a Panel or a judge(items) method, actual type: {type(judge)}")
        self.judge_obj = judge
        self.name = name
        self._prime = prime

    def prime(self, items: Sequence[JudgeItem]) -> None:
        """Embed every text of ``items`` in one batched call (when the panel uses a :class:`CachedEmbedder`)."""
        if self._prime is not None:
            self._prime([t for it in items for t in (it.prompt, it.response)])

    def __repr__(self) -> str:
        return f"SafetyJudge({self.name!r})"

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict | None]:
        if isinstance(self.judge_obj, Panel):
            out = [v.verdict for v in self.judge_obj.vote(items)]
        else:
            out = list(self.judge_obj.judge(items))
        if len(out) != len(items):
            raise ValueError(f"judge {self.name!r} returned {len(out)} verdicts for {len(items)} items")
        for v in out:
            if v is not None and not isinstance(v, Verdict):
                raise TypeError(f"judge {self.name!r} returned {v!r}; expected a Verdict or None")
        return out


@dataclass
class JudgedItems:
    """Verdicts for a list of items (``None`` = unjudged) and one line per judge call that failed."""

    verdicts: list[Verdict | None]
    errors: list[str] = field(default_factory=list)

    @property
    def n_unjudged(self) -> int:
        return sum(v is None for v in self.verdicts)


JUDGE_FAILURES = (RuntimeError, OSError, ValueError)
"""what a failing judge may raise without stopping the evaluation (``EndpointError`` is a RuntimeError);
a TypeError is a programming error and propagates"""


def judge_all(judge: SafetyJudge, items: Sequence[JudgeItem], *, chunk_size: int = 16,
              max_consecutive_failures: int = 2) -> JudgedItems:
    """Judge ``items`` in chunks; an item the judge cannot label stays ``None`` (unjudged), never safe.

    A chunk whose call fails is retried item by item, so items the judge can still label keep their
    verdicts; after ``max_consecutive_failures`` failed single items in a row (a server that went away),
    the rest of that chunk is left unjudged without more calls, and the next chunk is tried afresh.

    Worked example: 5 items, ``chunk_size=2``, a judge that fails every call from its 2nd on. Call 1 judges
    items 0-1; call 2 (items 2-3) fails, then item 2 and item 3 fail alone (calls 3, 4); call 5 (item 4,
    a chunk of one, not retried) fails: 3 unjudged items, 4 error lines, 5 calls.
    """
    verdicts: list[Verdict | None] = [None] * len(items)
    errors: list[str] = []
    judge.prime(items)
    for start in range(0, len(items), chunk_size):
        chunk = list(items[start:start + chunk_size])
        try:
            verdicts[start:start + len(chunk)] = judge.judge(chunk)
            continue
        except JUDGE_FAILURES as e:
            errors.append(f"items {start}..{start + len(chunk) - 1}: {type(e).__name__}: {e}")
        if len(chunk) == 1:
            continue
        failures = 0
        for k, item in enumerate(chunk):
            if failures >= max_consecutive_failures:
                break
            try:
                verdicts[start + k] = judge.judge([item])[0]
                failures = 0
            except JUDGE_FAILURES as e:
                failures += 1
                errors.append(f"item {start + k}: {type(e).__name__}: {e}")
    return JudgedItems(verdicts, errors)


def build_safety_judge(offline: Panel, *, url: str | None = None, model: str | None = None, mode: str = "verdict",
                       timeout: float = 60.0, max_retries: int = 3,
                       prime: Callable[[list[str]], None] | None = None) -> SafetyJudge:
    """The offline panel, or (with ``url``) an HTTP judge that replaces it.

    ``mode="llama_guard"`` needs a refusal/guidance split Llama Guard does not make: the offline panel's
    decision is the fallback (named in the judge's name).
    """
    panel_name = f"offline panel ({', '.join(offline.names)})"
    if url is None:
        return SafetyJudge(offline, panel_name, prime=prime)
    if not model:
        raise ValueError("--judge-url needs --judge-model (the model name the server knows)")
    from agents.openai_compat import JUDGE_MODES, OpenAICompatAgent, OpenAICompatJudge

    if mode not in JUDGE_MODES:
        raise ValueError(f"--judge-mode must be one of {JUDGE_MODES}, got {mode!r}")
    agent = OpenAICompatAgent(url, model, max_tokens=256 if mode == "verdict" else 32, timeout=timeout,
                              max_retries=max_retries)
    fallback = (lambda items: [v.verdict for v in offline.vote(items)]) if mode == "llama_guard" else None
    name = f"HTTP judge {model} ({mode}) at {agent.base_url}"
    if mode == "llama_guard":
        name += f", refusal vs guidance split by the {panel_name}"
    return SafetyJudge(OpenAICompatJudge(agent, mode, fallback=fallback), name, prime=prime)


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


def judge_refusal_scores(judge: SafetyJudge, offline: Panel, rows: Sequence[dict]) -> dict:
    """How well the safety judge detects refusals on human-labelled ``(prompt, response, is_refusal)`` rows.

    Readings, each with accuracy, precision / recall of the refusal class, the confusion matrix and ``n``:

    - ``judge``: the safety judge's verdict REFUSAL is its refusal call (our 3-class taxonomy: a refusal
      that goes on to help safely is GUIDANCE, which PyRIT's labellers count as a refusal, so this reading
      under-counts refusals by design); unjudged rows are left out and counted.
    - ``judges.<name>``: each offline panel judge alone, same reading.
    - ``keywords``: ``is_refusal`` (refusal phrases in the first 240 characters).
    - ``keywords_or_low_similarity``: keywords, or prompt/response similarity below the relevance judge's
      threshold: the rule the relevance judge applies before the refusal/guidance split (REFERENCE.md's
      "keywords or low prompt/response embedding similarity").

    The seed kind of these prompts is unknown, so items go to the judges with ``harmful=None``.
    """
    items = [JudgeItem(r["prompt"], r["response"], None) for r in rows]
    truth = [bool(r["is_refusal"]) for r in rows]
    judge.prime(items)
    votes = offline.vote(items)
    if judge.judge_obj is offline:  # the offline panel is the safety judge: its votes are already here
        judged = JudgedItems([v.verdict for v in votes])
    else:
        judged = judge_all(judge, items)
    keep = [i for i, v in enumerate(judged.verdicts) if v is not None]
    out = {"judge": {**binary_scores([truth[i] for i in keep], [judged.verdicts[i] == Verdict.REFUSAL for i in keep]),
                     "n_unjudged": judged.n_unjudged, "name": judge.name}}
    out["judges"] = {name: binary_scores(truth, [v.votes[k] == Verdict.REFUSAL for v in votes])
                     for k, name in enumerate(offline.names)}
    out["keywords"] = binary_scores(truth, [is_refusal(r["response"]) for r in rows])
    relevance = _relevance_of(offline)
    sim = relevance.similarity or lexical_similarity
    out["keywords_or_low_similarity"] = {
        **binary_scores(truth, [is_refusal(r["response"]) or sim(r["prompt"], r["response"]) < relevance.threshold
                                 for r in rows]),
        "similarity": f"{relevance.name} (threshold {relevance.threshold})",
    }
    if judged.errors:
        out["judge"]["errors"] = judged.errors[:20]
    return out
