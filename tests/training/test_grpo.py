"""Tests for training/grpo.py: every expected number below is worked out by hand in the comments.

Shared loss fixture (B=4 completions, T=3 tokens, groups of G=2):

    mask        valid lengths
    [1, 1, 1]   3
    [1, 1, 0]   2
    [1, 0, 0]   1
    [1, 1, 1]   3          -> 9 valid tokens
    advantages A = [1.0, -0.5, 2.0, -1.0]
"""

from __future__ import annotations

import doctest
import math

import pytest
import torch

from training import grpo
from training.grpo import (
    RoleBaseline,
    ema_update,
    group_advantages,
    grpo_loss,
    k3_kl,
    masked_mean,
    token_entropy_from_logits,
    zero_variance_groups,
)

DT = torch.float64  # hand-worked numbers are checked to 1e-6; float64 keeps round-off out of the way
MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=DT)
LENGTHS = torch.tensor([3.0, 2.0, 1.0, 3.0], dtype=DT)
ADV = torch.tensor([1.0, -0.5, 2.0, -1.0], dtype=DT)
N_VALID = 9
NAN = float("nan")


def close(actual, expected, tol=1e-6):
    actual = torch.as_tensor(actual, dtype=DT)
    expected = torch.as_tensor(expected, dtype=DT)
    return torch.allclose(actual, expected, atol=tol, rtol=0)


def test_docstring_examples_hold():
    result = doctest.testmod(grpo, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 20
    assert result.failed == 0


# ---------------------------------------------------------------------------------------------------------
# group advantages
# ---------------------------------------------------------------------------------------------------------

REWARDS_3G = torch.tensor([3.0, 1.0, 2.0, 2.0, 0.0, 4.0], dtype=DT)  # G=2: (3, 1) (2, 2) (0, 4)


def test_group_scale_by_hand_without_eps():
    # group (3, 1): mean 2, centred (+1, -1), unbiased std sqrt((1 + 1) / 1) = sqrt 2 -> +-1/sqrt2 = +-0.70710678
    # group (2, 2): zero variance -> (0, 0)
    # group (0, 4): mean 2, centred (-2, +2), std sqrt((4 + 4) / 1) = 2 sqrt 2        -> -+0.70710678
    adv = group_advantages(REWARDS_3G, 2, eps=0.0)
    assert close(adv, [0.70710678, -0.70710678, 0.0, 0.0, -0.70710678, 0.70710678])


def test_group_scale_by_hand_with_default_eps():
    # eps=1e-4 is added to the std: 1 / (1.41421356 + 0.0001) = 0.70705678,
    #                               2 / (2.82842712 + 0.0001) = 0.70708178
    adv = group_advantages(REWARDS_3G, 2)
    assert close(adv, [0.70705678, -0.70705678, 0.0, 0.0, -0.70708178, 0.70708178])


def test_scale_none_is_mean_centring_only():
    # (3, 1) -> (+1, -1); (2, 2) -> (0, 0); (0, 4) -> (-2, +2)
    adv = group_advantages(REWARDS_3G, 2, scale="none")
    assert close(adv, [1.0, -1.0, 0.0, 0.0, -2.0, 2.0])


def test_batch_scaling_by_hand():
    # rewards (4, 0 | 0, 0): batch mean 1, deviations (3, -1, -1, -1), squares 9 + 1 + 1 + 1 = 12,
    # unbiased batch std sqrt(12 / 3) = 2.  Group 0 centred (+2, -2) -> / 2 -> (+1, -1).
    # Group 1 is zero-variance -> (0, 0).  Per-group scaling would instead give +-2 / sqrt 8 = +-0.70710678.
    r = torch.tensor([4.0, 0.0, 0.0, 0.0], dtype=DT)
    assert close(group_advantages(r, 2, scale="batch", eps=0.0), [1.0, -1.0, 0.0, 0.0])
    assert close(group_advantages(r, 2, scale="group", eps=0.0), [0.70710678, -0.70710678, 0.0, 0.0])
    assert close(group_advantages(r, 2, scale="none"), [2.0, -2.0, 0.0, 0.0])
    # batch std with eps: 2 / (2 + 1e-4) = 0.99995
    assert close(group_advantages(r, 2, scale="batch"), [0.99995, -0.99995, 0.0, 0.0])


def test_leave_one_out_by_hand():
    # G=4, group (1, 0, 0, 0): baseline of sample 0 is mean(0, 0, 0) = 0 -> advantage 1;
    # baseline of each other sample is mean(1, 0, 0) = 1/3 -> advantage -1/3.
    # Group (2, 2, 2, 2) is zero-variance -> 0.
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0], dtype=DT)
    third = 1.0 / 3.0
    assert close(group_advantages(r, 4, scale="none", leave_one_out=True), [1, -third, -third, -third, 0, 0, 0, 0])
    # group std: mean .25, squares .5625 + 3 * .0625 = .75, / 3 = .25, std .5 -> (2, -2/3, -2/3, -2/3)
    two_thirds = 2.0 / 3.0
    expected = [2.0, -two_thirds, -two_thirds, -two_thirds, 0, 0, 0, 0]
    assert close(group_advantages(r, 4, scale="group", leave_one_out=True, eps=0.0), expected)
    # plain GRPO on the same group: centred (.75, -.25, -.25, -.25) / .5 = (1.5, -.5, -.5, -.5)
    assert close(group_advantages(r, 4, eps=0.0), [1.5, -0.5, -0.5, -0.5, 0, 0, 0, 0])


