"""One defender GRPO step through TRL's ``GRPOTrainer`` (``training.integrations.trl``) next to TriPlay's own.

Both sides play the same game on the same model and batch: the ``tiny`` preset (2-layer random Llama, fp32,
LoRA r=8 / alpha 16 on q/v), B=4 games a step in groups of G=2 answers per attack, the defender samples 12
tokens at temperature 1, the template attacker writes the attacks, the judge evaluator labels the answers with
the preset's panel (the content judge, lexical), the ``triplay`` reward scheme pays, and one AdamW step at the
preset's learning rate (1e-3) with the dapo loss, epsilon 0.2, beta 0 and clipping at 1.0 updates the adapter.

* TriPlay: ``CoEvolution(preset tiny).train_phase("blue")`` with its attacker and evaluator players swapped for
  the same scripted ones (so neither side spends time sampling the other roles): ``run_lockstep`` with the
  defender adapter's ``RolePolicy``, advantages, ``training.trainer.GRPOTrainer.step``, metrics, transcripts.
* TRL: ``trl.GRPOTrainer.train()`` with ``rollout_func=triplay_rollout_func("defender")`` (the same
  ``run_lockstep``, the defender sampled by ``model.generate`` on TRL's model) and ``triplay_reward``; a step
  is the time between two ``on_step_end`` callbacks, so TRL's data loading, reward call, advantages, loss,
  optimizer step and logging are in, its set-up is not. TRL's settings that would change the work are set to
  ours (no gradient checkpointing, no bf16 autocast, constant learning rate), as in ``bench/grpo_vs_trl.py``.

The ``rollout`` rows split each step: TriPlay's ``time/blue_rollout_s`` and the time TRL spent inside the rollout
function (wrapped with a timer); the rest of the step is scoring and the update. Every timing is the median of
wall-clock seconds and of this process's CPU seconds (``time.process_time``; the steadier one on a shared
machine), after one warm-up step per side; one torch thread (see ``bench/grpo_vs_trl.py`` for why).

Usage::

    python bench/trl_step.py            # 6 timed steps per side
    python bench/trl_step.py --quick    # 3 timed steps per side
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from grpo_vs_trl import Timing, _now, _since  # noqa: E402  (the same two clocks as the other TRL bench)


def tiny_config(run_dir: str):
    """The tiny preset without progress bars or TensorBoard, writing under ``run_dir``."""
    from training.config import apply_overrides, preset

    return apply_overrides(preset("tiny"), sets=[f"loop.runs_dir={run_dir}", "loop.run_name=bench",
                                                 "loop.progress=false", "loop.tensorboard=false"])


def triplay_steps(steps: int, run_dir: str) -> tuple[list[Timing], list[Timing], float]:
    """``steps + 1`` P_Blue steps of TriPlay's loop (the first is a warm-up): per-step and rollout timings, and the
    mean completion length."""
    import training.coevolve as coevolve
    from agents.scripted import JudgeEvaluator, TemplateAttacker

    co = coevolve.CoEvolution(tiny_config(run_dir), log=lambda _: None)
    co.players["attacker"] = TemplateAttacker(seed=0)
    co.players["evaluator"] = JudgeEvaluator(judge=co.panel)
    rollout_times: list[Timing] = []
    run_lockstep = coevolve.run_lockstep

    def timed_lockstep(*args, **kwargs):  # what train_phase calls for its rollout, timed on both clocks
        start = _now()
        out = run_lockstep(*args, **kwargs)
        rollout_times.append(_since(start))
        return out

    totals, lengths = [], []
    coevolve.run_lockstep = timed_lockstep
    try:
        for step in range(steps + 1):
            start = _now()
            record = co.train_phase("blue", iteration=1, step=step)
            totals.append(_since(start))
            lengths.append(record["blue/completion_tokens_mean"])
    finally:
        coevolve.run_lockstep = run_lockstep
    return totals[1:], rollout_times[1:], statistics.mean(lengths[1:])


def trl_steps(steps: int, out_dir: str) -> tuple[list[Timing], list[Timing], float]:
    """``steps + 1`` steps of ``trl.GRPOTrainer.train()`` through the integration (the first is a warm-up)."""
    from peft import LoraConfig
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from agents.judge_spec import build_panel
    from agents.models import tiny_random
    from agents.scripted import TemplateAttacker
    from training.integrations.trl import triplay_dataset, triplay_reward, triplay_rollout_func
    from triplay_env.panel import VerdictCache

    cfg = tiny_config(out_dir)
    G, B = cfg.grpo.group_size, cfg.grpo.batch_size
    model, tokenizer = tiny_random(seed=cfg.loop.seed)
    panel = build_panel(cfg.judges.spec(), cache=VerdictCache(None), check=False)
    rollout = triplay_rollout_func("defender", players={"attacker": TemplateAttacker(seed=0)},
                                   env_kwargs={"panel": panel, "benign_fraction": cfg.game.benign_fraction},
                                   max_prompt_tokens=cfg.model.max_prompt_tokens)
    rollout_times: list[Timing] = []

    def timed_rollout(prompts, trainer):
        start = _now()
        out = rollout(prompts, trainer)
        rollout_times.append(_since(start))
        return out

    stamps: list[Timing] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(_now())

    args = GRPOConfig(
        output_dir=out_dir, max_steps=steps + 1, per_device_train_batch_size=B, gradient_accumulation_steps=1,
        num_generations=G, max_completion_length=cfg.generation.defender_max_new_tokens,
        temperature=cfg.generation.temperature, top_p=cfg.generation.top_p, loss_type=cfg.grpo.loss_type,
        beta=cfg.grpo.beta, epsilon=cfg.grpo.eps_low, epsilon_high=cfg.grpo.eps_high, scale_rewards=cfg.grpo.scale_rewards,
        learning_rate=cfg.grpo.lr, lr_scheduler_type="constant", weight_decay=cfg.grpo.weight_decay,
        max_grad_norm=cfg.grpo.max_grad_norm, gradient_checkpointing=False, bf16=False, use_cpu=True,
        logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, seed=cfg.loop.seed,
    )
    trainer = GRPOTrainer(
        model=model, reward_funcs=triplay_reward, args=args, processing_class=tokenizer, rollout_func=timed_rollout,
        train_dataset=triplay_dataset((steps + 1) * B // G, seed=cfg.loop.seed), callbacks=[Stamp()],
        peft_config=LoraConfig(r=cfg.model.lora_r, lora_alpha=cfg.model.lora_alpha, lora_dropout=0.0,
                               target_modules=list(cfg.model.lora_target_modules), task_type="CAUSAL_LM"),
    )
    trainer.remove_callback(PrinterCallback)  # keep TRL's log lines out of the table
    trainer.train()
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    totals = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(stamps, stamps[1:])]
    return totals, rollout_times[1:], statistics.mean(lengths[1:])


def rows(name: str, ours: list[Timing], theirs: list[Timing]) -> list[str]:
    out = []
    for clock, i in (("wall", 0), ("CPU", 1)):
        a, b = statistics.median(t[i] for t in ours), statistics.median(t[i] for t in theirs)
        out.append(f"| {name} | {clock} s, median | {a:.3f} | {b:.3f} | {b / a:.2f}x |")
    return out


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 timed steps per side instead of 6")
    parser.add_argument("--steps", type=int, help="timed steps per side (default 6, --quick 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    steps = args.steps or (3 if args.quick else 6)
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import trl

    with tempfile.TemporaryDirectory(prefix="trl_step.") as tmp:
        print(f"TriPlay: {steps + 1} P_Blue steps ...", file=sys.stderr, flush=True)
        ours, ours_rollout, ours_len = triplay_steps(steps, str(Path(tmp) / "triplay"))
        print(f"TRL: {steps + 1} steps ...", file=sys.stderr, flush=True)
        theirs, theirs_rollout, theirs_len = trl_steps(steps, str(Path(tmp) / "trl"))
    table = "\n".join([
        f"# One defender GRPO step: TriPlay's trainer vs TRL {trl.__version__}'s GRPOTrainer through the integration",
        "",
        f"tiny preset, B=4, G=2, 12 tokens, threads={args.threads}, median of {steps} steps after a warm-up; "
        f"completion tokens: TriPlay {ours_len:.1f}, TRL {theirs_len:.1f}",
        "",
        "| part | clock | TriPlay | TRL | TRL / TriPlay |",
        "|---|---|---|---|---|",
        *rows("whole step", ours, theirs),
        *rows("rollout (generate + game)", ours_rollout, theirs_rollout),
    ])
    print(table)
    return table


if __name__ == "__main__":
    main()
