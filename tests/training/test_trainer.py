"""Tests for training/trainer.py and the pieces of training/coevolve.py around one update.

- each phase of the loop changes only its role's LoRA tensors (bitwise check on everything else);
- micro-batches with gradient accumulation give the gradient of one full batch (dapo, grpo, dr_grpo);
- a NaN/inf step is skipped and counted, and leaves the adapter untouched;
- an invalid config fails in ``validate()``, before any model loads, naming the field and the rule;
- a crash at any point of ``save_checkpoint`` leaves a complete checkpoint that resume finds;
- ``advantages_by_group`` on hand-made moves, numbers worked out by hand.

Everything runs on ``tiny_random`` (2 layers, 3.3M parameters) with one torch thread: on a shared 2-core
machine, more threads than cores make a 64-wide matmul tens of times slower.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

from training import coevolve
from training.coevolve import PHASE_ROLE, CoEvolution, advantages_by_group
from training.config import ConfigError, GRPOConfig, apply_overrides, preset
from training.grpo import RoleBaseline
from training.rollout import Move
from training.trainer import GRPOTrainer, Sample
from triplay_env import files
from triplay_env.agent_ids import role_of

SMALL_RUN = ["loop.eval_scenarios=2", "loop.progress=false", "loop.tensorboard=false"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_coevolution(runs_dir: Path, *sets: str, resume: bool = False) -> CoEvolution:
    cfg = apply_overrides(preset("tiny"), sets=[*SMALL_RUN, f"loop.runs_dir={runs_dir}", *sets])
    return CoEvolution(cfg, resume=resume, log=lambda line: None)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, copied."""
    tensors = {f"param:{n}": p for n, p in model.named_parameters()}
    tensors.update({f"buffer:{n}": b for n, b in model.named_buffers()})
    return {n: t.detach().clone() for n, t in tensors.items()}


def own_lora_names(roles, role: str) -> set[str]:
    mine = {id(p) for p in roles.trainable_parameters(role)}
    return {f"param:{n}" for n, p in roles.model.named_parameters() if id(p) in mine}


# ---------------------------------------------------------------------------------------------------------
# only the trained role's adapter changes
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loop(tmp_path_factory) -> CoEvolution:
    return tiny_coevolution(tmp_path_factory.mktemp("runs"))


@pytest.mark.parametrize("phase", ["red", "blue", "eval"])
def test_a_phase_changes_its_role_adapter_and_nothing_else(loop, phase, monkeypatch):
    # On a random 3M model the panel's verdict, hence the reward, is almost always the same for the G
    # samples of a group: the advantages are then exactly 0 and the update is a no-op, which would pass the
    # "others unchanged" half of this test vacuously. So the real advantages are replaced by +1, -1, +1, ...
    # (the rollout, the samples and trainer.step are the real ones): the role's adapter must move.
    role = PHASE_ROLE[phase]
    real = []

    def alternating_advantages(moves, group_size, cfg, baseline=None):
        advantages, zero_share = advantages_by_group(moves, group_size, cfg, baseline)
        real.append(advantages)
        return [1.0 if k % 2 == 0 else -1.0 for k in range(len(moves))], zero_share

    monkeypatch.setattr(coevolve, "advantages_by_group", alternating_advantages)
    before = snapshot(loop.roles.model)
    record = loop.train_phase(phase, 1, 0)
    after = snapshot(loop.roles.model)

    own = own_lora_names(loop.roles, role)
    # q_proj and v_proj of 2 layers, lora_A and lora_B each
    assert len(own) == 8, sorted(own)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed <= own, f"{phase} changed tensors outside the {role} adapter: {sorted(changed - own)}"
    # lora_B starts at 0, so the first step moves every B (A's gradient is B^T(...) = 0 at B = 0)
    own_b = {n for n in own if ".lora_B." in n}
    assert own_b <= changed, f"{phase} left {sorted(own_b - changed)} unchanged"
    assert record[f"{phase}/skipped"] == 0.0
    assert record[f"{phase}/samples"] == len(real[0]) > 0
    assert all(math.isfinite(v) for v in real[0])


# ---------------------------------------------------------------------------------------------------------
# micro-batching, NaN guard: on a bare LoRARoles
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def roles():
    from agents.hf import LoRARoles
    from agents.models import tiny_random

    roles = LoRARoles(*tiny_random(seed=0), max_prompt_tokens=64)
    # Give the attacker non-zero lora_B so lora_A gets a gradient too (it is B^T(...), 0 at peft's B = 0).
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in roles.model.named_parameters():
            if ".lora_B.attacker." in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    return roles


