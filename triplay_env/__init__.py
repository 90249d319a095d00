"""TriPlay's game: a PettingZoo parallel environment where an attacker, defenders and evaluators play.

>>> import triplay_env
>>> env = triplay_env.parallel_env(num_defenders=1, max_rounds=1)
>>> observations, infos = env.reset(seed=0)
>>> env.agents
['attacker_0', 'defender_0', 'evaluator_0']

Importing this package registers ``triplay/TriPlay-v0`` with PettingZoo and the single-role views
``triplay/Attacker-v0``, ``triplay/Defender-v0``, ``triplay/Evaluator-v0`` and ``triplay/StrategyAttacker-v0``
with Gymnasium. It imports numpy, gymnasium and pettingzoo only (never torch).
"""

from __future__ import annotations

import inspect

import gymnasium
import pettingzoo
from pettingzoo.utils.conversions import parallel_to_aec

from triplay_env.diversity import AttackSuccessPool
from triplay_env.env import Phase, TriPlayEnv
from triplay_env.judges import JudgeItem
from triplay_env.panel import Panel, VerdictCache, VerdictGate, default_panel
from triplay_env.rewards import REWARD_SCHEMES, RewardScheme, make_reward_scheme
from triplay_env.scenarios import Scenario, ScenarioSet
from triplay_env.verdicts import Verdict, format_verdict, parse_verdict

__all__ = [
    "TriPlayEnv",
    "parallel_env",
    "env",
    "Phase",
    "Scenario",
    "ScenarioSet",
    "Verdict",
    "parse_verdict",
    "format_verdict",
    "Panel",
    "VerdictCache",
    "VerdictGate",
    "JudgeItem",
    "default_panel",
    "AttackSuccessPool",
    "RewardScheme",
    "REWARD_SCHEMES",
    "make_reward_scheme",
    "CONFIG_KEYS",
]

CONFIG_KEYS = tuple(p for p in inspect.signature(TriPlayEnv.__init__).parameters if p != "self")
"""every keyword the factories accept"""


def _check_config(config: dict) -> None:
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise TypeError(f"unknown TriPlay config key(s) {unknown}; valid keys: {list(CONFIG_KEYS)}")


def parallel_env(**config) -> TriPlayEnv:
    """The parallel game (see :class:`TriPlayEnv` for every keyword)."""
    _check_config(config)
    return TriPlayEnv(**config)


def env(**config):
    """The AEC view of the game (agents act one at a time; PettingZoo's ``parallel_to_aec``)."""
    return parallel_to_aec(parallel_env(**config))


def _register() -> None:
    if "triplay/TriPlay-v0" not in pettingzoo.parallel_registry:
        pettingzoo.register("parallel", "triplay/TriPlay-v0", entry_point="triplay_env:parallel_env")
        pettingzoo.register("aec", "triplay/TriPlay-v0", entry_point="triplay_env:env")
    # The single-role views need agents to play the other roles, so they live in agents.views
    # (agents import the env, never the reverse); gymnasium imports that module on make().
    views = {
        "triplay/Attacker-v0": ("agents.views:AttackerView", True),
        "triplay/Defender-v0": ("agents.views:DefenderView", True),
        "triplay/Evaluator-v0": ("agents.views:EvaluatorView", True),
        "triplay/StrategyAttacker-v0": ("agents.views:StrategyAttackerView", False),
    }
    for env_id, (entry_point, nondeterministic) in views.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=entry_point, nondeterministic=nondeterministic)


_register()