def test_leave_one_out_with_batch_scaling():
    # (4, 0 | 0, 0): LOO centring (4 - 0, 0 - 4) = (4, -4); batch std 2 (see above) -> (2, -2, 0, 0)
    r = torch.tensor([4.0, 0.0, 0.0, 0.0], dtype=DT)
    assert close(group_advantages(r, 2, scale="batch", leave_one_out=True, eps=0.0), [2.0, -2.0, 0.0, 0.0])


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("leave_one_out", [False, True])
def test_zero_variance_groups_give_exactly_zero(scale, leave_one_out):
    # 0.1 and 0.7 are not exact in float32: a mean of three copies need not equal the copy, so without the
    # explicit zeroing these advantages could be +-1e-8 / 1e-4 noise.  They must be exactly 0.
    r = torch.tensor([0.1, 0.1, 0.1, 0.7, 0.7, 0.7, 0.0, 1.0, 0.0], dtype=torch.float32)
    adv = group_advantages(r, 3, scale=scale, leave_one_out=leave_one_out)
    assert torch.equal(adv[:6], torch.zeros(6))
    assert (adv[6:] != 0).all()
    assert zero_variance_groups(r, 3).tolist() == [True, True, False]


def test_all_groups_zero_variance_gives_all_zeros_not_nan():
    r = torch.tensor([1.0, 1.0, -1.0, -1.0])
    for scale in ("group", "batch", "none"):
        assert torch.equal(group_advantages(r, 2, scale=scale, eps=0.0), torch.zeros(4))
    assert int(zero_variance_groups(r, 2).sum()) == 2


def test_integer_rewards_are_accepted():
    # (1, 0) -> +-0.5 centred
    adv = group_advantages(torch.tensor([1, 0, 1, 1]), 2, scale="none")
    assert adv.dtype == torch.float32
    assert close(adv, [0.5, -0.5, 0.0, 0.0])


def test_group_layout_errors_name_the_numbers():
    with pytest.raises(ValueError, match=r"B=6 rewards and group_size=4 \(6 % 4 = 2\)"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match=r"group_size must be >= 2.*group_size=1"):
        group_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match=r"1-D \[B\], got shape \(2, 2\)"):
        group_advantages(torch.zeros(2, 2), 2)
    with pytest.raises(ValueError, match=r"unknown scale 'std'; valid: 'group', 'batch', 'none'"):
        group_advantages(torch.zeros(4), 2, scale="std")
    with pytest.raises(ValueError, match=r"non-finite at indices \[1\]"):
        group_advantages(torch.tensor([0.0, NAN]), 2)
    with pytest.raises(ValueError, match=r"B=6 rewards and group_size=4"):
        zero_variance_groups(torch.zeros(6), 4)