def make_samples(roles) -> list[Sample]:
    """Four completions of different lengths (3, 5, 2, 4) after prompts of different lengths.

    The old log-probs are the current ones shifted by +-0.1, so ratios are exp(-+0.1) = 0.905 / 1.105:
    inside the clip range [0.8, 1.2], so every token contributes.
    """
    tok = roles.tokenizer
    prompts = [tok(text)["input_ids"] for text in ("Hello there", "Tell me a story about a cat", "Why", "How are you today?")]
    generator = torch.Generator().manual_seed(2)
    completions = [torch.randint(100, 40_000, (n,), generator=generator).tolist() for n in (3, 5, 2, 4)]
    with torch.no_grad():
        logprobs, mask = roles.forward_logprobs(prompts, completions, "attacker")  # [4, 5]
    old = [[lp + (0.1 if (i + t) % 2 else -0.1) for t, lp in enumerate(logprobs[i, : len(c)].tolist())]
           for i, c in enumerate(completions)]
    advantages = [1.0, -0.5, 2.0, -1.5]
    return [Sample(p, c, o, a) for p, c, o, a in zip(prompts, completions, old, advantages)]


def one_step(roles, cfg: GRPOConfig, samples, role: str = "attacker"):
    """One trainer step from the current weights; returns (gradients seen by the optimizer, new params,
    metrics) and puts the weights back."""
    params = roles.trainable_parameters(role)
    start = [p.detach().clone() for p in params]
    trainer = GRPOTrainer(roles, cfg)
    optimizer = trainer.optimizers[role]
    grads = []
    real_step = optimizer.step

    def recording_step(*args, **kwargs):
        grads.append([p.grad.detach().clone() for p in params])
        return real_step(*args, **kwargs)

    optimizer.step = recording_step
    metrics = trainer.step(role, samples)
    updated = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, s in zip(params, start):
            p.copy_(s)
    return grads, updated, metrics


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "dr_grpo"])
def test_micro_batches_accumulate_to_the_full_batch_gradient(roles, loss_type):
    samples = make_samples(roles)
    # max_grad_norm huge: clipping would rescale both sides equally, but keep it out of the comparison
    full = one_step(roles, GRPOConfig(loss_type=loss_type, batch_size=4, micro_batch_size=4, max_grad_norm=1e9), samples)
    assert full[0][0][0].abs().sum() > 0 and full[0][0][1].abs().sum() > 0  # lora_A and lora_B both get gradient
    for micro in (1, 3):  # 1+1+1+1 and an uneven 3+1
        split = one_step(roles, GRPOConfig(loss_type=loss_type, batch_size=4, micro_batch_size=micro, max_grad_norm=1e9), samples)
        for g_full, g_split in zip(full[0][0], split[0][0]):
            torch.testing.assert_close(g_split, g_full, atol=1e-6, rtol=0)
        for p_full, p_split in zip(full[1], split[1]):
            torch.testing.assert_close(p_split, p_full, atol=1e-6, rtol=0)
        assert split[2]["loss"] == pytest.approx(full[2]["loss"], abs=1e-6)
        assert split[2]["grad_norm"] == pytest.approx(full[2]["grad_norm"], abs=1e-6)


