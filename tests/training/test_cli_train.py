"""``triplay train`` end to end, as the user runs it: a subprocess of ``python -m training.cli train``.

- a ``tiny`` run writes, for every iteration, every metric the report plots, plus ``report.md`` and its PNGs;
- a run killed (SIGKILL) after a checkpoint and resumed with ``--resume`` logs exactly the metrics of an
  uninterrupted run with the same seed (``time/`` keys aside);
- ``--resume`` refuses a config that differs from the checkpoint's and names the keys;
- an unknown preset or field, or a negative learning rate, exits with code 2 naming it, before any model loads.

The two long runs (uninterrupted, killed-then-resumed) go side by side, one torch thread each
(``OMP_NUM_THREADS=1``: on a shared 2-core machine more threads than cores make the tiny model's matmuls tens
of times slower). On a quiet machine each costs ~10 s of imports plus a few seconds per iteration.
"""

from __future__ import annotations

import json
import re
import math
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training.report import CONDITIONAL_KEYS, PLOTS, TABLE_KEYS

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
RUN = "tiny-tiny-seed0"
"""run folder name: preset, model and seed"""
ITERATIONS = 3
RUN_TIMEOUT_S = 600

TRAINING_KEYS = {"red": "red/reward_attacker", "blue": "blue/reward_defender", "eval": "eval/reward_evaluator"}
"""phase -> the trained role's mean reward in that phase's record"""
HELDOUT_KEYS = [
    "heldout/attack_success_rate",
    "heldout/unsafe_rate", "heldout/refusal_rate", "heldout/guidance_rate",
    "heldout/over_refusal_rate",
    "heldout/evaluator_agreement", "heldout/evaluator_valid_rate",
    "heldout/attack_self_bleu", "heldout/attack_semantic_similarity",
]
"""what every held-out evaluation (phase ``heldout``, iteration 0 included) must report, with ``heldout/n_<name>``"""
HELDOUT_REWARDS = ["heldout/reward_attacker", "heldout/reward_defender", "heldout/reward_evaluator"]
"""each role's mean return on the held-out games"""


def train_command(runs_dir: Path, *extra: str, iterations: int = ITERATIONS) -> list[str]:
    return [sys.executable, "-m", "training.cli", "train", "--preset", "tiny",
            "--set", f"loop.runs_dir={runs_dir}", "--set", f"loop.iterations={iterations}",
            "--set", "loop.eval_scenarios=2", "--set", "loop.progress=false", "--set", "loop.tensorboard=false", *extra]


class Run:
    """A ``triplay train`` subprocess whose output goes to files (a full pipe would block it)."""

    def __init__(self, runs_dir: Path, *extra: str, iterations: int = ITERATIONS, name: str = "train"):
        runs_dir.mkdir(parents=True, exist_ok=True)
        self.runs_dir, self.run_dir = runs_dir, runs_dir / RUN
        self.stdout, self.stderr = runs_dir / f"{name}.stdout", runs_dir / f"{name}.stderr"
        with open(self.stdout, "w") as out, open(self.stderr, "w") as err:
            self.proc = subprocess.Popen(train_command(runs_dir, *extra, iterations=iterations), cwd=ROOT, env=ENV,
                                         stdout=out, stderr=err)

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def output(self) -> str:
        return f"--- stdout\n{self.stdout.read_text()}\n--- stderr\n{self.stderr.read_text()[-3000:]}"

    def metrics(self) -> list[dict]:
        return [json.loads(line) for line in (self.run_dir / "metrics.jsonl").read_text().splitlines()]


def run_to_end(runs_dir: Path, *extra: str, name: str = "train") -> Run:
    run = Run(runs_dir, *extra, name=name)
    rc = run.wait()
    assert rc == 0, f"triplay train exited with {rc}\n{run.output()}"
    return run


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A 3-iteration tiny run, started at once and waited for by whoever needs its results."""
    run = Run(tmp_path_factory.mktemp("uninterrupted"))
    yield run
    if run.proc.poll() is None:
        run.proc.kill()
        run.proc.wait()


def finished(run: Run) -> Run:
    rc = run.wait()
    assert rc == 0, f"triplay train exited with {rc}\n{run.output()}"
    return run


def without_time(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith("time/")}


def same_value(a, b) -> bool:
    """Exact equality, with nan == nan."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


