"""Three roles, one model: a transformers base with one LoRA adapter per role (peft multi-adapter).

The attacker, defender and evaluator are three named LoRA adapters on one shared base model; a role is
played by making its adapter the active one, and the GRPO reference policy is the base itself with the
adapters disabled. So three trainable roles plus a frozen reference cost one model in memory (plus
3 x 0.46M LoRA parameters for SmolLM2-135M at r=8 on q/v).

>>> from agents.models import tiny_random
>>> from agents.base import Turn
>>> roles = LoRARoles(*tiny_random(seed=0))
>>> defender = roles.policy("defender", max_new_tokens=8, seed=0)
>>> turn = Turn(agent="defender_0", role="defender", prompt="", messages=[{"role": "user", "content": "Hi"}])
>>> out = defender.generate([turn])
>>> len(out.completion_ids[0]) == len(out.logprobs[0]) <= 8
True

**Log-probs.** :meth:`RolePolicy.generate` samples token by token (KV cache, left-padded batch) and records,
for each sampled token, ``log_softmax(logits / temperature)`` of the role's policy: exactly what
:meth:`LoRARoles.forward_logprobs` recomputes teacher-forced (with the same ``temperature``), so GRPO's old
log-probs and its new ones are the same function of the weights. ``top_p`` < 1 only restricts which tokens can
be *sampled*; it is not folded into the log-probs (as in TRL and vLLM).

**Initialisation.** peft starts every LoRA ``B`` matrix at zero (``A`` is random), so each role's policy is
exactly the base model until its adapter is trained: the three roles start equal to each other and to the
reference.

**Lengths.** A prompt longer than ``max_prompt_tokens`` (or than the model's context minus ``max_new_tokens``)
is cut from the left, keeping the most recent text and the generation prompt, with a ``warnings.warn``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import Tensor, nn

from agents.base import ROLES, Generation, SamplingSettings, TrainablePolicy, Turn, encode_chat_prompts
from triplay_env.files import atomic_dir

__all__ = ["LoRARoles", "RolePolicy"]


class LoRARoles:
    """One base model, one LoRA adapter per role.

    Arguments:
        model: a transformers causal LM (not already a peft model); it is wrapped in place and frozen.
        tokenizer: its tokenizer, with a chat template; padding side and pad token are set here.
        roles: adapter names, one per role.
        r, alpha, dropout, target_modules: the LoRA configuration shared by every role (peft's ``r``,
            ``lora_alpha``, ``lora_dropout``, ``target_modules``). Defaults: r=8, alpha=16 on q/v, our choice
            for a 135M model on CPU (the paper's Qwen-scale runs do full fine-tuning).
        max_prompt_tokens: longest prompt kept, in tokens; longer prompts lose their beginning.

    The model is put in eval mode (LoRA dropout acts only if you call ``roles.model.train()``).
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        roles: Sequence[str] = ROLES,
        r: int = 8,
        alpha: int = 16,
        dropout: float = 0.0,
        target_modules: Sequence[str] = ("q_proj", "v_proj"),
        max_prompt_tokens: int = 1024,
    ):
        from peft import LoraConfig, PeftModel, get_peft_model

        if isinstance(model, PeftModel):
            raise TypeError(
                "LoRARoles wraps a plain transformers model; got a PeftModel (pass model.get_base_model())"
            )
        roles = tuple(roles)
        if not roles or len(set(roles)) != len(roles) or not all(isinstance(x, str) and x for x in roles):
            raise ValueError(f"roles must be distinct non-empty names, got {roles!r}")
        if max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens must be >= 1, got {max_prompt_tokens}")
        self.roles = roles
        self.max_prompt_tokens = max_prompt_tokens
        self._warned: dict = {}  # warnings already given (a long prompt's truncation is said once)
        self.tokenizer = tokenizer
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.lora_config = LoraConfig(
            r=r,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules=list(target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )
        self.model = get_peft_model(model, self.lora_config, adapter_name=roles[0])
        for role in roles[1:]:
            self.model.add_adapter(role, self.lora_config)
        self.model.eval()
        self.model.set_adapter(roles[0])
        self.slots: tuple[str, ...] = ()
        """extra adapters that are not roles (:meth:`add_slot`): no optimizer, not saved with the roles"""

    # --- helpers ----------------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def context_length(self) -> int:
        """The base model's maximum sequence length (``max_position_embeddings``), or unbounded."""
        return int(getattr(self.model.config, "max_position_embeddings", None) or 10**9)

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Token ids that end a completion: the tokenizer's EOS and the generation config's."""
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
        return frozenset(i for i in ids if i is not None)

    def _check_role(self, role: str | None, *, allow_none: bool = False) -> None:
        if role is None and allow_none:
            return
        if role not in self.roles and role not in self.slots:
            extra = " or None for the reference (adapters disabled)" if allow_none else ""
            raise ValueError(f"unknown role {role!r}; expected one of {self.roles}{extra}")

    def _set_role(self, role: str) -> None:
        # peft's set_adapter also flips requires_grad: only the active adapter's LoRA weights require grad.
        if self.model.active_adapter != role:
            self.model.set_adapter(role)

    def _adapter_context(self, role: str | None):
        """Run under ``role``'s adapter, or with every adapter disabled (the reference) when ``role`` is None."""
        if role is None:
            return self.model.disable_adapter()
        self._set_role(role)
        return nullcontext()

    # --- public API -------------------------------------------------------------------------------------------

    def policy(self, role: str | None, settings: SamplingSettings | None = None, **fields) -> RolePolicy:
        """A :class:`~agents.base.TrainablePolicy` that plays ``role`` with this model.

        ``role=None`` plays the base model with every adapter disabled (e.g. a fixed reference defender).
        ``response_prefix`` starts every answer (see :class:`RolePolicy`).
        """
        return RolePolicy(self, role, settings, **fields)

    def encode_prompts(self, turns: Sequence[Turn], *, max_new_tokens: int = 0, prefix: str = "") -> list[list[int]]:
        """Chat-template each turn's messages (``add_generation_prompt=True``), append ``prefix`` (the start
        of the answer), and tokenize.

        A turn without messages is sent as one user message holding ``turn.prompt``. Prompts longer than
        ``min(max_prompt_tokens, context_length - max_new_tokens)`` keep their last tokens, with a warning.
        """
        limit = min(self.max_prompt_tokens, self.context_length - max_new_tokens)
        if limit < 1:
            raise ValueError(
                f"max_new_tokens={max_new_tokens} leaves no room for a prompt in a context of {self.context_length}"
            )
        return encode_chat_prompts(self.tokenizer, turns, limit, prefix=prefix, stacklevel=4, warned=self._warned)

    def forward_logprobs(
        self,
        prompt_ids: Sequence[Sequence[int]],
        completion_ids: Sequence[Sequence[int]],
        role: str | None,
        *,
        temperature: float = 1.0,
    ) -> tuple[Tensor, Tensor]:
        """Teacher-forced log-probs of each completion token given its prompt, under ``role``'s adapter.

        ``role=None`` is the reference policy (the base, adapters disabled). The batch is laid out as
        ``[pad.. prompt | completion ..pad]`` with matching attention mask and position ids. Runs with grad
        when grad is enabled (only ``role``'s LoRA weights require it). Returns ``(logprobs, mask)``, both
        ``[B, T]`` with ``T`` the longest completion; ``logprobs`` is float32 and 0 where ``mask`` (bool) is
        False. Use the ``temperature`` the completions were sampled with.
        """
        self._check_role(role, allow_none=True)
        if len(prompt_ids) != len(completion_ids):
            raise ValueError(f"{len(prompt_ids)} prompts but {len(completion_ids)} completions")
        if any(len(p) == 0 for p in prompt_ids):
            raise ValueError("every prompt needs at least one token (the first completion token is predicted from it)")
        batch = len(prompt_ids)
        prompt_len = max((len(p) for p in prompt_ids), default=0)
        completion_len = max((len(c) for c in completion_ids), default=0)
        device = self.device
        mask = torch.zeros(batch, completion_len, dtype=torch.bool, device=device)  # [B, T]
        if batch == 0 or completion_len == 0:
            return torch.zeros(batch, completion_len, device=device), mask
        pad = self.tokenizer.pad_token_id
        ids = torch.full((batch, prompt_len + completion_len), pad, dtype=torch.long)  # [B, P+T]
        attention = torch.zeros_like(ids)  # [B, P+T]
        for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
            ids[i, prompt_len - len(p) : prompt_len] = torch.tensor(p, dtype=torch.long)
            ids[i, prompt_len : prompt_len + len(c)] = torch.tensor(c, dtype=torch.long)
            attention[i, prompt_len - len(p) : prompt_len + len(c)] = 1
            mask[i, : len(c)] = True
        ids, attention = ids.to(device), attention.to(device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)  # [B, P+T]
        with self._adapter_context(role):
            # logits for positions P-1 .. P+T-2 predict completion tokens 0 .. T-1
            logits = self.model(
                input_ids=ids, attention_mask=attention, position_ids=positions, logits_to_keep=completion_len + 1
            ).logits[:, :-1]  # [B, T, V]
        targets = ids[:, prompt_len:]  # [B, T]
        logprobs = _token_logprobs(logits, targets, temperature)  # [B, T]
        return logprobs.masked_fill(~mask, 0.0), mask

    def trainable_parameters(self, role: str) -> list[nn.Parameter]:
        """``role``'s LoRA weights (and nothing else): what its optimizer should hold."""
        if role in self.slots:
            raise ValueError(f"{role!r} is an opponent slot, not a role: it is loaded with set_weights, never trained")
        self._check_role(role)
        params = [p for name, p in self.model.named_parameters() if _is_lora_param_of(name, role)]
        if not params:
            raise RuntimeError(
                f"no LoRA parameters found for role {role!r}; target_modules={self.lora_config.target_modules}"
            )
        return params

    # --- opponent slots (league play) -------------------------------------------------------------------------

    def add_slot(self, name: str) -> None:
        """Add an adapter ``name`` of the roles' LoRA shape that is not a role: it has no optimizer, is not in
        :meth:`save_adapters` by default, and plays whatever :meth:`set_weights` loads into it (a past snapshot
        of a role, for league opponents). Policies take it like a role: ``roles.policy(name)``."""
        if not isinstance(name, str) or not name or name in self.roles or name in self.slots:
            raise ValueError(f"slot name must be a new non-empty name (not a role or slot), got {name!r}")
        self.model.add_adapter(name, self.lora_config)
        self.slots += (name,)

    def _lora_params(self, name: str) -> dict[str, nn.Parameter]:
        """Adapter ``name``'s LoRA parameters keyed by their name with the adapter's part written ``*``."""
        out = {}
        for full, p in self.model.named_parameters():
            if _is_lora_param_of(full, name):
                parts = full.split(".")
                out[".".join("*" if i > 0 and parts[i - 1].startswith("lora_") and part == name else part
                             for i, part in enumerate(parts))] = p
        return out

    def weights(self, name: str) -> dict[str, Tensor]:
        """A detached CPU copy of adapter ``name``'s LoRA weights (a role's or a slot's), keyed independently of
        the adapter's name, so :meth:`set_weights` can load it into any adapter of the same shape."""
        self._check_role(name)
        return {k: p.detach().to("cpu", copy=True) for k, p in self._lora_params(name).items()}

    @torch.no_grad()
    def set_weights(self, name: str, weights: dict[str, Tensor]) -> None:
        """Copy ``weights`` (from :meth:`weights`) into adapter ``name`` in place."""
        self._check_role(name)
        params = self._lora_params(name)
        if set(params) != set(weights):
            missing, extra = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
            raise ValueError(f"weights for {name!r} do not fit its adapter: missing {missing[:3]}, unexpected {extra[:3]}")
        for k, p in params.items():
            p.copy_(weights[k].to(p.device, p.dtype))

    def save_adapters(self, path: str | os.PathLike, *, roles: Sequence[str] | None = None) -> Path:
        """Write every role's adapter (or those in ``roles``, slots allowed) in peft format:
        ``path/<role>/adapter_config.json`` + ``adapter_model.safetensors`` (readable by
        ``PeftModel.from_pretrained``, ``load_adapter`` and vLLM's ``LoRARequest``). Written to a temp folder
        beside ``path``, then renamed over it."""
        path = Path(path)
        roles = self.roles if roles is None else tuple(roles)
        for role in roles:
            self._check_role(role)
        with atomic_dir(path) as tmp:
            for role in roles:
                self.model.save_pretrained(tmp, selected_adapters=[role])
                if role == "default":  # peft writes the adapter called "default" at the root
                    _move_root_adapter(tmp, tmp / role)
        return path

    def load_adapters(self, path: str | os.PathLike) -> None:
        """Load ``path/<role>/`` (as written by :meth:`save_adapters`) into each role's adapter, in place."""
        from peft import LoraConfig
        from peft.utils import load_peft_weights, set_peft_model_state_dict

        path = Path(path)
        for role in self.roles:
            folder = path / role
            if not (folder / "adapter_config.json").is_file():
                raise FileNotFoundError(f"no adapter for role {role!r}: {folder / 'adapter_config.json'} is missing")
            saved = LoraConfig.from_pretrained(folder)
            ours = self.lora_config
            shape = (saved.r, saved.lora_alpha, set(saved.target_modules))
            if shape != (ours.r, ours.lora_alpha, set(ours.target_modules)):
                raise ValueError(
                    f"adapter in {folder} has r={saved.r}, alpha={saved.lora_alpha}, target_modules="
                    f"{sorted(saved.target_modules)}; these roles use r={ours.r}, alpha={ours.lora_alpha}, "
                    f"target_modules={sorted(ours.target_modules)}"
                )
            weights = load_peft_weights(str(folder), device=str(self.device))
            result = set_peft_model_state_dict(self.model, weights, adapter_name=role)
            missing = [k for k in result.missing_keys if _is_lora_param_of(k, role)]
            if missing:
                raise ValueError(f"adapter in {folder} lacks {len(missing)} LoRA weights, e.g. {missing[:3]}")


class RolePolicy(TrainablePolicy):
    """One role of a :class:`LoRARoles`, as an agent: batched sampling with the role's adapter active
    (``role=None``: the base model, adapters disabled).

    ``seed`` makes the sequence of calls reproducible (one ``torch.Generator`` per policy);
    ``generate(turns, seed=s)`` reproduces one call regardless of what ran before; ``generate(turns, seeds=[...])``
    samples each row from its own generator, so a row's text does not depend on the other rows of the batch
    (up to float rounding in the batched forward pass), which is what splitting a batch over processes needs.

    ``response_prefix`` is text every answer starts with, written for the model after the chat template's
    generation prompt (part of ``prompt_ids``, so training never scores it) and put in front of each returned
    text: e.g. ``"VERDICT:"`` for an evaluator too small to keep the verdict format on its own.
    """

    def __init__(self, roles: LoRARoles, role: str | None, settings: SamplingSettings | None = None, **fields):
        roles._check_role(role, allow_none=True)
        settings = (settings or SamplingSettings()).replace(**fields)
        self.roles = roles
        self.role = role
        self.settings = settings
        self.generator = torch.Generator(device=roles.device)
        if settings.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(settings.seed)

    max_new_tokens = property(lambda self: self.settings.max_new_tokens)
    temperature = property(lambda self: self.settings.temperature)
    top_p = property(lambda self: self.settings.top_p)
    response_prefix = property(lambda self: self.settings.response_prefix)

    @torch.no_grad()
    def generate(self, turns: Sequence[Turn], *, seed: int | None = None, seeds: Sequence[int] | None = None) -> Generation:
        """Sample one completion per turn (stopping at EOS or ``max_new_tokens``); ``seeds``: one per turn."""
        roles, tokenizer = self.roles, self.roles.tokenizer
        if len(turns) == 0:
            return Generation(texts=[], prompt_ids=[], completion_ids=[], logprobs=[])
        if seeds is not None and len(seeds) != len(turns):
            raise ValueError(f"need one seed per turn: {len(seeds)} seeds for {len(turns)} turns")
        generator = self.generator
        if seed is not None:
            generator = torch.Generator(device=roles.device).manual_seed(seed)
        if seeds is not None:
            generator = [torch.Generator(device=roles.device).manual_seed(int(s)) for s in seeds]
        prompts = roles.encode_prompts(turns, max_new_tokens=self.max_new_tokens, prefix=self.response_prefix)
        device, batch = roles.device, len(prompts)
        prompt_len = max(len(p) for p in prompts)
        ids = torch.full((batch, prompt_len), tokenizer.pad_token_id, dtype=torch.long)  # [B, P]
        attention = torch.zeros_like(ids)  # [B, P]
        for i, p in enumerate(prompts):
            ids[i, prompt_len - len(p) :] = torch.tensor(p, dtype=torch.long)
            attention[i, prompt_len - len(p) :] = 1
        ids, attention = ids.to(device), attention.to(device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)  # [B, P]
        eos = torch.tensor(sorted(roles.eos_token_ids), dtype=torch.long, device=device)
        finished = torch.zeros(batch, dtype=torch.bool, device=device)  # [B]
        tokens, logprobs, alive = [], [], []
        with roles._adapter_context(self.role):
            out = roles.model(
                input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True, logits_to_keep=1
            )
            for step in range(self.max_new_tokens):
                logits = out.logits[:, -1].float()  # [B, V]
                if self.temperature == 0:  # greedy (judges, reproducible probes): log-probs of the plain softmax
                    token = logits.argmax(-1)  # [B]
                else:
                    token = _sample(logits, self.temperature, self.top_p, generator)  # [B]
                token = token.masked_fill(finished, tokenizer.pad_token_id)
                tokens.append(token)
                logprobs.append(_token_logprobs(logits[:, None], token[:, None], self.temperature or 1.0)[:, 0])  # [B]
                alive.append(~finished)
                finished = finished | torch.isin(token, eos)
                if bool(finished.all()) or step == self.max_new_tokens - 1:
                    break
                attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)  # [B, P+step+1]
                positions = positions[:, -1:] + 1  # [B, 1]
                out = roles.model(
                    input_ids=token[:, None],
                    attention_mask=attention,
                    position_ids=positions,
                    past_key_values=out.past_key_values,
                    use_cache=True,
                )
        tokens_t = torch.stack(tokens, 1).cpu()  # [B, T]
        logprobs_t = torch.stack(logprobs, 1).cpu()  # [B, T]
        alive_t = torch.stack(alive, 1).cpu()  # [B, T]
        completion_ids = [tokens_t[i][alive_t[i]].tolist() for i in range(batch)]
        return Generation(
            texts=[self.response_prefix + t for t in tokenizer.batch_decode(completion_ids, skip_special_tokens=True)],
            prompt_ids=prompts,
            completion_ids=completion_ids,
            logprobs=[logprobs_t[i][alive_t[i]].tolist() for i in range(batch)],
        )


