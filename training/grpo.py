"""GRPO for the three role adapters: advantages and the clipped policy loss, as pure tensor functions.

Nothing here touches a model. The trainer computes per-token log-probs, hands them in with the rewards,
and gets back a scalar loss and a dict of float metrics. Shapes: ``B`` completions in a batch, ``T``
completion tokens (right-padded), ``G`` completions per group (the samples drawn for one scenario,
attack or (prompt, response) pair), ``V`` vocabulary size.

**Advantages.** :func:`group_advantages` is GRPO's group-relative advantage (rewards laid out
group-contiguous, ``B = num_groups * G``), with the options TRL calls ``scale_rewards`` (group / batch /
none) plus a leave-one-out (RLOO) baseline. :class:`RoleBaseline` is SPIRAL's role-conditioned advantage
(arXiv 2506.24119): a per-role exponential moving average of the mean return, subtracted from each
return, for phases where groups are not available.

**Loss.** :func:`grpo_loss` is the token-level clipped surrogate with DAPO's asymmetric clip range
(arXiv 2503.14476), an optional k3 KL penalty against the reference policy (with LoRA: the same model with
the adapter disabled), and TRL 1.16's three aggregations ``grpo`` / ``dr_grpo`` / ``dapo``.

**Inner epochs** are the caller's loop: the trainer computes ``old_logprobs`` once per batch (detached,
before any update) and calls :func:`grpo_loss` once per inner epoch. With a single inner epoch pass
``old_logprobs = logprobs.detach()``: the ratio is then exactly 1, nothing is clipped, and the gradient is
the plain policy gradient ``-A_i * grad log pi / normaliser``.

>>> rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])             # two groups of G=2
>>> group_advantages(rewards, 2)                           # second group has no signal: exactly 0
tensor([ 0.7070, -0.7070,  0.0000,  0.0000])
>>> logp = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.9]]))
>>> loss, metrics = grpo_loss(logp, logp.detach(), torch.tensor([1.0, -1.0]), torch.ones(2, 2))
>>> loss.item(), metrics["ratio_mean"]                      # dapo: (-1 - 1 + 1 + 1) / 4 tokens
(0.0, 1.0)
"""

from __future__ import annotations

import math
from typing import Literal, Mapping

import torch
from torch import Tensor

__all__ = [
    "LOSS_TYPES",
    "REWARD_SCALES",
    "LossType",
    "RewardScale",
    "masked_mean",
    "token_entropy_from_logits",
    "zero_variance_groups",
    "group_advantages",
    "k3_kl",
    "ema_update",
    "RoleBaseline",
    "grpo_loss",
]

LossType = Literal["grpo", "dr_grpo", "dapo"]
LOSS_TYPES: tuple[str, ...] = ("grpo", "dr_grpo", "dapo")
"""Aggregations of the per-token loss, named as in TRL 1.16 (``GRPOConfig.loss_type``)."""

RewardScale = Literal["group", "batch", "none"]
REWARD_SCALES: tuple[str, ...] = ("group", "batch", "none")
"""What centred rewards are divided by, named as in TRL 1.16 (``GRPOConfig.scale_rewards``)."""


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``values`` where ``mask`` is true (or 1); 0 where nothing is valid instead of NaN.

    ``dim=None`` averages over every valid entry; an int averages along that dimension only.

    >>> v = torch.tensor([[1.0, 2.0, 9.0], [4.0, 9.0, 9.0]])
    >>> m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    >>> masked_mean(v, m)                  # (1 + 2 + 4) / 3
    tensor(2.3333)
    >>> masked_mean(v, m, dim=1)           # [(1 + 2) / 2, 4 / 1]
    tensor([1.5000, 4.0000])
    >>> masked_mean(v, torch.zeros(2, 3))  # no valid entry
    tensor(0.)
    """
    if values.shape != mask.shape:
        raise ValueError(f"values shape {tuple(values.shape)} does not match mask shape {tuple(mask.shape)}")
    valid = mask.bool()  # same shape as values
    # masked_fill (not values * mask) so a NaN/inf in a padded position cannot leak into the mean.
    total = values.masked_fill(~valid, 0.0).sum(dim=dim)  # [] or values.shape without dim
    count = valid.sum(dim=dim).clamp(min=1).to(total.dtype)  # same shape as total
    return total / count  # same shape as total


def token_entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy (nats) of the softmax over the last dimension: ``[..., V] -> [...]``.

    Logits of ``-inf`` (banned tokens) contribute 0, not NaN. Computed from the logits the policy
    samples with (apply any temperature before calling). Meant as a metric: pass the result to
    :func:`grpo_loss` as ``token_entropy`` (detached there).

    >>> token_entropy_from_logits(torch.zeros(4))                          # uniform over 4: ln 4
    tensor(1.3863)
    >>> token_entropy_from_logits(torch.log(torch.tensor([0.25, 0.75])))  # .25 ln 4 + .75 ln(4/3)
    tensor(0.5623)
    >>> token_entropy_from_logits(torch.tensor([0.0, -float("inf")]))      # one possible token
    tensor(0.)
    """
    probs = torch.softmax(logits, dim=-1)  # [..., V]
    # entr(p) = -p * log p with entr(0) := 0, so -inf logits give 0 rather than 0 * -inf = NaN.
    return torch.special.entr(probs).sum(dim=-1)  # [...]


