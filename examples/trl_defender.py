"""Train TriPlay's defender with TRL's ``GRPOTrainer`` against the template attacker, judged by the game.

TRL owns the training loop (sampling, advantages, the loss, the optimizer, logging, checkpoints); TriPlay owns
the game: ``triplay_rollout_func`` plays one game per prompt (the template attacker rewrites the row's seed,
the trainer's model answers as ``defender_0``, the judge evaluator labels the answer with the env's panel) and
``triplay_reward`` hands TRL the reward the env paid. The LoRA adapter TRL trains is saved to ``--output-dir``.

    python examples/trl_defender.py --model tiny --steps 2            # random 2-layer model: a smoke run, seconds
    python examples/trl_defender.py --model smollm2-135m --steps 20   # SmolLM2-135M-Instruct (CPU: minutes)

Needs the ``trl`` extra: ``pip install -e '.[trl]'``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from training.integrations.trl import require_trl, triplay_dataset, triplay_reward, triplay_rollout_func  # noqa: E402


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("tiny", "smollm2-135m"), default="tiny",
                        help="tiny: random 2-layer Llama (smoke runs); smollm2-135m: SmolLM2-135M-Instruct, fp32")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps (default 2)")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/trl-defender"),
                        help="where TRL writes its outputs and the trained adapter (default runs/trl-defender)")
    parser.add_argument("--batch", type=int, default=4, help="completions per step (default 4)")
    parser.add_argument("--num-generations", type=int, default=2, help="answers per attack, a GRPO group (default 2)")
    parser.add_argument("--max-completion-length", type=int, default=32, help="answer length cap in tokens (default 32)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate of the adapter (default 1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="seeds TRL, the attacker and the dataset (default 0)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch % args.num_generations:
        parser.error("--steps must be >= 1 and --batch a multiple of --num-generations")

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is experimental in TRL 1.16: we know
    require_trl()
    import torch
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    from agents.models import load_model, tiny_random
    from agents.scripted import TemplateAttacker

    t0 = time.perf_counter()
    model, tokenizer = tiny_random(seed=args.seed) if args.model == "tiny" else load_model(args.model, dtype=torch.float32)
    config = GRPOConfig(
        output_dir=str(args.output_dir), max_steps=args.steps, per_device_train_batch_size=args.batch,
        num_generations=args.num_generations, max_completion_length=args.max_completion_length,
        learning_rate=args.lr, lr_scheduler_type="constant", use_cpu=not torch.cuda.is_available(), bf16=False,
        gradient_checkpointing=False, logging_steps=1, report_to="none", save_strategy="no", seed=args.seed,
    )
    rollout = triplay_rollout_func("defender", players={"attacker": TemplateAttacker(seed=args.seed)})
    n_rows = args.steps * args.batch // args.num_generations  # one row per group; TRL repeats it G times
    trainer = GRPOTrainer(
        model=model, reward_funcs=triplay_reward, args=config, processing_class=tokenizer, rollout_func=rollout,
        train_dataset=triplay_dataset(n_rows, seed=args.seed),
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    trainer.train()
    trainer.save_model(str(args.output_dir / "defender"))  # the LoRA adapter (adapter_config.json + weights)
    steps = [h for h in trainer.state.log_history if "reward" in h]
    print("\n| step | defender reward (mean) | attack success | step s |\n|---|---|---|---|")
    for h in steps:
        print(f"| {h['step']} | {h['reward']:+.3f} | {h.get('triplay/attack_success_rate', float('nan')):.2f} | "
              f"{h.get('step_time', float('nan')):.2f} |")
    print(f"\nadapter: {args.output_dir / 'defender'}; {time.perf_counter() - t0:.1f} s in all")
    return steps


if __name__ == "__main__":
    main()
