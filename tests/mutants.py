"""Mutation checks: each mutation below must make the tests named with it fail.

    python tests/mutants.py                  # every mutation (about 2 minutes on 2 cores)
    python tests/mutants.py --only B1 A3a    # some of them, by name
    python tests/mutants.py --list           # names and what each one breaks

For each mutation the repository is copied to a fresh temporary folder (without .venv, .git and caches),
the exact ``original`` snippet of ``file`` is replaced by ``replacement`` there, and the mutation's tests
run in that copy (``PYTHONPATH`` and the working folder point at it, so the copy's modules are imported,
not the editable install's). A failing test run means KILLED; a passing one SURVIVED.

Exit status 1 when a mutation survived, when its original snippet is no longer found exactly once (the
code moved on: update the mutation, so this list stays honest), when pytest did not run the tests as asked
(exit status other than 0 or 1), or when the named tests fail on the unmutated copy (a mutant "killed" by a
test that fails anyway proves nothing; checked first, ``--no-baseline`` skips it).

This is a script, not a test module: pytest collects ``test_*.py`` only, and nothing here runs on import.
Results are recorded in ``tests/MUTANTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.pyc", "*.egg-info", "build", "dist", "runs",
                                ".cache", ".hypothesis", ".pytest_cache", ".ruff_cache", ".whl", "_out")


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str
    """the behaviour the mutation breaks"""
    file: str
    original: str
    replacement: str
    tests: tuple[str, ...]
    """pytest node ids, relative to the repository root, that must fail on the mutant"""


API = "tests/triplay_env/test_api.py::"
ROLLOUT = "tests/training/test_rollout.py::"
OPTIONS = "tests/triplay_env/test_env_options.py::"
DR_GRPO = ("tests/training/test_dr_grpo_normaliser.py::"
           "test_dr_grpo_micro_batches_use_the_whole_batchs_constant_normaliser")
UNICODE = (API + "test_spaces_are_cached_and_contain_observations", API + "test_unicode_text_bounds_and_sampling")
SHARED = (ROLLOUT + "test_blue_phase_shares_one_attack_per_group",
          ROLLOUT + "test_eval_phase_shares_the_attack_and_the_response")
STOP = (OPTIONS + "test_stop_on_success_ends_the_scenario_at_the_first_success",
        OPTIONS + "test_without_stop_on_success_every_round_is_played",
        OPTIONS + "test_stop_on_success_counts_defender_0_only_and_benign_success_is_a_refusal")
CUT = (OPTIONS + "test_long_prompts_keep_their_last_max_observation_chars",
       OPTIONS + "test_a_prompt_of_exactly_max_observation_chars_is_kept_whole")

MUTATIONS = (
    Mutation("A1", "StrategyAttacker view's action masks ignored (all strategies allowed)",
             "agents/views.py",
             'return strategy_action_mask(info["scenario"]["harmful"], strategies_used(info))',
             "return np.ones(self.action_space.n, dtype=bool)",
             (API + "test_maskable_ppo_trains_on_the_views_action_masks",)),
    Mutation("A2", "a bench script no longer accepts --quick",
             "bench/judges.py",
             '    parser.add_argument("--quick", action="store_true", help="one CV split, speed over 128 pairs (CI)")\n',
             "",
             ("tests/test_bench_run_all.py::test_every_bench_script_accepts_quick",)),
    Mutation("A3a", "UnicodeText.contains accepts anything",
             "triplay_env/spaces.py",
             "return isinstance(x, str) and self.min_length <= len(x) <= self.max_length",
             "return True",
             UNICODE),
    Mutation("A3b", "UnicodeText.contains ignores the length limits",
             "triplay_env/spaces.py",
             "return isinstance(x, str) and self.min_length <= len(x) <= self.max_length",
             "return isinstance(x, str)",
             UNICODE),
    Mutation("B1", "rollout moves paid 0.0 instead of their JUDGE step's reward",
             "training/rollout.py",
             "m.reward = rewards[m.agent]",
             "m.reward = 0.0",
             (ROLLOUT + "test_each_move_carries_the_reward_of_its_own_round",)),
    Mutation("B2a", "run_lockstep ignores shared_roles (every env acts on its own)",
             "training/rollout.py",
             "if role_of(agent) in shared_roles else (lambda i: i)",
             "if False else (lambda i: i)",
             SHARED),
    Mutation("B2b", "coevolve shares no role in P_Blue / P_Eval",
             "training/coevolve.py",
             'SHARED_ROLES = {"red": (), "blue": ("attacker",), "eval": ("attacker", "defender")}',
             'SHARED_ROLES = {"red": (), "blue": (), "eval": ()}',
             SHARED),
    Mutation("B3a", "dr_grpo normaliser's L taken per micro-batch (trainer passes the micro-batch width)",
             "training/trainer.py",
             "max_completion_length=width,",
             "max_completion_length=t,",
             (DR_GRPO,)),
    Mutation("B3b", "dr_grpo normaliser's L taken per micro-batch (grpo_loss ignores max_completion_length)",
             "training/grpo.py",
             "loss = per_token.sum() / (B * max_completion_length)",
             "loss = per_token.sum() / (B * T)",
             (DR_GRPO,)),
    Mutation("B4a", "stop_on_success flipped (stops when it is off)",
             "triplay_env/env.py",
             "not (self.stop_on_success and success)",
             "not (not self.stop_on_success and success)",
             STOP),
    Mutation("B4b", "stop_on_success's success test inverted (stops on a failed attack)",
             "triplay_env/env.py",
             "not (self.stop_on_success and success)",
             "not (self.stop_on_success and not success)",
             STOP),
    Mutation("B5a", "max_observation_chars cut removed",
             "triplay_env/env.py",
             "if len(prompt) > self.max_observation_chars:",
             "if False:",
             CUT),
    Mutation("B5b", "max_observation_chars cut off by one (keeps N - 1 characters)",
             "triplay_env/env.py",
             "prompt = prompt[-self.max_observation_chars :]",
             "prompt = prompt[-self.max_observation_chars + 1 :]",
             CUT),
    Mutation("B5c", "max_observation_chars keeps the start instead of the end",
             "triplay_env/env.py",
             "prompt = prompt[-self.max_observation_chars :]",
             "prompt = prompt[: self.max_observation_chars]",
             CUT),
)


def copy_repo(into: Path) -> Path:
    target = into / "repo"
    shutil.copytree(ROOT, target, ignore=IGNORE, symlinks=True)
    return target


def run_tests(repo: Path, tests: tuple[str, ...], timeout: float) -> tuple[int, str]:
    """pytest on ``tests`` inside ``repo``, importing the copy's modules; returns (exit status, output tail)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(repo), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    # first make sure the copy is what gets imported (an editable install points at the original tree)
    probe = "import agents, training, triplay_env; print(training.__file__, triplay_env.__file__, agents.__file__)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=repo, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0 or any(not Path(p).resolve().is_relative_to(repo.resolve()) for p in out.stdout.split()):
        return 99, f"the copy's modules are not the ones imported: {out.stdout.strip()} {out.stderr.strip()[-500:]}"
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--no-header", *tests]
    try:
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return 98, f"timed out after {timeout:.0f} s"
    return proc.returncode, (proc.stdout + proc.stderr)[-3000:]


