"""Data parallel with torchrun (gloo on the CPU): N ranks play and learn what one process does with the same
global batch, the pool and the normalisers are global, a dead rank stops the run with a clear error and the run
resumes; plus the pieces that need no second process (splitting the batch, per-row sampling, the pool's hold)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from training.config import ConfigError, apply_overrides, preset
from training.distributed import block, run_difference

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
WORKER = Path(__file__).with_name("ddp_worker.py")

# the tiny preset with rewards that vary and an update that is not a no-op: on a random 3M model the panel
# pays every sample of a group the same, so group advantages are 0; the role baseline makes them r - b
# (global: it is an EMA over the whole batch), and benign seeds make the attacker's reward vary
RUN = ["--preset", "tiny", "--set", "loop.progress=false", "--set", "loop.tensorboard=false",
       "--set", "grpo.role_baseline=true", "--set", "game.benign_fraction=0.5", "--set", "loop.eval_scenarios=4"]


def train(runs_dir: Path, *extra: str, nproc: int | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "training.cli", "train", *RUN, "--set", f"loop.runs_dir={runs_dir}",
               "--set", "loop.run_name=run", *extra, *(["--nproc", str(nproc)] if nproc else [])]
    done = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def worker(scenario: str, out: Path) -> list[dict]:
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(WORKER), scenario, str(out)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"{scenario}.rank{r}.json").read_text()) for r in range(2)]


# ---------------------------------------------------------------------------------------------------------
# whole runs: 2 ranks == 1 process
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process for 2 iterations; 2 ranks for 1 iteration, then resumed on 2 ranks for the second."""
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    t0 = time.perf_counter()
    train(one, "--set", "loop.iterations=2")
    t1 = time.perf_counter()
    first = train(two, "--set", "loop.iterations=1", "--set", "dist.check_sync=true", nproc=2)
    resumed = train(two, "--set", "loop.iterations=2", "--set", "dist.check_sync=true", "--resume", nproc=2)
    t2 = time.perf_counter()
    print(f"\n1 process: {t1 - t0:.1f} s; 2 ranks (1 iteration, then resumed for 1): {t2 - t1:.1f} s")
    # moved between rank counts at the checkpoint: 2 ranks then 1 process, and 1 process then 2 ranks
    down, up = tmp_path_factory.mktemp("down"), tmp_path_factory.mktemp("up")
    train(down, "--set", "loop.iterations=1", nproc=2)
    moved = train(down, "--set", "loop.iterations=2", "--resume")
    train(up, "--set", "loop.iterations=1")
    train(up, "--set", "loop.iterations=2", "--resume", nproc=2)
    return {"one": one / "run", "two": two / "run", "first": first, "resumed": resumed, "down": down / "run",
            "up": up / "run", "moved": moved}


def test_two_ranks_log_and_learn_what_one_process_does(runs):
    diff = run_difference(runs["one"], runs["two"])
    print(diff)
    assert diff["paid_max_abs"] < 1e-6, diff  # every loss, reward and return
    assert diff["metrics_max_scaled"] < 1e-5, diff  # every other logged number
    assert diff["weights_max_abs"] < 1e-6, diff  # the final adapters of all three roles
    assert diff["weight_tensors"] == 24 and diff["paid_values"] > 50
    # not vacuous: the updates did something, and the rewards the loop compared were not all equal
    records = [json.loads(line) for line in (runs["two"] / "metrics.jsonl").read_text().splitlines()]
    losses = [r[k] for r in records for k in r if k.endswith("/loss") and r[k] is not None]
    assert len(losses) == 6 and max(abs(v) for v in losses) > 0.1, losses
    rewards = {r["red/reward_attacker"] for r in records if r["phase"] == "red"}
    assert len(rewards) == 2, rewards
    from safetensors.torch import load_file

    final = load_file(str(runs["two"] / "checkpoint" / "adapters" / "evaluator" / "adapter_model.safetensors"))
    assert max(float(t.abs().max()) for k, t in final.items() if "lora_B" in k) > 0  # peft starts lora_B at 0


def test_only_rank_0_writes_and_it_says_how_many_ranks(runs):
    out = runs["first"].stdout
    assert out.count("triplay train: preset tiny") == 1 and "2 ranks" in out, out
    assert out.count("[iter 1]  red step 0") == 1, out
    steps = [(r["iteration"], r["phase"]) for r in map(json.loads, (runs["two"] / "metrics.jsonl").read_text().splitlines())]
    assert steps == [(0, "heldout")] + [(i, p) for i in (1, 2) for p in ("red", "blue", "eval", "heldout")]
    assert "resumed" in runs["resumed"].stdout
    state = torch.load(runs["two"] / "checkpoint" / "state.pt", weights_only=False)
    assert state["world_size"] == 2 and len(state["rng_per_rank"]) == 2


