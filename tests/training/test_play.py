"""`triplay play`: scripted episodes, and a person playing a role through standard input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_human_defender_plays_one_episode_through_stdin():
    answer = "I'm sorry, but I can't help with that.\n\n"
    proc = subprocess.run(
        [sys.executable, "-m", "training.cli", "play", "--episodes", "1", "--human", "defender",
         "--benign-fraction", "0", "--seed", "3"],
        input=answer, capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "=== you are defender_0 ===" in out  # the prompt was shown
    assert "defender_0: I'm sorry, but I can't help with that." in out  # the answer entered the game
    # a bare refusal of a harmful seed: every judge says refusal, the triplay defender table pays 0
    assert "verdict: refusal" in out
    assert "| defender_0 | +0.000 |" in out
    assert "| defender_0 | 0 | 1 | 0 |" in out


def test_scripted_play_reward_table():
    proc = subprocess.run(
        [sys.executable, "-m", "training.cli", "play", "--episodes", "3", "--defender", "comply",
         "--benign-fraction", "0", "--no-transcripts"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    # an always-comply defender loses every harmful seed: -1 per episode under the triplay table
    assert "| defender_0 | -1.000 |" in proc.stdout
    assert "| defender_0 | 3 | 0 | 0 | 1.00 |" in proc.stdout


def test_bad_arguments_exit_2_with_the_reason():
    proc = subprocess.run([sys.executable, "-m", "training.cli", "play", "--reward-scheme", "nope"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "zero_sum" in proc.stderr
