"""Single-role Gymnasium views of the TriPlay game (registered as ``triplay/<Role>-v0`` on ``import triplay_env``).

A view is a ``gymnasium.Env`` in which *you* play one role and agents you pass in play the others
(scripted by default). ``gymnasium.make`` only returns ``gymnasium.Env`` subclasses, so these views are
how the game reaches single-agent libraries.

| id | you play | observation | action |
|---|---|---|---|
| ``triplay/Attacker-v0`` | ``attacker_0`` | the attacker's prompt (text) | the attack (text) |
| ``triplay/Defender-v0`` | ``defender_0`` | the defender's prompt (text) | the response (text) |
| ``triplay/Evaluator-v0`` | ``evaluator_0`` | the evaluator's prompt (text) | the verdict text |
| ``triplay/StrategyAttacker-v0`` | ``attacker_0`` | Box: seed category one-hot, seed kind, round | Discrete: a strategy from the menu |

The reward of a step is what the env paid your agent between your move and your next turn (or the end).
``infos`` carry the env's infos for your agent. Any TriPlay config key (``num_defenders``, ``max_rounds``,
``reward_scheme`` ...) passes through to the game.

>>> import gymnasium, triplay_env
>>> env = gymnasium.make("triplay/Defender-v0")
>>> obs, info = env.reset(seed=0)
>>> obs.startswith("[system]")
True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import gymnasium
import numpy as np
from gymnasium import spaces

from agents.base import Agent, turns_from
from agents.scripted import GuidanceDefender, JudgeEvaluator, StrategyWeakDefender, TemplateAttacker
from triplay_env import parallel_env
from triplay_env.agent_ids import ATTACKER, role_of
from triplay_env.strategies import STRATEGIES, STRATEGY_NAMES, detect_strategy, render

__all__ = [
    "AttackerView",
    "DefenderView",
    "EvaluatorView",
    "StrategyAttackerView",
    "RoleView",
    "strategy_observation",
    "strategy_action_mask",
    "strategies_used",
]


class RoleView(gymnasium.Env):
    """Play ``agent`` of a TriPlay game; ``attacker``, ``defender`` (all defenders but yours) and ``evaluator``
    (all evaluators but yours) play the rest."""

    metadata = {"render_modes": ["ansi", "human"]}
    agent = ATTACKER

    def __init__(self, *, attacker: Agent | None = None, defender: Agent | None = None,
                 evaluator: Agent | None = None, render_mode: str | None = None, **config):
        self.game = parallel_env(render_mode=render_mode, **config)
        self.render_mode = render_mode
        self.players = {
            "attacker": attacker if attacker is not None else TemplateAttacker(seed=0),
            "defender": defender if defender is not None else GuidanceDefender(),
            "evaluator": evaluator if evaluator is not None else JudgeEvaluator(),
        }
        self.observation_space = self.game.observation_space(self.agent)["prompt"]
        self.action_space = self.game.action_space(self.agent)
        self._obs: dict = {}
        self._infos: dict = {}

    def _play_others(self, reward: float) -> tuple[float, bool, bool]:
        """Let the other roles move until it is our agent's turn or the episode ends."""
        while self.game.agents and not self._obs[self.agent]["active"]:
            active = [a for a in self.game.agents if self._obs[a]["active"]]
            actions = self._others_act(active)
            self._obs, rewards, terms, truncs, self._infos = self.game.step(actions)
            reward += rewards[self.agent]
            if terms[self.agent] or truncs[self.agent]:
                return reward, bool(terms[self.agent]), bool(truncs[self.agent])
        return reward, False, False

    def _others_act(self, active: Sequence[str]) -> dict[str, str]:
        role = role_of(active[0])
        texts = self.players[role].act(turns_from(self._obs, self._infos, active))
        return dict(zip(active, texts, strict=True))

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        for player in self.players.values():
            player.reset()
        self._obs, self._infos = self.game.reset(seed=seed, options=options)
        self._play_others(0.0)
        return self._obs[self.agent]["prompt"], self._infos[self.agent]

    def step(self, action):
        if not self.game.agents:
            raise RuntimeError("Call reset before using step method (the episode is over).")
        active = [a for a in self.game.agents if self._obs[a]["active"]]
        actions = self._others_act([a for a in active if a != self.agent]) if len(active) > 1 else {}
        actions[self.agent] = self._to_text(action)
        self._obs, rewards, terms, truncs, self._infos = self.game.step(actions)
        reward = rewards[self.agent]
        terminated, truncated = bool(terms[self.agent]), bool(truncs[self.agent])
        if not (terminated or truncated):
            reward, terminated, truncated = self._play_others(reward)
        info = self._infos[self.agent]
        obs = self._obs[self.agent]["prompt"] if not (terminated or truncated) else ""
        return self._observation(obs), float(reward), terminated, truncated, info

    def _to_text(self, action) -> str:
        return action

    def _observation(self, prompt: str):
        return prompt

    def render(self):
        return self.game.render()


