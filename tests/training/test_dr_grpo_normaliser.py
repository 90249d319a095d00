"""dr_grpo in the trainer: one constant normaliser, ``B * max_completion_length``, over the whole batch.

``grpo_loss`` divides a micro-batch's token sum by ``b * L``; the trainer weights each micro-batch by
``b / B`` and passes the batch's ``L``, so the micro-batches add up to ``sum / (B * L)``. If ``L`` were the
micro-batch's own width, a micro-batch of shorter completions would weigh more: the gradient would change
with ``micro_batch_size`` and no longer be the full batch's. Here the trainer's gradient with
``micro_batch_size=2`` (widths 4 and 3) is compared with one computed independently, by hand-written
autograd over the full batch, and the loss with the value worked out by hand.
"""

from __future__ import annotations

import math

import pytest
import torch

from training.config import GRPOConfig
from training.trainer import GRPOTrainer, Sample

LENGTHS = (2, 4, 1, 3)
"""completion lengths: micro-batches [0, 1] and [2, 3] are 4 and 3 tokens wide, the batch L = 4"""
ADVANTAGES = (1.0, -0.5, 2.0, -1.0)


@pytest.fixture(scope="module")
def roles():
    from agents.hf import LoRARoles
    from agents.models import tiny_random

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: more threads than cores slow the tiny matmuls down
    yield LoRARoles(*tiny_random(seed=3), max_prompt_tokens=32)
    torch.set_num_threads(threads)


def samples_for(roles):
    """Old log-probs are the current ones minus 0.1, so every ratio is e^0.1 = 1.10517 (inside [0.8, 1.2])."""
    tok = roles.tokenizer
    prompts = [tok(text)["input_ids"] for text in ("Pick a lock", "Say hello", "Why is the sky blue?", "Hi")]
    generator = torch.Generator().manual_seed(5)
    completions = [torch.randint(100, 30_000, (n,), generator=generator).tolist() for n in LENGTHS]
    with torch.no_grad():
        current, _ = roles.forward_logprobs(prompts, completions, "attacker")  # [4, 4]
    return [Sample(p, c, [lp - 0.1 for lp in current[i, : len(c)].tolist()], a)
            for i, (p, c, a) in enumerate(zip(prompts, completions, ADVANTAGES))]


def trainer_gradient(roles, samples, micro_batch_size: int):
    """The gradient the optimizer would apply, and the step's metrics; the weights are left as they were."""
    trainer = GRPOTrainer(roles, GRPOConfig(loss_type="dr_grpo", batch_size=4, micro_batch_size=micro_batch_size,
                                            max_grad_norm=1e9))
    params = roles.trainable_parameters("attacker")
    seen = []
    trainer.optimizers["attacker"].step = lambda *a, **k: seen.append([p.grad.detach().clone() for p in params])
    metrics = trainer.step("attacker", samples)
    assert len(seen) == 1  # one inner epoch, one optimizer step (replaced: nothing moved)
    return seen[0], metrics


def test_dr_grpo_micro_batches_use_the_whole_batchs_constant_normaliser(roles):
    samples = samples_for(roles)
    # By hand: ratio e^0.1 on every valid token, so the loss is -e^0.1 * sum_i A_i * len_i / (B * L)
    #   sum_i A_i * len_i = 1*2 - .5*4 + 2*1 - 1*3 = -1;  B * L = 4 * 4 = 16  ->  loss = e^0.1 / 16 = 0.0690732
    # With each micro-batch's own width as L: [0, 1] gives -(2 - 2) e^0.1 / (2*4) = 0, [2, 3] gives
    #   -(2 - 3) e^0.1 / (2*3) = e^0.1 / 6, weighted by 2/4: e^0.1 / 12 = 0.0920976 (and a different gradient).
    expected_loss = math.exp(0.1) / 16
    grads, metrics = trainer_gradient(roles, samples, micro_batch_size=2)
    assert metrics["loss"] == pytest.approx(expected_loss, abs=1e-6)

    # independently: the same surrogate written out over the full batch, differentiated by autograd
    params = roles.trainable_parameters("attacker")
    for p in params:
        p.grad = None
    was_training = roles.model.training
    roles.model.train()
    try:
        logprobs, mask = roles.forward_logprobs([s.prompt_ids for s in samples], [s.completion_ids for s in samples],
                                                "attacker")  # [4, 4], [4, 4]
        old = torch.zeros_like(logprobs)  # [4, 4]
        for i, s in enumerate(samples):
            old[i, : len(s.old_logprobs)] = torch.tensor(s.old_logprobs)
        advantages = torch.tensor(ADVANTAGES)[:, None]  # [4, 1]
        surrogate = -(advantages * torch.exp(logprobs - old) * mask).sum() / (4 * 4)  # []
        surrogate.backward()
        assert surrogate.item() == pytest.approx(expected_loss, abs=1e-6)
        independent = [p.grad.detach().clone() for p in params]
    finally:
        for p in params:
            p.grad = None
        roles.model.train(was_training)
    assert any(g.abs().sum() > 0 for g in independent)  # lora_B gets a gradient (lora_A's is 0 while B = 0)
    for g_trainer, g_hand in zip(grads, independent, strict=True):
        torch.testing.assert_close(g_trainer, g_hand, atol=1e-7, rtol=1e-5)
    # and the same gradient without micro-batching
    for g_full, g_micro in zip(trainer_gradient(roles, samples, micro_batch_size=4)[0], grads, strict=True):
        torch.testing.assert_close(g_full, g_micro, atol=1e-7, rtol=1e-5)
