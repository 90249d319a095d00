"""TriPlay as an OpenEnv environment: the client plays one role, TriPlay's agents play the others, the game pays.

>>> from training.integrations.openenv import make_app
>>> app = make_app(role="defender")                        # doctest: +SKIP
>>> import uvicorn; uvicorn.run(app, port=8000)            # doctest: +SKIP  (or: triplay serve --role defender)

and on the client side, OpenEnv's own generic client over its WebSocket:

>>> from openenv.core.generic_client import GenericEnvClient
>>> with GenericEnvClient(base_url="http://127.0.0.1:8000").sync() as env:   # doctest: +SKIP
...     result = env.reset(seed=3)                      # the other roles act until it is the defender's turn
...     while not result.done:
...         result = env.step({"text": my_model(result.observation["prompt"])})
...     print(result.reward)                            # what the env paid defender_0 for that answer

**The contract (OpenEnv 0.3.0).** :class:`TriPlayEnvironment` is an ``openenv.core.env_server.Environment``:
``reset(seed=None, episode_id=None, scenario=None)``, ``step(action)`` and a ``state`` property, with the
Pydantic types :class:`TriPlayAction` (``text``: the role's move), :class:`TriPlayObservation` and
:class:`TriPlayState`; :func:`make_app` serves it with OpenEnv's ``create_app``. OpenEnv gives every
WebSocket connection (``/ws``, what its clients use) its own environment instance, so each session has its own
``triplay_env.parallel_env``, players, Attack Success Pool and seed; the HTTP ``/reset`` and ``/step`` routes
build a fresh instance per request (stateless), so an episode is played over the WebSocket.

**A session.** The client plays ``<role>_0``. ``reset`` draws the scenario (``seed``, or a fresh random seed
reported in ``state.seed``; ``scenario`` forces one, as the env's ``options["scenario"]``), then the other
agents act (through ``players``, by default the template attacker, the guidance defender and the judge
evaluator judging with the env's panel) until ``<role>_0`` is active; the observation is its prompt
(``prompt``, and as chat ``messages``) with the context it answers: ``role``, ``agent``, ``phase``, ``round``,
``game``, ``scenario`` (and its ``kind``), the ``attack`` (defender, evaluator) and ``responses``
(evaluator: ``responses[i]`` is what ``evaluator_i`` judges). ``step`` makes the client's text the agent's
action (the other active agents act beside it), then plays on until the client's next turn or the end;
``reward`` is the sum of what the env paid ``<role>_0`` on those env steps (its round's JUDGE step, under the
configured reward scheme), ``judged`` the record of the round(s) judged meanwhile, ``done`` the end of the
episode. Multi-round and multi-game episodes (``env_kwargs``) give the client one turn per round.

**Bad actions** (``text`` missing, not a string, or longer than ``max_chars``, by default the env's limit for
the role, which the env itself would silently truncate) are refused before anything moves: OpenEnv answers the
step with an error whose message names the value and the limit (its clients raise ``RuntimeError("Server
error: ...")``) and the session goes on where it was. An empty string is a move (the env pays it as a refusal).

OpenEnv is imported only when a server is built or a class is used: ``pip install -e '.[openenv]'``.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from agents.base import Agent, turns_from
from training.integrations import require
from training.integrations.trl import DEFAULT_PLAYERS
from triplay_env.agent_ids import ROLES, agent_id, role_of

__all__ = [
    "DEFAULT_PLAYERS",
    "INSTALL_HINT",
    "MAX_SESSIONS",
    "TriPlayAction",
    "TriPlayEnvironment",
    "TriPlayObservation",
    "TriPlayState",
    "make_app",
    "require_openenv",
    "running_server",
    "serve",
]

INSTALL_HINT = "pip install -e '.[openenv]'"
"""how to get OpenEnv (the ``openenv`` extra pins the version this adapter is tested with, 0.3.0)"""
MAX_SESSIONS = 64
"""concurrent WebSocket sessions a server accepts by default (each holds one env)"""
RESET_KEYS = ("seed", "episode_id", "scenario")


def require_openenv():
    """``import openenv``'s server interfaces, or an ``ImportError`` that says how to install OpenEnv."""
    return require("openenv.core.env_server", "OpenEnv", INSTALL_HINT, "openenv-core==0.3.0")


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: the client can play one of {ROLES}")
    return role


