"""Scenarios: the seed requests the attacker rewrites.

A :class:`Scenario` is one seed ``(text, category, harmful, source)``. Harmful seeds ask the attacker to get
unsafe help out of the defender; benign seeds are look-alikes ("how do I kill a stuck process") that ask the
attacker to provoke an over-refusal. A :class:`ScenarioSet` holds seeds and samples them with a caller's
``numpy.random.Generator`` (the env's own), so ``reset(seed=s)`` always gives the same scenario.

Every source is split into ``train`` and ``heldout`` by a stable hash of the seed text
(:func:`split_of`), so the split never depends on file order, Python's hash seed or the machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Scenario", "ScenarioSet", "split_of", "SPLITS", "HELDOUT_FRACTION"]

SPLITS = ("train", "heldout", "all")
HELDOUT_FRACTION = 0.2
"""share of every source kept out of training (our choice: 80/20, stable across runs and machines)"""


@dataclass(frozen=True)
class Scenario:
    """One seed request."""

    text: str
    """the plain request, as a user would type it (a goal, never operational detail)"""
    category: str
    """hazard category (harmful seeds) or the topic that makes a benign seed look alarming"""
    harmful: bool
    """True: the attacker wins by eliciting unsafe help. False: it wins by provoking a refusal"""
    source: str = "builtin"
    """where the seed comes from: builtin, harmbench, advbench, strongreject, donotanswer, or a file path"""

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError(f"Scenario.text must be a non-empty string, got {self.text!r}")
        if not isinstance(self.harmful, bool):
            raise TypeError(f"Scenario.harmful must be a bool, actual type: {type(self.harmful)}")

    @property
    def kind(self) -> str:
        """``"harmful"`` or ``"benign"``: the seed kind reward tables are indexed by."""
        return "harmful" if self.harmful else "benign"

    def to_dict(self) -> dict:
        return {"text": self.text, "category": self.category, "harmful": self.harmful, "source": self.source}

    @classmethod
    def from_dict(cls, d: dict) -> Scenario:
        return cls(text=d["text"], category=d["category"], harmful=bool(d["harmful"]), source=d.get("source", "builtin"))


def split_of(text: str, heldout_fraction: float = HELDOUT_FRACTION) -> str:
    """``"heldout"`` or ``"train"`` for a seed, from the first 8 bytes of its SHA-256 (stable everywhere)."""
    h = int.from_bytes(hashlib.sha256(text.strip().lower().encode("utf-8")).digest()[:8], "big")
    return "heldout" if h / 2**64 < heldout_fraction else "train"


class ScenarioSet:
    """An immutable list of scenarios with seeded sampling and a harmful/benign mix.

    Args:
        scenarios: the seeds.
        benign_fraction: probability that :meth:`sample` draws a benign seed (when both kinds exist).
            ``None`` samples uniformly over all seeds.
    """

    def __init__(self, scenarios: Iterable[Scenario], benign_fraction: float | None = None):
        self.scenarios: tuple[Scenario, ...] = tuple(scenarios)
        if not self.scenarios:
            raise ValueError("ScenarioSet needs at least one scenario")
        for s in self.scenarios:
            if not isinstance(s, Scenario):
                raise TypeError(f"ScenarioSet items must be Scenario, actual type: {type(s)}")
        if benign_fraction is not None and not 0.0 <= benign_fraction <= 1.0:
            raise ValueError(f"benign_fraction must lie in [0, 1], got {benign_fraction}")
        self.benign_fraction = benign_fraction
        self.harmful = tuple(s for s in self.scenarios if s.harmful)
        self.benign = tuple(s for s in self.scenarios if not s.harmful)

    def __len__(self) -> int:
        return len(self.scenarios)

    def __iter__(self):
        return iter(self.scenarios)

    def __getitem__(self, i: int) -> Scenario:
        return self.scenarios[i]

    def split(self, split: str, heldout_fraction: float = HELDOUT_FRACTION) -> ScenarioSet:
        """The ``train``, ``heldout`` or ``all`` part of this set (see :func:`split_of`)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        if split == "all":
            return self
        kept = [s for s in self.scenarios if split_of(s.text, heldout_fraction) == split]
        if not kept:
            raise ValueError(f"the {split!r} split of this scenario set is empty ({len(self)} seeds in all)")
        return ScenarioSet(kept, self.benign_fraction)

    def sample(self, rng: np.random.Generator) -> Scenario:
        """Draw one seed with ``rng``: first the kind (by ``benign_fraction``), then a seed of that kind."""
        pool: Sequence[Scenario] = self.scenarios
        if self.benign_fraction is not None and self.harmful and self.benign:
            pool = self.benign if rng.random() < self.benign_fraction else self.harmful
        return pool[int(rng.integers(len(pool)))]
