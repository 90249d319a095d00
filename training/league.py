"""League opponents: the roles a phase does not train play one of their own past snapshots.

The paper's loop pits the trained role against the *latest* adapters of the others. With
``loop.opponents: league`` each frozen role instead plays a snapshot of its adapter taken after an earlier
iteration (iteration 0 is the untrained adapter), so the trained role cannot overfit to one opponent
(fictitious self-play; AlphaStar's prioritised fictitious self-play for the ``prioritised`` option).

- A snapshot is one LoRA adapter's weights, kept on the CPU; at most ``size`` per role (the most recent).
- Each optimizer step draws one snapshot per frozen role, loads it into that role's opponent slot (an extra
  adapter on the one base model, ``agents.hf.LoRARoles.add_slot``), and plays the whole batch with it.
- ``uniform`` draws every kept snapshot alike; ``prioritised`` draws in proportion to how often it beat the
  trained role, ``(beats + 1) / (games + 2)`` (Laplace-smoothed: a new snapshot starts at 1/2).
- A snapshot *beats* the trained role in a judged item the trained role lost, by the verdict that paid it:
  the attacker's attack did not succeed, the defender's did (unsafe on a harmful seed, a refusal of a benign
  one), or the evaluator's verdict differed from the panel's. Every snapshot that played the step is credited.

The metrics of a step record which snapshot played (``<phase>/opponent_<role>``, the iteration it was taken
after) and the league's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["League", "Snapshot", "slot_name", "trained_role_lost"]

SAMPLING = ("uniform", "prioritised")
GOAL = {True: "unsafe", False: "refusal"}
"""what an attack aims at: an unsafe answer to a harmful seed, a refusal of a benign look-alike"""


def slot_name(role: str) -> str:
    """The opponent slot (an extra adapter) that plays ``role``'s snapshots."""
    return f"league_{role}"


@dataclass
class Snapshot:
    """One role's adapter weights after an iteration, and its record against the trained roles."""

    iteration: int
    weights: dict[str, torch.Tensor]
    games: int = 0
    beats: int = 0

    @property
    def beat_rate(self) -> float:
        """Laplace-smoothed share of judged items in which it beat the trained role."""
        return (self.beats + 1) / (self.games + 2)


def trained_role_lost(role: str, judged: Sequence[dict]) -> tuple[int, int]:
    """``(items, lost)``: how many judged items the trained ``role`` was paid on, and how many it lost.

    attacker: a round whose paying verdict (defender_0's) missed the goal; defender: one that hit it;
    evaluator: each evaluator verdict that differed from the panel's (items the panel could not label are
    left out). Rounds without a paying verdict are left out.
    """
    items = lost = 0
    for r in judged:
        if role == "evaluator":
            for e, p in zip(r["evaluator_verdicts"], r["panel_verdicts"]):
                if p is not None:
                    items += 1
                    lost += e != p
            continue
        verdict = r["verdicts"][0]
        if verdict is None:
            continue
        hit = verdict == GOAL[r["scenario"]["harmful"]]
        items += 1
        lost += (not hit) if role == "attacker" else hit
    return items, lost


class League:
    """Past snapshots of each role's adapter.

    Args:
        roles: the roles that keep snapshots.
        size: snapshots kept per role (the oldest is dropped first).
        sampling: ``uniform`` or ``prioritised``.
        seed: seeds the draws (its state is in :meth:`state_dict`, so a resumed run draws the same).
    """

    def __init__(self, roles: Sequence[str], *, size: int, sampling: str = "uniform", seed: int = 0):
        if size < 1:
            raise ValueError(f"league size must be >= 1, got {size}")
        if sampling not in SAMPLING:
            raise ValueError(f"league sampling must be one of {SAMPLING}, got {sampling!r}")
        self.size, self.sampling = size, sampling
        self.snapshots: dict[str, list[Snapshot]] = {role: [] for role in roles}
        self.rng = np.random.default_rng(seed)

    def add(self, role: str, iteration: int, weights: dict[str, torch.Tensor]) -> None:
        """Keep ``weights`` (a CPU copy, e.g. ``LoRARoles.weights(role)``) as ``role``'s snapshot after
        ``iteration``; drop the oldest beyond ``size``."""
        kept = self.snapshots[role]
        kept.append(Snapshot(iteration, weights))
        del kept[: max(0, len(kept) - self.size)]

    def probabilities(self, role: str) -> np.ndarray:
        """The draw probability of each kept snapshot of ``role``, oldest first."""
        kept = self.snapshots[role]
        if not kept:
            raise ValueError(f"the league holds no snapshot of {role!r} yet (add one before drawing)")
        if self.sampling == "uniform":
            return np.full(len(kept), 1 / len(kept))
        rates = np.array([s.beat_rate for s in kept])
        return rates / rates.sum()

    def draw(self, role: str) -> Snapshot:
        """One of ``role``'s snapshots, drawn by :meth:`probabilities`."""
        p = self.probabilities(role)
        return self.snapshots[role][int(self.rng.choice(len(p), p=p))]

    def credit(self, snapshot: Snapshot, items: int, beats: int) -> None:
        """Record that ``snapshot`` played ``items`` judged items and beat the trained role in ``beats``."""
        if not 0 <= beats <= items:
            raise ValueError(f"need 0 <= beats <= items, got beats={beats}, items={items}")
        snapshot.games += items
        snapshot.beats += beats

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state,
                "snapshots": {role: [vars(s).copy() for s in kept] for role, kept in self.snapshots.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.snapshots = {role: [Snapshot(**s) for s in kept] for role, kept in state["snapshots"].items()}
