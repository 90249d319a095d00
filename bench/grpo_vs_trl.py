"""Our GRPO update next to TRL 1.16's ``GRPOTrainer``, in one run, on one model: speed and loss parity.

Both sides get the same base weights, the same LoRA adapter (r=8, alpha=16 on q_proj/v_proj, and the same
adapter values: ours is randomised, then copied into TRL's ``default`` adapter), the same batch and the same
loss settings (``loss_type="dapo"``, ``beta=0``, epsilon 0.2 both ways, one inner iteration, AdamW at the same
learning rate, no weight decay, gradient clipping at 1.0). Both run in this process, so with the same dtype
(``--dtype``; default fp32 for ``tiny``, bf16 weights for ``smollm2-135m``; no autocast on either side) and
the same torch threads. On a CPU without bf16 instructions (no AVX512-BF16/AMX) bf16 matrix products are
several times slower than fp32; use ``--dtype float32`` there.

Sections, printed as one Markdown table (``--json PATH`` also writes the rows):

* ``parity``: on one ragged batch (left-padded prompts, right-padded completions of different lengths,
  old log-probs perturbed so the clip binds both ways) our ``grpo_loss`` on ``LoRARoles.forward_logprobs``
  against TRL's ``compute_loss``: the two losses and ``|ours - TRL|`` (target <= 1e-5), the largest
  per-token log-prob difference, and the largest per-parameter gradient difference over the LoRA tensors.
* ``update``: time of one optimizer step on a fixed batch (B completions of exactly T tokens, given old
  log-probs and advantages). Ours: ``GRPOTrainer.step(role, samples)``, all of it (tensors built from the
  samples, forward, loss, backward, clipping, AdamW step, metrics). TRL: ``zero_grad``, ``compute_loss(model,
  inputs)`` on an ``inputs`` dict in TRL's own format (what ``_compute_loss`` reads in 1.16: ``prompt_ids``,
  ``prompt_mask``, ``completion_ids``, ``completion_mask``, ``advantages``, ``old_per_token_logps``,
  ``num_items_in_batch``), ``backward``, ``clip_grad_norm_`` and the step of the optimizer TRL's trainer builds
  (``create_optimizer``: fused AdamW). Ours and TRL take turns (who goes first alternates), after one warm-up
  pair; median seconds.
* ``full-step``: rollout generation + reward + advantages + update. Ours:
  ``roles.policy(role).generate`` on B turns (G per prompt), the reward, ``group_advantages``, ``Sample``s,
  ``GRPOTrainer.step``. TRL: ``train()`` with ``max_steps``, ``use_vllm=False`` (transformers ``generate``),
  ``generation_batch_size`` = B, ``num_generations`` = G; a step is the time between two ``on_step_end``
  callbacks (so TRL's data loading, reward call, logging bookkeeping are in; its set-up is not). Both sides
  generate exactly T tokens: TRL through ``min_new_tokens=T``, ours through a bench-only ``LoRARoles`` subclass
  with no stop token. Two rounds (``--quick``: one), ours then TRL, median over all steps.

Every timing is reported three ways: the median of wall-clock seconds, the median of this process's CPU
seconds (``time.process_time``, all threads) and the fastest wall-clock time. On a machine shared with other
jobs the wall-clock median swings with their load; the CPU time and the minimum are steadier, not immune.
Threads default to 1: with 2 threads on 2 cores that another job also uses, every small op waits for a thread
that is not scheduled (seen here: one tiny-model rollout took 0.9 s on 1 thread, 16.6 s on 2), which measures
the machine's load, not the code. ``--threads N`` uses more where the cores are free.

Conventions that differ and how they are aligned here (TRL 1.16 source, ``trl/trainer/grpo_trainer.py``):

* positions: TRL's ``_get_per_token_logps_and_entropies`` passes no ``position_ids``, so a left-padded
  prompt starts at position = its padding; ours counts positions from the first real token. RoPE depends
  only on position differences, so the two agree up to float round-off.
* LM head: TRL patches the model with a fused, chunked log-prob head (``add_fused_lm_head``) that divides
  the logits by ``temperature`` and, on CPU (no Triton), projects *every* position, prompt included, and
  computes each position's entropy (for its metrics); ours keeps only the completion positions
  (``logits_to_keep = T + 1``) and no entropy. Same log-probs, different cost.
* dapo normaliser: TRL divides by ``inputs["num_items_in_batch"] / num_processes * grad_accum /
  steps_per_generation``; with one process and ``steps_per_generation = gradient_accumulation_steps = 1`` that
  is the completion-token count of the batch, what ours passes as ``num_items_in_batch``.
* old log-probs: with ``num_iterations=1`` TRL's own rollouts skip them (it uses ``per_token_logps.detach()``,
  ratio 1); here they are passed in ``inputs["old_per_token_logps"]``, which ``_compute_loss`` then uses. In
  the full step each side keeps its own habit: ours passes the log-probs recorded while sampling (ratio 1 up to
  round-off between the KV-cached and the teacher-forced pass).
* TRL's ``GRPOConfig`` defaults that would change the work, overridden: ``gradient_checkpointing=True`` ->
  False (ours does not recompute activations), ``bf16=True`` (CPU autocast) -> False (both sides run the
  model in its own dtype), linear learning-rate decay -> constant.
* ``current_gradient_accumulation_steps`` is set by ``Trainer.train``; for ``compute_loss`` outside ``train``
  it is set to 1 here.

Usage::

    python bench/grpo_vs_trl.py --model tiny                  # 3.3M-parameter random Llama, fp32 (minutes)
    python bench/grpo_vs_trl.py --model smollm2-135m --quick  # SmolLM2-135M-Instruct, bf16
    python bench/grpo_vs_trl.py --model smollm2-135m --quick --dtype float32
    python bench/grpo_vs_trl.py --quick --sections parity update --json rows.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from agents.base import Turn  # noqa: E402
from agents.hf import LoRARoles  # noqa: E402
from training.config import GRPOConfig  # noqa: E402
from training.grpo import group_advantages, grpo_loss  # noqa: E402
from training.trainer import GRPOTrainer, Sample  # noqa: E402

ROLE = "attacker"
"""the adapter both sides train (ours holds three; only the active one runs)"""
LORA = dict(r=8, alpha=16, target_modules=("q_proj", "v_proj"))
"""the LoRA configuration of both sides"""
EPSILON = 0.2
"""clip range both ways (TRL 1.16's default ``epsilon``)"""
LR = 1e-4
"""AdamW learning rate of both sides (our GRPOConfig default; TRL's 1e-6 default is overridden)"""
MAX_GRAD_NORM = 1.0
"""gradient clipping of both sides (both defaults)"""
PARITY_TARGET = 1e-5
"""largest accepted |our loss - TRL's loss|"""
SPEED_TARGET = 1.0
"""largest accepted ours / TRL time ratio"""
SECTIONS = ("parity", "update", "full-step")
"""what :func:`main` can run, in this order"""
PROMPTS = (
    "Hi there",
    "Write a short poem about the sea and the wind.",
    "How do I bake bread at home without a bread machine?",
    "Explain, in two sentences, why the sky is blue.",
    "Name three prime numbers.",
    "What is the capital of France, and what is it famous for?",
    "Tell me a joke about computers.",
    "Summarise the plot of a heist film in one line.",
)
"""user messages, of different lengths so that prompts are left-padded"""


def reward(text: str) -> float:
    """A cheap reward both sides compute on the decoded completion: how many of 'aeiou' it contains, mod 3."""
    return float(sum(text.count(v) for v in "aeiou") % 3)


# ---------------------------------------------------------------------------------------------------------
# set-up: one base model per side, same weights, same adapter values
# ---------------------------------------------------------------------------------------------------------


class FixedLengthRoles(LoRARoles):
    """``LoRARoles`` with no stop token, so every rollout has exactly ``max_new_tokens`` tokens (bench only)."""

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return frozenset()


@dataclass
class Pair:
    """Both sides, built by :func:`build_pair`, and the batch shape they were built for."""

    roles: LoRARoles
    ours: GRPOTrainer
    trl: object
    """TRL's ``GRPOTrainer``, LoRA applied by TRL from a ``peft_config``"""
    trl_optimizer: torch.optim.Optimizer
    tokenizer: object
    dtype: torch.dtype
    group_size: int
    batch: int
    completion_tokens: int
    trl_completion_lengths: list[int]
    """lengths of the completions TRL's rollouts produced (its reward function records them)"""


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DEFAULT_DTYPE = {"tiny": "float32", "smollm2-135m": "bfloat16"}
"""tiny is built in fp32; SmolLM2 runs in bf16 in our presets (on a CPU without bf16 instructions, slowly)"""


def load_base(name: str, dtype: str | None = None):
    """``(model, tokenizer)``: a fresh copy of the base model in ``dtype`` (default: :data:`DEFAULT_DTYPE`)."""
    from agents.models import load_model, tiny_random

    dtype = DTYPES[dtype or DEFAULT_DTYPE[name]]
    if name == "tiny":
        model, tokenizer = tiny_random(seed=0)
        return model.to(dtype), tokenizer
    return load_model(name, dtype=dtype)


def trl_config(*, batch: int, group_size: int, completion_tokens: int, max_steps: int, output_dir: str):
    """TRL's ``GRPOConfig`` for the same update as ours (see the module docstring for each override)."""
    from trl import GRPOConfig as TRLConfig

    return TRLConfig(
        output_dir=output_dir,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        num_generations=group_size,
        max_completion_length=completion_tokens,
        generation_kwargs={"min_new_tokens": completion_tokens},
        temperature=1.0,
        top_p=1.0,
        loss_type="dapo",
        beta=0.0,
        epsilon=EPSILON,
        num_iterations=1,
        scale_rewards="group",
        learning_rate=LR,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=MAX_GRAD_NORM,
        gradient_checkpointing=False,
        bf16=False,
        use_cpu=True,
        use_vllm=False,
        shuffle_dataset=False,
        max_steps=max_steps,
        logging_steps=10,  # TRL's default
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )


def build_pair(model_name: str = "tiny", *, dtype: str | None = None, batch: int = 8, group_size: int = 4,
               completion_tokens: int = 32, max_steps: int = 4, seed: int = 0) -> Pair:
    """Our ``LoRARoles`` + ``GRPOTrainer`` and TRL's ``GRPOTrainer`` on two copies of one base model.

    Our adapter's ``lora_B`` (zero at init, which would make every ``lora_A`` gradient zero) is filled with
    seeded noise, then every LoRA tensor is copied into TRL's ``default`` adapter.
    """
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import PrinterCallback
    from trl import GRPOTrainer as TRLTrainer

    if batch % group_size:
        raise ValueError(f"batch ({batch}) must be a multiple of group_size ({group_size})")
    ours_model, tokenizer = load_base(model_name, dtype)
    trl_model, trl_tokenizer = load_base(model_name, dtype)
    roles = FixedLengthRoles(ours_model, tokenizer, r=LORA["r"], alpha=LORA["alpha"], target_modules=LORA["target_modules"])
    cfg = GRPOConfig(group_size=group_size, batch_size=batch, loss_type="dapo", eps_low=EPSILON, eps_high=EPSILON,
                     beta=0.0, inner_epochs=1, lr=LR, weight_decay=0.0, micro_batch_size=batch, max_grad_norm=MAX_GRAD_NORM)
    ours = GRPOTrainer(roles, cfg, temperature=1.0)

    num_groups = batch // group_size
    prompts = [[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}] for i in range(num_groups)]
    dataset = Dataset.from_dict({"prompt": prompts * max(max_steps, 1)})
    args = trl_config(batch=batch, group_size=group_size, completion_tokens=completion_tokens, max_steps=max_steps,
                      output_dir=tempfile.mkdtemp(prefix="grpo_vs_trl."))
    peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0,
                             target_modules=list(LORA["target_modules"]), bias="none", task_type="CAUSAL_LM")

    completion_lengths: list[int] = []

    def trl_reward(completions, completion_ids, **_):
        completion_lengths.extend(len(ids) for ids in completion_ids)
        return [reward(c[0]["content"] if isinstance(c, list) else c) for c in completions]

    trl = TRLTrainer(model=trl_model, reward_funcs=trl_reward, args=args, train_dataset=dataset,
                     processing_class=trl_tokenizer, peft_config=peft_config)
    trl.remove_callback(PrinterCallback)  # keep TRL's log lines out of the table
    _copy_adapter(roles, trl.model, seed)
    trl.model.train()
    trl.current_gradient_accumulation_steps = 1  # Trainer.train sets it; compute_loss reads it
    return Pair(roles, ours, trl, trl.create_optimizer(), tokenizer, ours_model.dtype, group_size, batch, completion_tokens,
                completion_lengths)


