"""Rollouts: B games in lockstep, one batched call per policy per phase, and GRPO groups.

At every step the active role is the same in every env (all games move ATTACK -> DEFEND -> JUDGE together),
so the runner gathers that role's turns across envs and makes one call per agent. Envs are laid out in
groups of ``group_size`` consecutive envs that share a reset seed, hence a scenario. Roles listed in
``shared_roles`` act once per group and their text is copied to the group's other envs:

| phase of the loop | shared roles | a GRPO group is |
|---|---|---|
| P_Red (train attacker) | none | G attacks on one scenario |
| P_Blue (train defender) | attacker | G responses to one attack |
| P_Eval (train evaluator) | attacker, defender | G verdicts on one (attack, response) pair |

Every move is recorded with the reward its agent received at the JUDGE step that closed the move's round,
so multi-round games give one reward per round.

**Batch-independent games.** With ``sample_seed`` every policy call samples each row from its own generator,
seeded by ``(sample_seed, the env's global index, the step, the agent)``, and the Attack Success Pool takes a
step's successful attacks only once every env has stepped (:meth:`~triplay_env.AttackSuccessPool.hold`). A game's
texts and rewards then depend on its own seeds, not on which other games share its batch, so the games of a
global batch can be split over processes (``env_offset``, ``dist``; see ``training.distributed``) and
:func:`gather_rollout` puts them back in the order one process would have played them.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from agents.base import Agent, Generation, TrainablePolicy, role_of, turns_from
from triplay_env.agent_ids import parse_agent

__all__ = ["Move", "Rollout", "gather_rollout", "row_seed", "run_lockstep", "resolve_player"]


@dataclass
class Move:
    """One agent's action in one env, and what it earned."""

    env: int
    agent: str
    role: str
    game: int
    round: int
    prompt: str
    messages: Sequence[Mapping[str, str]]
    text: str
    prompt_ids: list[int] | None = None
    completion_ids: list[int] | None = None
    logprobs: list[float] | None = None
    reward: float = 0.0
    info: Mapping[str, Any] = field(default_factory=dict)
    """the env's infos[agent] when the move was made (scenario, attack, responses, ...)"""
    judged: Mapping[str, Any] | None = None
    """the judged record of the round the move belongs to (verdicts, panel votes, who paid), once judged"""
    step: int = 0
    """the lockstep step it was made at (moves are in (step, agent, env) order)"""

    @property
    def has_verdict(self) -> bool:
        """Whether the verdict this move's reward depends on exists (a round no judge could label has none):
        every defender's verdict for the attacker, its own for a defender, the panel's label for an evaluator."""
        if self.judged is None:
            return False
        role, index = parse_agent(self.agent)
        if role == "attacker":
            return all(v is not None for v in self.judged["verdicts"])
        if role == "defender":
            return self.judged["verdicts"][index] is not None
        return self.judged["panel_verdicts"][index] is not None


@dataclass
class Rollout:
    moves: list[Move]
    """every move, in the order they were made"""
    judged: list[dict]
    """every judged round: ``{"env", "step", "game", "round", "scenario", **the env's judged record}``"""
    returns: dict[str, float]
    """summed reward per agent name over all envs"""
    group_size: int

    def by_agent(self, agent: str) -> list[Move]:
        return [m for m in self.moves if m.agent == agent]


def resolve_player(players: Mapping[str, Agent], agent: str) -> Agent:
    """``players`` maps agent names (``"defender_1"``) or roles (``"defender"``) to agents; names win."""
    if agent in players:
        return players[agent]
    role = role_of(agent)
    if role in players:
        return players[role]
    raise KeyError(f"no player for {agent!r}: give players[{agent!r}] or players[{role!r}]")