def _check_max_chars(max_chars: int | None) -> int | None:
    if max_chars is not None and (isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1):
        raise ValueError(f"max_chars must be an integer >= 1 (or None: the env's limit for the role), got {max_chars!r}")
    return max_chars


def check_text(text: Any, limit: int, agent: str) -> str:
    """The client's move, or a ``ValueError`` naming what was wrong with it, the value and the limit."""
    if not isinstance(text, str):
        shown = repr(text)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise ValueError(f"action.text must be a string (the {agent}'s move, at most {limit} characters), got "
                         f"{type(text).__name__} {shown}; the episode is where it was: step again")
    if len(text) > limit:
        raise ValueError(f"action.text is {len(text)} characters, over the limit of {limit} for {agent} "
                         f"(starts {text[:40]!r}); the episode is where it was: step again with a shorter text")
    return text


def build_players(role: str, agents, panel, players: Mapping[str, Agent | str] | None) -> dict[str, Agent]:
    """Who plays every agent but ``<role>_0``: ``players`` by agent name or role (an ``Agent`` or a scripted
    agent's short name), else :data:`DEFAULT_PLAYERS`; the scripted ``judge`` judges with ``panel``."""
    from agents.scripted import make_scripted

    client = agent_id(role, 0)
    given = dict(players or {})
    for key in given:
        if key == client or key == role:
            raise ValueError(f"players[{key!r}]: {client} is played by the client; name the other {role}s' players "
                             f"'{role}_1', ... instead")
        if key not in ROLES and key not in agents:
            raise ValueError(f"players[{key!r}]: not a role {ROLES} nor an agent of this game {list(agents)}")

    def build(player: Agent | str, as_role: str) -> Agent:
        if isinstance(player, Agent):
            return player
        if not isinstance(player, str):
            raise TypeError(f"a player is an agents.base.Agent or a scripted agent's name, got {type(player).__name__}")
        return make_scripted(player, as_role, **({"judge": panel} if player == "judge" else {}))

    out = {}
    for name in (a for a in agents if a != client):
        r = role_of(name)
        out[name] = build(given.get(name) or given.get(r) or DEFAULT_PLAYERS[r], r)  # given[role] is never the client's
    return out


