"""Episodes per second: one batched generate call per phase vs one call per episode and phase, same run.

An episode is one round of the game played by SmolLM2 with its three role adapters: the attacker rewrites a
seed (``triplay_env.prompts.attacker_messages``), the defender answers the attack (``defender_messages``),
the evaluator judges the answer (``evaluator_messages``); the seeds alternate harmful and benign from the
built-in set. Each phase generates ``T`` new tokens per episode (default 32) with ``LoRARoles.policy(role)``.

* ``batched``: three ``generate`` calls of N turns each (attack all, defend all, judge all): what the
  lockstep rollout does.
* ``one at a time``: 3 x N ``generate`` calls of one turn each.

Every completion is exactly ``T`` tokens on both sides (a bench-only ``LoRARoles`` without stop tokens), so
both generate the same number of tokens and the ratio measures batching alone; with EOS stops a batch runs
until its longest member finishes while single calls stop early (``--stop-at-eos`` measures that case).
Same process, same model, same torch threads; a warm-up call first, then batched, then one at a time.

Usage::

    python bench/generation_batching.py                 # N=32 episodes, T=32
    python bench/generation_batching.py --quick         # N=8
    python bench/generation_batching.py --model tiny --json rows.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from agents.base import Turn  # noqa: E402
from agents.hf import LoRARoles  # noqa: E402
from triplay_env.datasets import load_scenarios  # noqa: E402
from triplay_env.prompts import attacker_messages, defender_messages, evaluator_messages  # noqa: E402

TARGET = 4.0
"""batched / one at a time, episodes per second, at least this"""


class FixedLengthRoles(LoRARoles):
    """``LoRARoles`` with no stop token, so every completion has exactly ``max_new_tokens`` tokens (bench only)."""

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return frozenset()


def scenarios(n: int) -> list:
    """``n`` built-in seeds, alternating harmful and benign."""
    seeds = load_scenarios("builtin")
    return [(seeds.harmful if i % 2 == 0 else seeds.benign)[i // 2] for i in range(n)]


def play(policies: dict, seeds: list, batch_size: int) -> tuple[float, int]:
    """Play one round per seed, ``batch_size`` turns per generate call. Returns (seconds, tokens generated)."""
    tokens = 0
    t0 = time.perf_counter()

    def run(role: str, messages: list[list[dict]]) -> list[str]:
        nonlocal tokens
        texts = []
        for start in range(0, len(messages), batch_size):
            chunk = messages[start : start + batch_size]
            turns = [Turn(agent=f"{role}_0", role=role, prompt="", messages=m) for m in chunk]
            out = policies[role].generate(turns)
            tokens += sum(len(c) for c in out.completion_ids)
            texts += out.texts
        return texts

    attacks = run("attacker", [attacker_messages(s, []) for s in seeds])
    responses = run("defender", [defender_messages(a, [], 0) for a in attacks])
    run("evaluator", [evaluator_messages(a, r) for a, r in zip(attacks, responses)])
    return time.perf_counter() - t0, tokens


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default="smollm2-135m", help="smollm2-135m (default, bf16), tiny (fp32), or a folder"
    )
    parser.add_argument("--quick", action="store_true", help="fewer episodes (N=8)")
    parser.add_argument("--episodes", type=int, help="N: episodes (default 32, --quick 8)")
    parser.add_argument("--tokens", type=int, default=32, help="T: new tokens per generate call and turn (default 32)")
    parser.add_argument("--stop-at-eos", action="store_true", help="let completions stop at EOS (ragged lengths)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the rows to PATH as JSON")
    args = parser.parse_args(argv)
    n = args.episodes or (8 if args.quick else 32)

    from agents.models import load_model, tiny_random

    model, tokenizer = tiny_random(seed=0) if args.model == "tiny" else load_model(args.model, dtype=torch.float32)  # bf16 matmuls are ~37x slower on CPUs without AVX512-BF16
    roles_cls = LoRARoles if args.stop_at_eos else FixedLengthRoles
    roles = roles_cls(model, tokenizer)
    policies = {r: roles.policy(r, max_new_tokens=args.tokens, seed=k) for k, r in enumerate(roles.roles)}
    seeds = scenarios(n)
    play(policies, seeds[:2], batch_size=2)  # warm-up: first-call allocations, lazy imports

    rows = []
    for name, batch_size in (("batched (1 call per phase)", n), ("one at a time", 1)):
        seconds, tokens = play(policies, seeds, batch_size)
        rows.append({"mode": name, "episodes": n, "generate_calls": 3 * -(-n // batch_size), "tokens": tokens,
                     "seconds": seconds, "episodes_per_s": n / seconds, "tokens_per_s": tokens / seconds})
        print(f"{name}: {seconds:.1f} s", file=sys.stderr, flush=True)
    ratio = rows[0]["episodes_per_s"] / rows[1]["episodes_per_s"]

    stop = "stop at EOS" if args.stop_at_eos else f"exactly {args.tokens} tokens per turn"
    print(f"## Generation batching: {args.model}, {n} episodes x 3 phases, {stop}, {torch.get_num_threads()} threads\n")
    print("| mode | generate calls | tokens | seconds | episodes/s | tokens/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['generate_calls']} | {r['tokens']} | {r['seconds']:.1f} | "
              f"{r['episodes_per_s']:.3f} | {r['tokens_per_s']:.1f} |")
    # a table row too: bench/run_all.py keeps only table lines
    print("\n| ratio | value | target | met |\n|---|---:|---:|---|")
    print(f"| episodes/s, batched / one at a time | {ratio:.1f}x | >= {TARGET}x | {'yes' if ratio >= TARGET else 'no'} |")
    result = {"model": args.model, "episodes": n, "tokens_per_turn": args.tokens, "stop_at_eos": args.stop_at_eos,
              "threads": torch.get_num_threads(), "rows": rows, "ratio": ratio, "target": TARGET}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
