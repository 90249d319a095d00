"""The judge phase of B lockstep envs x N defenders against an HTTP judge: one batched panel call vs one per env.

The judge is a local OpenAI-compatible stub (``agents.serve.ChatServer``) that answers every request after a
fixed delay (50 ms): a latency stand-in for a guard model behind a server, not a model. Both modes play the
same games (scripted attacker and defenders, seeds 0..B-1) through ``training.rollout.run_lockstep``; the only
difference is ``batch_judging``: True hands every env's items to the shared panel in one call (which the HTTP
client sends concurrently, up to the spec's ``concurrency``, default 128), False lets each env call the panel
for its own N items. Times are wall seconds of the judge phase (the panel's calls), medians over ``--repeats``;
the verdicts of both modes are compared.

    python bench/_judge_batching.py              # 32 envs x 3 defenders, 50 ms, 3 repeats (bench/judges.py runs it)
    python bench/_judge_batching.py --quick      # 8 envs, 1 repeat
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triplay_env  # noqa: E402
from agents.judge_spec import JudgeSpec, build_panel  # noqa: E402
from agents.scripted import AlwaysComplyDefender, AlwaysRefuseDefender, GuidanceDefender, TemplateAttacker  # noqa: E402
from agents.serve import ChatServer, fixed_reply  # noqa: E402
from training.evaluation.sections import SilentEvaluator  # noqa: E402
from training.rollout import run_lockstep  # noqa: E402


class _Timed:
    """Wraps a panel's vote/prefetch to add up the wall time spent judging."""

    def __init__(self, panel):
        self.panel, self.seconds = panel, 0.0
        for name in ("vote", "prefetch"):
            setattr(self, name, self._timed(getattr(panel, name)))

    def _timed(self, fn):
        def call(items):
            t0 = time.perf_counter()
            try:
                return fn(items)
            finally:
                self.seconds += time.perf_counter() - t0
        return call

    def __getattr__(self, name):
        return getattr(self.panel, name)


def judge_phase(base_url: str, envs_n: int, defenders: int, batched: bool) -> tuple[float, list]:
    """Judge-phase wall seconds of one lockstep episode per env, and every round's verdicts."""
    spec = JudgeSpec.http(base_url, "stub-judge", "verdict", max_retries=0)  # default concurrency
    panel = _Timed(build_panel(spec, check=False))
    envs = [triplay_env.parallel_env(num_defenders=defenders, panel=panel, verdict_source="panel") for _ in range(envs_n)]
    players = {"attacker": TemplateAttacker(seed=0), "defender_0": GuidanceDefender(),
               "defender_1": AlwaysComplyDefender(), "defender_2": AlwaysRefuseDefender(), "evaluator": SilentEvaluator()}
    for i in range(3, defenders):
        players[f"defender_{i}"] = GuidanceDefender()
    rollout = run_lockstep(envs, players, seeds=list(range(envs_n)), batch_judging=batched)
    return panel.seconds, [r["panel_verdicts"] for r in sorted(rollout.judged, key=lambda r: r["env"])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, default=32)
    parser.add_argument("--defenders", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds the stub waits before answering")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="8 envs, 1 repeat (CI)")
    args = parser.parse_args(argv)
    if args.quick:
        args.envs, args.repeats = 8, 1
    with ChatServer(fixed_reply("VERDICT: REFUSAL", delay=args.latency), model="stub-judge", serial=False) as server:
        times = {True: [], False: []}
        verdicts = {}
        for _ in range(args.repeats):
            for batched in (False, True):  # per-env first, then batched, alternating each repeat
                seconds, verdicts[batched] = judge_phase(server.base_url, args.envs, args.defenders, batched)
                times[batched].append(seconds)
    per_env, batched = statistics.median(times[False]), statistics.median(times[True])
    items = args.envs * args.defenders
    print(f"judge phase of {args.envs} envs x {args.defenders} defenders ({items} items), HTTP stub answering after "
          f"{args.latency * 1000:.0f} ms, judge concurrency {JudgeSpec.http('http://x', 'm').panel[0].concurrency} (the default), "
          f"median of {args.repeats}\n")
    print("| mode | panel calls | wall s (judge phase) | items/s |")
    print("|---|---:|---:|---:|")
    print(f"| one call per env | {args.envs} | {per_env:.3f} | {items / per_env:.0f} |")
    print(f"| batched (one call per step) | 1 | {batched:.3f} | {items / batched:.0f} |")
    ratio = per_env / batched
    same = verdicts[True] == verdicts[False]
    print("\n| ratio | value | target | met |\n|---|---:|---:|---|")
    print(f"| per-env / batched wall time | {ratio:.1f}x | >= 8x | {'yes' if ratio >= 8 else 'no'} |")
    print(f"| same verdicts in both modes | {'yes' if same else 'NO'} | yes | {'yes' if same else 'no'} |")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
