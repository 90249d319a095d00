"""Ctrl-C in train, eval or play: one line, exit 130, the last checkpoint intact; a resumed run logs each step once."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _interrupt_when(proc: subprocess.Popen, ready, timeout: float = 300.0) -> tuple[str, str]:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "never got ready to be interrupted"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    return proc.communicate(timeout=120)


def _steps(run: Path) -> list[tuple]:
    return [(r["iteration"], r["phase"], r["step"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def test_ctrl_c_in_train_says_how_to_resume_and_the_resumed_run_logs_every_step_once(tmp_path):
    args = ["--preset", "tiny", "--set", f"loop.runs_dir={tmp_path}", "--set", "loop.iterations=3",
            "--set", "loop.progress=false"]
    proc = subprocess.Popen([sys.executable, "-m", "training.cli", "train", *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "tiny-tiny-seed0"
    # interrupt once iteration 1 is checkpointed and iteration 2 has logged its first step (mid-iteration)
    _, err = _interrupt_when(proc, lambda: (run / "checkpoint" / "state.pt").is_file() and (run / "metrics.jsonl").is_file()
                             and any(s[0] == 2 for s in _steps(run)))
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("triplay train: interrupted at iteration 2; the checkpoint after iteration 1 is intact; "
                          "continue with `triplay train --preset tiny --set "), err
    command = err.split("`")[1]
    assert command.endswith("--resume")
    resumed = subprocess.run([sys.executable, "-m", "training.cli", *shlex.split(command)[1:]], cwd=ROOT, env=ENV,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    steps = _steps(run)
    assert len(steps) == len(set(steps))  # the interrupted step is written once, not twice
    # iteration 0's held-out evaluation, then per iteration 3 phases x 1 step and a held-out evaluation
    expected = [(0, "heldout", 0)] + [(i, p, 0) for i in (1, 2, 3) for p in ("red", "blue", "eval", "heldout")]
    assert steps == expected


def test_ctrl_c_in_play_waiting_for_a_human_is_one_line_and_exit_130():
    proc = subprocess.Popen([sys.executable, "-m", "training.cli", "play", "--episodes", "1", "--human", "defender"],
                            cwd=ROOT, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    seen: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            seen.append(line)

    import threading

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def prompted() -> bool:
        return any("your answer" in line for line in seen)

    deadline = time.monotonic() + 120
    while not prompted():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read()
    proc.wait(timeout=60)
    assert proc.returncode == 130 and err == "triplay play: interrupted\n", err