# --- small pure helpers ---------------------------------------------------------------------------------------------


_LOGPROB_CHUNK = 64
"""positions whose float32 logits exist at once in :func:`_token_logprobs` (64 x 49152 x 4 B = 12.6 MB)"""


def _token_logprobs(logits: Tensor, targets: Tensor, temperature: float) -> Tensor:
    """``log_softmax(logits / temperature)`` at ``targets``, in float32. logits [B, T, V], targets [B, T] -> [B, T].

    Computed a few rows at a time (about :data:`_LOGPROB_CHUNK` positions): a float32 copy of all the logits
    plus the temporaries of ``logsumexp`` would cost more memory than the whole forward pass of a small model
    with a large vocabulary. Slicing rows keeps ``logits`` a view (no copy of a non-contiguous slice), and the
    chunking changes no value. Under grad, autograd still keeps each chunk for the backward pass.
    """
    batch, length, _ = logits.shape
    rows = max(1, _LOGPROB_CHUNK // max(length, 1))
    pieces = []
    for start in range(0, batch, rows):
        scaled = logits[start : start + rows].float() / temperature  # [r, T, V]
        picked = scaled.gather(-1, targets[start : start + rows].unsqueeze(-1)).squeeze(-1)  # [r, T]
        pieces.append(picked - torch.logsumexp(scaled, dim=-1))  # [r, T]
        del scaled
    if not pieces:
        return logits.new_zeros(batch, length, dtype=torch.float32)
    return torch.cat(pieces)  # [B, T]


def _sample(logits: Tensor, temperature: float, top_p: float, generator: torch.Generator | Sequence[torch.Generator]) -> Tensor:
    """One token per row from ``softmax(logits / temperature)`` restricted to the top-p nucleus. [B, V] -> [B].

    ``generator``: one for the batch, or one per row (each row then draws from its own).
    """
    probs = torch.softmax(logits / temperature, dim=-1)  # [B, V]
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)  # [B, V]
        # drop a token when the tokens ranked above it already cover top_p (the first one always stays)
        drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # [B, V]
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)  # [B, V]
    if isinstance(generator, torch.Generator):
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # [B]
    return torch.cat([torch.multinomial(probs[b : b + 1], 1, generator=g)[:, 0] for b, g in enumerate(generator)])  # [B]


def _is_lora_param_of(name: str, role: str) -> bool:
    """``...q_proj.lora_A.attacker.weight`` belongs to ``attacker``."""
    parts = name.split(".")
    return any(part.startswith("lora_") and i + 1 < len(parts) and parts[i + 1] == role for i, part in enumerate(parts))


def _move_root_adapter(folder: Path, dest: Path) -> None:
    dest.mkdir(exist_ok=True)
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        if (folder / name).exists():
            os.replace(folder / name, dest / name)

