"""triplay_env.agent_ids: the one parser of ``<role>_<index>`` agent names."""

from __future__ import annotations

import pytest

import triplay_env
from triplay_env.agent_ids import ATTACKER, agent_id, agents_of, index_of, is_role, parse_agent, role_of


@pytest.mark.parametrize("name, role, index", [("attacker_0", "attacker", 0), ("defender_12", "defender", 12),
                                               ("evaluator_3", "evaluator", 3)])
def test_names_round_trip(name, role, index):
    assert parse_agent(name) == (role, index)
    assert role_of(name) == role and index_of(name) == index
    assert agent_id(role, index) == name
    assert is_role(name, role) and not is_role(name, "defender" if role != "defender" else "attacker")


@pytest.mark.parametrize("bad", ["defender", "defender_", "judge_0", "defender_x", "_0", "defender_-1"])
def test_a_name_that_is_not_role_underscore_index_is_refused_by_name(bad):
    with pytest.raises(ValueError, match=repr(bad).replace("(", r"\(")):
        parse_agent(bad)


def test_agent_id_refuses_an_unknown_role_or_a_negative_index():
    with pytest.raises(ValueError, match="unknown role 'judge'"):
        agent_id("judge", 0)
    with pytest.raises(ValueError, match="-1"):
        agent_id("defender", -1)


@pytest.mark.parametrize("n", [1, 3])
def test_agents_of_is_what_the_env_declares(n):
    env = triplay_env.parallel_env(num_defenders=n)
    assert agents_of(n) == env.possible_agents
    assert env.possible_agents[0] == ATTACKER
