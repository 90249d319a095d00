"""Both sampling backends implement agents.base.SamplingBackend with SamplingSettings.

The transformers backend is checked always; the vLLM one where vLLM is installed (the opt-in lane).
"""

from __future__ import annotations

import importlib.util

import pytest

from agents.base import SamplingBackend, SamplingSettings, TrainablePolicy, Turn

TURN = Turn(agent="defender_0", role="defender", prompt="", messages=[{"role": "user", "content": "Say hi."}])


@pytest.mark.parametrize("bad, match", [({"max_new_tokens": 0}, "max_new_tokens"), ({"top_p": 0.0}, "top_p"),
                                        ({"temperature": -1.0}, "temperature"), ({"response_prefix": 3}, "str")])
def test_settings_refuse_bad_values_naming_them(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        SamplingSettings(**bad)


def _check_backend(backend) -> None:
    assert isinstance(backend, SamplingBackend)
    settings = SamplingSettings(max_new_tokens=6, temperature=0.8, seed=5, response_prefix="OK:")
    by_settings = backend.policy("defender", settings)
    by_fields = backend.policy("defender", max_new_tokens=6, temperature=0.8, seed=5, response_prefix="OK:")
    assert isinstance(by_settings, TrainablePolicy) and by_settings.settings == by_fields.settings == settings
    a, b = by_settings.generate([TURN]), by_fields.generate([TURN])
    assert a.texts == b.texts and a.completion_ids == b.completion_ids  # same seed, same settings: same sample
    assert a.texts[0].startswith("OK:") and 1 <= len(a.completion_ids[0]) <= 6
    assert backend.policy(None, settings.replace(seed=6)).settings.seed == 6  # overrides apply, base allowed
    assert backend.encode_prompts([TURN], prefix="OK:") == [a.prompt_ids[0]]


def test_the_transformers_backend_implements_the_protocol():
    from agents.hf import LoRARoles
    from agents.models import tiny_random

    roles = LoRARoles(*tiny_random(seed=0), max_prompt_tokens=64)
    _check_backend(roles)
    greedy = [roles.policy("defender", max_new_tokens=5, temperature=0.0, seed=s).generate([TURN]) for s in (1, 2)]
    assert greedy[0].completion_ids == greedy[1].completion_ids  # temperature 0 is greedy: the seed plays no part


@pytest.mark.vllm
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (tests/agents/run_vllm_lane.sh)")
def test_the_vllm_backend_implements_the_protocol(tmp_path):
    from agents.hf import LoRARoles
    from agents.models import load_model, model_folder
    from agents.vllm_agent import VLLMRoles

    roles = LoRARoles(*load_model("smollm2-135m"), max_prompt_tokens=128)
    engine = VLLMRoles(model_folder("smollm2-135m"), roles=roles.roles, max_lora_rank=8, max_model_len=256,
                       dtype="float32", adapter_root=tmp_path)
    try:
        engine.push_from(roles)
        _check_backend(engine)
    finally:
        engine.close()
