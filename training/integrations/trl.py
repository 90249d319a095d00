"""TriPlay inside TRL's ``GRPOTrainer``: TRL trains one role, TriPlay's agents play the others, the game pays.

>>> from training.integrations.trl import triplay_dataset, triplay_reward, triplay_rollout_func
>>> from trl import GRPOConfig, GRPOTrainer                                      # doctest: +SKIP
>>> trainer = GRPOTrainer(model, reward_funcs=triplay_reward, args=GRPOConfig(num_generations=4, ...),
...                       train_dataset=triplay_dataset(64), processing_class=tokenizer,
...                       peft_config=LoraConfig(...), rollout_func=triplay_rollout_func("defender"))  # doctest: +SKIP

**The contract (TRL 1.16, experimental there).** ``GRPOTrainer`` calls ``rollout_func(prompts, trainer)`` with
its batch's prompts, each dataset row repeated ``num_generations`` times in a row (its ``RepeatSampler``), and
expects one completion per prompt: ``prompt_ids``, ``completion_ids`` and the sampling ``logprobs``; every
other key of the returned dict is copied into the batch's rows and handed to the reward functions as a
keyword argument. :class:`TriPlayRollout` plays one game per prompt, in lockstep (``training.rollout.run_lockstep``,
the runner TriPlay's own GRPO uses): the scenario is the row's, the trained role acts at its turn by sampling
from ``trainer.model`` (or TRL's vLLM engine when ``use_vllm=True``), the other roles act through TriPlay
agents, the env judges and pays. Its extra key ``game_reward`` is what the env paid the trained agent, and
:func:`triplay_reward` is the reward function that hands it to TRL, so the advantage TRL computes is the
game's reward normalised within each group of ``num_generations``, exactly as in TriPlay's own loop.

**Groups.** As in TriPlay (``training.coevolve.SHARED_ROLES``), the roles that act before the trained one act
once per group, so a group is G answers to one attack (defender), G verdicts on one (attack, response) pair
(evaluator), or G attacks on one seed (attacker).

**Why ``rollout_func`` and not ``environment_factory``.** TRL's ``environment_factory`` is built for tool use:
the environment's public methods become tools rendered into the prompt, the trainer refuses a chat template
that cannot render tool calls (SmolLM2's cannot), ``reset`` may only append text to the dataset's last user
message, and ``get_reward`` takes no argument, so the environment never sees the model's final answer unless
the model calls a tool with it. A TriPlay turn is one plain answer to a prompt the game writes (its own system
prompt, the attack, the transcript), judged in a batch over every game of the step; ``rollout_func`` gives the
game all of that: it writes the prompts, it sees the whole batch at once (one generate call, one panel call),
and it returns the reward beside the tokens.

**Limits.** Single-turn: one move of the trained role per game (``max_rounds=1``, ``games_per_episode=1``),
because TRL takes one completion per prompt. The trained agent is ``<role>_0``; with several defenders the
reference defenders (and, when the evaluator is trained, ``evaluator_1..``) are played by
``players["defender_1"]`` (etc.) or the scripted default. A game whose verdict no judge gave pays ``None``,
which TRL leaves out of its group's baseline, as TriPlay's own trainer does.

**Scenarios.** A dataset row (:func:`triplay_dataset`) is ``{"prompt": [{"role": "user", "content": seed
text}], "seed": s, "scenario": {...}}``: ``env.reset(seed=s)`` draws that scenario, which is how a run is
replayed. TRL passes only the prompts to a rollout function, so the game finds the scenario by its text in the
env's scenario set (seed texts are unique there; ``triplay_env.datasets`` deduplicates them) and
:func:`triplay_reward` checks that it is the row's ``scenario``.

TRL is imported only when a rollout function is built or called: ``pip install -e '.[trl]'``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any

from agents.base import Agent, Generation, TrainablePolicy, Turn, check_response_prefix, encode_chat_prompts
from training.integrations import require, shared_env_kwargs
from training.rollout import Rollout, run_lockstep
from triplay_env.agent_ids import ROLES, agent_id, role_of
from triplay_env.scenarios import Scenario

__all__ = ["TriPlayRollout", "TrainerPolicy", "triplay_rollout_func", "triplay_reward", "triplay_dataset",
           "scenario_rows", "require_trl", "DEFAULT_PLAYERS", "INSTALL_HINT", "REWARD_KEY"]

INSTALL_HINT = "pip install -e '.[trl]'"
"""how to get TRL (the ``trl`` extra pins the version this adapter is tested with, 1.16.0)"""
REWARD_KEY = "game_reward"
"""the extra key of the rollout's output that carries the env's reward for the trained agent"""
DEFAULT_PLAYERS = {"attacker": "template", "defender": "guidance", "evaluator": "judge"}
"""the scripted agent (``agents.scripted``) that plays each role TRL does not train, unless ``players`` names
another; the evaluator judges with the env's own panel"""
SINGLE_TURN = {"max_rounds": 1, "games_per_episode": 1}


