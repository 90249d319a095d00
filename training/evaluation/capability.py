"""The capability probe: general questions with exact answers, asked of the defender in its game role."""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from training.evaluation.metrics import _TOKEN

CAPABILITY_PROBE = Path(str(resources.files("triplay_env") / "data" / "capability_probe.tsv"))
CAPABILITY_SUFFIX = " Reply with the answer only."
"""appended to every probe question (our choice: small models ramble; the match still reads the whole reply)"""


def _normalise_answer(text: str) -> str:
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text.lower())  # 1,000 -> 1000
    return " ".join(_TOKEN.findall(text.replace("-", " ")))


def answer_matches(response: str, answers: Sequence[str], max_words: int = 40) -> bool:
    """True when one of ``answers`` appears, as whole words, in the first ``max_words`` words of ``response``.

    Both sides are lower-cased, hyphens read as spaces, thousands separators dropped and punctuation
    ignored, so "Twenty-four." matches "twenty four" and "1,000 g" matches "1000". Only the opening words
    count (our choice), so a reply that lists every candidate at length does not pass.

    >>> answer_matches("The capital of France is Paris.", ["paris"])
    True
    >>> answer_matches("It is 112.", ["12", "twelve"]), answer_matches("Twenty-four hours", ["24", "twenty-four"])
    (False, True)
    """
    words = _normalise_answer(response).split()[:max_words]
    haystack = f" {' '.join(words)} "
    return any(f" {_normalise_answer(a)} " in haystack for a in answers if _normalise_answer(a))


def load_capability_probe(path: str | Path = CAPABILITY_PROBE) -> list[dict]:
    """The capability probe: ``[{"category", "question", "answers": [..]}]`` from a TSV with the columns
    ``category``, ``question``, ``answers`` (aliases separated by ``|``)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for i, r in enumerate(csv.DictReader(f, delimiter="\t"), start=2):
            answers = [a.strip() for a in (r.get("answers") or "").split("|") if a.strip()]
            if not (r.get("question") or "").strip() or not answers:
                raise ValueError(f"{path}:{i}: a probe row needs a question and at least one answer, got {r}")
            rows.append({"category": r["category"].strip(), "question": r["question"].strip(), "answers": answers})
    return rows