def run_lockstep(
    envs: Sequence[Any],
    players: Mapping[str, Agent],
    seeds: Sequence[int],
    *,
    group_size: int = 1,
    shared_roles: Sequence[str] = (),
    options: Sequence[dict | None] | None = None,
    on_step: Callable[[int], None] | None = None,
    batch_judging: bool = True,
    sample_seed: int | None = None,
    env_offset: int = 0,
    dist: Any = None,
) -> Rollout:
    """Play one episode in every env, in lockstep.

    Args:
        envs: TriPlay parallel envs with the same config (same agents, rounds and games per episode).
        players: agents by role or by agent name (see :func:`resolve_player`).
        seeds: one reset seed per env; envs of one group should share a seed.
        group_size: envs per GRPO group (consecutive envs); ``len(envs)`` must be a multiple.
        shared_roles: roles that act once per group, their text copied to the group's envs.
        options: per-env reset options (e.g. a forced scenario).
        on_step: called with the number of env steps taken so far (progress bars).
        batch_judging: at each JUDGE step, hand every env's items to their shared panel in one call
            (``Panel.prefetch``) before stepping the envs, and fix a shared ``VerdictGate``'s decision for the
            whole batch; False judges env by env (the same verdicts, B panel calls).
        sample_seed: sample every row of a trainable policy's call from its own generator, seeded by
            :func:`row_seed` (policies must accept ``generate(turns, seeds=...)``); None: the policy's own RNG.
        env_offset: the global index of ``envs[0]``, when these envs are one block of a larger batch (a
            multiple of ``group_size``); moves and judged records carry global indices.
        dist: a ``training.distributed.Dist`` whose ranks play the other blocks: the loop runs until every
            rank's games have ended, and the shared pool's and gate's exchanges happen on every rank each step.
    """
    if len(seeds) != len(envs):
        raise ValueError(f"need one seed per env: {len(seeds)} seeds for {len(envs)} envs")
    if group_size < 1 or len(envs) % group_size:
        raise ValueError(f"group_size {group_size} must divide the number of envs {len(envs)}")
    if env_offset % group_size:
        raise ValueError(f"env_offset {env_offset} must be a multiple of group_size {group_size} (groups are whole)")
    # shared state that every env of the batch reads: its updates wait until every env has stepped
    held = list({id(x): x for env in envs for x in (getattr(env, "attack_success_pool", None),
                                                     getattr(env, "gate", None) if batch_judging else None)
                 if x is not None and hasattr(x, "hold")}.values())
    resets = [env.reset(seed=s, options=(options[i] if options else None)) for i, (env, s) in enumerate(zip(envs, seeds))]
    obs = [r[0] for r in resets]
    infos = [r[1] for r in resets]
    moves: list[Move] = []
    pending: list[list[Move]] = [[] for _ in envs]  # each env's moves awaiting their round's judge
    judged: list[dict] = []
    returns: dict[str, float] = {}
    steps = 0
    while dist.any(any(env.agents for env in envs), "the rollout") if dist is not None else any(env.agents for env in envs):
        live = [i for i, env in enumerate(envs) if env.agents]
        actions: dict[int, dict[str, str]] = {i: {} for i in live}
        for agent in sorted({a for i in live for a in envs[i].agents if obs[i][a]["active"]}):
            takers = [i for i in live if obs[i][agent]["active"]]
            # a shared role acts once per (group, identical prompt): envs of a group that diverged act apart
            key = (lambda i: (i // group_size, obs[i][agent]["prompt"])) if role_of(agent) in shared_roles else (lambda i: i)
            callers: dict[Any, int] = {}
            for i in takers:
                callers.setdefault(key(i), i)
            turns = [turns_from(obs[i], infos[i], [agent])[0] for i in callers.values()]
            player = resolve_player(players, agent)
            gen: Generation | None = None
            if isinstance(player, TrainablePolicy):
                if sample_seed is None:
                    gen = player.generate(turns)
                else:
                    gen = player.generate(turns, seeds=[row_seed(sample_seed, env_offset + i, steps, agent) for i in callers.values()])
            texts = gen.texts if gen is not None else player.act(turns)
            if len(texts) != len(turns):
                raise ValueError(f"{type(player).__name__} returned {len(texts)} texts for {len(turns)} turns of {agent}")
            slot = {k: n for n, k in enumerate(callers)}
            for i in takers:
                n = slot[key(i)]
                actions[i][agent] = texts[n]
                info = infos[i][agent]
                move = Move(env=env_offset + i, agent=agent, role=role_of(agent), game=info["game"], round=info["round"],
                            prompt=turns[n].prompt, messages=turns[n].messages, text=texts[n], info=info, step=steps)
                if gen is not None and callers[key(i)] == i:  # copies for shared roles are not training samples
                    move.prompt_ids, move.completion_ids, move.logprobs = gen.prompt_ids[n], gen.completion_ids[n], gen.logprobs[n]
                moves.append(move)
                pending[i].append(move)
        if batch_judging:
            _judge_batch([envs[i] for i in live])
        for x in held:
            x.hold()
        for i in live:
            obs[i], rewards, _, _, infos[i] = envs[i].step(actions[i])
            for agent, r in rewards.items():
                returns[agent] = returns.get(agent, 0.0) + r
            record = infos[i][next(iter(infos[i]))].get("judged") if infos[i] else None
            if record is not None:
                for m in pending[i]:
                    m.reward = rewards[m.agent]
                    m.judged = record
                pending[i] = []
                judged.append({"env": env_offset + i, "step": steps, **record})
        for x in held:
            x.release()
        steps += 1
        if on_step is not None:
            on_step(steps)
    return Rollout(moves=moves, judged=judged, returns=returns, group_size=group_size)


def row_seed(sample_seed: int, env: int, step: int, agent: str) -> int:
    """The sampling seed of one policy call's row: a hash of the rollout's seed, the env's global index, the
    lockstep step and the agent's name (stable across processes and Python runs)."""
    return int(np.random.SeedSequence([sample_seed, env, step, zlib.crc32(agent.encode())]).generate_state(1)[0])


def gather_rollout(rollout: Rollout, dist: Any) -> Rollout:
    """Every rank's part of one global rollout, as one :class:`Rollout` in the order one process plays it:
    moves by (step, agent, env), judged rounds by (step, env), returns summed. Prompt token ids and log-probs
    travel only for the moves this rank trains on (others' are dropped: their ranks train on them)."""
    if dist is None or not dist.enabled:
        return rollout
    light = replace(rollout, moves=[replace(m, prompt_ids=None, logprobs=None, messages=()) for m in rollout.moves])
    parts = dist.all_gather(light, "gathering the rollout")
    own = {(m.step, m.agent, m.env): m for m in rollout.moves}
    moves = sorted((own.get((m.step, m.agent, m.env), m) for p in parts for m in p.moves), key=lambda m: (m.step, m.agent, m.env))
    judged = sorted((j for p in parts for j in p.judged), key=lambda j: (j["step"], j["env"]))
    returns: dict[str, float] = {}
    for p in parts:
        for agent, r in p.returns.items():
            returns[agent] = returns.get(agent, 0.0) + r
    return Rollout(moves=moves, judged=judged, returns=returns, group_size=rollout.group_size)


def _judge_batch(envs: Sequence[Any]) -> None:
    """Judge the JUDGE-phase items of ``envs`` in one call per shared panel (envs without ``judge_items``,
    not TriPlay envs, are skipped); the runner holds the envs' shared gates while they step."""
    by_panel: dict[int, tuple[Any, list]] = {}
    for env in envs:
        items = env.judge_items() if hasattr(env, "judge_items") else []
        if not items:
            continue
        panel = env.panel
        if hasattr(panel, "prefetch"):
            by_panel.setdefault(id(panel), (panel, []))[1].extend(items)
    for panel, items in by_panel.values():
        panel.prefetch(items)