def require_trl():
    """``import trl``, or an ``ImportError`` that says how to install it."""
    return require("trl", "TRL", INSTALL_HINT, "trl==1.16.0")


def _env_config(env_kwargs: Mapping[str, Any] | None) -> dict:
    """The env's keyword arguments, checked to describe a single-turn game (what TRL can train on)."""
    config = dict(env_kwargs or {})
    for key, value in SINGLE_TURN.items():
        if config.setdefault(key, value) != value:
            raise ValueError(f"the TRL integration plays single-turn games (one completion per prompt): "
                             f"{key} must be {value}, got {config[key]!r}")
    return config


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: TRL can train one of {ROLES}")
    return role


# --- dataset -----------------------------------------------------------------------------------------------------


def scenario_rows(n: int, *, seed: int = 0, env_kwargs: Mapping[str, Any] | None = None) -> list[dict]:
    """``n`` dataset rows, one per env seed ``seed, seed + 1, ...``: the seed, the scenario ``reset(seed)``
    draws (the env's ``split``, ``"train"`` by default) and a conversational prompt holding its text."""
    import triplay_env

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    env = triplay_env.parallel_env(**_env_config(env_kwargs))
    rows = []
    for s in range(seed, seed + n):
        _, infos = env.reset(seed=s)
        scenario = next(iter(infos.values()))["scenario"]
        rows.append({"prompt": [{"role": "user", "content": scenario["text"]}], "seed": s, "scenario": scenario})
    return rows


def triplay_dataset(n: int, *, seed: int = 0, env_kwargs: Mapping[str, Any] | None = None):
    """:func:`scenario_rows` as a ``datasets.Dataset`` (TRL's ``train_dataset``)."""
    require_trl()
    from datasets import Dataset

    return Dataset.from_list(scenario_rows(n, seed=seed, env_kwargs=env_kwargs))


# --- the trained role: sampling with the TRL trainer's model -------------------------------------------------------