# ---------------------------------------------------------------------------------------------------------
# kill and resume (first: it runs beside the uninterrupted run)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_killed_and_resumed_run_logs_the_same_metrics_as_an_uninterrupted_one(uninterrupted, tmp_path):
    import torch

    killed = Run(tmp_path, name="killed")
    checkpoint = killed.run_dir / "checkpoint" / "state.pt"
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not checkpoint.exists():  # the folder appears whole (renamed into place): state.pt is complete
        assert killed.proc.poll() is None, f"the run ended before its first checkpoint\n{killed.output()}"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.05)
    killed.proc.send_signal(signal.SIGKILL)
    assert killed.proc.wait() == -signal.SIGKILL
    killed_after = torch.load(checkpoint, weights_only=False)["iteration"]
    assert 1 <= killed_after < ITERATIONS, f"killed after iteration {killed_after}: nothing left to resume"

    resumed = run_to_end(tmp_path, "--resume", name="resumed")
    assert f"resumed {killed.run_dir} after iteration {killed_after}" in resumed.stdout.read_text()

    expected = [without_time(r) for r in finished(uninterrupted).metrics()]
    got = [without_time(r) for r in resumed.metrics()]
    assert [(r["iteration"], r["phase"]) for r in got] == [(r["iteration"], r["phase"]) for r in expected]
    for want, have in zip(expected, got):
        where = f"iteration {want['iteration']} {want['phase']}"
        assert have.keys() == want.keys(), f"{where}: keys differ: {sorted(have.keys() ^ want.keys())}"
        differ = {k: (want[k], have[k]) for k in want if not same_value(want[k], have[k])}
        assert not differ, f"{where}: resumed run differs from the uninterrupted one (expected, got): {differ}"
    # the games shown in the report: each step's once, the same games as without the kill
    want = (finished(uninterrupted).run_dir / "transcripts.jsonl").read_text()
    assert (resumed.run_dir / "transcripts.jsonl").read_text() == want


# ---------------------------------------------------------------------------------------------------------
# every metric, the report and the plots
# ---------------------------------------------------------------------------------------------------------


def test_every_iteration_logs_every_metric(uninterrupted):
    records = finished(uninterrupted).metrics()
    plotted = {k for _, keys in PLOTS.values() for k in keys} - CONDITIONAL_KEYS  # one defender: no reference ASR
    assert set(TRAINING_KEYS.values()) | set(HELDOUT_KEYS) >= plotted | set(TABLE_KEYS)
    by_iteration: dict[int, dict[str, dict]] = {}
    for r in records:
        phases = by_iteration.setdefault(r["iteration"], {})
        assert r["phase"] not in phases, f"two {r['phase']} records in iteration {r['iteration']} (steps_per_phase=1)"
        phases[r["phase"]] = r
    assert sorted(by_iteration) == list(range(ITERATIONS + 1))
    assert list(by_iteration[0]) == ["heldout"]  # iteration 0: the untrained model, evaluated only
    for iteration in range(1, ITERATIONS + 1):
        assert list(by_iteration[iteration]) == ["red", "blue", "eval", "heldout"]
        for phase, key in TRAINING_KEYS.items():
            value = by_iteration[iteration][phase].get(key)
            assert isinstance(value, float) and math.isfinite(value), f"iteration {iteration} {phase}: {key} = {value!r}"
    for iteration, phases in by_iteration.items():
        held_out = phases["heldout"]
        for key in HELDOUT_KEYS:
            value = held_out.get(key)
            assert isinstance(value, float) and math.isfinite(value), f"iteration {iteration} held-out: {key} = {value!r}"
            assert held_out[key.replace("heldout/", "heldout/n_")] >= 1  # the count behind the rate
        for key in HELDOUT_REWARDS:
            value = held_out.get(key)
            assert isinstance(value, float) and math.isfinite(value), f"iteration {iteration} held-out: {key} = {value!r}"
    # A key means one thing: a training-phase metric never shares its name with a held-out one (the report
    # averages every record of an iteration per key, so a shared name would mix the two).
    training = {k for r in records if r["phase"] != "heldout" for k in r if "/" in k}
    held_out = {k for r in records if r["phase"] == "heldout" for k in r if "/" in k}
    assert not training & held_out, f"keys used by both training-phase and held-out records: {sorted(training & held_out)}"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails on anything that is not a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    assert head[12:16] == b"IHDR", f"{path.name} has no IHDR chunk first"
    return struct.unpack(">II", head[16:24])


def test_report_and_plots_are_written(uninterrupted):
    run = finished(uninterrupted)
    assert f"report: {run.run_dir / 'report.md'}" in run.stdout.read_text()
    report = (run.run_dir / "report.md").read_text()
    for iteration in range(ITERATIONS + 1):
        assert f"\n| {iteration} | " in report, f"no table row for iteration {iteration}"
    pngs = sorted((run.run_dir / "plots").glob("*.png"))
    assert {p.stem for p in pngs} == set(PLOTS) | {"optimizer_steps"}
    for png in pngs:
        assert f"](plots/{png.name})" in report, f"report.md does not show {png.name}"
        width, height = png_size(png)
        assert width >= 100 and height >= 100
    # held-out rates with their interval, the first-to-last change read against its interval, the games played
    assert re.search(r"\| 0 \| - \| - \| - \| \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", report), "no interval in the table"
    assert f"| iteration 0 | iteration {ITERATIONS} | difference [95% CI] | reading |" in report
    rows = [json.loads(line) for line in (run.run_dir / "transcripts.jsonl").read_text().splitlines()]
    assert {(r["iteration"], r["phase"]) for r in rows} == {(i, p) for i in range(1, ITERATIONS + 1) for p in ("red", "blue", "eval")}
    assert all(r["which"] in ("highest", "lowest") and r["seed"] and r["attack"] is not None for r in rows)
    for i in range(1, ITERATIONS + 1):
        assert f"### Iteration {i}" in report