def test_non_finite_step_is_skipped_and_reported(roles, monkeypatch):
    samples = make_samples(roles)
    trainer = GRPOTrainer(roles, GRPOConfig(batch_size=4, micro_batch_size=2))
    params = roles.trainable_parameters("attacker")
    before = snapshot(roles.model)
    real_forward = roles.forward_logprobs

    def nan_forward(*args, **kwargs):
        logprobs, mask = real_forward(*args, **kwargs)
        return logprobs * float("nan"), mask  # NaN that still flows back into the LoRA weights

    monkeypatch.setattr(roles, "forward_logprobs", nan_forward)
    metrics = trainer.step("attacker", samples)
    assert metrics["skipped"] == 1.0 and trainer.skipped_steps == {"attacker": 1, "defender": 0, "evaluator": 0}
    after = snapshot(roles.model)
    assert all(torch.equal(before[n], after[n]) for n in before), "a NaN step changed the weights"
    assert all(p.grad is None for p in params), "a NaN step left gradients behind"
    assert not trainer.optimizers["attacker"].state, "a NaN step reached AdamW (its moments would hold NaN)"

    # an infinite advantage: inf * ratio makes the loss and gradient infinite
    monkeypatch.setattr(roles, "forward_logprobs", real_forward)
    inf_samples = [Sample(s.prompt_ids, s.completion_ids, s.old_logprobs, math.inf if k == 0 else s.advantage)
                   for k, s in enumerate(samples)]
    metrics = trainer.step("attacker", inf_samples)
    assert metrics["skipped"] == 1.0 and trainer.skipped_steps["attacker"] == 2
    assert all(torch.equal(before[n], t) for n, t in snapshot(roles.model).items())

    # and the next healthy step trains normally from the untouched weights
    try:
        metrics = trainer.step("attacker", samples)
        assert metrics["skipped"] == 0.0 and math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])
        assert all(torch.isfinite(p).all() for p in params)
        assert any(not torch.equal(before[n], t) for n, t in snapshot(roles.model).items())
    finally:
        with torch.no_grad():
            for name, p in roles.model.named_parameters():
                p.copy_(before[f"param:{name}"])


def test_recompute_old_logprobs_replaces_the_samplers_values_and_measures_the_gap(roles):
    """make_samples shifts every stored log-prob by exactly +-0.1 from the current ones: the recomputed
    samples carry the current values (bitwise those of forward_logprobs) and the mean gap is 0.1."""
    samples = make_samples(roles)
    trainer = GRPOTrainer(roles, GRPOConfig(micro_batch_size=3))  # 3: the recomputation spans two micro-batches
    fresh, gap = trainer.recompute_old_logprobs("attacker", samples)
    assert gap == pytest.approx(0.1, abs=1e-6)
    with torch.no_grad():
        current, _ = roles.forward_logprobs([s.prompt_ids for s in samples], [s.completion_ids for s in samples], "attacker")
    for i, (old, new) in enumerate(zip(samples, fresh)):
        assert (new.prompt_ids, new.completion_ids, new.advantage) == (old.prompt_ids, old.completion_ids, old.advantage)
        assert new.old_logprobs == current[i, : len(old.completion_ids)].tolist()
    # with fresh old log-probs the first step's ratio is 1 everywhere: nothing is clipped
    _, _, metrics = one_step(roles, GRPOConfig(micro_batch_size=4, eps_low=0.01, eps_high=0.01), fresh)
    assert metrics["clip_frac_low"] == metrics["clip_frac_high"] == 0.0 and metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-6)


def test_the_loop_can_recompute_old_logprobs(tmp_path):
    """grpo.recompute_old_logprobs in the loop: the sampler is the trainer's own model here, so the gap it
    logs is float32 noise (what the vLLM backend reports as its training/inference mismatch)."""
    loop = tiny_coevolution(tmp_path, "grpo.recompute_old_logprobs=true", "loop.iterations=1")
    records = [r for r in loop.run() if r["phase"] in PHASE_ROLE]
    assert [r["phase"] for r in records] == ["red", "blue", "eval"]
    for r in records:
        assert 0 <= r[r["phase"] + "/sampler_logprob_gap"] < 1e-4


# ---------------------------------------------------------------------------------------------------------
# config validation: an error before any model loads
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sets, message",
    [
        (["grpo.group_size=4", "grpo.batch_size=6"], "grpo.batch_size must be a multiple of grpo.group_size=4 (whole groups), got 6"),
        (["grpo.lr=-1e-4"], "grpo.lr must be > 0, got -0.0001"),
        (["grpo.lr=0"], "grpo.lr must be > 0, got 0.0"),
        (["grpo.group_size=1", "grpo.batch_size=4"], "grpo.group_size must be >= 2"),
        (["grpo.loss_type=ppo"], "grpo.loss_type must be one of ('grpo', 'dr_grpo', 'dapo'), got 'ppo'"),
        (["loop.phases=red,purple"], "loop.phases must be a non-empty subset"),
        (["model.backend=vllm"], "model.backend vllm needs a model it can load from a folder or hub id"),
        (["model.vllm_memory_fraction=1.5"], "model.vllm_memory_fraction must lie in (0, 1], got 1.5"),
    ],
)
def test_invalid_config_fails_in_validate_before_any_model_loads(sets, message, no_model_loads, tmp_path):
    cfg = apply_overrides(preset("tiny"), sets=[*sets, f"loop.runs_dir={tmp_path}"])
    with pytest.raises(ConfigError) as error:
        cfg.validate()
    assert message in str(error.value)
    with pytest.raises(ConfigError) as error:  # CoEvolution validates first: no model, no run folder
        CoEvolution(cfg)
    assert message in str(error.value)
    assert not any(tmp_path.iterdir())