class TrainerPolicy(TrainablePolicy):
    """The trained role, played by a TRL ``GRPOTrainer``'s model with the trainer's own sampling settings.

    Prompts are chat-templated the way every TriPlay backend does it (``agents.base.encode_chat_prompts``);
    then, like TRL's own generation: TRL's vLLM engine when ``trainer.use_vllm``, else ``generate`` on the
    unwrapped model with ``trainer.generation_config`` (temperature, top-p, ``max_completion_length``, EOS
    ids, ``generation_kwargs``), cut after the first EOS. Log-probs are ``log_softmax(logits / temperature)``
    of the sampled tokens, what TRL recomputes for the loss (top-p restricts sampling, not the log-probs).
    """

    def __init__(self, trainer, *, num_generations: int, max_prompt_tokens: int = 1024, response_prefix: str = ""):
        self.trainer = trainer
        self.num_generations = num_generations
        self.max_prompt_tokens = max_prompt_tokens
        self.response_prefix = check_response_prefix(response_prefix)
        self.tokenizer = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
        self._warned: dict = {}

    def generate(self, turns: Sequence[Turn]) -> Generation:
        if not turns:
            return Generation(texts=[], prompt_ids=[], completion_ids=[], logprobs=[])
        trainer = self.trainer
        context = int(getattr(trainer.model.config, "max_position_embeddings", None) or 10**9)
        limit = min(self.max_prompt_tokens, context - int(trainer.max_completion_length))
        prompt_ids = encode_chat_prompts(self.tokenizer, turns, limit, prefix=self.response_prefix, warned=self._warned)
        if getattr(trainer, "use_vllm", False):
            _, completion_ids, logprobs, _ = trainer.vllm_generation.generate(
                prompts=prompt_ids, images=None, num_generations=self.num_generations)
            logprobs = [[lp[0] for lp in seq] for seq in logprobs]  # top-1 entry: the sampled token
        else:
            completion_ids, logprobs = _generate(trainer, self.tokenizer, prompt_ids)
        texts = self.tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        return Generation(texts=[self.response_prefix + t for t in texts], prompt_ids=prompt_ids,
                          completion_ids=[list(c) for c in completion_ids], logprobs=[list(lp) for lp in logprobs])


def _generate(trainer, tokenizer, prompt_ids: list[list[int]]) -> tuple[list[list[int]], list[list[float]]]:
    """Sample with ``trainer.model`` as TRL's regular (no vLLM) path does, keeping each step's logits."""
    import torch
    from trl.models import unwrap_model_for_generation

    device = trainer.accelerator.device
    width = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), width), tokenizer.pad_token_id, dtype=torch.long)  # [B, P]
    mask = torch.zeros_like(ids)  # [B, P]
    for i, p in enumerate(prompt_ids):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    config = copy.deepcopy(trainer.generation_config)  # TRL's settings, plus the raw logits of every step
    config.return_dict_in_generate, config.output_logits = True, True
    args = trainer.args
    dist = getattr(trainer, "_dist", None)  # FSDP v1 needs its parameters gathered, as TRL does
    with (
        unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator,
                                    gather_deepspeed3_params=args.ds3_gather_for_generation,
                                    generation_kwargs=trainer.generation_kwargs,
                                    gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs) as model,
        torch.no_grad(),
        dist.summon_full_params(trainer.model_wrapped, recurse=False) if dist is not None else nullcontext(),
    ):
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
    tokens = out.sequences[:, width:].cpu()  # [B, T]
    eos = set(trainer.eos_token_ids)
    completion_ids, logprobs = [], []
    for i in range(tokens.shape[0]):
        row = tokens[i].tolist()
        end = next((k + 1 for k, t in enumerate(row) if t in eos), len(row))  # keep the EOS, drop what follows
        logits = torch.stack([step[i] for step in out.logits[:end]]).float() / trainer.temperature  # [end, V]
        picked = torch.log_softmax(logits, dim=-1).gather(-1, tokens[i, :end, None].to(logits.device))[:, 0]
        completion_ids.append(row[:end])
        logprobs.append(picked.cpu().tolist())
    return completion_ids, logprobs


# --- the rollout function ------------------------------------------------------------------------------------------


