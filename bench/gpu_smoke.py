"""GPU smoke check: the co-evolution loop and a GRPO step on CUDA (skipped without a GPU).

On one CUDA device it runs:

1. the ``tiny`` preset for one full iteration (P_Red, P_Blue, P_Eval, held-out evaluation, checkpoint) with
   the model on the GPU: the device plumbing of the whole loop;
2. a wider random model (SmolLM2's tokenizer, Llama blocks of Qwen3-0.6B-like width, bf16, no download):
   sampled vs teacher-forced log-probs (max abs diff), adapter isolation after a GRPO step (bitwise), and
   the seconds of one rollout generation and one GRPO step for a batch of 64 (32 with ``--quick``).

With ``--ddp`` it also runs the tiny preset on 2 ranks (torchrun, NCCL, one GPU each) beside 1 process and
prints how far apart they are (``training.distributed.run_difference``), or says it is skipped with fewer than 2
GPUs.

Usage: ``python bench/gpu_smoke.py [--quick] [--ddp] [--device cpu --layers 2 --batch 4]`` (the CPU form only
checks the script itself). Prints a Markdown table; without CUDA (and no ``--device cpu``) it prints one
"skipped" row and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def _wide_model(device: str, dtype: torch.dtype, layers: int):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from agents.models import SMOLLM2_CONFIG, _prepare_tokenizer, _smollm2_tokenizer_folder

    config = LlamaConfig(**{**SMOLLM2_CONFIG, "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": layers,
                            "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 64})
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()
    return model, _prepare_tokenizer(AutoTokenizer.from_pretrained(_smollm2_tokenizer_folder()))


def _turns(n: int):
    from agents.base import Turn

    return [Turn("attacker_0", "attacker", "", [{"role": "user", "content": f"Write attack number {i} about locks."}], {})
            for i in range(n)]


def _grpo_step_seconds(roles, policy, turns, cfg) -> tuple[float, float, dict]:
    from training.trainer import GRPOTrainer, Sample

    trainer = GRPOTrainer(roles, cfg, temperature=1.0)
    t0 = time.perf_counter()
    gen = policy.generate(turns)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    samples = [Sample(p, c, lp, 1.0 if i % 2 else -1.0)
               for i, (p, c, lp) in enumerate(zip(gen.prompt_ids, gen.completion_ids, gen.logprobs))]
    metrics = trainer.step("attacker", samples)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return t1 - t0, time.perf_counter() - t1, metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer layers and a smaller batch")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (to check this script)")
    parser.add_argument("--layers", type=int, help="layers of the wide model (default 28, --quick 8)")
    parser.add_argument("--batch", type=int, help="rollout batch (default 64, --quick 32)")
    parser.add_argument("--ddp", action="store_true", help="also 2 ranks vs 1 process on 2 GPUs (skipped with fewer)")
    args = parser.parse_args(argv)
    print("| check | value | unit | note |\n|---|---|---|---|")
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("| gpu smoke | skipped | | no CUDA device on this machine |")
        if args.ddp:
            _ddp(device)
        return
    from agents.hf import LoRARoles
    from training.coevolve import CoEvolution
    from training.config import GRPOConfig, apply_overrides, preset

    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
    # 1. the whole loop on the GPU with the tiny model
    with tempfile.TemporaryDirectory() as runs:
        cfg = apply_overrides(preset("tiny"), sets=[f"model.device={device}", f"loop.runs_dir={runs}", "loop.iterations=1",
                                                    "loop.progress=false", "loop.tensorboard=false"])
        t0 = time.perf_counter()
        metrics = CoEvolution(cfg, log=lambda s: None).run()
        print(f"| tiny preset, 1 iteration on {name} | {time.perf_counter() - t0:.1f} | s | {len(metrics)} metric records, checkpoint written |")

    # 2. a wider model: log-prob consistency, isolation, timings
    layers = args.layers or (8 if args.quick else 28)
    batch = args.batch or (32 if args.quick else 64)
    model, tokenizer = _wide_model(device, torch.bfloat16, layers)
    params = sum(p.numel() for p in model.parameters())
    roles = LoRARoles(model, tokenizer, r=16, alpha=32)
    policy = roles.policy("attacker", max_new_tokens=64, seed=0)
    gen = policy.generate(_turns(8))
    with torch.no_grad():
        logprobs, mask = roles.forward_logprobs(gen.prompt_ids, gen.completion_ids, "attacker")
    sampled = torch.zeros_like(logprobs)
    for i, row in enumerate(gen.logprobs):
        sampled[i, : len(row)] = torch.tensor(row, device=sampled.device)
    diff = (sampled - logprobs).abs()[mask].max().item()
    print(f"| sampled vs teacher-forced log-probs, bf16, {params / 1e6:.0f}M params | {diff:.4f} | max abs diff | KV-cache vs full pass in bf16 |")

    before = {n: p.detach().clone() for n, p in roles.model.named_parameters()}
    cfg = GRPOConfig(micro_batch_size=16, lr=1e-4)
    gen_s, step_s, m = _grpo_step_seconds(roles, policy, _turns(batch), cfg)
    changed = [n for n, p in roles.model.named_parameters() if not torch.equal(p, before[n])]
    isolated = all(".attacker." in n for n in changed) and any("lora_B.attacker" in n for n in changed)
    print(f"| adapter isolation after a GRPO step | {'yes' if isolated else 'NO'} | | {len(changed)} tensors changed, all attacker LoRA |")
    print(f"| generation, batch {batch} x 64 new tokens | {gen_s:.2f} | s | {batch * 64 / gen_s:.0f} tokens/s |")
    print(f"| GRPO step (dapo), batch {batch} | {step_s:.2f} | s | loss {m.get('loss', float('nan')):.4f}, grad norm {m.get('grad_norm', float('nan')):.3f} |")
    if device.startswith("cuda"):
        print(f"| peak GPU memory | {torch.cuda.max_memory_allocated() / 2**30:.2f} | GiB | one base, three adapters |")
    if args.ddp:
        _ddp(device)


def _ddp(device: str) -> None:
    """The tiny preset on 2 ranks (NCCL, a GPU each) and on 1 process: how far apart, and how long each took."""
    import os
    import subprocess

    from training.distributed import run_difference

    gpus = torch.cuda.device_count() if device.startswith("cuda") else 0
    if gpus < 2:
        print(f"| ddp, 2 ranks vs 1 process | skipped | | needs 2 GPUs, this machine has {gpus} |")
        return
    repo = Path(__file__).resolve().parents[1]
    sets = ["model.device=cuda", "grpo.role_baseline=true", "game.benign_fraction=0.5", "loop.iterations=2",
            "loop.eval_scenarios=4", "loop.progress=false", "loop.tensorboard=false", "loop.run_name=run"]
    with tempfile.TemporaryDirectory() as tmp:
        seconds = {}
        for n in (1, 2):
            command = [sys.executable, "-m", "training.cli", "train", "--preset", "tiny", "--set", f"loop.runs_dir={tmp}/{n}",
                       *(x for kv in sets for x in ("--set", kv)), *(["--nproc", "2"] if n == 2 else [])]
            t0 = time.perf_counter()
            done = subprocess.run(command, cwd=repo, env=dict(os.environ), capture_output=True, text=True)
            seconds[n] = time.perf_counter() - t0
            if done.returncode != 0:
                print(f"| ddp, {n} rank(s) | FAILED | | {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''} |")
                return
        diff = run_difference(f"{tmp}/1/run", f"{tmp}/2/run")
    print(f"| ddp: losses, rewards, returns, 2 ranks vs 1 | {diff['paid_max_abs']:.2e} | max abs diff | {diff['paid_values']} values |")
    print(f"| ddp: final LoRA weights, 2 ranks vs 1 | {diff['weights_max_abs']:.2e} | max abs diff | {diff['weight_tensors']} tensors |")
    print(f"| ddp: wall time, 1 process / 2 ranks | {seconds[1]:.1f} / {seconds[2]:.1f} | s | tiny preset, 2 iterations |")


if __name__ == "__main__":
    main()
