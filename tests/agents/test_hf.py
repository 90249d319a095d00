"""LoRARoles on the tiny random model (fp32): log-prob consistency, adapter isolation, save/load, reference,
truncation. Each test builds its own model (~1 s) because most of them change adapter weights."""

from __future__ import annotations

import copy
import functools
import json
import warnings

import pytest
import torch

from agents.base import Turn
from agents.hf import LoRARoles
from agents.models import tiny_random

EOS = 2  # <|im_end|> in SmolLM2's vocabulary


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@functools.cache
def _tiny(seed: int):
    return tiny_random(seed=seed)


def make_roles(seed: int = 0, **kwargs) -> LoRARoles:
    """Roles over a fresh copy of ``tiny_random(seed)`` (copying the 3M weights is faster than re-loading the
    tokenizer, which the tests share and never change)."""
    model, tokenizer = _tiny(seed)
    return LoRARoles(copy.deepcopy(model), tokenizer, **kwargs)


def perturb(roles: LoRARoles, seed: int = 0, scale: float = 0.5) -> None:
    """Move every role's LoRA weights off their init (B = 0 would make every role equal to the base)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for role in roles.roles:
            for p in roles.trainable_parameters(role):
                p.add_(torch.randn(p.shape, generator=g) * scale)


def boost_eos(roles: LoRARoles, amount: float) -> None:
    """Add ``amount`` to the EOS logit everywhere (a forward hook, so generation and teacher forcing both see it).

    The random model puts ~1/49152 on EOS; +9 would give it ~e^9 / (49152 + e^9) = 0.14 per step (less or
    more once the adapters are perturbed), so some completions of 12 tokens stop early and the batch has
    ragged completion lengths.
    """
    head = roles.model.get_base_model().lm_head
    bias = torch.zeros(head.out_features)
    bias[EOS] = amount
    head.register_forward_hook(lambda module, args, output: output + bias)


def turn(text: str, role: str = "defender") -> Turn:
    return Turn(agent=f"{role}_0", role=role, prompt=text, messages=[{"role": "user", "content": text}])


PROMPTS = ["Hi", "Tell me about the weather in Paris today", "one two three four five six seven eight nine ten eleven"]


def plain_logprobs(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """Log-probs of ``completion`` after ``prompt`` from an unpadded single-sequence forward pass."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)  # [L, V]
    return logp[len(prompt) - 1 : -1].gather(-1, torch.tensor(completion)[:, None])[:, 0]


@pytest.mark.parametrize(("temperature", "eos_boost"), [(1.0, 8.0), (0.7, 5.0)])
def test_generation_logprobs_equal_teacher_forced_forward(temperature, eos_boost):
    roles = make_roles()
    perturb(roles)
    boost_eos(roles, eos_boost)
    policy = roles.policy("defender", max_new_tokens=12, temperature=temperature, seed=0)
    out = policy.generate([turn(p) for p in PROMPTS * 2])

    assert len({len(p) for p in out.prompt_ids}) == 3  # a left-padded batch of three prompt lengths
    lengths = [len(c) for c in out.completion_ids]
    assert [len(lp) for lp in out.logprobs] == lengths
    # ragged completions: some stopped at EOS (kept as their last token), some ran to max_new_tokens
    assert any(c[-1] == EOS and len(c) < 12 for c in out.completion_ids), lengths
    assert any(len(c) == 12 for c in out.completion_ids), lengths
    assert all(EOS not in c[:-1] for c in out.completion_ids)

    logprobs, mask = roles.forward_logprobs(out.prompt_ids, out.completion_ids, "defender", temperature=temperature)
    assert logprobs.shape == mask.shape == (6, max(lengths))
    assert mask.sum(1).tolist() == lengths
    for i, expected in enumerate(out.logprobs):
        torch.testing.assert_close(logprobs[i, : lengths[i]], torch.tensor(expected), atol=1e-4, rtol=0)
    assert (logprobs[~mask] == 0).all()


def test_generation_is_seeded_and_texts_skip_special_tokens():
    roles = make_roles()
    boost_eos(roles, 6.0)
    policy = roles.policy("attacker", max_new_tokens=8)
    turns = [turn(p, "attacker") for p in PROMPTS]
    a, b = policy.generate(turns, seed=3), policy.generate(turns, seed=3)
    assert a.completion_ids == b.completion_ids and a.logprobs == b.logprobs
    c = roles.policy("attacker", max_new_tokens=8, seed=5).generate(turns)
    d = roles.policy("attacker", max_new_tokens=8, seed=5).generate(turns)
    assert c.completion_ids == d.completion_ids
    for text, ids in zip(a.texts, a.completion_ids):
        assert text == roles.tokenizer.decode(ids, skip_special_tokens=True)
        assert "<|im_end|>" not in text