# ---------------------------------------------------------------------------------------------------------
# SPIRAL role baseline
# ---------------------------------------------------------------------------------------------------------


def test_role_baseline_ema_three_updates_by_hand():
    rb = RoleBaseline()  # decay 0.95, init 0
    # update 1: batch mean (2 + 0) / 2 = 1.0; baseline used 0 -> advantages (2, 0); new .95*0 + .05*1 = .05
    assert close(rb.advantages("attacker", torch.tensor([2.0, 0.0], dtype=DT)), [2.0, 0.0])
    assert math.isclose(rb.value("attacker"), 0.05, abs_tol=1e-12)
    # update 2: mean (1 + 0) / 2 = .5; baseline used .05 -> (.95, -.05); new .95*.05 + .05*.5 = .0725
    assert close(rb.advantages("attacker", torch.tensor([1.0, 0.0], dtype=DT)), [0.95, -0.05])
    assert math.isclose(rb.value("attacker"), 0.0725, abs_tol=1e-12)
    # update 3: mean (-1 - 1) / 2 = -1; baseline used .0725 -> (-1.0725, -1.0725);
    # new .95*.0725 + .05*(-1) = .068875 - .05 = .018875
    assert close(rb.advantages("attacker", torch.tensor([-1.0, -1.0], dtype=DT)), [-1.0725, -1.0725])
    assert math.isclose(rb.value("attacker"), 0.018875, abs_tol=1e-12)


def test_role_baselines_are_independent_and_checkpointable():
    rb = RoleBaseline(decay=0.5, init=0.2)
    rb.advantages("attacker", torch.tensor([1.0]))  # .5 * .2 + .5 * 1 = .6
    assert math.isclose(rb.value("attacker"), 0.6)
    assert rb.value("defender") == 0.2  # untouched role still at init
    # defender: advantage -1 - .2 = -1.2, then baseline .5 * .2 + .5 * -1 = -.4
    assert close(rb.advantages("defender", torch.tensor([-1.0], dtype=DT)), [-1.2])
    assert math.isclose(rb.value("defender"), -0.4)
    assert math.isclose(rb.value("attacker"), 0.6)

    state = rb.state_dict()
    assert state == {"decay": 0.5, "init": 0.2, "baselines": {"attacker": 0.6, "defender": -0.4}}
    restored = RoleBaseline()
    restored.load_state_dict(state)
    assert restored.state_dict() == state
    # both continue identically: .5 * .6 + .5 * 0 = .3
    assert rb.update("attacker", torch.tensor([0.0])) == restored.update("attacker", torch.tensor([0.0])) == 0.3
    assert ema_update(0.6, 0.0, 0.5) == 0.3


def test_role_baseline_rejects_bad_input():
    with pytest.raises(ValueError, match=r"decay=1.5"):
        RoleBaseline(decay=1.5)
    with pytest.raises(ValueError, match=r"missing keys \['init'\]"):
        RoleBaseline().load_state_dict({"decay": 0.9, "baselines": {}})
    with pytest.raises(ValueError, match=r"shape \(\)"):
        RoleBaseline().advantages("attacker", torch.tensor(1.0))


# ---------------------------------------------------------------------------------------------------------
# loss: one inner epoch (ratio 1)
# ---------------------------------------------------------------------------------------------------------


def _logprobs(requires_grad: bool = True) -> torch.Tensor:
    logp = torch.log(torch.tensor([[0.5, 0.2, 0.9], [0.3, 0.6, 0.1], [0.7, 0.4, 0.8], [0.25, 0.5, 0.05]], dtype=DT))
    return logp.requires_grad_(requires_grad)


