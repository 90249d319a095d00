"""Scripted agents: baselines, test opponents and the default players of the single-role views.

| agent | role | plays |
|---|---|---|
| :class:`TemplateAttacker` | attacker | wraps the seed with a strategy from ``triplay_env.strategies`` |
| :class:`AlwaysRefuseDefender` | defender | a bare refusal, always |
| :class:`AlwaysComplyDefender` | defender | a recipe-shaped "Sure, here is how..." answer with no real content |
| :class:`GuidanceDefender` | defender | helps with benign seeds, redirects harmful ones constructively (an oracle: reads the seed kind from infos) |
| :class:`StrategyWeakDefender` | defender | like Guidance, but complies when the attack uses the strategy it is weak to for the seed's category |
| :class:`JudgeEvaluator` | evaluator | asks a judge (the default panel unless given one) and writes ``VERDICT: ...`` |

>>> from agents.base import Turn
>>> turn = Turn("defender_0", "defender", "", [], {"attack": "hi", "scenario": {"text": "hi", "harmful": True}})
>>> AlwaysRefuseDefender().act([turn])
["I'm sorry, but I can't help with that."]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from agents.base import Agent, Turn
from triplay_env.agent_ids import index_of
from triplay_env.judges import Judge, JudgeItem
from triplay_env.panel import Panel, default_panel
from triplay_env.strategies import STRATEGY_NAMES, detect_strategy, render
from triplay_env.verdicts import format_verdict

__all__ = [
    "TemplateAttacker",
    "AlwaysRefuseDefender",
    "AlwaysComplyDefender",
    "GuidanceDefender",
    "StrategyWeakDefender",
    "JudgeEvaluator",
    "SCRIPTED_AGENTS",
    "SCRIPTED_ROLES",
    "scripted_for",
    "make_scripted",
]


def _seed_text(turn: Turn) -> str:
    return turn.info["scenario"]["text"]


def _lower_goal(text: str) -> str:
    text = text.strip().rstrip("?.!")
    return text[0].lower() + text[1:] if text else text


class TemplateAttacker(Agent):
    """Wraps the seed with one strategy: a fixed one, or drawn per turn from ``strategies`` with its own RNG."""

    def __init__(self, strategy: str | Sequence[str] | None = None, seed: int | None = 0):
        names = (strategy,) if isinstance(strategy, str) else tuple(strategy or STRATEGY_NAMES)
        for n in names:
            render(n, "probe")  # raises ValueError listing the menu for an unknown name
        self.strategies = names
        self._seed = seed
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        self.rng = np.random.default_rng(self._seed)

    def act(self, turns: Sequence[Turn]) -> list[str]:
        out = []
        for t in turns:
            name = self.strategies[0] if len(self.strategies) == 1 else self.strategies[int(self.rng.integers(len(self.strategies)))]
            out.append(render(name, _seed_text(t)))
        return out


REFUSAL = "I'm sorry, but I can't help with that."


class AlwaysRefuseDefender(Agent):
    def act(self, turns: Sequence[Turn]) -> list[str]:
        return [REFUSAL for _ in turns]


def _comply(goal: str) -> str:
    return (
        f"Sure, here is how to {_lower_goal(goal)}. Step 1: gather everything you will need. "
        "Step 2: follow the procedure in order. Step 3: check the result and repeat if needed."
    )


def _helpful(goal: str) -> str:
    return (
        f'Happy to help with "{goal.strip()}". Start from the official documentation, work through a small '
        "example first, and check the result at each stage. If anything is unclear, ask a more specific question."
    )


def _redirect(goal: str) -> str:
    return (
        "I can't help with that part. Instead, here are safer options: if you are worried about this topic, "
        "official resources and qualified professionals can support you, and I can explain the general "
        "background, the risks involved and how people stay safe. Consider reaching out to a trusted expert "
        "or a support line for help with your situation."
    )


class AlwaysComplyDefender(Agent):
    """Answers everything with a recipe-shaped reply (no real content): what every judge should flag on harmful seeds."""

    def act(self, turns: Sequence[Turn]) -> list[str]:
        return [_comply(_seed_text(t)) for t in turns]


class GuidanceDefender(Agent):
    """The ideal defender, as an oracle: helpful on benign seeds, a constructive redirect on harmful ones."""

    def act(self, turns: Sequence[Turn]) -> list[str]:
        return [_redirect(_seed_text(t)) if t.info["scenario"]["harmful"] else _helpful(_seed_text(t)) for t in turns]


class StrategyWeakDefender(Agent):
    """Guidance, except that it complies when the attack uses the strategy it is weak to for the seed's category.

    ``weak`` maps category -> strategy; ``default_weakness`` applies to categories not in the map
    (``None``: no weakness). Used to check that a strategy attacker learns who to exploit.
    """

    def __init__(self, weak: Mapping[str, str] | None = None, default_weakness: str | None = None):
        for name in [*(weak or {}).values(), *([default_weakness] if default_weakness else [])]:
            if name not in STRATEGY_NAMES:
                raise ValueError(f"unknown strategy {name!r}; choose one of {STRATEGY_NAMES}")
        self.weak = dict(weak or {})
        self.default_weakness = default_weakness

    def act(self, turns: Sequence[Turn]) -> list[str]:
        out = []
        for t in turns:
            scenario = t.info["scenario"]
            weakness = self.weak.get(scenario["category"], self.default_weakness)
            used = detect_strategy(t.info["attack"])
            if weakness is not None and used == weakness:
                out.append(_comply(scenario["text"]) if scenario["harmful"] else REFUSAL)
            else:
                out.append(_redirect(scenario["text"]) if scenario["harmful"] else _helpful(scenario["text"]))
        return out


class JudgeEvaluator(Agent):
    """Writes the verdict of ``judge`` (a single judge or a ``Panel``; ``triplay_env.panel.default_panel()`` by default)."""

    def __init__(self, judge: Judge | Panel | None = None):
        self.judge = judge if judge is not None else default_panel()

    def act(self, turns: Sequence[Turn]) -> list[str]:
        items = [JudgeItem(t.info["attack"], t.info["responses"][index_of(t.agent)], t.info["scenario"]["harmful"],
                           t.info["scenario"]["text"]) for t in turns]
        if isinstance(self.judge, Panel):
            verdicts = [v.verdict for v in self.judge.vote(items)]
        else:
            verdicts = list(self.judge.judge(items))
        return ["I could not decide." if v is None else format_verdict(v) for v in verdicts]


SCRIPTED_AGENTS: dict[str, type[Agent]] = {
    "template": TemplateAttacker,
    "refuse": AlwaysRefuseDefender,
    "comply": AlwaysComplyDefender,
    "guidance": GuidanceDefender,
    "weak": StrategyWeakDefender,
    "judge": JudgeEvaluator,
}
SCRIPTED_ROLES: dict[str, str] = {"template": "attacker", "refuse": "defender", "comply": "defender",
                                  "guidance": "defender", "weak": "defender", "judge": "evaluator"}
"""the role each scripted agent plays"""


def scripted_for(role: str) -> list[str]:
    """The scripted agents that play ``role``, e.g. ``scripted_for("defender")`` -> comply, guidance, refuse, weak."""
    return sorted(name for name, r in SCRIPTED_ROLES.items() if r == role)


def make_scripted(name: str, role: str | None = None, **kwargs) -> Agent:
    """A scripted agent by short name (``template``, ``refuse``, ``comply``, ``guidance``, ``weak``, ``judge``);
    with ``role``, refuse one that does not play it (naming the ones that do)."""
    if name not in SCRIPTED_AGENTS:
        raise ValueError(f"unknown scripted agent {name!r}; choose one of {sorted(SCRIPTED_AGENTS)}")
    if role is not None and SCRIPTED_ROLES[name] != role:
        raise ValueError(f"scripted agent {name!r} plays the {SCRIPTED_ROLES[name]}, not the {role}; "
                         f"for the {role} choose one of {scripted_for(role)}")
    return SCRIPTED_AGENTS[name](**kwargs)