def test_response_prefix_ends_the_prompt_and_starts_the_text():
    """A prefix is written after the generation prompt (the model continues it; training never scores it) and
    put in front of each returned text; the completion's log-probs still match a teacher-forced pass."""
    roles = make_roles()
    perturb(roles)
    turns = [turn(p, "evaluator") for p in PROMPTS]
    plain = roles.encode_prompts(turns)
    prefix_ids = roles.tokenizer("VERDICT:", add_special_tokens=False)["input_ids"]
    out = roles.policy("evaluator", max_new_tokens=5, seed=0, response_prefix="VERDICT:").generate(turns)
    for prompt, bare in zip(out.prompt_ids, plain):
        assert prompt == bare + prefix_ids
    for text, ids in zip(out.texts, out.completion_ids):
        assert text == "VERDICT:" + roles.tokenizer.decode(ids, skip_special_tokens=True)
    logprobs, _ = roles.forward_logprobs(out.prompt_ids, out.completion_ids, "evaluator")
    for i, expected in enumerate(out.logprobs):
        torch.testing.assert_close(logprobs[i, : len(expected)], torch.tensor(expected), atol=1e-4, rtol=0)
    with pytest.raises(TypeError, match="response_prefix must be a str"):
        roles.policy("evaluator", response_prefix=None)


def test_tiny_top_p_is_greedy():
    roles = make_roles()
    turns = [turn(p) for p in PROMPTS]
    greedy = [roles.policy("defender", max_new_tokens=6, top_p=1e-9, seed=s).generate(turns) for s in (0, 1)]
    assert greedy[0].completion_ids == greedy[1].completion_ids
    # each greedy token is the argmax: its log-prob is the largest in its row
    model = roles.model.get_base_model()
    for prompt, completion in zip(greedy[0].prompt_ids, greedy[0].completion_ids):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + completion])).logits[0]
        assert logits[len(prompt) - 1 : -1].argmax(-1).tolist() == completion