def test_a_run_moved_to_another_number_of_ranks_at_its_checkpoint_goes_on_as_one_process_would(runs):
    for moved in ("down", "up"):  # 2 ranks -> 1 process, 1 process -> 2 ranks, after iteration 1
        diff = run_difference(runs["one"], runs[moved])
        assert diff["paid_max_abs"] < 1e-6 and diff["metrics_max_scaled"] < 1e-5 and diff["weights_max_abs"] < 1e-6, (moved, diff)
    assert "resumed" in runs["moved"].stdout and "(written by 2 rank(s), now 1)" in runs["moved"].stdout


# ---------------------------------------------------------------------------------------------------------
# the pieces, on 2 gloo ranks
# ---------------------------------------------------------------------------------------------------------


def test_an_attack_found_on_rank_1_is_penalised_on_rank_0_the_next_step(tmp_path):
    import triplay_env
    from agents.judge_spec import JudgeSpec, build_panel
    from agents.scripted import make_scripted
    from training.rollout import run_lockstep

    ranks = worker("pool", tmp_path)
    # the same two rollouts in one process: env 0 is rank 0's game, env 1 rank 1's
    panel = build_panel(JudgeSpec.from_mapping({"panel": [{"name": "content", "embedder": "lexical"}]}))
    pool = triplay_env.AttackSuccessPool()
    envs = [triplay_env.parallel_env(panel=panel, attack_success_pool=pool, benign_fraction=0.0, verdict_source="panel")
            for _ in range(2)]
    players = {"attacker": make_scripted("template", strategy="role_play"), "defender": make_scripted("comply"),
               "evaluator": make_scripted("judge")}
    single = [run_lockstep(envs, players, seeds).judged for seeds in ([6, 5], [5, 7])]
    first, second = ranks[0]["rollouts"]
    assert ranks[1]["rollouts"][0]["success"] and ranks[1]["rollouts"][0]["attack"] == second["attack"]
    assert first["self_bleu"] == 0.0  # rank 1's attack was not in rank 0's pool before it was found
    assert second["self_bleu"] == 1.0  # ... and is the step after: the same text, Self-BLEU 1, a penalty
    assert second["attacker_reward"] == pytest.approx(single[1][0]["rewards"]["attacker_0"], abs=1e-12)
    assert second["attacker_reward"] < first["attacker_reward"] - 3  # 1.5 - 2(e - 1) - ... : paid for repeating
    for k in range(2):  # every rank's pool is the one pool one process keeps
        assert ranks[0]["rollouts"][k]["pool"] == ranks[1]["rollouts"][k]["pool"]
    assert ranks[0]["rollouts"][1]["pool"] == pool.texts and len(pool) == 4


def test_the_normalisers_are_global_so_two_halves_step_like_the_whole_batch(tmp_path):
    rank0, rank1 = worker("normalisers", tmp_path)
    for loss_type in ("grpo", "dr_grpo", "dapo"):
        got, ref = rank0[loss_type], rank0[loss_type]["reference"]
        assert got["samples"] == ref["samples"] == 6 and got["completion_tokens_mean"] == ref["completion_tokens_mean"] == 4
        assert abs(got["loss"] - ref["loss"]) < 1e-6, loss_type
        assert rank1[loss_type]["loss"] == got["loss"]  # the logged loss is the global one on every rank
        assert got["grad_max_abs_diff"] < 1e-6 < 1e-3 < got["grad_max_abs"], (loss_type, got)
    # the halves' lengths differ (1-3 vs 5-7 tokens): a per-rank token count (dapo) or longest completion
    # (dr_grpo) would give another loss, so the equality above is the global normaliser at work
    for loss_type in ("dr_grpo", "dapo"):
        assert abs(rank0[loss_type]["mean_of_half_losses"] - rank0[loss_type]["reference"]["loss"]) > 1e-3


def test_check_sync_stops_every_rank_naming_the_values(tmp_path):
    for r, result in enumerate(worker("drift", tmp_path)):
        assert result["raised"] == (f"ranks drifted apart: a test checksum differs across ranks {{0: 1.0, 1: 2.0}}; "
                                    f"rank {r} stops")


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the worker with RANK=rank among ``parent``'s descendants."""
    todo = [parent]
    while todo:
        pid = todo.pop()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            try:
                environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ and b"LOCAL_RANK" in b" ".join(environ):
                return child
            todo.append(child)
    return None


