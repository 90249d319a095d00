"""TriPlay as a ``verifiers`` environment: the verifiers model plays one role, TriPlay's agents play the others,
the game pays.

>>> import asyncio
>>> from training.integrations.verifiers import TriPlayGame, make_verifiers_env
>>> game = TriPlayGame("defender")                       # the game loop needs no verifiers
>>> result = asyncio.run(game.rollout(client, "my-model", seed=0))   # any OpenAI-compatible client  # doctest: +SKIP
>>> result["reward"], result["metrics"], result["judged"]                                          # doctest: +SKIP
>>> env = make_verifiers_env("defender", taskset=TriPlayTasksetConfig(id=..., n=64))  # a vf.Env   # doctest: +SKIP

**What the installed verifiers is.** ``verifiers==0.4.0`` (the ``verifiers`` extra) ships only its v1 stack
(``import verifiers.v1 as vf``): there is no v0 ``MultiTurnEnv``, ``env_response`` or ``Rubric`` in it any more.
Its pieces are a ``Taskset`` yielding ``Task`` rows, an ``Env`` whose ``run(task, agents)`` drives the seats
(declared as ``AgentConfig`` fields of the env's ``EnvConfig``) through ``agents.<seat>.interaction(task)``,
``await interaction.turn(text)``, and the judgement surface ``Env.finalize(task, episode)``, where an env
records rewards and metrics on the finished traces. The multi-agent ``Env.run`` is what this adapter uses: it
is the one way 0.4.0 lets an environment compute the next user message (the role of v0's ``env_response``) and
it is documented for exactly this ("a game engine" driving an interaction).

**The mapping.**

- *dataset row (prompt + info)*: a reset seed and the scenario it draws (:func:`scenario_rows`), as
  :class:`TriPlayTaskData` (``seed``, ``scenario``) rows of ``TriPlayTaskset``;
- *env_response*: :meth:`TriPlayGame.step`, where the other roles act through TriPlay agents until ``<role>_0``
  acts again; in v1 the loop of ``Env.run``, each new prompt being the next ``interaction.turn``;
- *stop condition*: the PettingZoo episode ends (``env.agents`` empty); ``Env.run`` leaves the interaction;
- *Rubric reward*: what the env paid ``<role>_0`` (its reward scheme, its judge panel), recorded by
  ``Env.finalize`` as the trace's ``triplay`` reward.

The PettingZoo env (``triplay_env.parallel_env``) stays the source of truth: :class:`TriPlayGame` only steps it,
so rules, rewards and the judge spec are the env's own. ``TriPlayGame.rollout(client, model, ...)`` is the same
loop with an OpenAI-compatible client (``client.chat.completions.create``) playing the role, which is how the
tests run one rollout with a scripted client in seconds.

**Roles and turns.** Any role: ``"attacker"``, ``"defender"`` or ``"evaluator"`` (``<role>_0`` is the verifiers
model). Multi-turn games work: with ``max_rounds > 1`` (or ``games_per_episode > 1``) the role acts once per
round, each act one ``turn`` of the same conversation: the later turns send the env's new user message (the
defender's next attack, its earlier rounds being the conversation already; the attacker's and evaluator's new
prompt, which carries the transcript). The reward is the sum of what the env paid ``<role>_0`` over the episode
(one round: that round's reward); a round no judge could label pays 0 and is counted in ``unjudged``.

**Logged.** On the trace, metrics ``attack_success_rate``, ``unjudged`` and ``rounds``; :attr:`TriPlayGame.judged`
holds every judged record (attack, responses, verdicts, panel votes, reward terms), also returned by ``rollout``.

verifiers is imported only when the verifiers classes are built: ``pip install -e '.[verifiers]'``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from agents.base import Agent, Turn, turns_from
from training.integrations import require, shared_env_kwargs
from training.integrations.trl import DEFAULT_PLAYERS, scenario_rows
from training.rollout import Move, resolve_player
from triplay_env.agent_ids import ROLES, agent_id, role_of

__all__ = [
    "DEFAULT_PLAYERS",
    "INSTALL_HINT",
    "REWARD_NAME",
    "TriPlayGame",
    "make_verifiers_env",
    "play_game",
    "require_verifiers",
    "run_verifiers_episode",
    "scenario_rows",
    "verifiers_classes",
]

INSTALL_HINT = "pip install -e '.[verifiers]'"
"""how to get verifiers (the ``verifiers`` extra pins the version this adapter is written for, 0.4.0)"""
REWARD_NAME = "triplay"
"""the name of the reward the env records on the trained role's trace"""