@functools.cache
def _classes() -> dict[str, type]:
    """The OpenEnv classes, defined on first use (OpenEnv is an optional dependency)."""
    from typing import Annotated

    from pydantic import ConfigDict, Field, WithJsonSchema

    env_server = require_openenv()

    class TriPlayAction(env_server.Action):
        """The client's move: the attack, the response or the verdict text (``triplay_env.verdicts``)."""

        # any JSON value (and unknown keys) pass here so that a bad action reaches step(), which names what is
        # wrong; OpenEnv's own validation error would say only "Invalid message"
        model_config = ConfigDict(extra="allow")
        text: Annotated[Any, WithJsonSchema({"type": "string"})] = Field(
            default=None, description="the role's move: a string of at most max_chars characters")

    class TriPlayObservation(env_server.Observation):
        """What ``<role>_0`` sees at its turn (empty fields once the episode is done)."""

        role: str = Field(description="the role the client plays")
        agent: str = Field(description="the env's agent the client plays, <role>_0")
        prompt: str = Field(default="", description="the role's prompt (system + user, flattened)")
        messages: list[dict[str, str]] = Field(default_factory=list, description="the same prompt as chat messages")
        phase: str = Field(default="", description="attack, defend or judge")
        round: int = Field(default=0, description="the round within the game")
        game: int = Field(default=0, description="the game (scenario) within the episode")
        scenario: dict[str, Any] = Field(default_factory=dict, description="the scenario played (text, kind, ...)")
        kind: str = Field(default="", description="the scenario's kind: harmful or benign")
        attack: str = Field(default="", description="the attack to answer (defender) or to judge (evaluator)")
        responses: list[str] = Field(default_factory=list, description="the defenders' answers (evaluator_i judges responses[i])")
        judged: list[dict[str, Any]] = Field(default_factory=list,
                                             description="the env's records of the rounds judged since the last action")

    class TriPlayState(env_server.State):
        """The session's episode: its id, seed, scenario, steps and the client's return so far."""

        role: str = ""
        seed: int | None = None
        scenario: dict[str, Any] = Field(default_factory=dict)
        done: bool = False
        total_reward: float = 0.0

    class TriPlayEnvironment(env_server.Environment):
        """TriPlay with the client playing ``role``: see the module docstring. Arguments as :func:`make_app`."""

        SUPPORTS_CONCURRENT_SESSIONS = True  # each instance owns its env, players and pool (unless passed in shared)

        def __init__(self, role: str = "defender", players: Mapping[str, Agent | str] | None = None,
                     env_kwargs: Mapping[str, Any] | None = None, max_chars: int | None = None):
            import triplay_env

            super().__init__()
            self.role = _check_role(role)
            self.agent = agent_id(role, 0)
            self.env = triplay_env.parallel_env(**dict(env_kwargs or {}))
            self.max_chars = _check_max_chars(max_chars) or self.env.max_chars[role]
            self.players = build_players(role, self.env.possible_agents, self.env.panel, players)
            self._state = TriPlayState(role=role, done=True)
            self._obs: dict = {}
            self._infos: dict = {}

        # -- OpenEnv's interface

        def reset(self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any) -> TriPlayObservation:
            unknown = sorted(set(kwargs) - set(RESET_KEYS))
            if unknown:
                raise ValueError(f"reset got unknown arguments {unknown}; it takes {list(RESET_KEYS)}")
            if seed is None:
                seed = secrets.randbelow(2**31)  # reported in state.seed, so the episode can be replayed
            scenario = kwargs.get("scenario")
            self._obs, self._infos = self.env.reset(seed=seed, options={"scenario": scenario} if scenario else None)
            for player in self.players.values():
                player.reset()
            self._state = TriPlayState(episode_id=episode_id or str(uuid.uuid4()), role=self.role, seed=seed,
                                       scenario=dict(self.env.scenario.to_dict()))
            reward, judged = self._play_others()
            return self._observation(reward, judged)

        def step(self, action: Any, timeout_s: float | None = None, **kwargs: Any) -> TriPlayObservation:
            if self._state.done:
                raise ValueError("the episode is over (or was never started): call reset first")
            unknown = sorted(getattr(action, "model_extra", None) or {})
            if unknown:
                raise ValueError(f"the action has unknown fields {unknown}: it is {{'text': <the {self.agent}'s move>}}; "
                                 f"the episode is where it was: step again")
            text = check_text(getattr(action, "text", None), self.max_chars, self.agent)
            reward, judged = self._env_step({self.agent: text})
            self._state.step_count += 1
            more, judged_more = self._play_others()
            return self._observation(reward + more, judged + judged_more)

        @property
        def state(self) -> TriPlayState:
            return self._state

        def get_metadata(self):
            return env_server.EnvironmentMetadata(
                name=f"TriPlay-{self.role}", version="0",
                description=f"TriPlay safety game: the client plays {self.agent}, TriPlay's agents play the others; "
                            f"rewards from the {type(self.env.reward_scheme).__name__} reward scheme")

        # -- the game

        def _active(self) -> list[str]:
            return [a for a in self.env.agents if self._obs[a]["active"]]

        def _env_step(self, given: dict[str, str]) -> tuple[float, list[dict]]:
            """One env step: ``given`` actions plus the players' for every other active agent."""
            actions = dict(given)
            for agent in self._active():
                if agent not in actions:
                    actions[agent] = self.players[agent].act(turns_from(self._obs, self._infos, [agent]))[0]
            self._obs, rewards, _, _, self._infos = self.env.step(actions)
            reward = float(rewards.get(self.agent, 0.0))
            self._state.total_reward += reward
            record = next(iter(self._infos.values()), {}).get("judged") if self._infos else None
            return reward, [record] if record else []

        def _play_others(self) -> tuple[float, list[dict]]:
            """Step with the players alone until the client is active or the episode is over."""
            reward, judged = 0.0, []
            while self.env.agents and self.agent not in self._active():
                r, j = self._env_step({})
                reward, judged = reward + r, judged + j
            self._state.done = not self.env.agents
            return reward, judged

        def _observation(self, reward: float, judged: list[dict]) -> TriPlayObservation:
            done = self._state.done
            info = self._infos.get(self.agent, {})
            scenario = dict(info.get("scenario") or self._state.scenario)
            return TriPlayObservation(
                role=self.role, agent=self.agent, done=done, reward=reward, judged=judged,
                prompt="" if done else self._obs[self.agent]["prompt"],
                messages=[dict(m) for m in info.get("messages", ())],
                phase=info.get("phase", ""), round=info.get("round", 0), game=info.get("game", 0),
                scenario=scenario, kind=("harmful" if scenario.get("harmful") else "benign") if scenario else "",
                attack=info.get("attack", ""), responses=list(info.get("responses", ())),
            )

    return {c.__name__: c for c in (TriPlayAction, TriPlayObservation, TriPlayState, TriPlayEnvironment)}