def test_a_dead_rank_stops_the_others_with_a_clear_error_and_the_run_resumes(tmp_path):
    command = [sys.executable, "-m", "training.cli", "train", *RUN, "--set", f"loop.runs_dir={tmp_path}",
               "--set", "loop.run_name=run", "--set", "loop.iterations=40", "--set", "dist.timeout_s=30", "--nproc", "2"]
    log = (tmp_path / "out.txt").open("w")
    proc = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT, text=True)
    run = tmp_path / "run"
    deadline = time.monotonic() + 240
    while not (run / "checkpoint" / "state.pt").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, (run / "out.txt")
        time.sleep(0.1)
    victim = _rank_pid(proc.pid, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    proc.wait(timeout=120)
    stopped = time.monotonic() - killed
    log.close()
    out = (tmp_path / "out.txt").read_text()
    print(f"\nrank 1 killed; the run stopped {stopped:.1f} s later")
    assert proc.returncode != 0 and stopped < 30, out[-3000:]
    assert "exitcode: -9" in out, out[-3000:]  # torchrun names the rank that died
    tail = out.strip().splitlines()[-1]
    assert tail.startswith("triplay train: a rank failed (torchrun exit code 1); its last checkpoint is intact; "
                           "continue with `triplay train --preset tiny "), tail
    assert tail.endswith("--resume`"), tail
    # the command it gives, with fewer iterations so the test ends: the run picks up after its checkpoint
    resumed = train(tmp_path, "--set", "loop.iterations=2", "--set", "dist.timeout_s=30", "--resume", nproc=2)
    assert "resumed" in resumed.stdout
    steps = [(r["iteration"], r["phase"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    assert steps[-4:] == [(2, p) for p in ("red", "blue", "eval", "heldout")] and len(steps) == len(set(steps))


# ---------------------------------------------------------------------------------------------------------
# no second process needed
# ---------------------------------------------------------------------------------------------------------


def test_blocks_cover_the_batch_once_in_order():
    assert [list(block(7, r, 3)) for r in range(3)] == [[0, 1, 2], [3, 4], [5, 6]]
    assert [list(block(4, r, 2)) for r in range(2)] == [[0, 1], [2, 3]]
    assert [list(block(1, r, 2)) for r in range(2)] == [[0], []]


@pytest.mark.parametrize("sets, ranks, message", [
    (["grpo.batch_size=8", "grpo.group_size=4"], 3, r"grpo.batch_size is 8: 2 GRPO groups of 4, which 3 ranks cannot "
                                                     r"share evenly .* multiple of group_size x ranks = 12"),
    (["loop.eval_scenarios=2", "grpo.batch_size=6", "grpo.group_size=2"], 3, r"loop.eval_scenarios is 2: fewer held-out games than the 3 ranks"),
    (["model.name=smollm2-135m", "model.backend=vllm", "model.vllm_tensor_parallel_size=2"], 2,
     r"model.vllm_tensor_parallel_size is 2, but under torchrun each of the 2 ranks owns one vLLM engine"),
])
def test_a_run_the_ranks_cannot_share_is_refused_naming_the_field(sets, ranks, message):
    cfg = apply_overrides(preset("tiny"), sets=sets).validate()
    with pytest.raises(ConfigError, match=message):
        cfg.check_world(ranks)
    cfg.check_world(1)


def test_nproc_checks_the_split_before_torchrun_starts(tmp_path):
    done = subprocess.run([sys.executable, "-m", "training.cli", "train", "--preset", "tiny", "--nproc", "3",
                           "--set", f"loop.runs_dir={tmp_path}"], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert done.returncode == 2 and "torch.distributed.run" not in done.stdout
    assert "which 3 ranks cannot share evenly" in done.stderr, done.stderr


def test_a_row_samples_the_same_tokens_whatever_else_is_in_its_batch(one_torch_thread):
    from agents.base import Turn
    from agents.hf import LoRARoles
    from agents.models import tiny_random

    roles = LoRARoles(*tiny_random(seed=0))
    policy = roles.policy("attacker", max_new_tokens=12, seed=0)
    turns = [Turn(agent="attacker_0", role="attacker", prompt="",
                  messages=[{"role": "user", "content": text}]) for text in ("Hi", "Tell me a long story please", "Why?")]
    together = policy.generate(turns, seeds=[11, 22, 33])
    for k, seed in enumerate((11, 22, 33)):
        alone = policy.generate([turns[k]], seeds=[seed])  # another batch: other padding, other shapes
        assert alone.completion_ids[0] == together.completion_ids[k]
        assert alone.logprobs[0] == pytest.approx(together.logprobs[k], abs=1e-5)
    swapped = policy.generate(turns[::-1], seeds=[33, 22, 11])
    assert swapped.completion_ids[::-1] == together.completion_ids
    assert policy.generate(turns, seeds=[11, 22, 34]).completion_ids[2] != together.completion_ids[2]
    with pytest.raises(ValueError, match="need one seed per turn: 2 seeds for 3 turns"):
        policy.generate(turns, seeds=[1, 2])


def test_a_held_pool_scores_a_batch_against_the_same_entries_and_adds_in_order():
    import triplay_env

    pool = triplay_env.AttackSuccessPool()
    pool.add("alpha beta gamma delta epsilon")
    exchanged = []
    pool.exchange = lambda items: exchanged.append(list(items)) or [("from another rank", None), *items]
    pool.hold()
    pool.add("one two three four five")
    assert pool.self_bleu("one two three four five") == 0.0  # not in the pool until the step is over
    assert pool.texts == ["alpha beta gamma delta epsilon"]
    pool.release()
    assert exchanged == [[("one two three four five", None)]]
    assert pool.texts == ["alpha beta gamma delta epsilon", "from another rank", "one two three four five"]
    assert pool.self_bleu("one two three four five") == 1.0
    pool.load_state_dict(triplay_env.AttackSuccessPool().state_dict())
    assert pool.exchange is not None  # a resumed run's pool still exchanges
