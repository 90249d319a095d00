"""Memory of three roles: three LoRA adapters on one base model (ours) vs three model copies, one adapter each.

Each setup runs in its own fresh subprocess, which reports its own peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and the peak of its forward phase alone (``VmHWM`` after
resetting it through ``/proc/self/clear_refs`` once the models are loaded). Setups:

* ``baseline``: the same imports (torch, transformers, peft, agents.hf) and the tokenizer, no model: what a
  Python process costs before any weights.
* ``ours``: one base model, ``LoRARoles`` with three adapters (attacker, defender, evaluator).
* ``3 copies``: three base models, each ``LoRARoles(model, tokenizer, roles=(role,))`` with its own adapter:
  what the three roles cost when each role is its own model, as in the paper's full fine-tuning.

Each setup then does the same small forward pass for every role: teacher-forced log-probs of B completions of
T tokens after chat-templated prompts (``forward_logprobs``, no grad). Weights are read into memory
(``disable_mmap=True``) on both sides: with transformers' default memory-mapping, three loads of one
unchanged file share the OS page cache, which stops being true as soon as the copies differ (full
fine-tuning, different checkpoints). The target (``ours / 3 copies <= 0.45``) is on memory above the
baseline, i.e. what the models and their forward passes add; the raw peaks and their ratio are printed too.

Usage::

    python bench/roles_memory.py                # SmolLM2-135M-Instruct, bf16, B=8, T=32
    python bench/roles_memory.py --quick        # B=2, T=8
    python bench/roles_memory.py --model tiny --json rows.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

ROLES = ("attacker", "defender", "evaluator")
TARGET = 0.45
"""ours / 3 copies, on memory above the baseline, at most this"""
PROMPTS = (
    "Hi there",
    "Write a short poem about the sea and the wind.",
    "How do I bake bread at home without a bread machine?",
    "Explain, in two sentences, why the sky is blue.",
)
SETUPS = ("baseline", "ours", "3 copies")


def _vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def child(setup: str, model_name: str, batch: int, tokens: int) -> dict:
    """Runs in the subprocess: load ``setup``, forward every role once, report memory in MiB."""
    import torch

    from agents.hf import LoRARoles
    from agents.models import load_model, model_folder, tiny_random

    torch.manual_seed(0)
    t0 = time.perf_counter()

    def load():
        if model_name == "tiny":
            return tiny_random(seed=0)
        return load_model(model_name, dtype=torch.bfloat16, disable_mmap=True)

    if setup == "baseline":
        from transformers import AutoTokenizer

        if model_name == "tiny":
            tokenizer = tiny_random()[1]
        else:
            tokenizer = AutoTokenizer.from_pretrained(model_folder(model_name))
        players = []
    elif setup == "ours":
        roles = LoRARoles(*load())
        players = [(roles, role) for role in ROLES]
        tokenizer = roles.tokenizer
    elif setup == "3 copies":
        players = []
        for role in ROLES:
            model, tokenizer = load()
            players.append((LoRARoles(model, tokenizer, roles=(role,)), role))
    else:
        raise ValueError(f"unknown setup {setup!r}; expected one of {SETUPS}")
    load_s = time.perf_counter() - t0
    models = list({id(r.model): r.model for r, _ in players}.values())  # distinct models in memory
    rss_after_load = _vm_kib("VmRSS")
    peak_reset = _reset_peak()

    t0 = time.perf_counter()
    prompts = []
    for i in range(batch):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], add_generation_prompt=True, tokenize=False
        )
        prompts.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    completions = [[(7 * i + 11 * t) % 1000 + 100 for t in range(tokens)] for i in range(batch)]
    with torch.no_grad():
        for roles, role in players:
            logprobs, _ = roles.forward_logprobs(prompts, completions, role)
            assert torch.isfinite(logprobs).all()
    forward_s = time.perf_counter() - t0
    return {
        "setup": setup,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_load_mib": rss_after_load / 1024,
        "forward_peak_rss_mib": _vm_kib("VmHWM") / 1024 if peak_reset else None,
        "parameters": sum(p.numel() for m in models for p in m.parameters()),
        "load_s": load_s,
        "forward_s": forward_s,
    }


def run_setup(setup: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", setup, "--model", args.model, "--batch", str(args.batch),
           "--tokens", str(args.tokens)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{setup} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown_table(rows: list[dict], base: dict) -> str:
    lines = [
        "| setup | parameters | peak RSS (MiB) | above baseline (MiB) | forward-phase peak (MiB) | load (s) "
        "| forward (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        fwd = "n/a" if r["forward_peak_rss_mib"] is None else f"{r['forward_peak_rss_mib']:.0f}"
        lines.append(
            f"| {r['setup']} | {r['parameters'] / 1e6:.1f}M | {r['peak_rss_mib']:.0f} | "
            f"{r['peak_rss_mib'] - base['peak_rss_mib']:.0f} | {fwd} | {r['load_s']:.1f} | {r['forward_s']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="smollm2-135m (default), tiny, or a local folder")
    parser.add_argument("--quick", action="store_true", help="a smaller forward pass (B=2, T=8)")
    parser.add_argument("--batch", type=int, help="B: completions per forward pass (default 8, --quick 2)")
    parser.add_argument("--tokens", type=int, help="T: tokens per completion (default 32, --quick 8)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the rows and ratios to PATH as JSON")
    parser.add_argument("--child", choices=SETUPS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.batch = args.batch or (2 if args.quick else 8)
    args.tokens = args.tokens or (8 if args.quick else 32)
    if args.child:
        print(json.dumps(child(args.child, args.model, args.batch, args.tokens)))
        return {}

    if args.model != "tiny":
        from agents.models import model_folder

        model_folder(args.model)  # convert SmolLM2 once, here, so no child pays for it
    rows = {setup: run_setup(setup, args) for setup in SETUPS}
    base, ours, copies = rows["baseline"], rows["ours"], rows["3 copies"]
    net_ratio = (ours["peak_rss_mib"] - base["peak_rss_mib"]) / (copies["peak_rss_mib"] - base["peak_rss_mib"])
    raw_ratio = ours["peak_rss_mib"] / copies["peak_rss_mib"]
    print(f"## Three roles in memory: {args.model}, forward pass B={args.batch} x T={args.tokens} per role\n")
    print(markdown_table(list(rows.values()), base))
    print()
    print("| ratio ours / 3 copies | value | target |")
    print("|---|---:|---:|")
    print(f"| above baseline (what the models add) | {net_ratio:.2f}x | <= {TARGET}x |")
    print(f"| raw peak RSS (interpreter and libraries included) | {raw_ratio:.2f}x | |")
    if ours["forward_peak_rss_mib"] is not None:
        fwd = ours["forward_peak_rss_mib"] / copies["forward_peak_rss_mib"]
        print(f"| forward-phase peak RSS | {fwd:.2f}x | |")
    verdict = "meets" if net_ratio <= TARGET else "MISSES"
    print(f"\nours {verdict} the target: {net_ratio:.2f}x <= {TARGET}x")
    result = {"model": args.model, "batch": args.batch, "tokens": args.tokens, "rows": list(rows.values()),
              "ratio_above_baseline": net_ratio, "ratio_raw": raw_ratio, "target": TARGET}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