def _check_group_layout(rewards: Tensor, group_size: int) -> None:
    if not isinstance(group_size, int) or isinstance(group_size, bool):
        raise ValueError(f"group_size must be an int, actual type: {type(group_size)}")
    if group_size < 2:
        raise ValueError(
            f"group_size must be >= 2 (a group of one has no relative advantage), got group_size={group_size}"
        )
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B], got shape {tuple(rewards.shape)}")
    n = rewards.shape[0]
    if n == 0 or n % group_size != 0:
        raise ValueError(
            f"the number of rewards must be a positive multiple of group_size (B = num_groups * G, "
            f"group-contiguous); got B={n} rewards and group_size={group_size} ({n} % {group_size} = "
            f"{n % group_size if n else 0})"
        )


def zero_variance_groups(rewards: Tensor, group_size: int, *, atol: float = 1e-8) -> Tensor:
    """Which groups carry no learning signal: every reward in the group equal (``[B] -> [num_groups]`` bool).

    "Equal" means the group's standard deviation is within ``atol`` of 0, the test TRL uses for its
    ``frac_reward_zero_std`` metric. :func:`group_advantages` sets these groups' advantages to exactly 0;
    ``zero_variance_groups(r, G).float().mean()`` is the fraction to log (DAPO's dynamic sampling drops
    such groups and resamples instead).

    >>> zero_variance_groups(torch.tensor([1.0, 0.0, 1.0, 1.0, -1.0, -1.0]), 2)
    tensor([False,  True,  True])
    """
    _check_group_layout(rewards, group_size)
    grouped = rewards.reshape(-1, group_size).double()  # [N, G]
    std = grouped.std(dim=1)  # [N]
    return std.abs() <= atol  # [N] bool


# ---------------------------------------------------------------------------------------------------------
# advantages
# ---------------------------------------------------------------------------------------------------------