class TriPlayRollout:
    """TRL's ``rollout_func`` for one TriPlay role (see the module docstring); build it with
    :func:`triplay_rollout_func`.

    Args:
        role: the role TRL trains (``"attacker"``, ``"defender"`` or ``"evaluator"``); its agent ``<role>_0``
            is played by the trainer's model.
        players: who plays the other agents, by agent name (``"defender_1"``) or role (``"attacker"``): an
            ``agents.base.Agent`` or a scripted agent's short name (``agents.scripted.make_scripted``). Default
            :data:`DEFAULT_PLAYERS`. A role's entry never covers the trained agent; for the trained role it
            plays the other agents of that role (reference defenders, ``evaluator_1..``).
        env_kwargs: ``triplay_env.parallel_env`` keywords (reward scheme, panel, defenders, scenarios, ...);
            single-turn only. One panel and one Attack Success Pool are shared by all games, as in TriPlay's loop.
        max_prompt_tokens: longer prompts are shortened in the middle of their longest part (TriPlay's rule).
        response_prefix: text every answer of the trained role starts with (e.g. ``"VERDICT:"`` for a small
            evaluator): part of the prompt ids, put in front of the text the env receives.

    After each call, :attr:`last` holds the :class:`~training.rollout.Rollout` of that batch (every move and
    judged round), and :attr:`envs` the envs that played it.
    """

    def __init__(self, role: str = "defender", players: Mapping[str, Agent | str] | None = None,
                 env_kwargs: Mapping[str, Any] | None = None, *, max_prompt_tokens: int = 1024,
                 response_prefix: str = ""):
        import triplay_env
        from agents.scripted import make_scripted

        self.role = _check_role(role)
        require_trl()
        self.agent = agent_id(role, 0)
        if isinstance(max_prompt_tokens, bool) or not isinstance(max_prompt_tokens, int) or max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens must be an integer >= 1, got {max_prompt_tokens!r}")
        self.max_prompt_tokens = max_prompt_tokens
        self.response_prefix = check_response_prefix(response_prefix)
        config = shared_env_kwargs(_env_config(env_kwargs))
        self.env_kwargs = config
        self.envs = [triplay_env.parallel_env(**config)]
        self.panel = self.envs[0].panel
        self.scenarios: dict[str, Scenario] = {s.text: s for s in self.envs[0].scenario_set}
        self._seeds = {text: k for k, text in enumerate(self.scenarios)}  # a scenario's index: its games' reset seed

        given = dict(players or {})
        agents = self.envs[0].possible_agents
        for key in given:
            if key == self.agent or key == role:
                raise ValueError(f"players[{key!r}]: the {role} is trained by TRL ({self.agent} plays the trainer's "
                                 f"model); name the other {role}s' players '{role}_1', ... instead")
            if key not in ROLES and key not in agents:
                raise ValueError(f"players[{key!r}]: not a role {ROLES} nor an agent of this game {agents}")
        self.players: dict[str, Agent] = {}
        for other in ROLES:
            if other != role:
                self.players[other] = self._agent(given.get(other, DEFAULT_PLAYERS[other]), other, make_scripted)
        for name in agents:
            if name in given:
                self.players[name] = self._agent(given[name], role_of(name), make_scripted)
            elif role_of(name) == role and name != self.agent:
                self.players[name] = self._agent(DEFAULT_PLAYERS[role], role, make_scripted)
        self.shared_roles = ROLES[: ROLES.index(role)]  # the roles before it act once per group (coevolve.SHARED_ROLES)
        self.last: Rollout | None = None

    def _agent(self, player: Agent | str, role: str, make_scripted) -> Agent:
        if isinstance(player, Agent):
            return player
        if not isinstance(player, str):
            raise TypeError(f"a player is an agents.base.Agent or a scripted agent's name, got {type(player).__name__}")
        kwargs = {"judge": self.panel} if player == "judge" else {}  # the evaluator judges with the env's panel
        return make_scripted(player, role, **kwargs)

    def scenario_of(self, prompt) -> Scenario:
        """The scenario a dataset prompt stands for: its (last user message's) text in the env's scenario set."""
        text = prompt if isinstance(prompt, str) else next(
            (m["content"] for m in reversed(prompt) if m.get("role") == "user"), None)
        if not isinstance(text, str) or text not in self.scenarios:
            shown = text[:80] if isinstance(text, str) else type(prompt).__name__
            raise ValueError(f"prompt {shown!r} is not the text of a scenario in this env's scenario set "
                             f"({len(self.scenarios)} seeds, split {self.env_kwargs.get('split', 'train')!r}): "
                             f"build the dataset with triplay_dataset(n, env_kwargs=...) and the same env_kwargs")
        return self.scenarios[text]

    def __call__(self, prompts: Sequence, trainer) -> dict[str, list]:
        import triplay_env

        G = trainer.num_generations if trainer.model.training else trainer.num_generations_eval
        if len(prompts) % G:
            raise ValueError(f"{len(prompts)} prompts do not split into groups of {G} (num_generations)")
        scenarios = [self.scenario_of(p) for p in prompts]
        while len(self.envs) < len(prompts):
            self.envs.append(triplay_env.parallel_env(**self.env_kwargs))
        envs = self.envs[: len(prompts)]
        policy = TrainerPolicy(trainer, num_generations=G, max_prompt_tokens=self.max_prompt_tokens,
                               response_prefix=self.response_prefix)
        rollout = run_lockstep(envs, {**self.players, self.agent: policy}, seeds=[self._seeds[s.text] for s in scenarios],
                               group_size=G, shared_roles=self.shared_roles,
                               options=[{"scenario": s} for s in scenarios])
        self.last = rollout
        moves = {m.env: m for m in rollout.moves if m.agent == self.agent}
        if sorted(moves) != list(range(len(prompts))):
            raise RuntimeError(f"expected one move of {self.agent} per game, got moves in games {sorted(moves)}")
        moves = [moves[i] for i in range(len(prompts))]
        return {
            "prompt_ids": [m.prompt_ids for m in moves],
            "completion_ids": [m.completion_ids for m in moves],
            "logprobs": [m.logprobs for m in moves],
            REWARD_KEY: [m.reward if m.has_verdict else None for m in moves],
            "triplay_text": [m.text for m in moves],
            "triplay_scenario": [s.to_dict() for s in scenarios],
            "triplay_round": [dict(m.judged or {}) for m in moves],
        }


