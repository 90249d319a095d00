"""One optimizer per role adapter; micro-batched GRPO steps with gradient accumulation and a NaN guard.

The trainer owns no rollout logic: it receives :class:`Sample` objects (prompt ids, completion ids, the
sampling policy's log-probs, an advantage) for one role and takes one optimizer step per inner epoch.
Gradients only reach the role's own LoRA weights; the other adapters and the base stay bitwise equal.

Over several processes (``dist``, see ``training.distributed``) each rank passes its own share of the batch:
the normalisers (the batch size, dapo's token count, dr_grpo's longest completion) are global counts, so each
rank's loss is its share of the global loss; one all-reduce sums the gradients, and every rank then clips and
steps the same values. The logged loss and metrics are the global ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from training.config import GRPOConfig
from training.grpo import grpo_loss

__all__ = ["Sample", "GRPOTrainer"]


@dataclass
class Sample:
    """One completion to learn from."""

    prompt_ids: list[int]
    completion_ids: list[int]
    old_logprobs: list[float]
    """log-probs of ``completion_ids`` under the policy that sampled them"""
    advantage: float


def _pad(rows: Sequence[Sequence[float]], width: int) -> torch.Tensor:
    out = torch.zeros(len(rows), width)  # [B, T]
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.float32)
    return out


class GRPOTrainer:
    """GRPO updates for the role adapters of a ``LoRARoles``.

    Args:
        roles: the shared base model with one adapter per role (``agents.hf.LoRARoles``).
        cfg: loss and optimizer settings (``training.config.GRPOConfig``).
        temperature: the sampling temperature, so recomputed log-probs match the stored ones.
    """

    def __init__(self, roles, cfg: GRPOConfig, *, temperature: float = 1.0, dist=None):
        from training.distributed import SINGLE

        self.roles, self.cfg, self.temperature = roles, cfg, temperature
        self.dist = dist or SINGLE
        self.optimizers = {
            role: torch.optim.AdamW(roles.trainable_parameters(role), lr=cfg.lr, weight_decay=cfg.weight_decay)
            for role in roles.roles
        }
        self.skipped_steps = dict.fromkeys(roles.roles, 0)

    def state_dict(self) -> dict:
        return {"optimizers": {r: o.state_dict() for r, o in self.optimizers.items()}, "skipped_steps": dict(self.skipped_steps)}

    def load_state_dict(self, state: dict) -> None:
        for role, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][role])
        self.skipped_steps = dict(state["skipped_steps"])

    def step(self, role: str, samples: Sequence[Sample]) -> dict[str, float]:
        """``inner_epochs`` optimizer steps on ``samples`` for ``role``; returns averaged metrics.

        A step whose loss or gradient norm is not finite is skipped (gradients dropped, adapter untouched)
        and counted in ``skipped``.
        """
        cfg, dist = self.cfg, self.dist
        samples = [s for s in samples if len(s.completion_ids) > 0]
        # global counts: every rank normalises by the whole batch
        counts = dist.sum([len(samples), sum(len(s.completion_ids) for s in samples)], "counting the batch")
        batch, total_tokens = int(counts[0]), counts[1]
        if not batch:
            return {"skipped": 0.0, "samples": 0.0}
        params = self.roles.trainable_parameters(role)
        optimizer = self.optimizers[role]
        width = int(dist.max(max((len(s.completion_ids) for s in samples), default=0), "the longest completion"))
        ref = self._reference_logprobs(samples) if cfg.beta > 0 and samples else None
        sums: dict[str, float] = {}
        skipped = 0
        was_training = self.roles.model.training
        self.roles.model.train()
        try:
            for _ in range(cfg.inner_epochs):
                optimizer.zero_grad(set_to_none=True)
                loss_total = 0.0
                for start in range(0, len(samples), cfg.micro_batch_size):  # this rank's samples
                    micro = samples[start : start + cfg.micro_batch_size]
                    logprobs, mask = self.roles.forward_logprobs(
                        [s.prompt_ids for s in micro], [s.completion_ids for s in micro], role, temperature=self.temperature
                    )  # [b, t], [b, t]
                    t, device = logprobs.shape[1], logprobs.device
                    old = _pad([s.old_logprobs for s in micro], t).to(device)  # [b, t]
                    advantages = torch.tensor([s.advantage for s in micro], dtype=torch.float32, device=device)  # [b]
                    loss, metrics = grpo_loss(
                        logprobs, old, advantages, mask.float(),
                        loss_type=cfg.loss_type, eps_low=cfg.eps_low, eps_high=cfg.eps_high, beta=cfg.beta,
                        ref_logprobs=None if ref is None else ref[start : start + len(micro), :t],
                        max_completion_length=width,
                        token_entropy=-old,  # sampled-token surprisal: a Monte Carlo estimate of the entropy
                        num_items_in_batch=total_tokens if cfg.loss_type == "dapo" else None,
                    )
                    # dapo already divides by the whole batch's tokens; grpo/dr_grpo average over the micro-batch
                    weight = 1.0 if cfg.loss_type == "dapo" else len(micro) / batch
                    (loss * weight).backward()
                    loss_total += loss.item() * weight
                    # the metrics are token means: weighted by tokens, they add up to the whole batch's token mean
                    share = float(mask.sum()) / total_tokens
                    for k, v in metrics.items():
                        sums[k] = sums.get(k, 0.0) + v * share / cfg.inner_epochs
                if dist.enabled:
                    loss_total = self._all_reduce(params, loss_total)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
                if not (math.isfinite(grad_norm) and math.isfinite(loss_total)):
                    optimizer.zero_grad(set_to_none=True)
                    skipped += 1
                    self.skipped_steps[role] += 1
                    continue
                optimizer.step()
                sums["loss"] = sums.get("loss", 0.0) + loss_total / cfg.inner_epochs
                sums["grad_norm"] = sums.get("grad_norm", 0.0) + grad_norm / cfg.inner_epochs
        finally:
            optimizer.zero_grad(set_to_none=True)
            self.roles.model.train(was_training)
        if dist.enabled:  # each rank summed its share of the metrics over the global batch: add the shares
            shares = dist.all_gather({k: v for k, v in sums.items() if k not in ("loss", "grad_norm")}, "the step's metrics")
            sums.update({k: sum(s.get(k, 0.0) for s in shares) for k in {k for s in shares for k in s}})
        sums["skipped"] = float(skipped)
        sums["samples"] = float(batch)
        sums["completion_tokens_mean"] = total_tokens / batch
        return sums

    def _all_reduce(self, params, loss_share: float) -> float:
        """Sum the gradients of ``params`` and the loss shares over ranks (one flat all-reduce); returns the loss."""
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads] + [torch.tensor([loss_share], device=params[0].device)])
        self.dist.all_reduce_(flat, "the gradient all-reduce")
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset : offset + g.numel()].view_as(g).to(p.dtype)
            offset += g.numel()
        return float(flat[-1])

    @torch.no_grad()
    def recompute_old_logprobs(self, role: str, samples: Sequence[Sample]) -> tuple[list[Sample], float]:
        """The same samples with ``old_logprobs`` replaced by the trainer's own forward pass under ``role``
        (no grad), and the mean absolute per-token gap between the sampler's values and these.

        For samplers whose numbers differ from the trainer's (vLLM kernels, bf16): the first inner epoch's
        ratio is then exactly 1, as GRPO assumes; the gap measures the training/inference mismatch.
        """
        samples = [s for s in samples if len(s.completion_ids) > 0]
        out, gap, tokens = [], 0.0, 0
        if samples:
            was_training = self.roles.model.training
            self.roles.model.eval()
            try:
                ours = self._logprobs(samples, role)  # [B, T]
            finally:
                self.roles.model.train(was_training)
            for i, s in enumerate(samples):
                row = ours[i, : len(s.completion_ids)].tolist()
                gap += sum(abs(a - b) for a, b in zip(row, s.old_logprobs))
                tokens += len(row)
                out.append(Sample(s.prompt_ids, s.completion_ids, row, s.advantage))
        gap, tokens = self.dist.sum([gap, tokens], "the log-prob gap")
        return out, gap / tokens if tokens else 0.0

    def _reference_logprobs(self, samples: Sequence[Sample]) -> torch.Tensor:
        return self._logprobs(samples, None)

    @torch.no_grad()
    def _logprobs(self, samples: Sequence[Sample], role: str | None) -> torch.Tensor:
        """Teacher-forced log-probs of every sample under ``role`` (None: the base), micro-batched: [B, T]."""
        width = max(len(s.completion_ids) for s in samples)
        out = torch.zeros(len(samples), width, device=self.roles.device)  # [B, T]
        for start in range(0, len(samples), self.cfg.micro_batch_size):
            micro = samples[start : start + self.cfg.micro_batch_size]
            logprobs, _ = self.roles.forward_logprobs(
                [s.prompt_ids for s in micro], [s.completion_ids for s in micro], role, temperature=self.temperature
            )
            out[start : start + len(micro), : logprobs.shape[1]] = logprobs.float()
        return out