Ask = Callable[[Sequence[Mapping[str, str]]], Awaitable[str]]
"""``ask(messages)``: the trained role's answer to its prompt (chat messages)"""


def require_verifiers():
    """``import verifiers.v1``, or an ``ImportError`` that says how to install it."""
    return require("verifiers.v1", "verifiers", INSTALL_HINT, "verifiers==0.4.0")


# --- the game: one TriPlay episode, stepped for the role the verifiers model plays --------------------------------


class TriPlayGame:
    """One TriPlay episode at a time, with ``<role>_0`` played from outside (see the module docstring).

    Args:
        role: the role the verifiers model plays (``"attacker"``, ``"defender"`` or ``"evaluator"``).
        players: who plays the other agents, by agent name (``"defender_1"``) or role: an ``agents.base.Agent``
            or a scripted agent's short name (``agents.scripted.make_scripted``). Default :data:`DEFAULT_PLAYERS`;
            the ``"judge"`` evaluator judges with the env's panel.
        env_kwargs: ``triplay_env.parallel_env`` keywords (reward scheme, panel, rounds, defenders, scenarios, ...).
    """

    def __init__(self, role: str = "defender", players: Mapping[str, Agent | str] | None = None,
                 env_kwargs: Mapping[str, Any] | None = None):
        import triplay_env
        from agents.scripted import make_scripted

        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}: the verifiers model can play one of {ROLES}")
        self.role = role
        self.agent = agent_id(role, 0)
        self.env = triplay_env.parallel_env(**dict(env_kwargs or {}))
        given = dict(players or {})
        agents = self.env.possible_agents
        for key in given:
            if key in (self.agent, role):
                raise ValueError(f"players[{key!r}]: {self.agent} is the verifiers model; name the other {role}s' "
                                 f"players '{role}_1', ... instead")
            if key not in ROLES and key not in agents:
                raise ValueError(f"players[{key!r}]: not a role {ROLES} nor an agent of this game {agents}")
        defaults = {r: p for r, p in DEFAULT_PLAYERS.items() if r != role}
        defaults.update({a: DEFAULT_PLAYERS[role] for a in agents if role_of(a) == role and a != self.agent})

        def build(player: Agent | str, of: str) -> Agent:
            if isinstance(player, Agent):
                return player
            if not isinstance(player, str):
                raise TypeError(f"a player is an agents.base.Agent or a scripted agent's name, "
                                f"got {type(player).__name__}")
            return make_scripted(player, of, **({"judge": self.env.panel} if player == "judge" else {}))

        self.players: dict[str, Agent] = {k: build(p, role_of(k) if k not in ROLES else k)
                                          for k, p in {**defaults, **given}.items()}
        self._turn: Turn | None = None
        self._obs: dict | None = None
        self._infos: dict | None = None
        self.moves: list[Move] = []
        self.judged: list[dict] = []

    @property
    def done(self) -> bool:
        return not self.env.agents

    def reset(self, seed: int, scenario: Mapping[str, Any] | None = None) -> list[dict]:
        """Start an episode (``env.reset(seed)``, ``scenario`` forced when given); play the other roles up to the
        trained agent's first turn and return its prompt as chat messages."""
        options = {"scenario": dict(scenario)} if scenario is not None else None
        self._obs, self._infos = self.env.reset(seed=seed, options=options)
        self.moves, self.judged = [], []
        messages = self._advance({})
        if messages is None:
            raise RuntimeError(f"the episode ended before {self.agent} acted")
        return messages

    def step(self, text: str) -> list[dict] | None:
        """The trained agent's answer: play the other roles until it acts again (v0's ``env_response``). Returns
        its next prompt, or None when the episode is over (the stop condition)."""
        if self.done or self._turn is None:
            raise RuntimeError("call reset first: the episode is over or never started")
        if not isinstance(text, str):
            raise TypeError(f"the {self.role}'s answer must be a str, got {type(text).__name__}")
        info = self._turn.info
        self.moves.append(Move(env=0, agent=self.agent, role=self.role, game=info["game"], round=info["round"],
                               prompt=self._turn.prompt, messages=self._turn.messages, text=text, info=info))
        return self._advance({self.agent: text})

    def _advance(self, actions: dict[str, str]) -> list[dict] | None:
        while self.env.agents:
            active = [a for a in self.env.agents if self._obs[a]["active"]]
            if self.agent in active and self.agent not in actions:
                self._turn = turns_from(self._obs, self._infos, [self.agent])[0]
                return [dict(m) for m in self._turn.messages]
            for a in active:
                if a not in actions:
                    actions[a] = resolve_player(self.players, a).act(turns_from(self._obs, self._infos, [a]))[0]
            self._obs, rewards, _, _, self._infos = self.env.step(actions)
            actions = {}
            record = next(iter(self._infos.values()), {}).get("judged") if self._infos else None
            if record is not None:
                self.judged.append(record)
                for m in self.moves:
                    if m.judged is None:
                        m.reward, m.judged = rewards[self.agent], record
        self._turn = None
        return None

    @property
    def reward(self) -> float:
        """What the env paid the trained agent over the episode (rounds no judge could label pay 0 here)."""
        return sum(m.reward for m in self.moves if m.has_verdict)

    def metrics(self) -> dict[str, float]:
        """Per-episode metrics: ``rounds`` judged, ``attack_success_rate`` and share of ``unjudged`` moves."""
        n = max(1, len(self.judged))
        return {"rounds": float(len(self.judged)),
                "attack_success_rate": sum(bool(r.get("success")) for r in self.judged) / n,
                "unjudged": sum(not m.has_verdict for m in self.moves) / max(1, len(self.moves))}

    def result(self) -> dict[str, Any]:
        return {"reward": self.reward, "texts": [m.text for m in self.moves], "judged": list(self.judged),
                "metrics": self.metrics(), "scenario": dict(self.env.scenario.to_dict())}

    async def rollout(self, client, model: str, seed: int, scenario: Mapping[str, Any] | None = None,
                      sampling_args: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One episode with ``client`` (an OpenAI-compatible client, sync or async: ``client.chat.completions
        .create(model=..., messages=...)``) playing the role; returns :meth:`result`, plus the ``completion``
        messages."""
        completion: list[dict] = []

        async def ask(messages: Sequence[Mapping[str, str]]) -> str:
            reply = client.chat.completions.create(model=model, messages=list(messages), **dict(sampling_args or {}))
            if inspect.isawaitable(reply):
                reply = await reply
            text = reply.choices[0].message.content or ""
            completion.append({"role": "assistant", "content": text})
            return text

        await play_game(self, ask, self.reset(seed, scenario))
        return {**self.result(), "completion": completion}


async def play_game(game: TriPlayGame, ask: Ask, messages: list[dict] | None) -> TriPlayGame:
    """The rollout loop shared by every client, from the prompt :meth:`TriPlayGame.reset` returned: ``ask`` the
    trained role at each of its turns and hand the answer to the env, until the episode ends."""
    while messages is not None:
        messages = game.step(await ask(messages))
    return game


# --- verifiers v1 classes (built lazily: verifiers is optional) ---------------------------------------------------


def _split(messages: Sequence[Mapping[str, str]]) -> tuple[str | None, str]:
    """A TriPlay prompt as (its system prompt, its last user message): what one verifiers turn sends. Earlier
    messages are the conversation the interaction already holds (a defender's earlier rounds); the attacker's
    and evaluator's prompts are one user message that carries the transcript itself."""
    system = next((m["content"] for m in messages if m.get("role") == "system"), None)
    return system, messages[-1]["content"]


@functools.cache
def verifiers_classes() -> dict[str, type]:
    """The verifiers v1 classes of this integration, built on first use: ``TaskData``, ``Task``, ``Taskset``,
    ``EnvConfig`` and ``Env`` (names: :class:`TriPlayTaskData`, ...). Raises ``ImportError`` with the install
    command when verifiers is missing."""
    vf = require_verifiers()
    from pydantic import Field

    class TriPlayTaskData(vf.TaskData):
        seed: int = 0
        """the env's reset seed"""
        scenario: dict = Field(default_factory=dict)
        """the scenario ``reset(seed)`` draws, forced at reset (a replay)"""

    class TriPlayTask(vf.Task[TriPlayTaskData, Any, Any]):
        """One TriPlay scenario; scoring is the env's (``TriPlayVerifiersEnv.finalize``), not a task reward."""

    class TriPlayTasksetConfig(vf.TasksetConfig):
        n: int = 64
        seed: int = 0
        env_kwargs: dict = Field(default_factory=dict)

    class TriPlayTaskset(vf.Taskset[TriPlayTask, TriPlayTasksetConfig]):
        def load(self):
            for row in scenario_rows(self.config.n, seed=self.config.seed, env_kwargs=self.config.env_kwargs):
                data = TriPlayTaskData(prompt=row["scenario"]["text"], seed=row["seed"], scenario=row["scenario"])
                yield TriPlayTask(data, self.config.task)

    class TriPlayEnvConfig(vf.EnvConfig):
        agent: vf.AgentConfig = vf.AgentConfig()
        """the seat the verifiers model plays: ``<role>_0`` of the game"""
        role: str = "defender"
        players: dict = Field(default_factory=dict)
        """scripted players by role or agent name (an ``Agent`` object: :func:`make_verifiers_env`'s ``players``)"""
        env_kwargs: dict = Field(default_factory=dict)
        """plain ``triplay_env.parallel_env`` keywords (objects such as a panel: :func:`make_verifiers_env`'s)"""

    class TriPlayVerifiersEnv(vf.Env[TriPlayEnvConfig]):
        """verifiers' multi-agent ``Env`` over the TriPlay game: ``run`` plays one episode, ``finalize`` pays."""

        def __init__(self, config: TriPlayEnvConfig, players: Mapping[str, Agent | str] | None = None,
                     env_kwargs: Mapping[str, Any] | None = None):
            super().__init__(config)
            self.game_players = {**config.players, **dict(players or {})}
            self.game_kwargs = shared_env_kwargs({**config.env_kwargs, **dict(env_kwargs or {})})
            TriPlayGame(config.role, self.game_players, self.game_kwargs)  # check the role and players now
            self.games: dict[int, TriPlayGame] = {}  # by id(trace), from run to finalize

        async def run(self, task, agents) -> None:
            await run_verifiers_episode(self, task, agents)

        async def finalize(self, task, episode) -> None:
            for trace in episode.traces:
                game = self.games.pop(id(trace), None)
                if game is None:
                    raise RuntimeError(f"no TriPlay game played trace {trace.agent.name!r}")
                trace.record_reward(REWARD_NAME, game.reward)
                trace.record_metrics(game.metrics())

    return {"TriPlayTaskData": TriPlayTaskData, "TriPlayTask": TriPlayTask, "TriPlayTaskset": TriPlayTaskset,
            "TriPlayTasksetConfig": TriPlayTasksetConfig, "TriPlayEnvConfig": TriPlayEnvConfig,
            "TriPlayVerifiersEnv": TriPlayVerifiersEnv}


async def run_verifiers_episode(env, task, agents) -> TriPlayGame:
    """``Env.run``: the game drives ``agents.agent`` turn by turn. The role's TriPlay system prompt becomes the
    task's, the task is prompt-less (opened by the first turn, the role's first TriPlay user message) and each
    later turn sends the env's next user message (the transcript so far)."""
    game = TriPlayGame(env.config.role, env.game_players, env.game_kwargs)
    messages = game.reset(task.data.seed, task.data.scenario or None)
    system, _ = _split(messages)
    async with agents.agent.interaction(task.with_data(prompt=None, system_prompt=system)) as chat:
        env.games[id(chat.trace)] = game

        async def ask(messages: Sequence[Mapping[str, str]]) -> str:
            segment = await chat.turn(_split(messages)[1])
            if segment.terminated:
                raise RuntimeError(f"the {game.role}'s run ended before the game did (its max_turns?)")
            return segment.last_reply

        await play_game(game, ask, messages)
    return game


def make_verifiers_env(role: str = "defender", players: Mapping[str, Agent | str] | None = None,
                       env_kwargs: Mapping[str, Any] | None = None, **config: Any):
    """A ``TriPlayVerifiersEnv`` for ``role`` (``config``: further ``EnvConfig`` fields, e.g. ``taskset``, the
    ``agent`` seat); ``players`` and ``env_kwargs`` as for :class:`TriPlayGame`, with one panel and one Attack
    Success Pool shared by all episodes (:func:`shared_env_kwargs`).
    Raises ``ValueError`` for an unknown role and ``ImportError`` (with the install command) without verifiers."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: the verifiers model can play one of {ROLES}")
    classes = verifiers_classes()
    return classes["TriPlayVerifiersEnv"](classes["TriPlayEnvConfig"](role=role, **config), players, env_kwargs)