def test_unknown_preset_and_field_are_named():
    with pytest.raises(ConfigError, match=r"unknown preset 'tiny2'; choose one of \['demo', 'qwen3-4b', 'qwen3-8b', 'study', 'tiny'\]"):
        preset("tiny2")
    with pytest.raises(ConfigError, match=r"unknown config field 'grpo.learning_rate'; valid fields: \[.*'grpo.lr'"):
        apply_overrides(preset("tiny"), sets=["grpo.learning_rate=1e-4"])
    with pytest.raises(ConfigError, match=r"unknown config field 'trainer'"):
        apply_overrides(preset("tiny"), sets=["trainer.lr=1e-4"])
    with pytest.raises(ConfigError, match=r"grpo.lr must be float, got 'fast'"):
        apply_overrides(preset("tiny"), sets=["grpo.lr=fast"])


# ---------------------------------------------------------------------------------------------------------
# checkpoints are never half-written
# ---------------------------------------------------------------------------------------------------------


def crash_while_writing_state(monkeypatch, run_dir: Path) -> None:
    # torch.save fails: the temp folder (adapters, no state.pt) is dropped; the old checkpoint is untouched
    def boom(*args, **kwargs):
        raise OSError("simulated crash while writing state.pt")

    monkeypatch.setattr(torch, "save", boom)


class SimulatedKill(BaseException):
    """A kill -9 stand-in: not an Exception, so no handler tidies up after it."""


def crash_between_the_renames(monkeypatch, run_dir: Path) -> None:
    # checkpoint -> checkpoint.old happened, the temp folder -> checkpoint did not
    real_replace = files.os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".checkpoint."):
            raise SimulatedKill("simulated crash between the renames")
        return real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)


def crash_before_removing_old(monkeypatch, run_dir: Path) -> None:
    # the new checkpoint is in place; checkpoint.old is still there
    real_rmtree = shutil.rmtree

    def rmtree(path, *args, **kwargs):
        path = Path(path)
        if path.name == "checkpoint.old" and path.exists() and (run_dir / "checkpoint").exists():
            raise OSError("simulated crash before removing checkpoint.old")
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", rmtree)


@pytest.mark.parametrize(
    "crash, folders_after_crash, resumes_after",
    [
        (crash_while_writing_state, {"checkpoint"}, 1),
        (crash_between_the_renames, {"checkpoint.old"}, 1),
        (crash_before_removing_old, {"checkpoint", "checkpoint.old"}, 2),
    ],
)
def test_a_crash_while_checkpointing_leaves_a_complete_checkpoint(crash, folders_after_crash, resumes_after,
                                                                   tmp_path, monkeypatch):
    first = tiny_coevolution(tmp_path)
    first.run_dir.mkdir(parents=True)
    first.save_checkpoint(1)
    at_1 = snapshot(first.roles.model)
    with torch.no_grad():  # make iteration 2's attacker adapter tell apart from iteration 1's
        for p in first.roles.trainable_parameters("attacker"):
            p.add_(1.0)
    at_2 = snapshot(first.roles.model)

    with monkeypatch.context() as patch:
        crash(patch, first.run_dir)
        with pytest.raises((OSError, SimulatedKill), match="simulated crash"):
            first.save_checkpoint(2)
    folders = {p.name for p in first.run_dir.iterdir() if p.is_dir()}
    assert folders == folders_after_crash

    # iterations=1 (a run-control key may change on resume) so run() only loads the checkpoint; the report
    # (plots, a second or two) is not what this test is about
    import training.report

    monkeypatch.setattr(training.report, "write_report", lambda run_dir, metrics, **kw: None)
    resumed = tiny_coevolution(tmp_path, "loop.iterations=1", resume=True)
    resumed.run()
    assert resumed.start_iteration == resumes_after + 1
    expected = at_1 if resumes_after == 1 else at_2
    got = snapshot(resumed.roles.model)
    assert all(torch.equal(expected[n], got[n]) for n in own_lora_names(resumed.roles, "attacker"))


