"""TriPlay inside TRL: real ``trl.GRPOTrainer`` steps on the tiny model train one role through
``training.integrations.trl``, and the rewards TRL saw are what the env pays when the same seeds and the same
texts are played again through ``triplay_env.parallel_env`` directly (the README's game loop, one env at a time).

**Why a hash judge.** The tiny random model writes gibberish, which the content judge labels alike within a
group (measured: every group zero-variance, so every advantage 0, every gradient 0, and the adapter would not
move). :class:`HashJudge`'s verdict is a hash of the response: still a judge of the text, through the env's
panel, reward scheme and evaluator, but one whose labels differ between the G samples of a group, so the
update is real. The reward equality is checked with it for all three roles.

Skipped where TRL is not installed (the ``trl`` extra).
"""

from __future__ import annotations

import hashlib
import sys
import warnings

import pytest

pytest.importorskip("trl", reason="TRL is not installed; `pip install -e '.[trl]'` runs the TRL integration tests")

import torch  # noqa: E402

import triplay_env  # noqa: E402
from agents.base import turns_from  # noqa: E402
from agents.scripted import JudgeEvaluator  # noqa: E402
from triplay_env.panel import Panel  # noqa: E402
from triplay_env.verdicts import Verdict  # noqa: E402

B, G, STEPS, T = 4, 2, 2, 8
"""completions per step, per group, optimizer steps, completion tokens"""


class HashJudge:
    """Labels a response by a hash of its text: deterministic, and different for different texts."""

    name = "hash"

    def judge(self, items):
        order = (Verdict.UNSAFE, Verdict.REFUSAL, Verdict.GUIDANCE)
        return [order[hashlib.sha256(i.response.encode()).digest()[0] % 3] for i in items]


@pytest.fixture(autouse=True)
def one_thread_quiet(monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    torch.set_num_threads(threads)


def train(role: str, tmp_path, *, steps: int = STEPS, response_prefix: str = ""):
    """``steps`` GRPOTrainer steps on the tiny model training ``role``; returns the trainer, the rollout function,
    every reward call's keyword arguments and returned rewards, and the LoRA weights before training."""
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    from agents.models import tiny_random
    from training.integrations.trl import triplay_dataset, triplay_reward, triplay_rollout_func

    calls = []

    def reward(**kwargs):
        rewards = triplay_reward(**kwargs)
        calls.append((kwargs, rewards))
        return rewards

    reward.__name__ = "triplay_reward"
    model, tokenizer = tiny_random(seed=0)
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=B, num_generations=G, max_steps=steps,
                      max_completion_length=T, learning_rate=1e-2, use_cpu=True, bf16=False,
                      gradient_checkpointing=False, report_to="none", logging_steps=1, save_strategy="no",
                      disable_tqdm=True, seed=0)
    rollout = triplay_rollout_func(role, env_kwargs={"panel": Panel([HashJudge()])}, response_prefix=response_prefix)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=triplay_dataset(8),
                          processing_class=tokenizer, rollout_func=rollout,
                          peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                 task_type="CAUSAL_LM"))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    trainer.train()
    return trainer, rollout, calls, before


def replay(role: str, calls, response_prefix: str = "") -> list[list[float]]:
    """Play every game TRL saw again, step by step through fresh envs (one shared Attack Success Pool, as in
    training): each row's seed, the trained role's text as TRL decoded it, the other roles' texts as they were
    played, a fresh JudgeEvaluator; returns the trained agent's reward per game, per TRL step."""
    panel = Panel([HashJudge()])
    pool = triplay_env.AttackSuccessPool()
    evaluator = JudgeEvaluator(judge=panel)
    out = []
    for kwargs, _ in calls:
        step = []
        for seed, completion, record in zip(kwargs["seed"], kwargs["completions"], kwargs["triplay_round"], strict=True):
            trained_text = response_prefix + completion[0]["content"]
            env = triplay_env.parallel_env(panel=panel, attack_success_pool=pool)
            obs, infos = env.reset(seed=seed)
            assert infos["attacker_0"]["scenario"] == record["scenario"], "the row's seed draws the scenario played"
            texts = {"attacker": record["attack"], "defender": record["responses"][0]}
            texts[role] = trained_text
            obs, *_, infos = env.step({"attacker_0": texts["attacker"]})
            obs, *_, infos = env.step({"defender_0": texts["defender"]})
            verdict = trained_text if role == "evaluator" else evaluator.act(turns_from(obs, infos, ["evaluator_0"]))[0]
            _, rewards, *_ = env.step({"evaluator_0": verdict})
            step.append(rewards[f"{role}_0"])
        out.append(step)
    return out