def triplay_rollout_func(role: str = "defender", players: Mapping[str, Agent | str] | None = None,
                         env_kwargs: Mapping[str, Any] | None = None, **kwargs) -> TriPlayRollout:
    """A ``rollout_func`` for ``trl.GRPOTrainer`` that trains ``role`` in the TriPlay game (see
    :class:`TriPlayRollout` for the arguments). Raises ``ValueError`` for an unknown role and ``ImportError``
    (with the install command) when TRL is missing."""
    return TriPlayRollout(role, players, env_kwargs, **kwargs)


# --- the reward function -------------------------------------------------------------------------------------------


def triplay_reward(completions, game_reward=None, triplay_scenario=None, triplay_round=None, scenario=None,
                   log_extra=None, log_metric=None, **_) -> list[float | None]:
    """TRL reward function: the env's reward for the trained agent, as the rollout function returned it.

    ``None`` (a game no judge could label) is left out of its group by TRL. When the rows carry TriPlay's
    ``scenario`` column, each is checked against the scenario the game played. Logged through TRL: the
    attack and the verdict that paid the round (on ``defender_0``'s answer) as extra columns of the completions
    table, and the batch's
    attack success rate and share of unjudged games as ``triplay/attack_success_rate`` and ``triplay/unjudged``.
    """
    if game_reward is None:
        raise ValueError("triplay_reward needs the 'game_reward' key of TriPlay's rollout function: pass "
                         "rollout_func=triplay_rollout_func(...) to the GRPOTrainer")
    if scenario is not None and triplay_scenario is not None:
        for i, (row, played) in enumerate(zip(scenario, triplay_scenario, strict=True)):
            if dict(row) != dict(played):
                raise ValueError(f"row {i}: the game played scenario {played['text']!r}, the row holds {row!r}")
    if triplay_round:
        if log_extra is not None:
            log_extra("attack", [r.get("attack") for r in triplay_round])
            log_extra("verdict", [(r.get("verdicts") or (None,))[0] for r in triplay_round])
        if log_metric is not None:
            log_metric("triplay/attack_success_rate", sum(bool(r.get("success")) for r in triplay_round) / len(triplay_round))
            log_metric("triplay/unjudged", sum(g is None for g in game_reward) / len(game_reward))
    return [None if g is None else float(g) for g in game_reward]