def group_advantages(
    rewards: Tensor,
    group_size: int,
    *,
    scale: RewardScale = "group",
    leave_one_out: bool = False,
    eps: float = 1e-4,
) -> Tensor:
    """GRPO's group-relative advantages: ``[B] -> [B]``, rewards laid out group-contiguous.

    ``rewards[k*G:(k+1)*G]`` are the G samples of group k. Each reward is centred on a baseline from its
    own group, then divided by a spread:

    - baseline: the group mean (GRPO), or with ``leave_one_out=True`` the mean of the *other* G-1 members
      (RLOO, unbiased: a sample never baselines itself). LOO centring equals ``G / (G-1)`` times mean
      centring.
    - ``scale="group"``: divide by the group's standard deviation (TRL 1.16 default);
      ``"batch"``: by the standard deviation of all B rewards (more robust when groups are small);
      ``"none"``: no division (Dr. GRPO's recommendation, arXiv 2503.20783). ``eps`` is added to the
      std, as in TRL. Standard deviations are unbiased (Bessel-corrected, ``torch.std``), as in TRL.

    **Zero-variance groups** (all G rewards equal, see :func:`zero_variance_groups`) get advantage
    exactly 0 under every option: they carry no signal, and exact zeros keep float round-off in the mean
    from turning into a tiny, arbitrary-signed push. They still count in the loss normaliser.

    Worked example, G=2, rewards ``[1, 0 | 1, 1]``: group 0 has mean 0.5 and std
    ``sqrt(((1-.5)^2 + (0-.5)^2) / 1) = 0.70711``, so its advantages are ``+-0.5 / (0.70711 + 1e-4) =
    +-0.70700``; group 1 is zero-variance, so ``[0, 0]``.

    >>> r = torch.tensor([1.0, 0.0, 1.0, 1.0])
    >>> group_advantages(r, 2)
    tensor([ 0.7070, -0.7070,  0.0000,  0.0000])
    >>> group_advantages(r, 2, scale="none")                        # centred only
    tensor([ 0.5000, -0.5000,  0.0000,  0.0000])
    >>> group_advantages(r, 2, scale="none", leave_one_out=True)   # 1 - 0, 0 - 1
    tensor([ 1., -1.,  0.,  0.])
    >>> group_advantages(r, 2, scale="batch", eps=0.0)            # batch std = sqrt(.75 / 3) = 0.5
    tensor([ 1., -1.,  0.,  0.])
    """
    _check_group_layout(rewards, group_size)
    if scale not in REWARD_SCALES:
        raise ValueError(f"unknown scale {scale!r}; valid: {', '.join(repr(s) for s in REWARD_SCALES)}")
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got eps={eps}")
    if not rewards.is_floating_point():
        rewards = rewards.float()  # [B]
    if not torch.isfinite(rewards).all():
        bad = torch.nonzero(~torch.isfinite(rewards)).flatten().tolist()
        raise ValueError(f"rewards must be finite; non-finite at indices {bad}: {rewards[bad].tolist()}")

    G = group_size
    grouped = rewards.reshape(-1, G)  # [N, G]
    if leave_one_out:
        baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (G - 1)  # [N, G] mean of the others
    else:
        baseline = grouped.mean(dim=1, keepdim=True)  # [N, 1]
    centred = grouped - baseline  # [N, G]

    if scale == "group":
        advantages = centred / (grouped.std(dim=1, keepdim=True) + eps)  # [N, G]
    elif scale == "batch":
        advantages = centred / (rewards.std() + eps)  # [N, G]
    else:
        advantages = centred  # [N, G]

    no_signal = zero_variance_groups(rewards, G)  # [N] bool
    advantages = advantages.masked_fill(no_signal[:, None], 0.0)  # [N, G]
    return advantages.reshape(-1)  # [B]


def ema_update(baseline: float, batch_mean: float, decay: float) -> float:
    """One step of an exponential moving average: ``decay * baseline + (1 - decay) * batch_mean``.

    >>> round(ema_update(0.0, 1.0, 0.95), 6)   # 0.95 * 0 + 0.05 * 1
    0.05
    """
    return decay * baseline + (1.0 - decay) * batch_mean


