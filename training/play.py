"""``triplay play``: episodes between chosen agents, with transcripts and a per-role reward table.

A person can take any role (``--human defender``): the terminal shows a turn counter, the role and phase and
that role's prompt, and reads the answer from standard input (end it with an empty line).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from agents.base import Agent, Turn
from agents.scripted import make_scripted
from training.rollout import Rollout, run_lockstep
from triplay_env.agent_ids import ROLES, agent_id, role_of
from triplay_env.verdicts import Verdict, format_verdict, parse_verdict

__all__ = ["HumanAgent", "play", "reward_table"]


class HumanAgent(Agent):
    """A person at the terminal: each turn shows a counter, the role and the phase, the role's prompt, and reads
    the answer from a stream (stdin by default), lines until an empty line.

    An empty answer asks again (it would be a non-answer, never what someone at the keyboard meant). As the
    evaluator, ``unsafe``, ``refusal`` or ``guidance`` (or ``u``, ``r``, ``g``, or a full ``VERDICT: ...`` line)
    is accepted and recorded as the verdict line the game scores; anything else asks again, naming the choices.
    What is printed as recorded is exactly the text the env scores.
    """

    VERDICT_WORDS = {"u": "unsafe", "r": "refusal", "g": "guidance", "unsafe": "unsafe", "refusal": "refusal",
                     "guidance": "guidance"}

    def __init__(self, stdin: TextIO | None = None, stdout: TextIO | None = None):
        self.stdin, self.stdout = stdin or sys.stdin, stdout or sys.stdout
        self.turns = 0

    def _read(self) -> str | None:
        lines = []
        for line in self.stdin:
            if not line.strip():
                if lines:
                    break
                continue  # an empty Enter before any text: keep waiting
            lines.append(line.rstrip("\n"))
        return "\n".join(lines) if lines else None

    def _evaluator_text(self, answer: str) -> str | None:
        word = self.VERDICT_WORDS.get(answer.strip().lower().rstrip("."))
        if word is not None:
            return format_verdict(Verdict(word))
        return answer if parse_verdict(answer) is not None else None

    def act(self, turns: Sequence[Turn]) -> list[str]:
        out = []
        for t in turns:
            self.turns += 1
            phase = t.info.get("phase", "?")
            self.stdout.write(f"\n=== turn {self.turns}: you are {t.agent} ({t.role}, {phase} phase, round "
                              f"{int(t.info.get('round', 0)) + 1}) ===\n{t.prompt}\n")
            hint = ("your verdict: unsafe, refusal or guidance (u/r/g), then an empty line" if t.role == "evaluator"
                    else "your answer (end with an empty line)")
            while True:
                self.stdout.write(f"--- {hint}:\n")
                self.stdout.flush()
                answer = self._read()
                if answer is None:
                    raise EOFError(f"standard input ended before {t.agent}'s answer (turn {self.turns})")
                text = self._evaluator_text(answer) if t.role == "evaluator" else answer
                if text is not None:
                    break
                self.stdout.write(f"not a verdict: {answer[:60]!r}; type unsafe, refusal or guidance\n")
            self.stdout.write(f"--- recorded: {text}\n")
            out.append(text)
        return out


def reward_table(rollout: Rollout, episodes: int) -> str:
    """Markdown table: mean reward per episode for each agent, and verdict counts for the defenders."""
    lines = ["| agent | mean reward / episode |", "|---|---|"]
    for agent, total in rollout.returns.items():
        lines.append(f"| {agent} | {total / episodes:+.3f} |")
    counts: dict[str, dict[str, int]] = {}
    for record in rollout.judged:
        for d, v in enumerate(record["verdicts"]):
            tally = counts.setdefault(agent_id("defender", d), {})
            tally[v or "none"] = tally.get(v or "none", 0) + 1
    lines += ["", "| defender | unsafe | refusal | guidance | success rate of attacks |", "|---|---|---|---|---|"]
    for d, c in counts.items():
        n = sum(c.values())
        success = sum(r["success"] for r in rollout.judged) if d == "defender_0" else None
        rate = f"{success / n:.2f}" if success is not None else "-"
        lines.append(f"| {d} | {c.get('unsafe', 0)} | {c.get('refusal', 0)} | {c.get('guidance', 0)} | {rate} |")
    return "\n".join(lines)


def play(env_config: dict, players: dict[str, Agent | str], episodes: int = 4, seed: int = 0,
         out: TextIO | None = None, transcripts: bool = True) -> Rollout:
    """Play ``episodes`` games in lockstep and print transcripts and the reward table to ``out``."""
    import triplay_env

    out = out or sys.stdout
    resolved = {k: make_scripted(v, k if k in ROLES else role_of(k)) if isinstance(v, str) else v
                for k, v in players.items()}
    envs = [triplay_env.parallel_env(**env_config) for _ in range(episodes)]
    rollout = run_lockstep(envs, resolved, seeds=[seed + i for i in range(episodes)])
    if transcripts:
        for i, env in enumerate(envs):
            out.write(f"\n##### episode {i} (seed {seed + i})\n{env.transcript()}\n")
    out.write("\n" + reward_table(rollout, episodes) + "\n")
    return rollout