def _trl_name(name: str) -> str:
    return name.replace(f".{ROLE}.", ".default.")


@torch.no_grad()
def _copy_adapter(roles: LoRARoles, trl_model, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    theirs = dict(trl_model.named_parameters())
    copied = 0
    for name, param in roles.model.named_parameters():
        if f".{ROLE}." not in name:
            continue
        if ".lora_B." in name:
            param.copy_(0.05 * torch.randn(param.shape, generator=generator))
        theirs[_trl_name(name)].copy_(param)
        copied += 1
    if copied == 0 or copied != sum(".default." in n for n in theirs):
        raise RuntimeError(f"copied {copied} LoRA tensors into TRL's adapter, which has "
                           f"{sum('.default.' in n for n in theirs)}; do the two LoRA configurations match?")


# ---------------------------------------------------------------------------------------------------------
# batches: our Samples and the same tokens in TRL's inputs format
# ---------------------------------------------------------------------------------------------------------


def make_samples(pair: Pair, *, ragged: bool, old_noise: float = 0.3, seed: int = 0) -> list[Sample]:
    """B samples: chat-templated prompts of different lengths, random completion tokens (T each, or between
    T/2 and T when ``ragged``), old log-probs = the current policy's plus N(0, ``old_noise``) noise (ratios
    away from 1, so the clip binds), advantages = ``group_advantages`` of rewards drawn in {0, 1, 2}."""
    generator = torch.Generator().manual_seed(seed)
    roles, B, T = pair.roles, pair.batch, pair.completion_tokens
    turns = [Turn(agent=f"{ROLE}_0", role=ROLE, prompt="", messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}])
             for i in range(B)]
    prompt_ids = roles.encode_prompts(turns)
    low = max(1, T // 2) if ragged else T
    lengths = torch.randint(low, T + 1, (B,), generator=generator).tolist()
    vocab = roles.model.config.vocab_size
    completion_ids = [torch.randint(100, vocab, (n,), generator=generator).tolist() for n in lengths]
    with torch.no_grad():
        logprobs, mask = roles.forward_logprobs(prompt_ids, completion_ids, ROLE)  # [B, T], [B, T]
    old = logprobs + old_noise * torch.randn(logprobs.shape, generator=generator)  # [B, T]
    rewards = torch.randint(0, 3, (B,), generator=generator).float()  # [B]
    advantages = group_advantages(rewards, pair.group_size)  # [B]
    return [Sample(p, c, old[i, : len(c)].tolist(), float(advantages[i]))
            for i, (p, c) in enumerate(zip(prompt_ids, completion_ids))]


def trl_inputs(samples: list[Sample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """The same batch in TRL 1.16's format: prompts left-padded, completions right-padded, as
    ``_generate_and_score_completions`` returns them."""
    B = len(samples)
    P = max(len(s.prompt_ids) for s in samples)
    T = max(len(s.completion_ids) for s in samples)
    prompt_ids = torch.full((B, P), pad_token_id, dtype=torch.long)  # [B, P]
    prompt_mask = torch.zeros(B, P, dtype=torch.long)  # [B, P]
    completion_ids = torch.full((B, T), pad_token_id, dtype=torch.long)  # [B, T]
    completion_mask = torch.zeros(B, T, dtype=torch.long)  # [B, T]
    old = torch.zeros(B, T)  # [B, T]
    for i, s in enumerate(samples):
        p, c = len(s.prompt_ids), len(s.completion_ids)
        prompt_ids[i, P - p :] = torch.tensor(s.prompt_ids)
        prompt_mask[i, P - p :] = 1
        completion_ids[i, :c] = torch.tensor(s.completion_ids)
        completion_mask[i, :c] = 1
        old[i, :c] = torch.tensor(s.old_logprobs)
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.tensor([s.advantage for s in samples]),  # [B]
        "old_per_token_logps": old,
        "num_items_in_batch": completion_mask.sum(),  # [] dapo's normaliser: completion tokens in the batch
    }


# ---------------------------------------------------------------------------------------------------------
# parity
# ---------------------------------------------------------------------------------------------------------


def loss_parity(pair: Pair, samples: list[Sample]) -> dict:
    """Our loss and gradients against TRL's on the same tokens, advantages and old log-probs (no step taken).

    Returns ``{"ours", "trl", "loss_diff", "logp_diff", "grad_diff", "grad_scale" (largest |gradient| of ours),
    "grad_tensors", "clip_low", "clip_high", "tokens"}`` (the clip fractions are TRL's metrics, to show the clip was exercised).
    """
    roles, trl = pair.roles, pair.trl
    params = dict(roles.model.named_parameters())
    theirs = dict(trl.model.named_parameters())
    lora = [n for n in params if f".{ROLE}." in n]

    # ours: the trainer's own path, one micro-batch
    roles.model.train()
    roles.model.zero_grad(set_to_none=True)
    logprobs, mask = roles.forward_logprobs([s.prompt_ids for s in samples], [s.completion_ids for s in samples], ROLE)
    T = logprobs.shape[1]
    old = torch.zeros(len(samples), T)  # [B, T]
    for i, s in enumerate(samples):
        old[i, : len(s.old_logprobs)] = torch.tensor(s.old_logprobs)
    tokens = float(mask.sum())
    loss, _ = grpo_loss(logprobs, old, torch.tensor([s.advantage for s in samples]), mask.float(), loss_type="dapo",
                        eps_low=EPSILON, eps_high=EPSILON, beta=0.0, num_items_in_batch=tokens)
    loss.backward()

    # TRL: compute_loss on its inputs dict
    inputs = trl_inputs(samples, pair.tokenizer.pad_token_id)
    trl.model.train()
    trl.model.zero_grad(set_to_none=True)
    trl._metrics["train"].clear()
    trl_loss = trl.compute_loss(trl.model, inputs)
    trl_loss.backward()
    with torch.no_grad():
        trl_logps, _, _ = trl._get_per_token_logps_and_entropies(
            trl.model, torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1),
            torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1), T)  # [B, T]

    grad_diff = max(float((params[n].grad.float() - theirs[_trl_name(n)].grad.float()).abs().max()) for n in lora)
    logp_diff = float((logprobs.detach() - trl_logps.float()).masked_fill(~mask, 0.0).abs().max())
    grad_scale = max(float(params[n].grad.float().abs().max()) for n in lora)
    metrics = trl._metrics["train"]
    ours_value, trl_value = loss.item(), trl_loss.item()
    result = {
        "ours": ours_value, "trl": trl_value, "loss_diff": abs(ours_value - trl_value), "logp_diff": logp_diff,
        "grad_diff": grad_diff, "grad_scale": grad_scale, "grad_tensors": len(lora), "tokens": int(tokens),
        "clip_low": metrics["clip_ratio/low_mean"][-1], "clip_high": metrics["clip_ratio/high_mean"][-1],
    }
    roles.model.zero_grad(set_to_none=True)
    trl.model.zero_grad(set_to_none=True)
    return result