def test_ratio_one_loss_values_by_hand():
    # ratio 1 everywhere -> per-token loss -A_i on valid tokens.
    # token sum = -(1*3 + (-.5)*2 + 2*1 + (-1)*3) = -(3 - 1 + 2 - 3) = -1
    logp = _logprobs()
    old = logp.detach()
    loss, m = grpo_loss(logp, old, ADV, MASK, loss_type="dapo")
    assert close(loss, -1.0 / 9.0)  # dapo: -1 / 9 tokens = -0.11111111
    assert m["ratio_mean"] == 1.0 and m["clip_frac_low"] == 0.0 and m["clip_frac_high"] == 0.0
    # grpo: per-sequence means (-1, .5, -2, 1), mean over 4 = -1.5 / 4 = -0.375
    assert close(grpo_loss(logp, old, ADV, MASK, loss_type="grpo")[0], -0.375)
    # dr_grpo: -1 / (B * T) = -1 / 12 = -0.08333333; with max_completion_length=5: -1 / 20 = -0.05
    assert close(grpo_loss(logp, old, ADV, MASK, loss_type="dr_grpo")[0], -1.0 / 12.0)
    assert close(grpo_loss(logp, old, ADV, MASK, loss_type="dr_grpo", max_completion_length=5)[0], -0.05)
    # dapo with the accumulated batch's token count (e.g. 18 over two micro-batches): -1 / 18
    assert close(grpo_loss(logp, old, ADV, MASK, num_items_in_batch=18)[0], -1.0 / 18.0)


def test_default_loss_type_is_dapo_and_bool_mask_works():
    logp = _logprobs()
    a, _ = grpo_loss(logp, logp.detach(), ADV, MASK.bool())
    assert close(a, -1.0 / 9.0)


@pytest.mark.parametrize(
    "loss_type, normaliser",
    [
        ("dapo", lambda: torch.full((4, 1), float(N_VALID), dtype=DT)),  # total valid tokens
        ("grpo", lambda: LENGTHS[:, None] * 4),  # len_i * B
        ("dr_grpo", lambda: torch.full((4, 1), 4.0 * 3.0, dtype=DT)),  # B * L, L = T = 3
    ],
)
def test_gradient_wrt_logprobs_is_the_policy_gradient(loss_type, normaliser):
    logp = _logprobs()
    loss, _ = grpo_loss(logp, logp.detach(), ADV, MASK, loss_type=loss_type)
    loss.backward()
    expected = -ADV[:, None] * MASK / normaliser()  # [B, T]
    assert close(logp.grad, expected, tol=1e-12)


def test_gradient_dr_grpo_uses_max_completion_length():
    logp = _logprobs()
    grpo_loss(logp, logp.detach(), ADV, MASK, loss_type="dr_grpo", max_completion_length=7)[0].backward()
    # e.g. token (0, 0): -1 / (4 * 7) = -0.03571429; token (1, 0): +.5 / 28 = 0.01785714
    assert close(logp.grad[0, 0], -1.0 / 28.0) and close(logp.grad[1, 0], 0.5 / 28.0)
    assert close(logp.grad, -ADV[:, None] * MASK / 28.0, tol=1e-12)


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "dr_grpo"])
def test_gradient_through_a_tiny_softmax_policy_matches_reinforce(loss_type):
    # A position-conditioned policy shared by all completions: logits theta[t, :] over V=5 tokens.
    # log pi(a | t) = theta[t, a] - logsumexp(theta[t]), so d log pi(a | t) / d theta[t] = onehot(a) - softmax(theta[t]).
    # REINFORCE: grad of the loss = -sum_{i,t} w[i, t] * A_i * (onehot(a_it) - p_t) with the loss type's weights w.
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(3, 5, generator=g, dtype=DT).requires_grad_(True)  # [T, V]
    tokens = torch.tensor([[0, 3, 1], [2, 2, 4], [4, 0, 0], [1, 3, 2]])  # [B, T]
    logp = torch.log_softmax(theta, dim=-1)[torch.arange(3)[None, :], tokens]  # [B, T]
    loss, _ = grpo_loss(logp, logp.detach(), ADV, MASK, loss_type=loss_type)
    loss.backward()

    weights = {"dapo": MASK / 9.0, "grpo": MASK / (LENGTHS[:, None] * 4), "dr_grpo": MASK / 12.0}[loss_type]
    probs = torch.softmax(theta.detach(), dim=-1)  # [T, V]
    manual = torch.zeros(3, 5, dtype=DT)
    for i in range(4):
        for t in range(3):
            grad_log_pi = -probs[t].clone()
            grad_log_pi[tokens[i, t]] += 1.0
            manual[t] -= weights[i, t] * ADV[i] * grad_log_pi
    assert close(theta.grad, manual, tol=1e-12)


