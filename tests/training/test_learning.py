"""Learning is real: GRPO on the tiny model raises a simple verifiable reward within a minute of CPU.

The loop is the trainer's, without the game: the attacker adapter samples G completions per prompt
(``RolePolicy.generate``), a verifiable reward scores them, :func:`training.grpo.group_advantages` turns the
rewards into advantages and :meth:`training.trainer.GRPOTrainer.step` updates the adapter.

**Why this reward.** ``tiny_random`` ties its 49,152 x 64 embedding (init std 0.02, so every row has norm
~0.16) to the output layer, and the final RMSNorm fixes the hidden state's norm at sqrt(64) = 8: every logit
lies within 8 x 0.16 = +-1.3 of 0. At temperature 1 the policy is uniform to within 0.01 nats (entropy
10.79 of a possible 10.80), and no adapter can change that much: a q/v adapter only turns the hidden
state's direction. "Contains token X" (p = 1/49152 per token) is hopeless, and so is a random set of ids
(its members share no direction). Two choices make the signal reachable:

- the target set S is the 2,000 tokens whose embedding points furthest along one fixed random direction u,
  so turning the hidden state towards u raises all of them at once; the reward is the fraction of a
  completion's tokens that lie in S (dense: 0, 1/8, ..., 1);
- sampling at temperature 0.1 (and the trainer recomputing log-probs at 0.1, as in the loop) spreads the
  logits tenfold, to +-13, so the adapter's turn of the hidden state moves real probability mass.

Measured (one torch thread, seed 0): the reward starts at the set's share of the vocabulary, 2000 / 49152 =
0.04 (step 0: 0.042); the first 4 steps average 0.052, the last 4 of 20 average 0.212 (4x), in ~27 s of CPU.
"""

from __future__ import annotations

import time

import pytest
import torch

from agents.base import Turn
from training.config import GRPOConfig
from training.grpo import group_advantages
from training.trainer import GRPOTrainer, Sample

PROMPTS = ["Write a question about chemistry.", "Ask me something about history.", "Say something about cooking.",
           "Describe a city.", "Name a river.", "Tell me a joke."]
G = 4
"""completions per prompt: 6 prompts x 4 = 24 samples per step"""
STEPS = 20
TEMPERATURE = 0.1
TARGET_SET_SIZE = 2000
MAX_NEW_TOKENS = 8


@pytest.fixture(autouse=True)
def one_thread_and_seeded():
    # peft draws each lora_A from the global torch RNG: seed it (in a fork, so other tests see no change)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield
    torch.set_num_threads(threads)


def target_set(model) -> set[int]:
    """The TARGET_SET_SIZE token ids whose (tied) embedding has the largest component along a fixed direction."""
    embedding = model.get_input_embeddings().weight.detach()  # [V, 64]
    u = torch.randn(embedding.shape[1], generator=torch.Generator().manual_seed(0))  # [64]
    return set((embedding @ (u / u.norm())).topk(TARGET_SET_SIZE).indices.tolist())


@pytest.mark.slow
def test_grpo_raises_a_verifiable_reward_on_the_tiny_model():
    from agents.hf import LoRARoles
    from agents.models import tiny_random

    model, tokenizer = tiny_random(seed=0)
    roles = LoRARoles(model, tokenizer, max_prompt_tokens=64)
    target = target_set(model)
    attacker = roles.policy("attacker", max_new_tokens=MAX_NEW_TOKENS, temperature=TEMPERATURE, seed=0)
    turns = [Turn(agent="attacker_0", role="attacker", prompt="", messages=[{"role": "user", "content": p}])
             for p in PROMPTS for _ in range(G)]  # group-contiguous: G turns per prompt
    cfg = GRPOConfig(group_size=G, batch_size=len(turns), micro_batch_size=len(turns), lr=2e-2, loss_type="dapo")
    trainer = GRPOTrainer(roles, cfg, temperature=TEMPERATURE)

    history, ratios = [], []
    t0, cpu0 = time.perf_counter(), time.process_time()
    for step in range(STEPS):
        gen = attacker.generate(turns)
        rewards = torch.tensor([sum(t in target for t in ids) / max(len(ids), 1) for ids in gen.completion_ids])  # [B]
        advantages = group_advantages(rewards, G)  # [B]
        samples = [Sample(p, c, lp, float(a))
                   for p, c, lp, a in zip(gen.prompt_ids, gen.completion_ids, gen.logprobs, advantages)]
        metrics = trainer.step("attacker", samples)
        assert metrics["skipped"] == 0.0
        history.append(rewards.mean().item())
        ratios.append(metrics["ratio_mean"])
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0

    first, last = sum(history[:4]) / 4, sum(history[-4:]) / 4
    print(f"\nreward per step: {' '.join(f'{r:.3f}' for r in history)}")
    print(f"mean of the first 4 steps {first:.3f}, of the last 4 {last:.3f} ({last / first:.2f}x) "
          f"in {seconds:.1f} s wall, {cpu_seconds:.1f} s CPU")
    # sampling log-probs and the trainer's recomputed ones are the same function of the weights: ratio 1
    assert all(abs(r - 1.0) < 1e-4 for r in ratios), ratios
    assert history[0] < 0.08  # starts near the set's share of the vocabulary, 0.04
    assert last >= first + 0.06 and last >= 1.5 * first, f"no clear learning: first {first:.3f}, last {last:.3f}"