# ---------------------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------------------


def trl_update(pair: Pair, inputs: dict) -> float:
    """One TRL optimizer step on a ready batch, as ``Trainer`` does it (minus data loading); returns the loss."""
    trl, optimizer = pair.trl, pair.trl_optimizer
    optimizer.zero_grad(set_to_none=True)
    loss = trl.compute_loss(trl.model, inputs)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], MAX_GRAD_NORM)
    optimizer.step()
    return loss.item()


Timing = tuple[float, float]
"""(wall-clock seconds, CPU seconds of this process): on a shared machine the CPU time is the steadier of the two"""


def _now() -> Timing:
    return time.perf_counter(), time.process_time()


def _since(start: Timing) -> Timing:
    wall, cpu = _now()
    return wall - start[0], cpu - start[1]


def time_update(pair: Pair, samples: list[Sample], *, warmup: int, repeats: int) -> tuple[list[Timing], list[Timing]]:
    """One optimizer step at a time, ours and TRL's in turn (who goes first alternates), ``warmup + repeats``
    times; the warm-up pairs are dropped."""
    inputs = trl_inputs(samples, pair.tokenizer.pad_token_id)

    def ours_step() -> Timing:
        start = _now()
        pair.ours.step(ROLE, samples)
        return _since(start)

    def trl_step() -> Timing:
        start = _now()
        trl_update(pair, inputs)
        return _since(start)

    ours, theirs = [], []
    for i in range(warmup + repeats):
        if i % 2 == 0:
            ours_t, trl_t = ours_step(), trl_step()
        else:
            trl_t, ours_t = trl_step(), ours_step()
        _log(f"update {i + 1}/{warmup + repeats}{' (warm-up)' if i < warmup else ''}: ours {ours_t[0]:.2f} s "
             f"({ours_t[1]:.2f} s CPU), TRL {trl_t[0]:.2f} s ({trl_t[1]:.2f} s CPU)")
        if i >= warmup:
            ours.append(ours_t)
            theirs.append(trl_t)
    return ours, theirs


