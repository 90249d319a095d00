"""The agent protocol: a batch of turns in, a batch of texts out.

Batching is the point: a rollout gathers the active role's turns across every env and makes one call per
policy, so one ``generate`` serves a whole phase. An agent never touches the env; it sees a :class:`Turn`,
built from the env's observation and ``infos[agent]`` by :func:`turns_from`.

>>> from agents.base import Agent, Turn
>>> class Echo(Agent):
...     def act(self, turns):
...         return [t.prompt[-5:] for t in turns]
>>> Echo().act([Turn(agent="defender_0", role="defender", prompt="hello world", messages=[], info={})])
['world']
"""

from __future__ import annotations

import dataclasses
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from triplay_env.agent_ids import ROLES, role_of

__all__ = ["Agent", "TrainablePolicy", "Turn", "Generation", "ROLES", "role_of", "turns_from", "encode_chat_prompts",
           "check_response_prefix", "SamplingSettings", "SamplingBackend"]



@dataclass(frozen=True)
class Turn:
    """What one agent sees in one env at one step."""

    agent: str
    """the env's agent name, e.g. ``"evaluator_0"``"""
    role: str
    """``"attacker"``, ``"defender"`` or ``"evaluator"``"""
    prompt: str
    """the observation's prompt text (system + user, flattened)"""
    messages: Sequence[Mapping[str, str]]
    """the same prompt as chat messages (``[{"role": "system", "content": ...}, ...]``) for chat templates"""
    info: Mapping[str, Any] = field(default_factory=dict)
    """the env's ``infos[agent]``: scenario, attack, responses, verdicts, round, phase, ..."""


@dataclass
class Generation:
    """What a trainable policy returns: the texts plus what GRPO needs to train on them."""

    texts: list[str]
    """one completion per turn"""
    prompt_ids: list[list[int]]
    """prompt token ids per turn (after the chat template, before padding)"""
    completion_ids: list[list[int]]
    """sampled token ids per turn (EOS included when it was sampled, padding excluded)"""
    logprobs: list[list[float]]
    """log-probability of each completion token under the sampling policy (same length as completion_ids)"""


class Agent(ABC):
    """Anything that plays a role: maps a batch of turns to a batch of texts (same length, same order)."""

    @abstractmethod
    def act(self, turns: Sequence[Turn]) -> list[str]:
        """Return one text per turn."""

    def __call__(self, turns: Sequence[Turn]) -> list[str]:
        return self.act(turns)

    def reset(self) -> None:
        """Forget per-episode state (most agents have none)."""


class TrainablePolicy(Agent):
    """An agent GRPO can train: :meth:`generate` also returns token ids and sampling log-probs."""

    @abstractmethod
    def generate(self, turns: Sequence[Turn]) -> Generation:
        """Sample one completion per turn and return texts, token ids and per-token log-probs.

        Policies that the training loop samples also take ``seeds=`` (one per turn: each row drawn from its own
        generator, so a row's text does not depend on the rest of the batch)."""

    def act(self, turns: Sequence[Turn]) -> list[str]:
        return self.generate(turns).texts


@dataclass(frozen=True)
class SamplingSettings:
    """How a role policy samples: the same fields for every backend (transformers, vLLM).

    >>> SamplingSettings(max_new_tokens=8, temperature=0.7).replace(seed=3)
    SamplingSettings(max_new_tokens=8, temperature=0.7, top_p=1.0, seed=3, response_prefix='')
    """

    max_new_tokens: int = 64
    """completion length cap in tokens"""
    temperature: float = 1.0
    """sampling temperature; 0 is greedy decoding (judges, probes), with log-probs of the untempered softmax"""
    top_p: float = 1.0
    """nucleus sampling threshold, in (0, 1]"""
    seed: int | None = None
    """seeds the policy's own generator, so a sequence of calls is reproducible; None: unseeded"""
    response_prefix: str = ""
    """text every answer starts with (e.g. ``"VERDICT:"``): part of the prompt ids, in front of each text"""

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy where the backend allows it), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        check_response_prefix(self.response_prefix)

    def replace(self, **changes: Any) -> SamplingSettings:
        """A copy with ``changes`` applied (and checked)."""
        return dataclasses.replace(self, **changes)


@runtime_checkable
class SamplingBackend(Protocol):
    """What the loop needs from a model backend that samples the role adapters (``agents.hf.LoRARoles``,
    ``agents.vllm_agent.VLLMRoles``): policies per role, and the one prompt encoding."""

    roles: tuple[str, ...]
    """the role adapters it serves"""

    def policy(self, role: str | None, settings: SamplingSettings | None = None, **fields: Any) -> TrainablePolicy:
        """A policy that plays ``role`` (None: the base model, adapters disabled); ``fields`` override
        ``settings`` (e.g. ``policy("defender", max_new_tokens=32, seed=0)``)."""
        ...

    def encode_prompts(self, turns: Sequence[Turn], *, max_new_tokens: int = 0, prefix: str = "") -> list[list[int]]:
        """Prompt token ids per turn, as :func:`encode_chat_prompts` makes them for this backend's context."""
        ...