def test_padding_may_hold_nan_or_inf():
    logp = _logprobs(requires_grad=False).clone()
    logp[1, 2] = NAN
    logp[2, 1] = -float("inf")
    logp.requires_grad_(True)
    old = logp.detach().clone()
    old[2, 2] = NAN
    loss, m = grpo_loss(logp, old, ADV, MASK, beta=0.1, ref_logprobs=old, token_entropy=torch.full((4, 3), NAN))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    assert close(loss, -1.0 / 9.0)  # same as without padding garbage (ref == old == logp on valid tokens: KL 0)
    assert m["entropy"] != m["entropy"]  # NaN on *valid* tokens is the caller's to see, not hidden


def test_no_valid_token_gives_zero_loss_and_metrics():
    logp = _logprobs()
    for loss_type in ("dapo", "grpo", "dr_grpo"):
        loss, m = grpo_loss(logp, logp.detach(), ADV, torch.zeros(4, 3), loss_type=loss_type)
        assert loss.item() == 0.0
        assert m == {"clip_frac_low": 0.0, "clip_frac_high": 0.0, "kl": 0.0, "ratio_mean": 0.0}


# ---------------------------------------------------------------------------------------------------------
# loss: clipping (a later inner epoch, ratio != 1)
# ---------------------------------------------------------------------------------------------------------

# Ratios r = exp(logp - old) built directly with old = 0 and logp = log r.  Masked positions hold ratios
# that would clip (3.0, 5.0, 0.1) to check they are ignored.
RATIOS = torch.tensor([[1.5, 1.1, 0.5], [0.5, 1.5, 3.0], [1.1, 5.0, 0.1], [1.0, 0.7, 1.3]], dtype=DT)


def _clip_case():
    logp = torch.log(RATIOS).requires_grad_(True)
    return logp, torch.zeros(4, 3, dtype=DT)