def test_two_grpo_steps_train_the_defender_adapter_on_the_games_rewards(tmp_path):
    trainer, rollout, calls, before = train("defender", tmp_path)

    assert trainer.state.global_step == STEPS and len(calls) == STEPS
    after = dict(trainer.model.named_parameters())
    moved = [n for n in before if not torch.equal(before[n], after[n].detach())]
    assert before and moved, "the defender's LoRA adapter should have changed"
    assert any(".lora_B." in n for n in moved), "lora_B starts at zero; training should move it"

    seen = [rewards for _, rewards in calls]
    for kwargs, _ in calls:  # the text TRL trains on is the text the env judged
        assert [c[0]["content"] for c in kwargs["completions"]] == kwargs["triplay_text"]
        assert [len(ids) for ids in kwargs["completion_ids"]] and max(map(len, kwargs["completion_ids"])) <= T
    assert seen == replay("defender", calls)
    assert any(len(set(step[g:g + G])) > 1 for step in seen for g in range(0, B, G)), "some group should vary"
    logged = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    assert logged == pytest.approx([sum(step) / B for step in seen])
    # the group's shared attacker acted once per group: both games of a group saw the same attack
    for kwargs, _ in calls:
        attacks = [r["attack"] for r in kwargs["triplay_round"]]
        assert all(attacks[g] == attacks[g + 1] for g in range(0, B, G))


@pytest.mark.parametrize("role, prefix", [("attacker", ""), ("evaluator", "VERDICT:")])
def test_the_attacker_and_the_evaluator_get_the_games_rewards_too(tmp_path, role, prefix):
    trainer, rollout, calls, _ = train(role, tmp_path, response_prefix=prefix)

    assert trainer.state.global_step == STEPS
    assert [rewards for _, rewards in calls] == replay(role, calls, prefix)
    assert all(t.startswith(prefix) for kwargs, _ in calls for t in kwargs["triplay_text"])


def test_bad_inputs_are_named_before_any_model_loads(no_model_loads):
    from training.integrations.trl import triplay_rollout_func

    with pytest.raises(ValueError, match=r"unknown role 'judge': TRL can train one of \('attacker', 'defender', 'evaluator'\)"):
        triplay_rollout_func("judge")
    with pytest.raises(ValueError, match=r"single-turn .* max_rounds must be 1, got 2"):
        triplay_rollout_func("defender", env_kwargs={"max_rounds": 2})
    with pytest.raises(ValueError, match=r"players\['defender'\]: the defender is trained by TRL"):
        triplay_rollout_func("defender", players={"defender": "refuse"})
    with pytest.raises(ValueError, match=r"players\['defender_1'\]: not a role .* nor an agent of this game"):
        triplay_rollout_func("defender", players={"defender_1": "refuse"})  # one defender by default
    with pytest.raises(ValueError, match=r"scripted agent 'refuse' plays the defender, not the attacker"):
        triplay_rollout_func("defender", players={"attacker": "refuse"})
    rollout = triplay_rollout_func("defender")
    with pytest.raises(ValueError, match=r"prompt 'not a seed' is not the text of a scenario"):
        rollout.scenario_of([{"role": "user", "content": "not a seed"}])


def test_players_by_name_role_or_default(no_model_loads):
    from agents.scripted import AlwaysRefuseDefender, GuidanceDefender, TemplateAttacker
    from training.integrations.trl import triplay_rollout_func

    rollout = triplay_rollout_func("defender", players={"defender_1": "refuse"}, env_kwargs={"num_defenders": 2})
    assert "defender_0" not in rollout.players  # the trainer's model plays it
    assert isinstance(rollout.players["defender_1"], AlwaysRefuseDefender)
    assert isinstance(rollout.players["attacker"], TemplateAttacker)
    assert rollout.players["evaluator"].judge is rollout.panel is rollout.envs[0].panel
    rollout = triplay_rollout_func("evaluator", env_kwargs={"num_defenders": 2})
    assert isinstance(rollout.players["defender"], GuidanceDefender)
    assert rollout.players["evaluator_1"].judge is rollout.panel and "evaluator_0" not in rollout.players
    assert rollout.shared_roles == ("attacker", "defender")


def test_missing_trl_says_how_to_install_it(monkeypatch):
    from training.integrations import trl as integration

    monkeypatch.setitem(sys.modules, "trl", None)  # what `import trl` sees where TRL is not installed
    with pytest.raises(ImportError, match=r"needs TRL, which is not installed: pip install -e '\.\[trl\]'"):
        integration.triplay_rollout_func("defender")
    with pytest.raises(ImportError, match=r"pip install -e '\.\[trl\]'"):
        integration.triplay_dataset(4)