def test_records_carry_the_global_optimizer_step(uninterrupted):
    records = finished(uninterrupted).metrics()
    steps = [r["global_step"] for r in records]
    assert steps == sorted(steps) and steps[0] == 0  # iteration 0's evaluation comes before any step
    for r in records:  # each step's mean reward lies inside its bootstrap interval
        if r["phase"] != "heldout":
            key = next(k for k in r if k.startswith(f"{r['phase']}/reward_") and not k.endswith(("_low", "_high")))
            assert r[key + "_low"] <= r[key] <= r[key + "_high"] and r[key.replace("/reward_", "/n_reward_")] >= 1
    trained = [r["global_step"] for r in records if r["phase"] != "heldout"]
    assert trained == list(range(1, len(trained) + 1))
    assert all("NaN" not in line for line in (finished(uninterrupted).run_dir / "metrics.jsonl").read_text().splitlines())


# ---------------------------------------------------------------------------------------------------------
# refusals: exit code 2, naming the field
# ---------------------------------------------------------------------------------------------------------


def test_resume_refuses_a_different_config_and_names_the_keys(uninterrupted):
    run = finished(uninterrupted)
    log_before = (run.run_dir / "metrics.jsonl").read_bytes()
    # loop.iterations may change on --resume (extending a run); grpo.lr may not
    proc = subprocess.run(train_command(run.runs_dir, "--resume", "--set", "grpo.lr=0.002", iterations=ITERATIONS + 1),
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "the config differs from the checkpoint's in ['grpo.lr']" in proc.stderr
    assert (run.run_dir / "metrics.jsonl").read_bytes() == log_before


def test_negative_learning_rate_exits_2_naming_the_field(tmp_path):
    proc = subprocess.run(train_command(tmp_path, "--set", "grpo.lr=-0.001"), cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "triplay train: error: grpo.lr must be > 0, got -0.001" in proc.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "sets, message",
    [
        (["grpo.learning_rate=1e-3"], "--set 'grpo.learning_rate=1e-3': unknown config field 'grpo.learning_rate'"),
        (["grpo.lr"], "--set 'grpo.lr' must look like section.field=value (e.g. --set grpo.lr=5e-5)"),
        (["grpo.lr=[1, 2"], "--set 'grpo.lr=[1, 2': the value is not valid YAML"),
        (["judges.panel=[{url: http://127.0.0.1:9/v1, format: llama}]"],
         "judges.panel[0].model is required for an HTTP judge"),
        (["judges.panel=[{url: http://127.0.0.1:9/v1, model: m, format: llama}]"],
         "judges.panel[0].format must be one of ('verdict', 'llama_guard', 'wildguard', 'harmbench', 'strongreject'), "
         "got 'llama'"),
        (["judges.aggregation=two_stage", "judges.panel=[{name: content, stage: safety}]"],
         "judges: two_stage needs a judge with stage 'helpfulness' (or 'both')"),
        (["game.verdict_source=evaluators"], "game.verdict_source must be evaluator, panel or gated, got 'evaluators'"),
        (["game.reward_kwargs={k: 2, bogus: 1}"], "game.reward_kwargs reward scheme 'triplay' takes no keyword(s) ['bogus']"),
        (["game.defender_weights=[0.5, 0.5]"], "game.defender_weights must be empty or 1 numbers >= 0"),
        (["grpo.lr=-1e-3"], "grpo.lr must be > 0, got -0.001"),
        (["grpo.batch_size=5"], "grpo.batch_size must be a multiple of grpo.group_size=2 (whole groups), got 5"),
        (["loop.iterations=0"], "loop.iterations must be >= 1, got 0"),
    ],
)
def test_invalid_config_exits_2_naming_the_field(sets, message, tmp_path, capsys, no_model_loads):
    from training.cli import main

    argv = ["train", "--preset", "tiny", "--set", f"loop.runs_dir={tmp_path}"]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 2
    assert f"triplay train: error: {message}" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_malformed_yaml_exits_2_naming_the_file_and_line(tmp_path, capsys, no_model_loads):
    from training.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("grpo:\n  lr: 1e-3\n  batch_size: [4\n")  # the flow sequence is never closed
    assert main(["train", "--preset", "tiny", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"triplay train: error: {bad}:4:1: not valid YAML") and err.count("\n") == 1
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("grpo:\n  learn: 1\n")
    assert main(["train", "--preset", "tiny", "--config", str(unknown)]) == 2
    assert f"{unknown}: unknown config field 'grpo.learn'" in capsys.readouterr().err


def test_unknown_preset_exits_2_naming_it(capsys):
    from training.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["train", "--preset", "tiny-ish"])
    assert exit_.value.code == 2
    assert "argument --preset: invalid choice: 'tiny-ish'" in capsys.readouterr().err
