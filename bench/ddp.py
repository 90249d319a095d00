"""Data parallel: the same run on 1 process and on 2 ranks (``triplay train --nproc 2``, gloo), side by side.

It trains one config twice, each into its own temporary folder, and prints:

- equality: the largest difference of any logged loss, reward or return, of every other logged number (scaled,
  see ``training.distributed.run_difference``) and of any final LoRA weight, 1 process vs 2 ranks, beside the
  same figures for 1 process vs itself on another thread count: the float noise any change of batch shape or
  thread count brings. Adam divides each gradient element by its own magnitude, so an element whose gradient
  is near 0 (~1e-8) takes a step of up to ``lr`` either way on noise that small: with the demo's lr of 1e-3 the
  final weights differ by about 1e-4 between thread counts as between rank counts, while every logged number
  agrees within 1e-6;
- speed: wall time of the whole command (start-up and model load included) and games per second of the loop
  itself (the ``time/`` records: rollouts, updates, held-out evaluations);
- memory: the peak resident set of the largest process (a rank holds the whole model: data parallel does not
  shard it).

On a 2-core CPU two ranks share the cores one process already uses, so the speed row says little about GPUs;
run it on a machine with more cores, or ``bench/gpu_smoke.py --ddp`` on 2 GPUs, to see scaling.

Usage::

    python bench/ddp.py            # the demo preset (SmolLM2-135M), 1 iteration: minutes
    python bench/ddp.py --quick    # the tiny preset, 2 iterations: seconds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from training.distributed import run_difference  # noqa: E402

# the role baseline makes every update move the adapters even when a group's rewards are equal
SETS = ["grpo.role_baseline=true", "game.benign_fraction=0.5", "loop.progress=false", "loop.tensorboard=false"]


# runs a command and prints the largest resident set of it and everything it waited for (the ranks), in KiB
PEAK = "import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); " \
       "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(rc)"


def train(runs: Path, preset: str, sets: list[str], nproc: int, threads: int) -> tuple[float, float]:
    """Wall seconds of the command and the peak RSS of its largest process (MiB)."""
    command = [sys.executable, "-m", "training.cli", "train", "--preset", preset, "--set", f"loop.runs_dir={runs}",
               "--set", "loop.run_name=run", *(x for kv in sets for x in ("--set", kv))]
    command += ["--nproc", str(nproc)] if nproc > 1 else []
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK, *command], cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - t0, int(done.stderr.strip().splitlines()[-1]) / 1024


def loop_rate(run: Path) -> tuple[int, float]:
    """Games played and the loop's own seconds, from metrics.jsonl."""
    cfg = json.loads((run / "config.json").read_text())
    games, seconds = 0, 0.0
    for record in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()):
        games += cfg["loop"]["eval_scenarios"] if record["phase"] == "heldout" else cfg["grpo"]["batch_size"]
        seconds += sum(v for k, v in record.items() if k.startswith("time/") and isinstance(v, (int, float)))
    return games, seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tiny preset (seconds) instead of the demo")
    args = parser.parse_args(argv)
    preset, sets = ("tiny", [*SETS, "loop.iterations=2", "loop.eval_scenarios=4"]) if args.quick else (
        "demo", [*SETS, "loop.iterations=1", "loop.steps_per_phase=1"])
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        one, two, floor = Path(tmp, "one"), Path(tmp, "two"), Path(tmp, "floor")
        (w1, m1), (w2, m2) = train(one, preset, sets, 1, cores), train(two, preset, sets, 2, max(1, cores // 2))
        train(floor, preset, sets, 1, 1 if cores > 1 else 2)  # the same process on another thread count
        diff, noise = run_difference(one / "run", two / "run"), run_difference(one / "run", floor / "run")
        rates = {1: loop_rate(one / "run"), 2: loop_rate(two / "run")}
    print(f"{preset} preset, {' '.join(sets)}; {cores} cores\n")
    print("| | 1 process | 2 ranks (gloo) | speed-up |\n|---|---|---|---|")
    print(f"| whole command, s | {w1:.1f} | {w2:.1f} | {w1 / w2:.2f}x |")
    (g1, s1), (g2, s2) = rates[1], rates[2]
    print(f"| loop games per second ({g1} games) | {g1 / s1:.2f} | {g2 / s2:.2f} | {(g2 / s2) / (g1 / s1):.2f}x |")
    print(f"| peak RSS of the largest process, MiB | {m1:.0f} | {m2:.0f} | |")
    print("\n| max abs difference | 2 ranks vs 1 process | 1 process, another thread count (float noise) | values |"
          "\n|---|---|---|---|")
    print(f"| losses, rewards, returns | {diff['paid_max_abs']:.2e} | {noise['paid_max_abs']:.2e} | {diff['paid_values']} |")
    print(f"| other metrics (scaled) | {diff['metrics_max_scaled']:.2e} | {noise['metrics_max_scaled']:.2e} | "
          f"{diff['metric_values']} |")
    print(f"| final LoRA weights | {diff['weights_max_abs']:.2e} | {noise['weights_max_abs']:.2e} | "
          f"{diff['weight_tensors']} tensors |")
    if diff["paid_max_abs"] >= 1e-6 or diff["metrics_max_scaled"] >= 1e-5 or (args.quick and diff["weights_max_abs"] >= 1e-6):
        sys.exit(f"2 ranks did not reproduce 1 process: worst {diff['paid_worst'] or diff['metrics_worst']}")

if __name__ == "__main__":
    main()
