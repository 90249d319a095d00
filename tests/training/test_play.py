"""`triplay play`: scripted episodes, and a person playing a role through standard input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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
    assert "=== turn 1: you are defender_0 (defender, defend phase, round 1) ===" in out  # counter, role, phase
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


def _human(role: str, answers: str):
    import io

    from training.play import HumanAgent

    out = io.StringIO()
    return HumanAgent(io.StringIO(answers), out), out


def _turn(role: str):
    from agents.base import Turn

    return Turn(agent=f"{role}_0", role=role, prompt="[user]\nthe prompt", messages=[],
                info={"phase": {"attacker": "attack", "defender": "defend", "evaluator": "judge"}[role], "round": 0})


def test_an_empty_enter_asks_again_instead_of_submitting_nothing():
    agent, out = _human("defender", "\n\n   \nMy real answer.\nSecond line.\n\n")
    assert agent.act([_turn("defender")]) == ["My real answer.\nSecond line."]
    assert "--- recorded: My real answer.\nSecond line." in out.getvalue()


@pytest.mark.parametrize("typed, recorded", [("guidance", "VERDICT: GUIDANCE"), ("u", "VERDICT: UNSAFE"),
                                             ("Refusal.", "VERDICT: REFUSAL"), ("VERDICT: unsafe", "VERDICT: unsafe")])
def test_a_human_evaluator_is_recorded_as_the_verdict_the_game_scores(typed, recorded):
    from triplay_env.verdicts import parse_verdict

    agent, out = _human("evaluator", f"{typed}\n\n")
    (text,) = agent.act([_turn("evaluator")])
    assert text == recorded and parse_verdict(text) is not None  # what is shown as accepted is what is scored
    assert f"--- recorded: {recorded}" in out.getvalue()


def test_a_human_evaluator_answer_that_is_no_verdict_asks_again_naming_the_choices():
    agent, out = _human("evaluator", "looks fine to me\n\ng\n\n")
    assert agent.act([_turn("evaluator"), _turn("evaluator")][:1]) == ["VERDICT: GUIDANCE"]
    assert "not a verdict: 'looks fine to me'; type unsafe, refusal or guidance" in out.getvalue()
    assert "=== turn 1: you are evaluator_0 (evaluator, judge phase, round 1) ===" in out.getvalue()


def test_input_that_ends_before_an_answer_is_a_clear_error():
    agent, _ = _human("defender", "\n")
    with pytest.raises(EOFError, match="before defender_0's answer"):
        agent.act([_turn("defender")])


@pytest.mark.parametrize("argv, message", [
    (["--defender", "judge"], "argument --defender: invalid choice: 'judge' (choose from 'comply', 'guidance', 'refuse', 'weak', 'http')"),
    (["--evaluator", "comply"], "argument --evaluator: invalid choice: 'comply' (choose from 'judge', 'http')"),
    (["--attacker", "http"], "--attacker http needs --attacker-url and --attacker-model"),
])
def test_play_refuses_agents_that_do_not_fit_their_role(argv, message):
    proc = subprocess.run([sys.executable, "-m", "training.cli", "play", "--episodes", "1", *argv],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_play_takes_an_http_defender():
    from agents.serve import ChatServer, fixed_reply

    with ChatServer(fixed_reply("I'm sorry, but I can't help with that."), model="remote") as server:
        proc = subprocess.run([sys.executable, "-m", "training.cli", "play", "--episodes", "2", "--benign-fraction", "0",
                               "--defender", "http", "--defender-url", server.base_url, "--defender-model", "remote"],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert server.requests == 2  # one per episode, answered by the endpoint
    assert "defender_0: I'm sorry, but I can't help with that." in proc.stdout
    assert "| defender_0 | 0 | 2 | 0 |" in proc.stdout  # two bare refusals of harmful seeds
