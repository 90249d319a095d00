"""``triplay play``: episodes between chosen agents, with transcripts and a per-role reward table.

A person can take any role (``--human defender``): the terminal shows that role's prompt and reads the
answer from standard input (end it with an empty line).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from agents.base import Agent, Turn
from agents.scripted import make_scripted
from training.rollout import Rollout, run_lockstep
from triplay_env.agent_ids import agent_id

__all__ = ["HumanAgent", "play", "reward_table"]


class HumanAgent(Agent):
    """Reads each answer from a stream (stdin by default): lines until an empty line or end of input."""

    def __init__(self, stdin: TextIO | None = None, stdout: TextIO | None = None):
        self.stdin, self.stdout = stdin or sys.stdin, stdout or sys.stdout

    def act(self, turns: Sequence[Turn]) -> list[str]:
        out = []
        for t in turns:
            self.stdout.write(f"\n=== you are {t.agent} ===\n{t.prompt}\n--- your answer (end with an empty line):\n")
            self.stdout.flush()
            lines = []
            for line in self.stdin:
                if not line.strip():
                    break
                lines.append(line.rstrip("\n"))
            out.append("\n".join(lines))
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
    resolved = {k: make_scripted(v) if isinstance(v, str) else v for k, v in players.items()}
    envs = [triplay_env.parallel_env(**env_config) for _ in range(episodes)]
    rollout = run_lockstep(envs, resolved, seeds=[seed + i for i in range(episodes)])
    if transcripts:
        for i, env in enumerate(envs):
            out.write(f"\n##### episode {i} (seed {seed + i})\n{env.transcript()}\n")
    out.write("\n" + reward_table(rollout, episodes) + "\n")
    return rollout
