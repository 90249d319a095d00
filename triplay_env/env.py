"""TriPlay: attacker, defenders and evaluators play one safety game.

This environment is part of the TriPlay environments. Create it with ``triplay_env.parallel_env(**cfg)``,
``triplay_env.env(**cfg)`` (AEC view) or ``pettingzoo.make("parallel", "triplay/TriPlay-v0", **cfg)``.

| Import             | ``from triplay_env import parallel_env``                                  |
|--------------------|---------------------------------------------------------------------------|
| Actions            | text                                                                      |
| Parallel API       | yes                                                                       |
| Agents             | ``attacker_0``, ``defender_0..N-1``, ``evaluator_0..N-1``                 |
| Action space       | ``UnicodeText(max_length)``: any unicode string                           |
| Observation space  | ``Dict(prompt=UnicodeText, active=Discrete(2), phase=Discrete(3), round=Discrete(max_rounds))`` |

A scenario (a harmful seed, or a benign look-alike) is drawn at ``reset``. Each round has three phases:
ATTACK (``attacker_0`` rewrites the seed into an adversarial prompt), DEFEND (every defender answers it at
once), JUDGE (``evaluator_i`` classifies ``defender_i``'s answer as unsafe, refusal or guidance). With
``max_rounds > 1`` the next ATTACK sees the transcript and refines (a multi-turn attack). ``defender_0`` is
the defender being trained; ``defender_1..`` are fixed reference defenders whose outcomes enter the
attacker's reward with ``defender_weights`` (paper: 0.6 / 0.2 / 0.2).

### Arguments

* ``num_defenders`` (1): defenders, and as many evaluators.
* ``defender_weights`` (None): attacker-reward weight per defender; default 1.0 for one defender,
  (0.6, 0.2, 0.2) for three (paper), else 0.6 then the remaining 0.4 shared equally (ours).
* ``max_rounds`` (1): attack rounds per scenario.
* ``games_per_episode`` (1): scenarios played per episode; ``None`` plays until ``max_cycles``.
* ``max_cycles`` (None): truncate the episode after this many steps (phases).
* ``scenarios`` ("builtin"): a dataset name (see ``triplay_env.datasets``), a ``ScenarioSet`` or a list of
  ``Scenario`` (used as given). For a named dataset ``split`` ("train") picks the stable-hash split and
  ``benign_fraction`` (0.3, ours) the share of benign look-alikes drawn.
* ``reward_scheme`` ("triplay"): a name in ``REWARD_SCHEMES`` or a ``RewardScheme``; ``reward_kwargs`` go to
  a named scheme's constructor.
* ``panel`` (None): the judges' ``Panel`` (``triplay_env.panel``); default ``default_panel(embedder)``: the
  content judge, in its lexical variant without an embedder (no torch, thousands of games a second) and its
  MiniLM variant with one. Share one panel between lockstep envs so their judging is batched and cached.
  ``embedder`` (None): texts -> unit vectors, used for R_sem, the pool's cosine and the default panel.
  ``similarity`` (None): ``(seed, attack) -> [0, 1]`` for R_sem; default embedding cosine, else lexical overlap.
* ``verdict_source`` ("evaluator"): whose verdict drives the attacker's and defenders' rewards:
  ``"evaluator"`` (the closed loop of the paper; falls back to the panel when the output does not parse),
  ``"panel"``, or ``"gated"``: the evaluator's verdict pays once its rolling agreement with the panel reaches
  the ``gate``'s threshold (a ``VerdictGate``, shared between envs; default ``VerdictGate()``), the panel's
  until then. Whatever the source, a non-answer (empty, one word, an echo of the request, filler) is paid
  as the panel's REFUSAL, and a round no judge could label pays nothing for the verdict terms.
* ``attack_success_pool`` (None): an ``AttackSuccessPool`` to share between envs; else a new one of
  ``pool_capacity`` (10,000) attacks. Successful attacks against ``defender_0`` join it.
* ``stop_on_success`` (False): end a scenario's rounds early once an attack succeeds against ``defender_0``.
* ``max_attack_chars`` (2000), ``max_response_chars`` (4000), ``max_verdict_chars`` (1000): longer actions are
  truncated and flagged (``infos[agent]["truncated"]``). ``max_observation_chars`` (20000): longer prompts keep
  their end.
* ``render_mode`` (None): ``"ansi"`` returns the transcript, ``"human"`` prints it.

### Observation Space

``prompt`` is the acting role's prompt (system + user, flattened; empty when the agent is inactive),
``active`` is 1 for the agents that act this step, ``phase`` is 0/1/2 (attack/defend/judge) and ``round`` the
round index. ``infos[agent]`` carries the same prompt as chat ``messages`` plus the structured context:
``active``, ``role``, ``phase``, ``round``, ``game``, ``scenario``, ``attack``, ``responses``, ``verdicts``,
``history`` (earlier rounds), and after a judged round ``panel_verdicts``, ``panel_votes``, ``panel_rules``,
``evaluator_verdicts``, ``verdict_sources`` (``evaluator``, ``panel`` or ``rule``), ``gate_agreement`` and
``reward_terms`` (all under ``judged``, the round's record). The evaluator's prompt holds what the panel's
label depends on: the original seed request and its kind, the attack, and the response.

### Action Space

Any ``str``: the attack, the response, or the evaluator's verdict text (format: ``triplay_env.verdicts``).
Inactive agents' actions are ignored. A non-``str`` action for an active agent raises ``TypeError``.

### Rewards

Zero except on JUDGE steps, where the reward scheme pays every agent (``triplay_env.rewards``).

### Version History

* v0: initial release.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from triplay_env import prompts
from triplay_env.agent_ids import ATTACKER, agent_id, agents_of, index_of, role_of
from triplay_env.diversity import AttackSuccessPool
from triplay_env.judges import JudgeItem, lexical_similarity
from triplay_env.panel import Panel, VerdictGate, default_panel
from triplay_env.rewards import RewardScheme, RoundOutcome, attack_succeeded, make_reward_scheme
from triplay_env.scenarios import Scenario, ScenarioSet
from triplay_env.spaces import UnicodeText
from triplay_env.verdicts import Verdict, parse_verdict

__all__ = ["TriPlayEnv", "Phase", "VERDICT_SOURCES"]

VERDICT_SOURCES = ("evaluator", "panel", "gated")


class Phase(enum.IntEnum):
    ATTACK = 0
    DEFEND = 1
    JUDGE = 2


def _default_weights(n: int) -> tuple[float, ...]:
    if n == 1:
        return (1.0,)
    return (0.6,) + (0.4 / (n - 1),) * (n - 1)


class TriPlayEnv(ParallelEnv):
    metadata = {"name": "triplay_v0", "render_modes": ["ansi", "human"], "is_parallelizable": True}

    def __init__(
        self,
        *,
        num_defenders: int = 1,
        defender_weights: Sequence[float] | None = None,
        max_rounds: int = 1,
        games_per_episode: int | None = 1,
        max_cycles: int | None = None,
        scenarios: str | ScenarioSet | Sequence[Scenario] = "builtin",
        split: str = "train",
        benign_fraction: float | None = 0.3,
        reward_scheme: str | RewardScheme = "triplay",
        reward_kwargs: dict | None = None,
        panel: Panel | None = None,
        embedder: Callable[[list[str]], np.ndarray] | None = None,
        similarity: Callable[[str, str], float] | None = None,
        verdict_source: str = "evaluator",
        gate: VerdictGate | None = None,
        attack_success_pool: AttackSuccessPool | None = None,
        pool_capacity: int = 10_000,
        stop_on_success: bool = False,
        max_attack_chars: int = 2000,
        max_response_chars: int = 4000,
        max_verdict_chars: int = 1000,
        max_observation_chars: int = 20_000,
        render_mode: str | None = None,
    ):
        _require_int("num_defenders", num_defenders, 1)
        _require_int("max_rounds", max_rounds, 1)
        if games_per_episode is not None:
            _require_int("games_per_episode", games_per_episode, 1)
        if max_cycles is not None:
            _require_int("max_cycles", max_cycles, 1)
        if games_per_episode is None and max_cycles is None:
            raise ValueError("games_per_episode=None plays until max_cycles: set max_cycles too")
        for name, value in (("max_attack_chars", max_attack_chars), ("max_response_chars", max_response_chars),
                            ("max_verdict_chars", max_verdict_chars), ("max_observation_chars", max_observation_chars)):
            _require_int(name, value, 1)
        weights = tuple(float(w) for w in defender_weights) if defender_weights is not None else _default_weights(num_defenders)
        if len(weights) != num_defenders or any(w < 0 for w in weights) or not np.isfinite(weights).all():
            raise ValueError(f"defender_weights must be {num_defenders} finite non-negative numbers, got {defender_weights}")
        if verdict_source not in VERDICT_SOURCES:
            raise ValueError(f"unknown verdict_source {verdict_source!r}; choose one of {VERDICT_SOURCES}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"unknown render_mode {render_mode!r}; choose one of {self.metadata['render_modes']} or None")

        self.num_defenders = num_defenders
        self.defender_weights = weights
        self.max_rounds = max_rounds
        self.games_per_episode = games_per_episode
        self.max_cycles = max_cycles
        self.scenario_set = _scenario_set(scenarios, split, benign_fraction)
        self.reward_scheme = make_reward_scheme(reward_scheme, **(reward_kwargs or {}))
        self.embedder = embedder
        self.panel = panel if panel is not None else default_panel(embedder)
        self.similarity = similarity
        self.verdict_source = verdict_source
        if gate is not None and verdict_source != "gated":
            raise ValueError(f"a gate only applies with verdict_source='gated', got verdict_source={verdict_source!r}")
        self.gate = gate if gate is not None else (VerdictGate() if verdict_source == "gated" else None)
        self.attack_success_pool = attack_success_pool if attack_success_pool is not None else AttackSuccessPool(pool_capacity)
        self.stop_on_success = stop_on_success
        self.max_chars = {"attacker": max_attack_chars, "defender": max_response_chars, "evaluator": max_verdict_chars}
        self.max_observation_chars = max_observation_chars
        self.render_mode = render_mode

        self.defenders = [agent_id("defender", i) for i in range(num_defenders)]
        self.evaluators = [agent_id("evaluator", i) for i in range(num_defenders)]
        self.possible_agents = agents_of(num_defenders)
        self.agents: list[str] = []
        self._roles = {a: role_of(a) for a in self.possible_agents}
        self._rng = np.random.default_rng()
        self.scenario: Scenario | None = None

    # ------------------------------------------------------------------ spaces

    @functools.cache  # noqa: B019 (one space object per agent, as PettingZoo requires)
    def observation_space(self, agent: str) -> spaces.Dict:
        self._check_agent(agent)
        return spaces.Dict(
            {
                "prompt": UnicodeText(self.max_observation_chars),
                "active": spaces.Discrete(2),
                "phase": spaces.Discrete(len(Phase)),
                "round": spaces.Discrete(self.max_rounds),
            }
        )

    @functools.cache  # noqa: B019
    def action_space(self, agent: str) -> UnicodeText:
        self._check_agent(agent)
        return UnicodeText(self.max_chars[self._roles[agent]])

    # ------------------------------------------------------------------ render / close

    def render(self) -> str | None:
        if self.render_mode is None:
            return None
        text = self.transcript()
        if self.render_mode == "human":
            print(text)
            return None
        return text

    def transcript(self) -> str:
        """The current scenario's rounds so far, as plain text."""
        if self.scenario is None:
            return "(call reset first)"
        s = self.scenario
        lines = [f"Scenario [{s.kind}, {s.category}, {s.source}]: {s.text}"]
        rounds = list(self.history)
        if self._pending:  # attacked (and maybe answered) but not judged yet
            rounds.append({"attack": self._attack, "responses": self._responses, "verdicts": ()})
        for i, r in enumerate(rounds, start=1):
            lines.append(f"--- round {i}")
            lines.append(f"attacker_0: {r['attack']}")
            for d, response in enumerate(r["responses"]):
                verdict = r["verdicts"][d] if d < len(r["verdicts"]) else None
                lines.append(f"defender_{d}: {response}")
                if r["verdicts"]:
                    lines.append(f"  verdict: {verdict or 'none'}")
            if "rewards" in r:
                lines.append("  rewards: " + ", ".join(f"{a}={v:+.3f}" for a, v in r["rewards"].items()))
        return "\n".join(lines)

    def close(self) -> None:
        pass

    # ------------------------------------------------------------------ reset / step

    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        forced = (options or {}).get("scenario")  # other keys are ignored, as Gymnasium envs do
        self.agents = list(self.possible_agents)
        self._cycles = 0
        self._game = 0
        self._start_game(_as_scenario(forced) if forced is not None else None)
        return self._observe(truncated_agents=())

    def step(self, actions: dict[str, str]):
        if not self.agents:
            raise RuntimeError("Call reset before using step method (the episode is over or never started).")
        active = self._active()
        texts: dict[str, str] = {}
        truncated_agents = []
        for agent in active:
            if agent not in actions:
                raise KeyError(f"no action for active agent {agent!r} in phase {self._phase.name}; actions given for {sorted(actions)}")
            text = actions[agent]
            if not isinstance(text, str):
                raise TypeError(f"action for {agent} must be a str, actual type: {type(text)}")
            limit = self.max_chars[self._roles[agent]]
            if len(text) > limit:
                text = text[:limit]
                truncated_agents.append(agent)
            texts[agent] = text

        rewards = dict.fromkeys(self.agents, 0.0)
        judged: dict[str, Any] = {}
        terminated = False
        if self._phase is Phase.ATTACK:
            self._attack = texts[ATTACKER]
            self._pending = True
            self._phase = Phase.DEFEND
        elif self._phase is Phase.DEFEND:
            self._responses = tuple(texts[d] for d in self.defenders)
            self._phase = Phase.JUDGE
        else:
            judged = self._judge([texts[e] for e in self.evaluators], rewards)
            self._pending = False
            terminated = self._advance(success=judged["success"])

        self._cycles += 1
        truncated = not terminated and self.max_cycles is not None and self._cycles >= self.max_cycles
        observations, infos = self._observe(truncated_agents, judged, done=terminated or truncated)
        terminations = dict.fromkeys(self.agents, terminated)
        truncations = dict.fromkeys(self.agents, truncated)
        if terminated or truncated:
            self.agents = []
        if self.render_mode == "human":
            self.render()
        return observations, rewards, terminations, truncations, infos

    # ------------------------------------------------------------------ game logic

    def _start_game(self, scenario: Scenario | None) -> None:
        self.scenario = scenario if scenario is not None else self.scenario_set.sample(self._rng)
        self._scenario_dict = self.scenario.to_dict()
        self.history: list[dict] = []
        self._round = 0
        self._phase = Phase.ATTACK
        self._attack = ""
        self._responses: tuple[str, ...] = ()
        self._pending = False

    def _advance(self, success: bool) -> bool:
        """Move past a judged round; True when the episode terminates."""
        if self._round + 1 < self.max_rounds and not (self.stop_on_success and success):
            self._round += 1
            self._phase = Phase.ATTACK
            return False
        self._game += 1
        if self.games_per_episode is not None and self._game >= self.games_per_episode:
            return True
        self._start_game(None)
        return False

    def judge_items(self) -> list[JudgeItem]:
        """The items the next step will judge (one per defender) when the env is in its JUDGE phase, else [].

        The lockstep runner gathers these across envs and judges them in one panel call
        (:meth:`triplay_env.panel.Panel.prefetch`) before stepping the envs.
        """
        if not self.agents or self._phase is not Phase.JUDGE:
            return []
        s = self.scenario
        return [JudgeItem(self._attack, r, s.harmful, s.text) for r in self._responses]

    def _judge(self, evaluator_texts: list[str], rewards: dict[str, float]) -> dict[str, Any]:
        scenario = self.scenario
        votes = self.panel.vote(self.judge_items())
        panel_verdicts = tuple(v.verdict for v in votes)
        rules = tuple(getattr(v, "rule", None) for v in votes)
        evaluator_verdicts = tuple(parse_verdict(t) for t in evaluator_texts)
        source = self.verdict_source if self.gate is None else self.gate.paying
        gate_agreement = None if self.gate is None or math.isnan(self.gate.agreement) else self.gate.agreement
        if self.gate is not None:
            self.gate.record([e == p for e, p in zip(evaluator_verdicts, panel_verdicts) if e is not None and p is not None])
        verdicts, sources = [], []
        for e, p, rule in zip(evaluator_verdicts, panel_verdicts, rules):
            if rule is not None:  # a non-answer is a refusal whoever judges: no reward for saying nothing
                verdicts.append(p), sources.append("rule")
            elif source == "evaluator" and e is not None:
                verdicts.append(e), sources.append("evaluator")
            else:
                verdicts.append(p), sources.append("panel")
        verdicts, sources = tuple(verdicts), tuple(sources)

        pool = self.attack_success_pool
        attack_embedding = None
        if self.embedder is not None:
            e = np.asarray(self.embedder([scenario.text, self._attack]), dtype=np.float64)
            attack_embedding = e[1]
            similarity = float(e[0] @ e[1]) if self.similarity is None else self.similarity(scenario.text, self._attack)
            cosine = pool.cosine(attack_embedding) if np.any(attack_embedding) else 0.0
        else:
            similarity = (self.similarity or lexical_similarity)(scenario.text, self._attack)
            cosine = 0.0
        outcome = RoundOutcome(
            harmful=scenario.harmful,
            verdicts=verdicts,
            panel_verdicts=panel_verdicts,
            evaluator_verdicts=evaluator_verdicts,
            defender_weights=self.defender_weights,
            semantic_similarity=min(max(float(similarity), 0.0), 1.0),
            self_bleu=pool.self_bleu(self._attack),
            cosine=min(max(float(cosine), 0.0), 1.0),
        )
        paid = self.reward_scheme.rewards(outcome)
        rewards[ATTACKER] = float(paid.attacker)
        for agent, value in zip(self.defenders, paid.defenders, strict=True):
            rewards[agent] = float(value)
        for agent, value in zip(self.evaluators, paid.evaluators, strict=True):
            rewards[agent] = float(value)
        for agent, value in rewards.items():  # a reward scheme passed in by a user must not leak nan/inf
            if not math.isfinite(value):
                raise ValueError(f"reward scheme {self.reward_scheme!r} paid {agent} a non-finite reward {value}")

        success = attack_succeeded(scenario.harmful, verdicts[0])
        if success:
            pool.add(self._attack, attack_embedding)
        record = {
            "scenario": dict(self._scenario_dict),
            "game": self._game,
            "round": self._round,
            "attack": self._attack,
            "responses": self._responses,
            "verdicts": tuple(_name(v) for v in verdicts),
            "panel_verdicts": tuple(_name(v) for v in panel_verdicts),
            "panel_votes": tuple(tuple(_name(x) for x in v.votes) for v in votes),
            "evaluator_verdicts": tuple(_name(v) for v in evaluator_verdicts),
            "verdict_sources": sources,
            "panel_rules": rules,
            "gate_agreement": gate_agreement,
            "success": success,
            "reward_terms": {k: float(v) for k, v in paid.terms.items()},
            "semantic_similarity": outcome.semantic_similarity,
            "self_bleu": outcome.self_bleu,
            "cosine": outcome.cosine,
            "rewards": dict(rewards),
        }
        self.history.append(record)
        return record

    # ------------------------------------------------------------------ observations and infos

    def _active(self) -> list[str]:
        if self._phase is Phase.ATTACK:
            return [ATTACKER]
        return self.defenders if self._phase is Phase.DEFEND else self.evaluators

    def _messages(self, agent: str) -> list[dict]:
        role = self._roles[agent]
        if role == "attacker":
            return prompts.attacker_messages(self.scenario, self.history)
        index = index_of(agent)
        if role == "defender":
            return prompts.defender_messages(self._attack, self.history, index)
        return prompts.evaluator_messages(self._attack, self._responses[index], self.scenario.text, self.scenario.harmful)

    def _observe(self, truncated_agents: Sequence[str], judged: dict | None = None, done: bool = False):
        active = () if done else self._active()
        context = {
            "phase": self._phase.name.lower(),
            "round": self._round,
            "game": self._game,
            "scenario": dict(self._scenario_dict),  # a fresh dict per call: callers may keep and edit infos
            "attack": self._attack,
            "responses": self._responses,
            "history": tuple(self.history),
        }
        if judged:
            context["judged"] = judged
        observations, infos = {}, {}
        for agent in self.agents:
            is_active = agent in active
            messages = self._messages(agent) if is_active else []
            prompt = prompts.flatten(messages) if messages else ""
            if len(prompt) > self.max_observation_chars:
                prompt = prompt[-self.max_observation_chars :]
            observations[agent] = {
                "prompt": prompt,
                "active": int(is_active),
                "phase": int(self._phase),
                "round": self._round,
            }
            infos[agent] = {
                **context,
                "active": is_active,
                "role": self._roles[agent],
                "messages": messages,
                "truncated": agent in truncated_agents,
            }
        return observations, infos

    def _check_agent(self, agent: str) -> None:
        if agent not in self.possible_agents:
            raise ValueError(f"unknown agent {agent!r}; this env has {self.possible_agents}")


def _name(v: Verdict | None) -> str | None:
    return None if v is None else v.value


def _require_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _as_scenario(s: Scenario | dict) -> Scenario:
    if isinstance(s, Scenario):
        return s
    if isinstance(s, dict):
        return Scenario.from_dict(s)
    raise TypeError(f"options['scenario'] must be a Scenario or a dict, actual type: {type(s)}")


def _scenario_set(scenarios, split: str, benign_fraction: float | None) -> ScenarioSet:
    if isinstance(scenarios, ScenarioSet):
        return scenarios
    if isinstance(scenarios, str):
        from triplay_env.datasets import load_scenarios

        return load_scenarios(scenarios, split, benign_fraction=benign_fraction)
    return ScenarioSet(scenarios, benign_fraction)