def __getattr__(name: str):  # the OpenEnv classes, imported lazily
    if name in ("TriPlayEnvironment", "TriPlayAction", "TriPlayObservation", "TriPlayState"):
        return _classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_app(role: str = "defender", players: Mapping[str, Agent | str] | None = None,
             env_kwargs: Mapping[str, Any] | None = None, *, max_chars: int | None = None,
             max_sessions: int = MAX_SESSIONS):
    """OpenEnv's FastAPI app (``openenv.core.env_server.create_app``) serving TriPlay with the client as ``role``.

    Args:
        role: the role the client plays (``"attacker"``, ``"defender"`` or ``"evaluator"``): agent ``<role>_0``.
        players: who plays the other agents, by agent name (``"defender_1"``) or role: an ``agents.base.Agent``
            or a scripted agent's short name (``agents.scripted.make_scripted``); default :data:`DEFAULT_PLAYERS`.
            Names are built anew for every session; ``Agent`` objects are shared by all sessions (OpenEnv runs
            sessions in threads), so pass only agents that keep no per-episode state.
        env_kwargs: ``triplay_env.parallel_env`` keywords (reward scheme, panel, defenders, rounds, scenarios, ...);
            each session builds its own env from them, so objects in them (a panel, a pool) are shared.
        max_chars: the longest text the client may send; default the env's limit for the role
            (``max_attack_chars``, ``max_response_chars`` or ``max_verdict_chars``).
        max_sessions: concurrent WebSocket sessions accepted.

    The configuration is checked here, by building one environment, so a bad role, player or env keyword
    fails when the server is built, not at the first connection. Raises ``ImportError`` (with the install
    command) when OpenEnv is missing.
    """
    env_server = require_openenv()
    classes = _classes()
    factory = functools.partial(classes["TriPlayEnvironment"], role=_check_role(role), players=players,
                                env_kwargs=env_kwargs, max_chars=_check_max_chars(max_chars))
    factory().close()
    app = env_server.create_app(factory, classes["TriPlayAction"], classes["TriPlayObservation"],
                                env_name=f"triplay-{role}", max_concurrent_envs=max_sessions)
    app.add_middleware(_QuietDisconnect)
    return app


class _QuietDisconnect:
    """ASGI middleware: drop the ``WebSocketDisconnect`` that ends every OpenEnv 0.3.0 session.

    When a client closes (OpenEnv's clients send ``close``, then close the socket), the server's WebSocket
    handler calls ``websocket.close()`` on the closed socket and Starlette raises ``WebSocketDisconnect``, which
    the handler does not catch (it catches ``RuntimeError``), so uvicorn logs "Exception in ASGI application"
    with a traceback for each session. The session is over by then (its env destroyed); only that exception,
    on WebSocket connections, is dropped.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket":
            return await self.app(scope, receive, send)
        from starlette.websockets import WebSocketDisconnect

        try:
            await self.app(scope, receive, send)
        except WebSocketDisconnect:
            pass


def serve(app, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info") -> None:
    """Serve ``app`` with uvicorn until interrupted (what ``triplay serve`` runs)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level)


@contextlib.contextmanager
def running_server(app, host: str = "127.0.0.1", port: int = 0, *, timeout_s: float = 30.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread for the ``with`` block; yields its base URL
    (``http://host:port``; ``port=0`` picks a free one). For tests, benchmarks and notebooks."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="triplay-openenv-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the OpenEnv server on {host}:{port} did not start within {timeout_s:g} s")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)