def test_optimizer_step_on_attacker_leaves_everything_else_bitwise_unchanged():
    roles = make_roles()
    perturb(roles)  # with B = 0 the gradient w.r.t. A would be zero and A could not move
    before = {name: p.detach().clone() for name, p in roles.model.named_parameters()}
    attacker = roles.trainable_parameters("attacker")
    assert len(attacker) == 2 * 2 * 2  # 2 layers x (q_proj, v_proj) x (lora_A, lora_B)
    attacker_ids = {id(p) for p in attacker}
    attacker_names = {n for n, p in roles.model.named_parameters() if id(p) in attacker_ids}
    assert all(".attacker." in n and "lora_" in n for n in attacker_names)

    optimizer = torch.optim.Adam(attacker, lr=1e-2)
    out = roles.policy("attacker", max_new_tokens=6, seed=0).generate([turn(p, "attacker") for p in PROMPTS])
    logprobs, mask = roles.forward_logprobs(out.prompt_ids, out.completion_ids, "attacker")
    loss = -(logprobs * mask).sum() / mask.sum()
    loss.backward()
    optimizer.step()

    for name, p in roles.model.named_parameters():
        if name in attacker_names:
            assert not torch.equal(p, before[name]), f"{name} did not move"
        else:
            assert torch.equal(p, before[name]), f"{name} changed"
            assert p.grad is None, f"{name} got a gradient"
    changed = {n for n, p in roles.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == attacker_names
    assert len(before) - len(changed) > len(changed)  # the base and two other adapters are still there


def test_save_then_load_reproduces_logprobs(tmp_path):
    roles = make_roles(seed=0)
    perturb(roles, seed=1)
    out = roles.policy("evaluator", max_new_tokens=8, seed=0).generate([turn(p, "evaluator") for p in PROMPTS])
    with torch.no_grad():
        expected = {r: roles.forward_logprobs(out.prompt_ids, out.completion_ids, r)[0] for r in roles.roles}
    path = roles.save_adapters(tmp_path / "adapters")
    roles.save_adapters(tmp_path / "adapters")  # overwriting a previous save works too

    for role in roles.roles:
        config = json.loads((path / role / "adapter_config.json").read_text())
        assert (config["r"], config["lora_alpha"], config["peft_type"]) == (8, 16, "LORA")
        assert (path / role / "adapter_model.safetensors").is_file()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind

    fresh = make_roles(seed=0)
    with torch.no_grad():
        untrained = fresh.forward_logprobs(out.prompt_ids, out.completion_ids, "evaluator")[0]
    assert not torch.allclose(untrained, expected["evaluator"], atol=1e-3)
    fresh.load_adapters(path)
    with torch.no_grad():
        for role in roles.roles:
            got = fresh.forward_logprobs(out.prompt_ids, out.completion_ids, role)[0]
            torch.testing.assert_close(got, expected[role], atol=1e-6, rtol=0)

    # the standard peft loader reads the same folder
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(tiny_random(seed=0)[0], str(path / "evaluator")).eval()
    for i, (prompt, completion) in enumerate(zip(out.prompt_ids, out.completion_ids)):
        got = plain_logprobs(peft_model, prompt, completion)
        torch.testing.assert_close(got, expected["evaluator"][i, : len(completion)], atol=1e-4, rtol=0)


def test_load_adapters_rejects_a_different_rank(tmp_path):
    make_roles().save_adapters(tmp_path / "r8")
    with pytest.raises(ValueError, match="r=8"):
        make_roles(r=4).load_adapters(tmp_path / "r8")
    with pytest.raises(FileNotFoundError, match="attacker"):
        make_roles().load_adapters(tmp_path / "nowhere")


def test_reference_logprobs_equal_the_plain_base_model():
    roles = make_roles(seed=0)
    perturb(roles)
    out = roles.policy("defender", max_new_tokens=8, seed=0).generate([turn(p) for p in PROMPTS])
    with torch.no_grad():
        reference, mask = roles.forward_logprobs(out.prompt_ids, out.completion_ids, None)
        defender, _ = roles.forward_logprobs(out.prompt_ids, out.completion_ids, "defender")
    base, _ = tiny_random(seed=0)  # same seed: the same weights, never wrapped by peft
    for i, (prompt, completion) in enumerate(zip(out.prompt_ids, out.completion_ids)):
        expected = plain_logprobs(base, prompt, completion)
        torch.testing.assert_close(reference[i, : len(completion)], expected, atol=1e-5, rtol=0)
    assert not torch.allclose(reference[mask], defender[mask], atol=1e-3)  # the adapters were really off
    # the base as a player (e.g. a fixed reference defender) samples with matching log-probs
    played = roles.policy(None, max_new_tokens=8, seed=1).generate([turn(p) for p in PROMPTS])
    with torch.no_grad():
        replayed, _ = roles.forward_logprobs(played.prompt_ids, played.completion_ids, None)
    for i, expected in enumerate(played.logprobs):
        torch.testing.assert_close(replayed[i, : len(expected)], torch.tensor(expected), atol=1e-4, rtol=0)
    # and the role is active again afterwards
    with torch.no_grad():
        again, _ = roles.forward_logprobs(out.prompt_ids, out.completion_ids, "defender")
    torch.testing.assert_close(again, defender, atol=0, rtol=0)


def test_a_long_prompt_loses_its_middle_not_its_instructions_and_is_warned_once():
    roles = make_roles(max_prompt_tokens=96)
    long_text = "Request sent to the assistant:\n" + " ".join(f"word{i}" for i in range(400))
    messages = [{"role": "system", "content": "Judge it. End with VERDICT: X."}, {"role": "user", "content": long_text}]
    long_turn = Turn(agent="evaluator_0", role="evaluator", prompt="", messages=messages)
    policy = roles.policy("evaluator", max_new_tokens=4, seed=0)
    with pytest.warns(UserWarning, match=r"1 of 2 prompts were longer than 96 tokens: the middle"):
        out = policy.generate([long_turn, turn("Hi")])
    text = roles.tokenizer.decode(out.prompt_ids[0])
    assert len(out.prompt_ids[0]) <= 96
    assert "<|im_start|>system\nJudge it. End with VERDICT: X.<|im_end|>" in text  # the instructions survive whole
    assert "Request sent to the assistant:\nword0 word1" in text and "word398 word399" in text  # heading, start, end
    assert "[...]" in text and "word200" not in text  # the middle went
    assert text.endswith("<|im_start|>assistant\n")
    assert len(out.prompt_ids[1]) < 96 and len(out.completion_ids[0]) >= 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        policy.generate([long_turn])  # said once per backend: the second long prompt is not warned again
        policy.generate([turn("Hi")])


def test_prompt_longer_than_the_context_leaves_room_for_the_completion():
    model, tokenizer = _tiny(0)
    model = copy.deepcopy(model)
    model.config.max_position_embeddings = 48
    roles = LoRARoles(model, tokenizer, max_prompt_tokens=1024)
    with pytest.warns(UserWarning, match="longer than 40 tokens"):
        out = roles.policy("defender", max_new_tokens=8, seed=0).generate([turn("x " * 300)])
    assert len(out.prompt_ids[0]) <= 40 and len(out.prompt_ids[0]) + len(out.completion_ids[0]) <= 48


def test_turn_without_messages_uses_its_prompt_and_bad_roles_are_named():
    roles = make_roles()
    bare = Turn(agent="attacker_0", role="attacker", prompt="Hello there", messages=[])
    out = roles.policy("attacker", max_new_tokens=2, seed=0).generate([bare])
    assert "Hello there" in roles.tokenizer.decode(out.prompt_ids[0])
    assert roles.policy("attacker", max_new_tokens=2).generate([]).texts == []
    with pytest.raises(ValueError, match="'judge'"):
        roles.policy("judge")
    with pytest.raises(ValueError, match="'judge'"):
        roles.forward_logprobs([[1]], [[2]], "judge")
