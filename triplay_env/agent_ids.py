"""Agent ids and roles: the one place that knows an agent is named ``<role>_<index>``.

>>> agent_id("defender", 2), role_of("defender_2"), index_of("defender_2")
('defender_2', 'defender', 2)
>>> agents_of(num_defenders=2)
['attacker_0', 'defender_0', 'defender_1', 'evaluator_0', 'evaluator_1']
"""

from __future__ import annotations

__all__ = ["ROLES", "ATTACKER", "agent_id", "parse_agent", "role_of", "index_of", "agents_of", "is_role"]

ROLES = ("attacker", "defender", "evaluator")
"""the three roles, in the order a round plays them"""
ATTACKER = "attacker_0"
"""the one attacker of every game"""


def agent_id(role: str, index: int = 0) -> str:
    """``("defender", 2)`` -> ``"defender_2"``."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles are {ROLES}")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"an agent index is an integer >= 0, got {index!r}")
    return f"{role}_{index}"


def parse_agent(agent: str) -> tuple[str, int]:
    """``"defender_2"`` -> ``("defender", 2)``; a name that is not ``<role>_<index>`` raises ``ValueError``."""
    role, _, index = str(agent).rpartition("_")
    if role not in ROLES or not index.isdigit():
        raise ValueError(f"agent name {agent!r} is not '<role>_<index>' with role in {ROLES}")
    return role, int(index)


def role_of(agent: str) -> str:
    """``"defender_2"`` -> ``"defender"``."""
    return parse_agent(agent)[0]


def index_of(agent: str) -> int:
    """``"defender_2"`` -> ``2``: which defender an evaluator judges, or which defender answers."""
    return parse_agent(agent)[1]


def is_role(agent: str, role: str) -> bool:
    """True when ``agent`` plays ``role`` (``is_role("evaluator_1", "evaluator")``)."""
    return role_of(agent) == role


def agents_of(num_defenders: int = 1) -> list[str]:
    """Every agent of a game with ``num_defenders`` defenders (and as many evaluators), in PettingZoo order."""
    return [ATTACKER, *(agent_id("defender", i) for i in range(num_defenders)),
            *(agent_id("evaluator", i) for i in range(num_defenders))]
