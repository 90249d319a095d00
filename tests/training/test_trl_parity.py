"""Our GRPO loss (``grpo_loss`` on ``LoRARoles.forward_logprobs``) against TRL 1.16's ``GRPOTrainer.compute_loss``.

Both sides see the same tiny fp32 model, the same LoRA values, the same tokens, advantages and old log-probs,
with ``loss_type="dapo"``, ``beta=0``, epsilon 0.2. The set-up and the conversion of our ``Sample``s to TRL's
``inputs`` dict are the ones ``bench/grpo_vs_trl.py`` uses (its docstring lists the conventions aligned).
Skipped where TRL is not installed.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl", reason="TRL is not installed; `pip install trl==1.16.0` (the dev extra) runs this parity check")

BENCH = Path(__file__).resolve().parents[2] / "bench" / "grpo_vs_trl.py"
B, G, T = 4, 2, 8


def _load_bench():
    spec = importlib.util.spec_from_file_location("grpo_vs_trl", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load_bench()


@pytest.fixture(scope="module")
def pair(bench):
    return bench.build_pair("tiny", batch=B, group_size=G, completion_tokens=T, max_steps=1, seed=0)


def test_dapo_loss_and_gradients_match_trl(bench, pair):
    samples = bench.make_samples(pair, ragged=True, old_noise=0.3, seed=1)
    lengths = [len(s.completion_ids) for s in samples]
    assert min(lengths) < T, f"the batch should be ragged to exercise masking, got lengths {lengths}"

    p = bench.loss_parity(pair, samples)

    assert p["clip_low"] > 0 and p["clip_high"] > 0, f"the clip should bind both ways, got {p}"
    assert abs(p["ours"]) > 1e-3, f"a near-zero loss would make the comparison vacuous, got {p}"
    assert p["tokens"] == sum(lengths)
    assert p["loss_diff"] <= 1e-5, p
    assert p["logp_diff"] <= 1e-5, p
    assert p["grad_diff"] <= 1e-5 * max(1.0, p["grad_scale"]), p


def test_ratio_one_gives_the_hand_worked_dapo_loss_on_both_sides(bench, pair):
    # old log-probs = current ones, so every ratio is 1 and nothing clips: the dapo loss is
    # -sum_i A_i * len_i / sum_i len_i (each of completion i's len_i tokens contributes -A_i).
    samples = bench.make_samples(pair, ragged=True, old_noise=0.0, seed=2)
    expected = -sum(s.advantage * len(s.completion_ids) for s in samples) / sum(len(s.completion_ids) for s in samples)
    assert abs(expected) > 1e-3, f"pick a seed with a non-zero expected loss, got {expected}"

    p = bench.loss_parity(pair, samples)

    assert p["ours"] == pytest.approx(expected, abs=1e-6)
    assert p["trl"] == pytest.approx(expected, abs=1e-5)
    assert p["clip_low"] == 0 and p["clip_high"] == 0