class AttackerView(RoleView):
    agent = ATTACKER


class DefenderView(RoleView):
    agent = "defender_0"


class EvaluatorView(RoleView):
    agent = "evaluator_0"


class StrategyAttackerView(RoleView):
    """The attacker picks a strategy from the menu; the template renders the attack.

    Observation (float32 Box): one-hot of the seed's category over the scenario set's categories, then
    [harmful, benign], then round / max_rounds. ``action_masks()`` allows the strategies that fit the seed
    kind (``alarm_framing`` only for benign seeds, everything else for harmful ones; ``plain`` always) and
    not yet used in this episode's earlier rounds. The defender defaults to a :class:`StrategyWeakDefender`
    weak to one strategy per category, drawn with ``weakness_seed``.
    """

    def __init__(self, *, weakness_seed: int = 0, defender: Agent | None = None, **kwargs):
        super().__init__(defender=defender, **kwargs)
        self.categories = sorted({s.category for s in self.game.scenario_set})
        if defender is None:
            rng = np.random.default_rng(weakness_seed)
            harmful_menu = [n for n in STRATEGY_NAMES if n not in ("plain", "alarm_framing")]
            self.players["defender"] = StrategyWeakDefender(
                {c: harmful_menu[int(rng.integers(len(harmful_menu)))] for c in self.categories}
            )
        n = len(self.categories) + 3
        self.observation_space = spaces.Box(0.0, 1.0, shape=(n,), dtype=np.float32)
        self.action_space = spaces.Discrete(len(STRATEGIES))

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        _, info = super().reset(seed=seed, options=options)
        return self._observation(""), info

    def _to_text(self, action) -> str:
        a = int(action)
        if not self.action_space.contains(a):
            raise ValueError(f"strategy index {action!r} outside Discrete({self.action_space.n})")
        return render(a, self._infos[self.agent]["scenario"]["text"])

    def _observation(self, prompt: str) -> np.ndarray:
        return strategy_observation(self._infos[self.agent], self.categories, self.game.max_rounds)

    def action_masks(self) -> np.ndarray:
        info = self._infos[self.agent]
        return strategy_action_mask(info["scenario"]["harmful"], strategies_used(info))


def strategy_observation(info: Mapping, categories: Sequence[str], max_rounds: int) -> np.ndarray:
    """The :class:`StrategyAttackerView` observation built from the attacker's ``infos`` entry.

    Shared with :class:`agents.strategy.StrategyAttacker`, which must see exactly what it was trained on.
    A category outside ``categories`` leaves the one-hot empty; the round fraction is clipped to 1.

    >>> info = {"scenario": {"category": "drugs", "harmful": True}, "round": 1}
    >>> strategy_observation(info, ["cybercrime", "drugs"], max_rounds=2).tolist()
    [0.0, 1.0, 1.0, 0.0, 0.5]
    """
    x = np.zeros(len(categories) + 3, dtype=np.float32)
    scenario = info["scenario"]
    if scenario["category"] in categories:
        x[list(categories).index(scenario["category"])] = 1.0
    x[len(categories) + (0 if scenario["harmful"] else 1)] = 1.0
    x[-1] = min(info["round"] / max_rounds, 1.0)
    return x


def strategies_used(info: Mapping) -> list[int]:
    """Indices of the strategies played in this game's earlier rounds, read back from their markers."""
    return [STRATEGY_NAMES.index(detect_strategy(r["attack"])) for r in info.get("history", ())]


def strategy_action_mask(harmful: bool, used: Iterable[int] = ()) -> np.ndarray:
    """The strategies allowed for a seed kind once ``used`` (indices into ``STRATEGIES``) are spent.

    ``alarm_framing`` only for benign seeds, every other strategy for harmful ones, ``plain`` always.

    >>> strategy_action_mask(True, used=[1]).astype(int).tolist()
    [1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0]
    """
    mask = np.array([s.name != "alarm_framing" if harmful else True for s in STRATEGIES], dtype=bool)
    for index in used:
        mask[index] = False
    mask[STRATEGY_NAMES.index("plain")] = True
    return mask
