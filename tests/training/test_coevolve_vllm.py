"""The co-evolution loop on the vLLM backend: rollouts sampled by a multi-LoRA engine that is fed each role's
adapter after every update, on SmolLM2-135M.

Opt-in (``pytest -m vllm``), run by ``bash tests/agents/run_vllm_lane.sh`` in its own virtual environment
(vLLM pins its own torch). Engine and trainer both run in float32 here (``TRIPLAY_VLLM_DTYPE`` sets the
engine's dtype), so the sampler's log-probs and the trainer's agree to float32 noise, and a stale adapter
shows as a gap far above it: the learning rate is large on purpose, so one update moves the log-probs by
much more than that noise.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

pytestmark = pytest.mark.vllm

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
DTYPE = os.environ.get("TRIPLAY_VLLM_DTYPE", "float32")
GAP = {"float32": 2e-3, "bfloat16": 0.5}[DTYPE]
"""largest accepted mean |sampler - trainer| log-prob per token (the vLLM agent tests' per-token bound)"""


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    if not HAVE_VLLM:
        pytest.skip("vllm is not installed here; run `bash tests/agents/run_vllm_lane.sh`")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; on CPU the default is a share of RAM
    from agents.models import model_folder
    from training.coevolve import CoEvolution
    from training.config import apply_overrides, preset

    try:
        model_folder("smollm2-135m")
    except RuntimeError as e:
        pytest.skip(f"SmolLM2's carrier package is neither installed nor downloadable: {e}")
    cfg = apply_overrides(preset("demo"), sets=[
        "model.backend=vllm", f"model.dtype={DTYPE}", "model.max_prompt_tokens=256",
        "grpo.group_size=2", "grpo.batch_size=4", "grpo.lr=1e-2", "grpo.recompute_old_logprobs=true",
        "generation.attacker_max_new_tokens=6", "generation.defender_max_new_tokens=6",
        "generation.evaluator_max_new_tokens=3",
        "loop.iterations=2", "loop.steps_per_phase=1", "loop.eval_scenarios=2", "loop.progress=false", "loop.tensorboard=false",
        f"loop.runs_dir={tmp_path_factory.mktemp('runs')}",
    ])
    loop = CoEvolution(cfg, log=print)
    loop.metrics_out = loop.run()
    yield loop
    loop.close()


def test_every_phase_trains_on_rollouts_sampled_by_the_engine(loop):
    from agents.vllm_agent import VLLMRolePolicy

    assert all(isinstance(p, VLLMRolePolicy) for p in loop.policies.values())
    phases = [r for r in loop.metrics_out if r["phase"] in ("red", "blue", "eval")]
    assert [(r["iteration"], r["phase"]) for r in phases] == [(i, p) for i in (1, 2) for p in ("red", "blue", "eval")]
    for r in phases:
        assert r[r["phase"] + "/samples"] == 4.0 and r[r["phase"] + "/skipped"] == 0.0
    held_out = [r for r in loop.metrics_out if r["phase"] == "heldout"]
    assert [r["iteration"] for r in held_out] == [0, 1, 2]
    assert (loop.run_dir / "report.md").is_file()


def test_each_update_is_pushed_so_rollouts_never_sample_stale_weights(loop):
    """Every role was pushed once at start and once per update (3 versions after 2 iterations), and the
    log-probs the engine returned while sampling match the trainer's current weights: in iteration 2 each
    role samples with weights its iteration-1 update changed, so a stale adapter would show as a large gap."""
    assert {role: loop.engine.version(role) for role in loop.roles.roles} == dict.fromkeys(loop.roles.roles, 3)
    gaps = {(r["iteration"], r["phase"]): r[r["phase"] + "/sampler_logprob_gap"]
            for r in loop.metrics_out if r["phase"] in ("red", "blue", "eval")}
    print(f"\nvllm-lane: mean |vLLM - trainer| log-prob per token, by (iteration, phase): {gaps}")
    assert all(0 <= gap <= GAP for gap in gaps.values()), gaps


def test_the_served_adapter_is_the_trained_one_after_the_run(loop):
    """Greedy tokens from the engine, scored by the trainer's model under the same role: equal log-probs."""
    import torch

    from agents.base import Turn

    turns = [Turn(agent="defender_0", role="defender", prompt=p, messages=[{"role": "user", "content": p}])
             for p in ("Hi", "How do I bake bread?")]
    out = loop.engine.policy("defender", max_new_tokens=6, temperature=0.0).generate(turns)
    with torch.no_grad():
        ours, mask = loop.roles.forward_logprobs(out.prompt_ids, out.completion_ids, "defender")
    diffs = [abs(a - b) for i, row in enumerate(out.logprobs) for a, b in zip(row, ours[i, : len(row)].tolist())]
    assert diffs and max(diffs) <= GAP, diffs
