"""``triplay compare --jobs``: the same comparison run one cell at a time and two cells at a time.

The comparison: the tiny preset, 2 variants (``grpo.loss_type`` grpo vs dapo) x 2 seeds, so 4 ``triplay train``
cells. It runs once with ``--jobs 1`` (one cell at a time, with as many threads as there are usable cores) and
once with ``--jobs 2`` (two cells at once, each pinned to its own half of the cores with that many threads),
each into its own temporary folder, and checks that every cell logged the same held-out numbers both times
(same seed, same result; the ``time/`` keys aside). The table gives each command's wall time (what a user
waits for, the comparison report included), the time its cells ran, start to end, the mean wall time of one
cell (longer with two at once when they contend for memory bandwidth or a busy core) and the serial / parallel
ratios. Exits 1 if a cell's numbers differ.

Usage::

    python bench/compare_jobs.py            # 2 iterations per cell
    python bench/compare_jobs.py --quick    # 1 iteration per cell
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

VARIANTS = ("grpo:grpo.loss_type=grpo", "dapo:grpo.loss_type=dapo")
SEEDS = 2


def run(out: Path, jobs: int, iterations: int) -> dict:
    cmd = [sys.executable, "-m", "training.cli", "compare", "--preset", "tiny",
           *(x for v in VARIANTS for x in ("--variant", v)), "--seeds", str(SEEDS), "--jobs", str(jobs),
           "--set", f"loop.iterations={iterations}", "--set", "loop.eval_scenarios=4", "--set", "loop.tensorboard=false",
           "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"--jobs {jobs} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = json.loads((out / "comparison.json").read_text())
    per_cell = [c["wall_s"] for c in result["cells"]]
    return {"wall": wall, "cells_wall": result["cells_wall_s"], "per_cell": sum(per_cell) / len(per_cell),
            "heldout": heldout(result)}


def heldout(result: dict) -> dict[str, list[dict]]:
    """Cell -> its held-out records, ``time/`` keys left out."""
    cells = {}
    for cell in result["cells"]:
        lines = (Path(cell["run_dir"]) / "metrics.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        cells[cell["cell"]] = [{k: v for k, v in r.items() if not k.startswith("time/")}
                               for r in records if r.get("phase") == "heldout"]
    return cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 iteration per cell instead of 2")
    args = parser.parse_args(argv)
    iterations = 1 if args.quick else 2
    with tempfile.TemporaryDirectory() as tmp:
        serial = run(Path(tmp) / "jobs1", 1, iterations)
        parallel = run(Path(tmp) / "jobs2", 2, iterations)
    same = [c for c in serial["heldout"] if serial["heldout"][c] == parallel["heldout"].get(c)]
    cells = len(serial["heldout"])
    print(f"tiny preset, {len(VARIANTS)} variants x {SEEDS} seeds, {iterations} iteration(s) per cell\n")
    print("| setup | cells | command wall (s) | cells, start to end (s) | mean cell wall (s) | held-out numbers as with --jobs 1 |")
    print("|---|---|---|---|---|---|")
    for name, r in (("--jobs 1", serial), ("--jobs 2", parallel)):
        print(f"| `{name}` | {cells} | {r['wall']:.1f} | {r['cells_wall']:.1f} | {r['per_cell']:.1f} | "
              f"{'-' if r is serial else f'{len(same)} of {cells} cells identical'} |")
    print(f"| serial / jobs 2 | | {serial['wall'] / parallel['wall']:.2f}x | "
          f"{serial['cells_wall'] / parallel['cells_wall']:.2f}x | {serial['per_cell'] / parallel['per_cell']:.2f}x | |")
    if len(same) != cells:
        print(f"\ncells whose held-out numbers differ: {sorted(set(serial['heldout']) - set(same))}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