def test_clipped_loss_by_hand_asymmetric():
    # eps_low .2 -> lower clip .8; eps_high .28 -> upper clip 1.28 (DAPO's clip-higher).
    # seq 0, A=+1:  r 1.5 -> -min(1.5, 1.28) = -1.28 (high clip binds); r 1.1 -> -1.1;
    #               r 0.5 -> -min(.5, .8) = -.5 (low clip does not bind for A > 0)        sum -2.88, mean -.96
    # seq 1, A=-.5: r 0.5 -> -min(-.25, -.4) = +.4 (low clip binds);
    #               r 1.5 -> -min(-.75, -.64) = +.75 (high clip does not bind for A < 0) sum 1.15, mean .575
    # seq 2, A=+2:  r 1.1 -> -2.2                                                          sum -2.2, mean -2.2
    # seq 3, A=-1:  r 1.0 -> +1; r 0.7 -> -min(-.7, -.8) = +.8 (low binds); r 1.3 -> -min(-1.3, -1.28) = +1.3
    #                                                                                      sum 3.1, mean 1.0333333
    # total = -2.88 + 1.15 - 2.2 + 3.1 = -0.83
    logp, old = _clip_case()
    kw = dict(eps_low=0.2, eps_high=0.28)
    loss, m = grpo_loss(logp, old, ADV, MASK, loss_type="dapo", **kw)
    assert close(loss, -0.83 / 9.0)  # -0.09222222
    # grpo: (-.96 + .575 - 2.2 + 1.0333333) / 4 = -1.5516667 / 4 = -0.38791667
    assert close(grpo_loss(logp, old, ADV, MASK, loss_type="grpo", **kw)[0], -0.38791667)
    # dr_grpo: -.83 / 12 = -0.06916667; with L = 5: -.83 / 20 = -0.0415
    assert close(grpo_loss(logp, old, ADV, MASK, loss_type="dr_grpo", **kw)[0], -0.06916667)
    assert close(grpo_loss(logp, old, ADV, MASK, loss_type="dr_grpo", max_completion_length=5, **kw)[0], -0.0415)

    # clip fractions over 9 valid tokens: high binds once (seq 0, r 1.5); low binds twice (seq 1 r .5, seq 3 r .7)
    assert close(m["clip_frac_high"], 1.0 / 9.0) and close(m["clip_frac_low"], 2.0 / 9.0)
    # ratio mean: (1.5 + 1.1 + .5 + .5 + 1.5 + 1.1 + 1 + .7 + 1.3) / 9 = 9.2 / 9
    assert close(m["ratio_mean"], 9.2 / 9.0)
    assert m["kl"] == 0.0


def test_clipped_tokens_get_no_gradient():
    # dapo gradient of an unclipped token is -A_i * r / 9 (d r / d logp = r); a binding clip gives 0.
    logp, old = _clip_case()
    grpo_loss(logp, old, ADV, MASK, eps_low=0.2, eps_high=0.28)[0].backward()
    expected = torch.tensor(
        [
            [0.0, -1.1 / 9, -0.5 / 9],  # r 1.5 clipped high; -1 * 1.1 / 9; -1 * .5 / 9
            [0.0, 0.5 * 1.5 / 9, 0.0],  # r .5 clipped low; +.5 * 1.5 / 9; padding
            [-2.0 * 1.1 / 9, 0.0, 0.0],
            [1.0 / 9, 0.0, 1.3 / 9],  # r 1.0; r .7 clipped low; +1 * 1.3 / 9
        ],
        dtype=DT,
    )
    assert close(logp.grad, expected, tol=1e-12)


def test_symmetric_versus_asymmetric_eps():
    logp, old = _clip_case()
    # eps_high .2: seq 0's r 1.5 now clips at 1.2 -> -1.2 instead of -1.28 (+.08); seq 3's r 1.3 with A < 0
    # stays -min(-1.3, -1.2) = +1.3.  Total -.83 + .08 = -.75 -> dapo -.75 / 9 = -0.08333333
    loss, m = grpo_loss(logp, old, ADV, MASK, eps_low=0.2, eps_high=0.2)
    assert close(loss, -0.75 / 9.0)
    assert close(m["clip_frac_high"], 1.0 / 9.0) and close(m["clip_frac_low"], 2.0 / 9.0)
    # eps_high .6: r 1.5 < 1.6 is no longer clipped -> -1.5 (-.22 vs 1.28): total -1.05; no high clip
    loss, m = grpo_loss(logp, old, ADV, MASK, eps_low=0.2, eps_high=0.6)
    assert close(loss, -1.05 / 9.0) and m["clip_frac_high"] == 0.0
    # eps_low .4: lower clip .6 -> seq 1's r .5 still clips (+.5 * .6 = .3 instead of .4), seq 3's r .7 no
    # longer clips (+.7 instead of .8): total -.83 - .1 - .1 = -1.03; low clip binds once
    loss, m = grpo_loss(logp, old, ADV, MASK, eps_low=0.4, eps_high=0.28)
    assert close(loss, -1.03 / 9.0) and close(m["clip_frac_low"], 1.0 / 9.0)


