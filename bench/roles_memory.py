"""Memory of three roles: three LoRA adapters on one base model (ours) vs three model copies, one adapter each.

Each setup runs in its own fresh subprocess and reports its resident set size (RSS) three ways: after loading
its models, the peak while every role does the same small forward pass (sampled from ``/proc/self/statm``
every millisecond by a thread), and the peak over the whole process (``getrusage(RUSAGE_SELF).ru_maxrss``,
which also holds the loader's transient buffers). Setups:

* ``baseline``: the same imports (torch, transformers, peft, agents.hf) and the tokenizer, no model: what a
  Python process costs before any weights.
* ``ours``: one base model, ``LoRARoles`` with three adapters (attacker, defender, evaluator).
* ``3 copies``: three base models, each ``LoRARoles(model, tokenizer, roles=(role,))`` with its own adapter:
  what the three roles cost when each role is its own model, as in the paper's full fine-tuning.

The forward pass: teacher-forced log-probs of B completions of T tokens after chat-templated prompts
(``forward_logprobs``, no grad), once per role. Weights are read into memory (``disable_mmap=True``) on both
sides: with transformers' default memory-mapping, three loads of one unchanged file share the OS page cache,
which stops being true as soon as the copies differ (full fine-tuning, different checkpoints).

The target (``ours / 3 copies <= 0.45``) is on the forward-phase peak above the baseline: what three roles
cost while they play. The pass is small on purpose: its activations (mostly the B x (T+1) x 49152 logits and
the allocator's retained buffers) are paid once per forward on both sides, not once per role, so a bigger
pass pulls the ratio towards 1 without saying anything about where the roles live. The other ratios are printed too; the whole-process peak adds the loader's transient
buffers, the same for each model load, on top of the models already loaded.

Usage::

    python bench/roles_memory.py                # SmolLM2-135M-Instruct, float32 (the CPU presets' dtype), B=4, T=16
    python bench/roles_memory.py --dtype bfloat16   # the GPU presets' dtype
    python bench/roles_memory.py --quick        # B=2, T=8
    python bench/roles_memory.py --batch 8 --tokens 32   # a bigger pass: activations weigh more
    python bench/roles_memory.py --model tiny --json rows.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
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


def _rss_mib() -> float:
    """Current resident set size, from ``/proc/self/statm`` (pages)."""
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakSampler:
    """Largest RSS seen while the ``with`` block runs, sampled every ``interval`` seconds by a thread (torch
    releases the GIL inside its kernels, so the thread keeps sampling during a forward pass)."""

    def __init__(self, interval: float = 0.001):
        self.interval = interval
        self.peak = 0.0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mib())
            time.sleep(self.interval)

    def __enter__(self) -> PeakSampler:
        self.peak = _rss_mib()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mib())


def child(setup: str, model_name: str, batch: int, tokens: int, dtype: str = "float32") -> dict:
    """Runs in the subprocess: load ``setup``, forward every role once, report memory in MiB."""
    import torch

    from agents.hf import LoRARoles
    from agents.models import load_model, model_folder, tiny_random

    torch.manual_seed(0)
    t0 = time.perf_counter()

    def load():
        if model_name == "tiny":
            return tiny_random(seed=0)
        return load_model(model_name, dtype=getattr(torch, dtype), disable_mmap=True)

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
    prompts = []
    for i in range(batch):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], add_generation_prompt=True, tokenize=False
        )
        prompts.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    completions = [[(7 * i + 11 * t) % 1000 + 100 for t in range(tokens)] for i in range(batch)]
    rss_after_load = _rss_mib()

    t0 = time.perf_counter()
    with torch.no_grad(), PeakSampler() as sampler:
        for roles, role in players:
            logprobs, _ = roles.forward_logprobs(prompts, completions, role)
            assert torch.isfinite(logprobs).all()
    forward_s = time.perf_counter() - t0
    return {
        "setup": setup,
        "process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_load_mib": rss_after_load,
        "forward_peak_rss_mib": sampler.peak,
        "parameters": sum(p.numel() for m in models for p in m.parameters()),
        "load_s": load_s,
        "forward_s": forward_s,
    }


def run_setup(setup: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", setup, "--model", args.model, "--batch", str(args.batch),
           "--tokens", str(args.tokens), "--dtype", args.dtype]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{setup} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown_table(rows: list[dict], base: dict) -> str:
    lines = [
        "| setup | parameters | RSS after load (MiB) | forward-phase peak (MiB) | above baseline (MiB) "
        "| whole-process peak (MiB) | load (s) | forward (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        above = r["forward_peak_rss_mib"] - base["forward_peak_rss_mib"]
        lines.append(
            f"| {r['setup']} | {r['parameters'] / 1e6:.1f}M | {r['rss_after_load_mib']:.0f} | "
            f"{r['forward_peak_rss_mib']:.0f} | {above:.0f} | {r['process_peak_rss_mib']:.0f} | "
            f"{r['load_s']:.1f} | {r['forward_s']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="smollm2-135m (default), tiny, or a local folder")
    parser.add_argument("--quick", action="store_true", help="a smaller forward pass (B=2, T=8)")
    parser.add_argument("--batch", type=int, help="B: completions per forward pass (default 4, --quick 2)")
    parser.add_argument("--tokens", type=int, help="T: tokens per completion (default 16, --quick 8)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="weights' dtype (default float32, what the CPU presets run: on a CPU without AVX512-BF16 "
                        "bf16 matmuls also allocate float32 scratch copies of the weights during the forward pass)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the rows and ratios to PATH as JSON")
    parser.add_argument("--child", choices=SETUPS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.batch = args.batch or (2 if args.quick else 4)
    args.tokens = args.tokens or (8 if args.quick else 16)
    if args.child:
        print(json.dumps(child(args.child, args.model, args.batch, args.tokens, args.dtype)))
        return {}

    if args.model != "tiny":
        from agents.models import model_folder

        model_folder(args.model)  # convert SmolLM2 once, here, so no child pays for it
    rows = {setup: run_setup(setup, args) for setup in SETUPS}
    base, ours, copies = rows["baseline"], rows["ours"], rows["3 copies"]

    def ratio(key: str, above_baseline: bool = True) -> float:
        offset = base[key] if above_baseline else 0.0
        return (ours[key] - offset) / (copies[key] - offset)

    ratios = {
        "forward_peak_above_baseline": ratio("forward_peak_rss_mib"),
        "after_load_above_baseline": ratio("rss_after_load_mib"),
        "process_peak_above_baseline": ratio("process_peak_rss_mib"),
        "forward_peak_raw": ratio("forward_peak_rss_mib", above_baseline=False),
    }
    print(f"## Three roles in memory: {args.model}, {args.dtype}, forward pass B={args.batch} x T={args.tokens} per role\n")
    print(markdown_table(list(rows.values()), base))
    print()
    print("| ratio ours / 3 copies | value | target |")
    print("|---|---:|---:|")
    print(f"| forward-phase peak above baseline (what three roles cost while playing) | "
          f"{ratios['forward_peak_above_baseline']:.2f}x | <= {TARGET}x |")
    print(f"| RSS after load above baseline (weights held) | {ratios['after_load_above_baseline']:.2f}x | |")
    print(f"| whole-process peak above baseline (loader buffers included) | "
          f"{ratios['process_peak_above_baseline']:.2f}x | |")
    print(f"| forward-phase peak, raw (interpreter and libraries included) | {ratios['forward_peak_raw']:.2f}x | |")
    headline = ratios["forward_peak_above_baseline"]
    verdict = "meets" if headline <= TARGET else "MISSES"
    print(f"\nours {verdict} the target: {headline:.2f}x (target <= {TARGET}x)")
    result = {"model": args.model, "batch": args.batch, "tokens": args.tokens, "rows": list(rows.values()),
              "ratios": ratios, "target": TARGET}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