class RoleBaseline:
    """SPIRAL's role-conditioned advantage estimation (RAE, arXiv 2506.24119).

    One baseline per role: an exponential moving average of the returns that role received, with decay
    0.95 (SPIRAL's value). The advantage of a sample is its reward minus the role's baseline *before* this
    batch updates it, so a batch never baselines itself. Roles are ``str`` keys (``"attacker"``,
    ``"defender"``, ``"evaluator"``, or ``"attacker/<scenario>"`` for a baseline per role and scenario, like
    the paper's per-game baselines), which keeps :meth:`state_dict` JSON-friendly.

    **One update per batch (ours).** SPIRAL's released code folds in each game's return one at a time
    (``b <- 0.95 b + 0.05 R``, per game and player). Here :meth:`advantages` / :meth:`update` fold in the
    *mean* reward of the batch they are given, once: every sample of a batch is baselined by the same value,
    and the baseline moves once per batch, not once per sample. Our choice: the loop calls it once per GRPO
    step with that step's samples, and a per-sample update would let the batch's order decide the baselines.

    ``decay`` is the weight of the old baseline, in [0, 1] (a bool is refused): 1 keeps a role at ``init``
    for ever, 0 makes the baseline the previous batch's mean. ``init`` is the baseline of a role that has not
    played yet, a finite number. Default 0.0, the value SPIRAL's EMA starts from; TriPlay's rewards lie
    roughly in [-1, 1], so 0 is also the neutral start, and with decay 0.95 its weight falls below 10%
    after 45 batches (0.95^45 = 0.099).

    Worked example (decay 0.95, init 0), three attacker batches with mean rewards 1.0, 0.5, -1.0:

    ====== =============== ========================= =====================================
    batch  baseline used   advantage of a reward r   baseline after
    ====== =============== ========================= =====================================
    1      0               r - 0                     .95 * 0      + .05 * 1.0  = 0.05
    2      0.05            r - 0.05                  .95 * .05    + .05 * 0.5  = 0.0725
    3      0.0725          r - 0.0725                .95 * .0725  + .05 * -1.0 = 0.018875
    ====== =============== ========================= =====================================

    >>> rb = RoleBaseline()
    >>> rb.advantages("attacker", torch.tensor([1.0, 1.0]))
    tensor([1., 1.])
    >>> rb.advantages("attacker", torch.tensor([1.0, 0.0]))
    tensor([ 0.9500, -0.0500])
    >>> round(rb.value("attacker"), 6), rb.value("defender")   # the defender has not played yet
    (0.0725, 0.0)
    """

    def __init__(self, decay: float = 0.95, init: float = 0.0) -> None:
        if isinstance(decay, bool) or not (isinstance(decay, (int, float)) and 0.0 <= decay <= 1.0):
            raise ValueError(f"decay must be a number in [0, 1] (SPIRAL uses 0.95), got decay={decay!r}")
        if isinstance(init, bool) or not (isinstance(init, (int, float)) and math.isfinite(init)):
            raise ValueError(f"init must be a finite number (default 0.0), got init={init!r}")
        self.decay = float(decay)
        """weight of the old baseline in each update (SPIRAL: 0.95)"""
        self.init = float(init)
        """baseline of a role that has not been updated yet"""
        self.baselines: dict[str, float] = {}
        """current baseline per role"""

    def value(self, role: str) -> float:
        """The role's current baseline (``init`` if the role has never been updated)."""
        return self.baselines.get(role, self.init)

    def update(self, role: str, rewards: Tensor) -> float:
        """Fold the batch's mean reward into the role's baseline; return the new baseline."""
        rewards = _check_role_rewards(rewards)
        new = ema_update(self.value(role), float(rewards.double().mean()), self.decay)
        self.baselines[role] = new
        return new

    def advantages(self, role: str, rewards: Tensor) -> Tensor:
        """``rewards - baseline`` with the baseline from *before* this batch, then update it: ``[B] -> [B]``."""
        rewards = _check_role_rewards(rewards)
        baseline = self.value(role)
        advantages = rewards - baseline  # [B]
        self.update(role, rewards)
        return advantages  # [B]

    def state_dict(self) -> dict:
        """Everything needed to resume: ``{"decay", "init", "baselines": {role: float}}``."""
        return {"decay": self.decay, "init": self.init, "baselines": dict(self.baselines)}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore from :meth:`state_dict` (replaces all baselines)."""
        missing = {"decay", "init", "baselines"} - set(state)
        if missing:
            raise ValueError(f"RoleBaseline state is missing keys {sorted(missing)}; got keys {sorted(state)}")
        fresh = RoleBaseline(decay=state["decay"], init=state["init"])  # validates decay and init
        self.decay, self.init = fresh.decay, fresh.init
        self.baselines = {role: float(b) for role, b in state["baselines"].items()}

    def __repr__(self) -> str:
        return f"RoleBaseline(decay={self.decay}, init={self.init}, baselines={self.baselines})"


def _check_role_rewards(rewards: Tensor) -> Tensor:
    if rewards.dim() != 1 or rewards.shape[0] == 0:
        raise ValueError(f"rewards must be a non-empty 1-D tensor [B], got shape {tuple(rewards.shape)}")
    if not rewards.is_floating_point():
        rewards = rewards.float()
    if not torch.isfinite(rewards).all():
        raise ValueError(f"rewards must be finite, got {rewards.tolist()}")
    return rewards


# ---------------------------------------------------------------------------------------------------------
# loss
# ---------------------------------------------------------------------------------------------------------


def k3_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref): ``exp(ref - logp) - (ref - logp) - 1`` (same shape in/out).

    Always >= 0, unbiased for the KL when tokens are sampled from pi (Schulman's "k3"; used by GRPO and
    TRL). Its gradient w.r.t. ``logp`` is ``1 - exp(ref - logp)``.

    >>> logp = torch.tensor([0.0, 0.0, 0.0])
    >>> k3_kl(logp, torch.log(torch.tensor([1.0, 2.0, 0.5])))   # e^d - d - 1 for d = 0, ln 2, -ln 2
    tensor([0.0000, 0.3069, 0.1931])
    """
    delta = ref_logprobs - logprobs  # [B, T]
    return torch.exp(delta) - delta - 1.0  # [B, T]