def turns_from(observations: Mapping[str, Mapping], infos: Mapping[str, Mapping], agents: Sequence[str]) -> list[Turn]:
    """Build :class:`Turn` objects for ``agents`` from one env's ``observations`` and ``infos``."""
    return [
        Turn(
            agent=a,
            role=role_of(a),
            prompt=str(observations[a]["prompt"]),
            messages=infos[a].get("messages", ()),
            info=infos[a],
        )
        for a in agents
    ]


def check_response_prefix(prefix: str) -> str:
    """A policy's ``response_prefix``, checked: a str (empty for none)."""
    if not isinstance(prefix, str):
        raise TypeError(f"response_prefix must be a str (empty for none), got {type(prefix).__name__}: {prefix!r}")
    return prefix


def encode_chat_prompts(
    tokenizer, turns: Sequence[Turn], limit: int, *, prefix: str = "", stacklevel: int = 3,
    warned: dict | None = None,
) -> list[list[int]]:
    """Chat-template each turn's messages (``add_generation_prompt=True``) and tokenize; every backend uses this,
    so transformers and vLLM see the same prompt ids.

    A turn without messages is sent as one user message holding ``turn.prompt``. ``prefix`` is text the
    assistant's answer starts with (e.g. ``"VERDICT:"``): it goes after the generation prompt, so the model
    continues it. A prompt longer than ``limit`` tokens is shortened where it can lose text: the middle of the
    longest part (a blank-line-separated block) of a non-system message is cut out and marked ``[...]``, its
    first line (a heading such as ``Response:``) and the beginning and end of the rest kept, until it fits.
    The system prompt (the role's instructions and the verdict format), the generation prompt and the prefix
    are never cut. One warning says how many prompts were shortened and by how much: once per ``warned``
    dict (a backend passes its own), once per process without one.
    """
    warned = _warned if warned is None else warned
    prompts = []
    shortened: list[tuple[int, int]] = []
    for turn in turns:
        messages = [dict(m) for m in turn.messages] or [{"role": "user", "content": turn.prompt}]
        ids = _encode(tokenizer, messages, prefix)
        if len(ids) > limit:
            before = len(ids)
            ids = _shorten(tokenizer, messages, prefix, limit)
            shortened.append((before, len(ids)))
        prompts.append(ids)
    if shortened and not warned.get("truncation"):
        warned["truncation"] = True
        worst = max(shortened)
        warnings.warn(
            f"{len(shortened)} of {len(prompts)} prompts were longer than {limit} tokens: the middle of their longest "
            f"message part was cut (e.g. {worst[0]} -> {worst[1]} tokens); system prompts and verdict instructions "
            f"are intact. Raise model.max_prompt_tokens or shorten the completions to avoid it (warned once)",
            stacklevel=stacklevel,
        )
    return prompts


_warned = {"truncation": False}
_MARK = " [...] "


def _encode(tokenizer, messages: Sequence[Mapping[str, str]], prefix: str) -> list[int]:
    text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False) + prefix
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _shorten(tokenizer, messages: list[dict], prefix: str, limit: int) -> list[int]:
    """Cut the middle of the longest non-system block until the prompt fits ``limit`` tokens (or nothing is
    left to cut; then the oldest tokens go, as a last resort)."""
    for _ in range(12):
        ids = _encode(tokenizer, messages, prefix)
        if len(ids) <= limit:
            return ids
        blocks = [(len(b), m, k) for m, msg in enumerate(messages) if msg.get("role") != "system"
                  for k, b in enumerate(msg["content"].split("\n\n"))]
        if not blocks:
            break
        size, m, k = max(blocks)
        parts = messages[m]["content"].split("\n\n")
        head, _, body = parts[k].partition("\n") if "\n" in parts[k] else ("", "", parts[k])
        chars_per_token = len(body) / max(1, len(tokenizer(body, add_special_tokens=False)["input_ids"]))
        excess_chars = int(chars_per_token * (len(ids) - limit + 4)) + len(_MARK)  # +4 tokens: the marker, the seams
        keep = len(body) - excess_chars
        if keep < 16:
            if len(body) <= 16:
                break
            keep = 16
        cut = body[: keep // 2] + _MARK + body[len(body) - (keep - keep // 2):]
        parts[k] = f"{head}\n{cut}" if head else cut
        messages[m] = {**messages[m], "content": "\n\n".join(parts)}
    ids = _encode(tokenizer, messages, prefix)
    return ids[-limit:]