# ---------------------------------------------------------------------------------------------------------
# advantages_by_group on hand-made moves
# ---------------------------------------------------------------------------------------------------------


def move(env: int, reward: float, *, agent: str = "attacker_0", game: int = 0, round: int = 0) -> Move:
    return Move(env=env, agent=agent, role=role_of(agent), game=game, round=round, prompt="", messages=[],
                text="", reward=reward)


def test_advantages_by_group_groups_by_env_block_whatever_the_move_order():
    # G=2: envs {0, 1} and {2, 3} are the groups. Moves arrive in env order 2, 0, 3, 1.
    # group {0, 1}: rewards (1, 0), mean 0.5, unbiased std sqrt(0.25 + 0.25) = 0.70710678
    #               -> +-0.5 / (0.70710678 + 1e-4) = +-0.70700680
    # group {2, 3}: rewards (0.5, 0.5): zero variance -> exactly 0; one of two groups -> share 0.5
    moves = [move(2, 0.5), move(0, 1.0), move(3, 0.5), move(1, 0.0)]
    cfg = GRPOConfig(group_size=2)
    advantages, zero_share = advantages_by_group(moves, 2, cfg)
    assert advantages == pytest.approx([0.0, 0.70700680, 0.0, -0.70700680], abs=1e-6)
    assert zero_share == 0.5


def test_advantages_by_group_scale_and_leave_one_out():
    # G=3, one group, rewards (3, 0, 0): mean 1 -> centred (2, -1, -1)
    moves = [move(0, 3.0), move(1, 0.0), move(2, 0.0)]
    advantages, zero_share = advantages_by_group(moves, 3, GRPOConfig(group_size=3, scale_rewards="none"))
    assert advantages == pytest.approx([2.0, -1.0, -1.0], abs=1e-6) and zero_share == 0.0
    # leave-one-out baselines: the others' mean (0+0)/2 = 0, (3+0)/2 = 1.5, 1.5 -> (3, -1.5, -1.5)
    loo = GRPOConfig(group_size=3, scale_rewards="none", leave_one_out=True)
    assert advantages_by_group(moves, 3, loo)[0] == pytest.approx([3.0, -1.5, -1.5], abs=1e-6)
    # group std: sqrt((4 + 1 + 1) / 2) = sqrt 3 = 1.73205081; 2 / (1.73205081 + 1e-4) = 1.15463388, -1 / ... = -0.57731694
    scaled = advantages_by_group(moves, 3, GRPOConfig(group_size=3))[0]
    assert scaled == pytest.approx([1.15463388, -0.57731694, -0.57731694], abs=1e-6)


def test_advantages_by_group_keeps_agents_and_rounds_apart():
    # Envs 0 and 1 form a group (G=2). Round 0: evaluator_0 rewards (1, -1) and evaluator_1 rewards (0, 0)
    # are separate groups. Env 1's game went on to round 1 alone: a group of one, advantage 0.
    # Sizes {2, 1} take the group-by-group path: (1, -1) -> mean 0, std sqrt 2 -> +-1 / (1.41421356 + 1e-4)
    # = +-0.70705678; (0, 0) -> 0; the singleton -> 0. Zero share: 2 of 3 groups.
    moves = [
        move(0, 1.0, agent="evaluator_0"), move(0, 0.0, agent="evaluator_1"),
        move(1, -1.0, agent="evaluator_0"), move(1, 0.0, agent="evaluator_1"),
        move(1, 0.7, agent="evaluator_0", round=1),
    ]
    advantages, zero_share = advantages_by_group(moves, 2, GRPOConfig(group_size=2))
    assert advantages == pytest.approx([0.70705678, 0.0, -0.70705678, 0.0, 0.0], abs=1e-6)
    assert zero_share == pytest.approx(2 / 3)


def test_advantages_by_group_with_role_baseline():
    # SPIRAL: reward minus the role's EMA baseline before this batch (0 at first), no group statistics
    baseline = RoleBaseline()
    moves = [move(0, 1.0), move(1, 0.0)]
    advantages, zero_share = advantages_by_group(moves, 2, GRPOConfig(role_baseline=True), baseline)
    assert advantages == [1.0, 0.0] and math.isnan(zero_share)
    # baseline is now 0.95 * 0 + 0.05 * 0.5 = 0.025
    assert advantages_by_group(moves, 2, GRPOConfig(role_baseline=True), baseline)[0] == pytest.approx([0.975, -0.025])