def ours_full_step(pair: Pair, policy) -> dict:
    """Our rollout + update: generate B completions (G per prompt), reward, advantages, ``GRPOTrainer.step``."""
    B, G = pair.batch, pair.group_size
    turns = [Turn(agent=f"{ROLE}_0", role=ROLE, prompt="", messages=[{"role": "user", "content": PROMPTS[i // G % len(PROMPTS)]}])
             for i in range(B)]
    out = policy.generate(turns)
    rewards = torch.tensor([reward(t) for t in out.texts])  # [B]
    advantages = group_advantages(rewards, G)  # [B]
    samples = [Sample(p, c, lp, float(a)) for p, c, lp, a in zip(out.prompt_ids, out.completion_ids, out.logprobs, advantages)]
    metrics = pair.ours.step(ROLE, samples)
    return {"completion_tokens": metrics["completion_tokens_mean"], "prompt_tokens": sum(map(len, out.prompt_ids)) / B}


def trl_full_steps(pair: Pair, steps: int) -> list[Timing]:
    """Time between consecutive ``on_step_end`` callbacks of one ``trl.train()`` of ``steps + 1`` steps."""
    from transformers import TrainerCallback

    stamps: list[Timing] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(_now())

    trl = pair.trl
    trl.args.max_steps = steps + 1
    callback = Stamp()
    trl.add_callback(callback)
    try:
        trl.train()
    finally:
        trl.remove_callback(callback)
        trl.model.train()
        trl.current_gradient_accumulation_steps = 1
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(stamps, stamps[1:])]


def time_full_step(pair: Pair, *, steps: int, rounds: int) -> tuple[list[Timing], list[Timing], dict]:
    """``rounds`` times: ``steps`` full steps of ours, then ``steps`` of TRL's (after one step of set-up)."""
    policy = pair.roles.policy(ROLE, max_new_tokens=pair.completion_tokens, temperature=1.0, top_p=1.0, seed=0)
    ours_full_step(pair, policy)  # warm-up
    ours, theirs, shape = [], [], {}
    for _ in range(rounds):
        for _ in range(steps):
            start = _now()
            shape = ours_full_step(pair, policy)
            ours.append(_since(start))
            _log(f"full step, ours: {ours[-1][0]:.2f} s ({ours[-1][1]:.2f} s CPU)")
        theirs += trl_full_steps(pair, steps)
        _log("full steps, TRL: " + ", ".join(f"{w:.2f} s ({c:.2f} s CPU)" for w, c in theirs[-steps:]))
    lengths = pair.trl_completion_lengths
    shape["trl_completion_tokens"] = sum(lengths) / len(lengths)
    return ours, theirs, shape


# ---------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------


def _row(section: str, case: str, ours, trl, unit: str, compare: str, value: float, target: str, met) -> dict:
    return {"section": section, "case": case, "ours": ours, "trl": trl, "unit": unit, "compare": compare,
            "value": value, "target": target, "met": met}


def _fmt(x) -> str:
    if x is None or x == "":
        return ""
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"
    return str(x)


def markdown_table(rows: list[dict]) -> str:
    head = "| section | case | ours | TRL | unit | compare | value | target | met |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
        lines.append(f"| {r['section']} | {r['case']} | {_fmt(r['ours'])} | {_fmt(r['trl'])} | {r['unit']} | "
                     f"{r['compare']} | {_fmt(r['value'])} | {r['target']} | {met} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("tiny", "smollm2-135m"), default="tiny",
                        help="tiny: 2-layer random Llama, fp32; smollm2-135m: SmolLM2-135M-Instruct, bf16")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="weights of both sides (default: float32 for tiny, "
                        "bfloat16 for smollm2-135m)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and shorter completions")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the rows to PATH as JSON")
    parser.add_argument("--batch", type=int, default=8, help="B: completions per optimizer step (default 8)")
    parser.add_argument("--group-size", type=int, default=4, help="G: completions per prompt (default 4)")
    parser.add_argument("--completion-tokens", type=int, help="T: tokens per completion (default 32, --quick 16)")
    parser.add_argument("--repeats", type=int, help="timed update steps per side (default 7, --quick 3)")
    parser.add_argument("--full-steps", type=int, help="timed full steps per side and round (default 3, --quick 2; "
                        "two rounds, --quick one)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="which sections to run (default: all)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of both sides (default 1: steady on a shared machine, see above)")
    args = parser.parse_args(argv)
    T = args.completion_tokens or (16 if args.quick else 32)
    repeats = args.repeats or (3 if args.quick else 7)
    full_steps = args.full_steps or (2 if args.quick else 3)
    torch.set_num_threads(args.threads)

    pair = build_pair(args.model, dtype=args.dtype, batch=args.batch, group_size=args.group_size, completion_tokens=T,
                      max_steps=full_steps + 1)
    setting = f"{args.model}, {str(pair.dtype).removeprefix('torch.')}, B={args.batch}, G={args.group_size}, T={T}, threads={args.threads}"
    print(f"# GRPO: ours vs TRL {_trl_version()} ({setting})\n", flush=True)
    rows: list[dict] = []

    def save() -> None:  # after each section, so a run cut short keeps what it measured
        if args.json is not None:
            args.json.write_text(json.dumps({"setting": setting, "rows": rows}, indent=2) + "\n")

    if "parity" in args.sections:
        p = loss_parity(pair, make_samples(pair, ragged=True, seed=1))
        _log(f"parity: ours {p['ours']:.9g}, TRL {p['trl']:.9g}, abs diff {p['loss_diff']:.3g}")
        loss_case = f"dapo loss, {p['tokens']} ragged tokens (TRL clip low/high {p['clip_low']:.2f}/{p['clip_high']:.2f})"
        grad_case = f"gradient, max abs diff over {p['grad_tensors']} LoRA tensors (largest abs gradient {p['grad_scale']:.2g})"
        rows += [
            _row("parity", loss_case, p["ours"], p["trl"], "", "abs diff", p["loss_diff"], f"<= {PARITY_TARGET:g}",
                 p["loss_diff"] <= PARITY_TARGET),
            _row("parity", "per-token log-prob, max abs diff", "", "", "nats", "abs diff", p["logp_diff"], "", None),
            _row("parity", grad_case, "", "", "", "abs diff", p["grad_diff"], "", None),
        ]
        save()

    if "update" in args.sections:
        ours, theirs = time_update(pair, make_samples(pair, ragged=False, seed=2), warmup=1, repeats=repeats)
        rows += _timing_rows("update", f"optimizer step on {args.batch} x {T} tokens (median of {repeats})", ours, theirs)
        save()

    if "full-step" in args.sections:
        ours, theirs, shape = time_full_step(pair, steps=full_steps, rounds=1 if args.quick else 2)
        rows += _timing_rows(
            "full-step", f"generate {args.batch} x {T} tokens + reward + update (median of {len(ours)}/{len(theirs)}; "
            f"completion tokens ours {shape['completion_tokens']:.0f}, TRL {shape['trl_completion_tokens']:.0f})",
            ours, theirs)
        save()

    print(markdown_table(rows))
    return rows


def _timing_rows(section: str, case: str, ours: list[Timing], theirs: list[Timing]) -> list[dict]:
    """Median wall-clock seconds, median CPU seconds and fastest wall-clock seconds, each with ours / TRL."""
    rows = []
    for clock, stat in (("wall", statistics.median), ("CPU", statistics.median), ("wall", min)):
        i = 0 if clock == "wall" else 1
        a, b = stat(t[i] for t in ours), stat(t[i] for t in theirs)
        ratio = a / b if b > 0 else math.inf
        unit = f"{clock} s, {'median' if stat is statistics.median else 'min'}"
        rows.append(_row(section, case, a, b, unit, "ours/TRL", ratio, f"<= {SPEED_TARGET:g}x", ratio <= SPEED_TARGET))
    return rows


def _log(message: str) -> None:
    """Progress on stderr, so stdout holds only the table."""
    print(message, file=sys.stderr, flush=True)


def _trl_version() -> str:
    import trl

    return trl.__version__


if __name__ == "__main__":
    main()