# ---------------------------------------------------------------------------------------------------------
# loss: k3 KL and entropy
# ---------------------------------------------------------------------------------------------------------

# B=2, T=2, mask [[1, 1], [1, 0]]; d = ref - logp = [[0, ln 2], [-ln 2, (pad)]]
KL_MASK = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=DT)


def _kl_case():
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.5, 0.5]], dtype=DT)).requires_grad_(True)
    ref = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.9]], dtype=DT))
    return logp, ref


def test_k3_kl_values_by_hand():
    # e^d - d - 1:  d = 0 -> 0;  d = ln 2 -> 2 - .69314718 - 1 = .30685282;  d = -ln 2 -> .5 + .69314718 - 1 = .19314718
    logp, ref = _kl_case()
    assert close(k3_kl(logp.detach(), ref)[:, 0], [0.0, 0.19314718])
    assert close(k3_kl(logp.detach(), ref)[0, 1], 0.30685282)


def test_kl_penalty_in_the_loss_by_hand():
    logp, ref = _kl_case()
    old = logp.detach()
    # valid KL: 0 + .30685282 + .19314718 = .5 over 3 tokens -> mean 1/6 = 0.16666667
    # A = 0: dapo loss = beta * .5 / 3 = .1 * .5 / 3 = 0.01666667
    loss, m = grpo_loss(logp, old, torch.zeros(2, dtype=DT), KL_MASK, beta=0.1, ref_logprobs=ref)
    assert close(loss, 0.05 / 3.0) and close(m["kl"], 1.0 / 6.0)
    # gradient: beta * (1 - e^d) / 3 -> (0, .1 * (1 - 2) / 3, .1 * (1 - .5) / 3, pad 0)
    loss.backward()
    assert close(logp.grad, [[0.0, -0.1 / 3.0], [0.05 / 3.0, 0.0]], tol=1e-12)

    # A = (1, -1): policy part per token (-1, -1 | +1), sum -1.  dapo: (-1 + .1 * .5) / 3 = -0.31666667
    adv = torch.tensor([1.0, -1.0], dtype=DT)
    assert close(grpo_loss(logp, old, adv, KL_MASK, beta=0.1, ref_logprobs=ref)[0], -0.95 / 3.0)
    # grpo: seq 0 (-2 + .1 * .30685282) / 2 = -.98465736; seq 1 1 + .1 * .19314718 = 1.01931472;
    # mean (-.98465736 + 1.01931472) / 2 = 0.01732868
    loss, _ = grpo_loss(logp, old, adv, KL_MASK, beta=0.1, ref_logprobs=ref, loss_type="grpo")
    assert close(loss, 0.01732868)


def test_kl_is_reported_but_not_added_when_beta_is_zero():
    logp, ref = _kl_case()
    adv = torch.tensor([1.0, -1.0], dtype=DT)
    loss, m = grpo_loss(logp, logp.detach(), adv, KL_MASK, ref_logprobs=ref)
    assert close(loss, -1.0 / 3.0)  # policy part only
    assert close(m["kl"], 1.0 / 6.0)
    _, m = grpo_loss(logp, logp.detach(), adv, KL_MASK)
    assert m["kl"] == 0.0 and "entropy" not in m


def test_entropy_helper_and_metric_by_hand():
    # uniform over 4: ln 4 = 1.38629436; (.25, .75): .25 ln 4 + .75 ln(4/3) = .34657359 + .21576155 = .56233514
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, -float("inf"), -float("inf"), -float("inf")]],
                           [[math.log(0.25), math.log(0.75), -float("inf"), -float("inf")], [1.0, 2.0, 3.0, 4.0]]],
                          dtype=DT)  # [B=2, T=2, V=4]
    ent = token_entropy_from_logits(logits)  # [2, 2]
    assert close(ent[0], [1.38629436, 0.0]) and close(ent[1, 0], 0.56233514)
    logp, _ = _kl_case()
    _, m = grpo_loss(logp, logp.detach(), torch.zeros(2, dtype=DT), KL_MASK, token_entropy=ent)
    # valid tokens: (1.38629436 + 0 + .56233514) / 3 = 0.64954317 (ent[1, 1] is padding)
    assert close(m["entropy"], 0.64954317)


