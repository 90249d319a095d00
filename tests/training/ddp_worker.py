"""Run under torchrun by tests/training/test_distributed.py: ``torchrun --nproc-per-node 2 ddp_worker.py SCENARIO OUT``.

Each scenario joins the gloo group, does its part, and every rank writes ``OUT/<scenario>.rank<r>.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from training.distributed import SINGLE, from_env  # noqa: E402


def pool(dist) -> dict:
    """Rollout 1: rank 1 plays seed 5, whose attack succeeds; rollout 2: rank 0 plays seed 5 with the same attack."""
    import triplay_env
    from agents.judge_spec import JudgeSpec, build_panel
    from agents.scripted import make_scripted
    from training.rollout import run_lockstep

    panel = build_panel(JudgeSpec.from_mapping({"panel": [{"name": "content", "embedder": "lexical"}]}))
    shared = triplay_env.AttackSuccessPool()
    shared.exchange = dist.concat
    env = triplay_env.parallel_env(panel=panel, attack_success_pool=shared, benign_fraction=0.0, verdict_source="panel")
    players = {"attacker": make_scripted("template", strategy="role_play"), "defender": make_scripted("comply"),
               "evaluator": make_scripted("judge")}
    records = []
    for seeds in ([6, 5], [5, 7]):  # the global batch of each rollout; rank r plays seeds[r]
        rollout = run_lockstep([env], players, [seeds[dist.rank]], env_offset=dist.rank, dist=dist)
        (judged,) = rollout.judged
        records.append({"self_bleu": judged["self_bleu"], "success": judged["success"], "attack": judged["attack"],
                        "attacker_reward": judged["rewards"]["attacker_0"], "pool": shared.texts})
    return {"rollouts": records}


def _roles():
    from agents.hf import LoRARoles
    from agents.models import tiny_random

    torch.manual_seed(0)  # peft draws lora_A from the global RNG: the same start on every rank and every call
    roles = LoRARoles(*tiny_random(seed=0), max_prompt_tokens=64)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-zero lora_B, so lora_A gets a gradient too
        for name, p in roles.model.named_parameters():
            if ".lora_B.attacker." in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    return roles


def _samples(roles):
    """Six completions; rank 0's half is short (1-3 tokens), rank 1's long (5-7): per-rank normalisers would differ."""
    from training.trainer import Sample

    lengths, out = (1, 3, 2, 7, 5, 6), []
    for k, n in enumerate(lengths):
        prompt = [(7 * k + j) % 300 + 10 for j in range(4 + k)]
        completion = [(11 * k + 3 * j) % 300 + 10 for j in range(n)]
        with torch.no_grad():
            logprobs, _ = roles.forward_logprobs([prompt], [completion], "attacker")
        old = [v + (0.1 if (k + j) % 2 else -0.1) for j, v in enumerate(logprobs[0].tolist())]
        out.append(Sample(prompt, completion, old, advantage=(1.0, -0.5, 0.25, -1.0, 0.75, -0.25)[k]))
    return out


def _step(dist, cfg, samples) -> tuple[dict, torch.Tensor]:
    """One trainer step on ``samples``; returns its metrics and the gradient the optimizer stepped with."""
    from training.trainer import GRPOTrainer

    roles = _roles()
    trainer = GRPOTrainer(roles, cfg, dist=dist)
    seen = []
    trainer.optimizers["attacker"].register_step_pre_hook(
        lambda opt, args, kwargs: seen.append(torch.cat([p.grad.reshape(-1) for p in roles.trainable_parameters("attacker")])))
    update = trainer.step("attacker", samples(roles))
    return update, seen[0]


def normalisers(dist) -> dict:
    """One GRPO step per loss type: each rank on its half vs (rank 0) one process on the whole batch."""
    from training.config import GRPOConfig

    out = {}
    keys = ("loss", "grad_norm", "samples", "completion_tokens_mean")
    for loss_type in ("grpo", "dr_grpo", "dapo"):
        cfg = GRPOConfig(loss_type=loss_type, lr=1e-2, micro_batch_size=2, max_grad_norm=100.0)
        update, grad = _step(dist, cfg, lambda roles: _samples(roles)[:3] if dist.rank == 0 else _samples(roles)[3:])
        result = {k: update[k] for k in keys}
        if dist.rank == 0:
            ref, ref_grad = _step(SINGLE, cfg, _samples)
            result["reference"] = {k: ref[k] for k in keys}
            result["grad_max_abs_diff"] = float((grad - ref_grad).abs().max())
            result["grad_max_abs"] = float(ref_grad.abs().max())
            # what each half alone would log: a per-rank normaliser's mean loss
            halves = [_step(SINGLE, cfg, lambda roles, part=part: _samples(roles)[part])[0]["loss"]
                      for part in (slice(0, 3), slice(3, 6))]
            result["mean_of_half_losses"] = sum(halves) / 2
        out[loss_type] = result
    return out


def drift(dist) -> dict:
    """check_equal on values that differ across ranks must fail on every rank, naming the values."""
    try:
        dist.check_equal(1.0 + dist.rank, "a test checksum")
    except RuntimeError as e:
        return {"raised": str(e)}
    return {"raised": None}


if __name__ == "__main__":
    scenario, out_dir = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    dist = from_env(timeout_s=60)
    result = {"scenario": scenario, "rank": dist.rank, "world_size": dist.world_size, **globals()[scenario](dist)}
    (out_dir / f"{scenario}.rank{dist.rank}.json").write_text(json.dumps(result))
    dist.close()
