"""Episodes per second through TriPlay's OpenEnv server (``triplay serve``) next to the in-process env.

The client plays the defender with a scripted policy (it always answers the refusal text, so the client costs
nothing); the server's scripted players play the rest (template attacker, judge evaluator with the default
lexical panel), the ``triplay`` reward scheme pays, one round per episode. Cases:

* ``in-process env``: ``triplay_env.parallel_env`` played directly, the same agents and texts (the floor);
* ``in-process adapter``: ``TriPlayEnvironment`` called directly, no server (the adapter's own cost);
* ``server, N session(s)``: ``triplay serve --role defender`` in a subprocess on a free localhost port, N
  ``GenericEnvClient`` sessions (OpenEnv's client, its WebSocket) playing at once from one asyncio loop in this
  process; an episode is one ``reset`` and one ``step`` round trip.

Wall-clock seconds, the best of a few rounds (the machine may be busy; the server and the clients share it).

Usage::

    python bench/openenv_throughput.py            # rounds of 2000 episodes in-process, 400 through the server
    python bench/openenv_throughput.py --quick    # 400 and 80 (about 20 s)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from agents.base import turns_from  # noqa: E402
from agents.scripted import REFUSAL, make_scripted  # noqa: E402


def in_process_env(episodes: int) -> None:
    import triplay_env

    env = triplay_env.parallel_env()
    players = {"attacker_0": make_scripted("template", "attacker"),
               "evaluator_0": make_scripted("judge", "evaluator", judge=env.panel)}
    for seed in range(episodes):
        obs, infos = env.reset(seed=seed)
        for p in players.values():
            p.reset()
        while env.agents:
            actions = {a: (REFUSAL if a == "defender_0" else players[a].act(turns_from(obs, infos, [a]))[0])
                       for a in env.agents if obs[a]["active"]}
            obs, _, _, _, infos = env.step(actions)


def in_process_adapter(episodes: int) -> None:
    from training.integrations.openenv import TriPlayAction, TriPlayEnvironment

    env = TriPlayEnvironment(role="defender")
    for seed in range(episodes):
        result = env.reset(seed=seed)
        while not result.done:
            result = env.step(TriPlayAction(text=REFUSAL))


async def _session(url: str, seeds: range) -> None:
    from openenv.core.generic_client import GenericEnvClient

    async with GenericEnvClient(base_url=url) as env:
        for seed in seeds:
            result = await env.reset(seed=seed)
            while not result.done:
                result = await env.step({"text": REFUSAL})


def through_server(url: str, episodes: int, sessions: int) -> None:
    per = episodes // sessions
    async def run():
        await asyncio.gather(*(_session(url, range(k * per, (k + 1) * per)) for k in range(sessions)))
    asyncio.run(run())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, timeout_s: float = 120.0) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "training.cli", "serve", "--role", "defender", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"triplay serve exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"triplay serve did not answer on port {port} within {timeout_s:g} s")


def best_rate(fn, episodes: int, rounds: int) -> float:
    fn(max(2, episodes // 10))  # warm-up: imports, first connections
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn(episodes)
        best = min(best, time.perf_counter() - t)
    return episodes / best


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer episodes (400 in-process, 80 served per round)")
    args = parser.parse_args(argv)
    local, episodes, rounds = (400, 80, 3) if args.quick else (2000, 400, 3)
    rates = {"in-process env": best_rate(in_process_env, local, rounds),
             "in-process adapter (TriPlayEnvironment)": best_rate(in_process_adapter, local, rounds)}
    port = free_port()
    server = start_server(port)
    url = f"http://127.0.0.1:{port}"
    try:
        for n in (1, 8):
            rates[f"server, {n} session{'s' if n > 1 else ''}"] = best_rate(
                lambda k, n=n: through_server(url, max(k, n), n), episodes, rounds)
    finally:
        server.terminate()
        server.wait(30)
    base = rates["in-process env"]
    table = "\n".join([
        "# Episodes per second: TriPlay's OpenEnv server vs the in-process env",
        "",
        f"defender played by a scripted client (fixed refusal), template attacker, judge evaluator, lexical panel, "
        f"one round; best of {rounds} rounds of {local} episodes in-process, {episodes} through the server; wall clock",
        "",
        "| case | episodes/s | vs in-process env |",
        "|---|---|---|",
        *(f"| {case} | {rate:,.0f} | {rate / base:.2f}x |" for case, rate in rates.items()),
    ])
    print(table)
    return table


if __name__ == "__main__":
    main()