def test_masked_mean_by_hand():
    v = torch.tensor([[1.0, 2.0, NAN], [4.0, 8.0, 16.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 1]])
    assert close(masked_mean(v, m), (1 + 2 + 4 + 16) / 4)  # 5.75
    assert close(masked_mean(v, m, dim=1), [1.5, 10.0])


def test_metrics_are_python_floats():
    logp, old = _clip_case()
    _, m = grpo_loss(logp, old, ADV, MASK, token_entropy=torch.ones(4, 3, dtype=DT))
    assert set(m) == {"clip_frac_low", "clip_frac_high", "kl", "ratio_mean", "entropy"}
    assert all(type(v) is float for v in m.values())


# ---------------------------------------------------------------------------------------------------------
# loss: bad input
# ---------------------------------------------------------------------------------------------------------


def test_bad_loss_inputs_name_the_value():
    logp = _logprobs()
    old = logp.detach()
    with pytest.raises(ValueError, match=r"unknown loss_type 'ppo'; valid: 'grpo', 'dr_grpo', 'dapo'"):
        grpo_loss(logp, old, ADV, MASK, loss_type="ppo")
    with pytest.raises(ValueError, match=r"old_logprobs shape \(4, 2\) does not match logprobs shape \(4, 3\)"):
        grpo_loss(logp, old[:, :2], ADV, MASK)
    with pytest.raises(ValueError, match=r"mask shape \(3, 3\) does not match"):
        grpo_loss(logp, old, ADV, MASK[:3])
    with pytest.raises(ValueError, match=r"advantages must have shape \[B\] = \(4,\), got shape \(4, 1\)"):
        grpo_loss(logp, old, ADV[:, None], MASK)
    with pytest.raises(ValueError, match=r"logprobs must be 2-D \[B, T\], got shape \(12,\)"):
        grpo_loss(logp.reshape(-1), old.reshape(-1), ADV, MASK.reshape(-1))
    with pytest.raises(ValueError, match=r"beta=0.04 .* needs ref_logprobs"):
        grpo_loss(logp, old, ADV, MASK, beta=0.04)
    with pytest.raises(ValueError, match=r"ref_logprobs shape \(4, 2\)"):
        grpo_loss(logp, old, ADV, MASK, beta=0.04, ref_logprobs=old[:, :2])
    with pytest.raises(ValueError, match=r"old_logprobs requires grad"):
        grpo_loss(logp, logp, ADV, MASK)
    with pytest.raises(ValueError, match=r"eps_low must be in \[0, 1\).*got 1.2"):
        grpo_loss(logp, old, ADV, MASK, eps_low=1.2)
    with pytest.raises(ValueError, match=r"eps_high .* got -0.1"):
        grpo_loss(logp, old, ADV, MASK, eps_high=-0.1)
    with pytest.raises(ValueError, match=r"beta must be .* got -1"):
        grpo_loss(logp, old, ADV, MASK, beta=-1.0, ref_logprobs=old)
    with pytest.raises(ValueError, match=r"max_completion_length must be a positive int, got 0"):
        grpo_loss(logp, old, ADV, MASK, loss_type="dr_grpo", max_completion_length=0)
    with pytest.raises(ValueError, match=r"mask must hold only 0/1.*0.5"):
        grpo_loss(logp, old, ADV, MASK * 0.5)
    with pytest.raises(ValueError, match=r"token_entropy shape \(4,\)"):
        grpo_loss(logp, old, ADV, MASK, token_entropy=ADV)