def check(mutation: Mutation, timeout: float) -> tuple[str, float, str]:
    """Apply ``mutation`` to a fresh copy and run its tests: (result, seconds, detail)."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutation.name}-") as tmp:
        repo = copy_repo(Path(tmp))
        path = repo / mutation.file
        if not path.exists():
            return "MISSING", time.perf_counter() - start, f"{mutation.file} does not exist"
        text = path.read_text(encoding="utf-8")
        found = text.count(mutation.original)
        if found != 1:
            return "MISSING", time.perf_counter() - start, (
                f"original snippet found {found} times in {mutation.file} (must be exactly once): "
                f"{mutation.original!r}")
        path.write_text(text.replace(mutation.original, mutation.replacement), encoding="utf-8")
        code, tail = run_tests(repo, mutation.tests, timeout)
    seconds = time.perf_counter() - start
    if code == 1:
        return "KILLED", seconds, ""
    if code == 0:
        return "SURVIVED", seconds, tail
    return f"ERROR (pytest exit {code})", seconds, tail


def baseline(mutations: list[Mutation], timeout: float) -> tuple[bool, float, str]:
    """The mutations' tests on an unmutated copy: they must all pass."""
    tests = tuple(dict.fromkeys(t for m in mutations for t in m.tests))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mutant-baseline-") as tmp:
        code, tail = run_tests(copy_repo(Path(tmp)), tests, timeout)
    return code == 0, time.perf_counter() - start, tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutations (names from --list)")
    parser.add_argument("--list", action="store_true", help="print the mutations and exit")
    parser.add_argument("--no-baseline", action="store_true", help="skip running the tests on the unmutated copy first")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per pytest run (default 600)")
    args = parser.parse_args(argv)

    by_name = {m.name: m for m in MUTATIONS}
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name:4} {m.file}: {m.what}\n     killed by: {', '.join(m.tests)}")
        return 0
    unknown = sorted(set(args.only or ()) - set(by_name))
    if unknown:
        parser.error(f"unknown mutation(s) {unknown}; known: {', '.join(by_name)}")
    chosen = [by_name[n] for n in args.only] if args.only else list(MUTATIONS)

    failed = False
    if not args.no_baseline:
        ok, seconds, tail = baseline(chosen, args.timeout)
        print(f"baseline (unmutated copy): {'passed' if ok else 'FAILED'} in {seconds:.1f} s", flush=True)
        if not ok:
            print(tail)
            return 1
    rows = []
    for m in chosen:
        result, seconds, detail = check(m, args.timeout)
        rows.append((m, result, seconds))
        print(f"{m.name:4} {result:9} {seconds:6.1f} s  {m.what}", flush=True)
        if result != "KILLED":
            failed = True
            print(detail)

    print(f"\n{datetime.date.today().isoformat()}, {sys.executable}: "
          f"{sum(r == 'KILLED' for _, r, _ in rows)} of {len(rows)} killed\n")
    print("| mutation | file | killed by | result | seconds |\n|---|---|---|---|---|")
    for m, result, seconds in rows:
        tests = "<br>".join(f"`{t.split('::')[-1]}`" for t in m.tests)
        print(f"| {m.name}: {m.what} | `{m.file}` | {tests} | {result} | {seconds:.1f} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