def grpo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    loss_type: LossType = "dapo",
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    beta: float = 0.0,
    ref_logprobs: Tensor | None = None,
    max_completion_length: int | None = None,
    token_entropy: Tensor | None = None,
    num_items_in_batch: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped GRPO surrogate loss with optional k3 KL; returns ``(scalar loss, float metrics)``.

    Per valid token (``mask`` true), with ``A_i`` the advantage of completion i::

        r       = exp(logp - old_logp)
        pg      = -min(r * A_i, clip(r, 1 - eps_low, 1 + eps_high) * A_i)
        token   = pg + beta * (exp(ref - logp) - (ref - logp) - 1)        # KL term only if beta > 0

    ``eps_high > eps_low`` is DAPO's clip-higher (arXiv 2503.14476 uses 0.2 / 0.28); the defaults are
    TRL 1.16's symmetric ``epsilon=0.2``. The clip binds only where it lowers the objective: above
    ``1 + eps_high`` when ``A > 0``, below ``1 - eps_low`` when ``A < 0``.

    Aggregation (TRL 1.16 semantics, ``loss_type``):

    - ``"grpo"``: mean over each completion's valid tokens, then mean over the B completions (a
      completion with no valid token contributes 0 but counts in B). Length-biased: a token of a short
      completion weighs more.
    - ``"dr_grpo"``: sum over all valid tokens / ``(B * max_completion_length)``;
      ``max_completion_length`` defaults to ``T``. A constant normaliser, so no length bias.
    - ``"dapo"`` (default, as in TRL 1.16): sum over all valid tokens / number of valid tokens.
      ``num_items_in_batch`` overrides that count: with gradient accumulation pass the valid-token count
      of the *whole* accumulated batch (what TRL passes), so micro-batches add up to one dapo loss.

    Old log-probs come from the policy before this batch's first update (detached); the trainer
    calls this once per inner epoch. With one inner epoch pass ``logprobs.detach()``: ratio == 1 and
    the gradient w.r.t. ``logp[i, t]`` is ``-A_i * mask[i, t] / normaliser`` (normaliser: valid tokens for
    dapo, ``len_i * B`` for grpo, ``B * max_completion_length`` for dr_grpo), plus the KL gradient
    ``beta * (1 - exp(ref - logp)) / normaliser``.

    Padded positions may hold any value, even NaN: they are masked out before any arithmetic.

    Metrics (Python floats, detached; fractions and means are over valid tokens, 0 when none is valid):
    ``clip_frac_low`` (ratio < 1 - eps_low and A < 0), ``clip_frac_high`` (ratio > 1 + eps_high and
    A > 0), ``kl`` (mean k3 KL; computed whenever ``ref_logprobs`` is given, else 0), ``ratio_mean``, and
    ``entropy`` (mean of ``token_entropy``) when ``token_entropy`` is given.

    Worked example, B=2, T=2, all tokens valid, A = [1, -1], ratios ``[[1.5, 1.0], [0.5, 1.0]]``,
    eps 0.2: token (0,0) is clipped high, ``-min(1.5, 1.2) = -1.2``; (0,1) ``-1``; token (1,0) is clipped
    low, ``-min(-0.5, -0.8) = 0.8``; (1,1) ``1``. dapo: ``(-1.2 - 1 + 0.8 + 1) / 4 = -0.1``.

    >>> old = torch.zeros(2, 2)
    >>> logp = torch.log(torch.tensor([[1.5, 1.0], [0.5, 1.0]]))
    >>> loss, m = grpo_loss(logp, old, torch.tensor([1.0, -1.0]), torch.ones(2, 2))
    >>> round(loss.item(), 6), m["clip_frac_high"], m["clip_frac_low"]
    (-0.1, 0.25, 0.25)
    """
    # ---- validate -------------------------------------------------------------------------------------
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; valid: {', '.join(repr(t) for t in LOSS_TYPES)}")
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be 2-D [B, T], got shape {tuple(logprobs.shape)}")
    B, T = logprobs.shape
    same_shape = {
        "old_logprobs": old_logprobs,
        "mask": mask,
        "ref_logprobs": ref_logprobs,
        "token_entropy": token_entropy,
    }
    for name, tensor in same_shape.items():
        if tensor is not None and tensor.shape != logprobs.shape:
            raise ValueError(
                f"{name} shape {tuple(tensor.shape)} does not match logprobs shape {tuple(logprobs.shape)} [B, T]"
            )
    if advantages.shape != (B,):
        raise ValueError(f"advantages must have shape [B] = ({B},), got shape {tuple(advantages.shape)}")
    if old_logprobs.requires_grad:
        raise ValueError(
            "old_logprobs requires grad: pass a detached tensor (logprobs.detach() for one inner epoch), "
            "or the ratio's gradient silently cancels"
        )
    if ref_logprobs is not None and ref_logprobs.requires_grad:
        raise ValueError("ref_logprobs requires grad: compute them under torch.no_grad() or pass .detach()")
    if not (0.0 <= eps_low < 1.0):
        raise ValueError(f"eps_low must be in [0, 1) so the lower clip 1 - eps_low stays positive, got {eps_low}")
    if not (eps_high >= 0.0 and math.isfinite(eps_high)):
        raise ValueError(f"eps_high must be a finite number >= 0, got {eps_high}")
    if not (beta >= 0.0 and math.isfinite(beta)):
        raise ValueError(f"beta must be a finite number >= 0, got {beta}")
    if beta > 0.0 and ref_logprobs is None:
        raise ValueError(
            f"beta={beta} adds a KL penalty and needs ref_logprobs (the base model's log-probs, adapter "
            f"disabled); pass ref_logprobs or set beta=0.0"
        )
    if max_completion_length is None:
        max_completion_length = T
    L = max_completion_length
    if not isinstance(L, int) or isinstance(L, bool) or L < 1:
        raise ValueError(f"max_completion_length must be a positive int, got {max_completion_length!r}")
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"mask must hold only 0/1 (or bool); got values {torch.unique(mask).tolist()}")
    if num_items_in_batch is not None and not (num_items_in_batch > 0):
        raise ValueError(f"num_items_in_batch must be > 0 (a token count), got {num_items_in_batch}")

    # ---- per-token loss -------------------------------------------------------------------------------
    valid = mask.bool()  # [B, T]
    # Zero the padding first so garbage there (NaN, -inf) cannot reach values or gradients.
    logprobs = logprobs.masked_fill(~valid, 0.0)  # [B, T]
    old_logprobs = old_logprobs.masked_fill(~valid, 0.0)  # [B, T]
    adv = advantages.to(logprobs.dtype)[:, None]  # [B, 1]

    ratio = torch.exp(logprobs - old_logprobs)  # [B, T]
    clipped_ratio = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)  # [B, T]
    per_token = -torch.min(ratio * adv, clipped_ratio * adv)  # [B, T]

    kl = None
    if ref_logprobs is not None:
        ref_logprobs = ref_logprobs.masked_fill(~valid, 0.0)  # [B, T]
        kl = k3_kl(logprobs, ref_logprobs)  # [B, T]
        if beta > 0.0:
            per_token = per_token + beta * kl  # [B, T]
    per_token = per_token.masked_fill(~valid, 0.0)  # [B, T]

    # ---- aggregate ------------------------------------------------------------------------------------
    n_valid = valid.sum()  # []
    if loss_type == "grpo":
        per_sequence = per_token.sum(dim=1) / valid.sum(dim=1).clamp(min=1)  # [B]
        loss = per_sequence.mean()  # []
    elif loss_type == "dr_grpo":
        loss = per_token.sum() / (B * max_completion_length)  # []
    else:  # dapo
        normaliser = n_valid.clamp(min=1) if num_items_in_batch is None else num_items_in_batch  # []
        loss = per_token.sum() / normaliser  # []

    # ---- metrics --------------------------------------------------------------------------------------
    with torch.no_grad():
        count = max(int(n_valid), 1)
        low = (ratio < 1.0 - eps_low) & (adv < 0) & valid  # [B, T]
        high = (ratio > 1.0 + eps_high) & (adv > 0) & valid  # [B, T]
        metrics = {
            "clip_frac_low": float(low.sum()) / count,
            "clip_frac_high": float(high.sum()) / count,
            "kl": float(masked_mean(kl, valid)) if kl is not None else 0.0,
            "ratio_mean": float(masked_mean(ratio, valid)),
        }
        if token_entropy is not None:
            metrics["entropy"] = float(masked_mean(token_entropy.detach(), valid))
    return loss, metrics
