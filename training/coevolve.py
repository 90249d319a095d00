"""The co-evolution loop: P_Red -> P_Blue -> P_Eval, iteration after iteration (TriPlay-RL).

Reads top-down, like a CleanRL script, but every piece it calls is an importable module:

1. set-up: the base model with three LoRA role adapters, the game's envs, the shared Attack Success Pool;
2. per iteration, per phase: a lockstep rollout whose GRPO groups fit the phase, advantages, one GRPO step
   for the phase's role only;
3. a held-out evaluation (panel-judged) after every iteration (and once before training: iteration 0);
4. an atomic checkpoint (adapters, optimizers, pool, every RNG, metrics so far) after every iteration;
   ``resume=True`` continues exactly where the last checkpoint left off.

Under ``torchrun`` (``training.distributed``) every rank plays a block of each batch's GRPO groups and of the
held-out games, the rollouts are gathered so that every number is computed over the global batch on every rank,
the trained role's gradients are summed with one all-reduce, and rank 0 alone writes. Each game's sampling is
seeded by its global index, so N ranks play the games one process would.

| phase | trains | the others | GRPO group |
|---|---|---|---|
| red | attacker | frozen defender, reference defenders, evaluator | G attacks per scenario |
| blue | defender_0 | the latest attacker (benign seeds mixed in) | G responses per attack |
| eval | evaluator (every evaluator_i) | attacker, defenders | G verdicts per (attack, response); reward = agreement with the panel |
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from agents.base import Agent, SamplingSettings
from training.config import RUN_CONTROL_KEYS, ConfigError, TrainConfig, config_diff
from training.evaluation import judged_metrics
from training.evaluation.metrics import hit_at_k_metrics
from training.stats import bootstrap_mean, finite_or_none, rogan_gladen
from training.grpo import RoleBaseline, group_advantages, zero_variance_groups
from training.league import League, slot_name, trained_role_lost
from training.distributed import Dist, block, from_env
from training.rollout import Move, gather_rollout, run_lockstep
from training.trainer import GRPOTrainer, Sample
from triplay_env.agent_ids import ROLES, agent_id, is_role
from triplay_env.files import Unavailable, atomic_dir, atomic_write
from triplay_env.panel import VerdictCache, VerdictGate

__all__ = ["CoEvolution", "PHASE_ROLE", "SHARED_ROLES", "advantages_by_group"]

PHASE_ROLE = {"red": "attacker", "blue": "defender", "eval": "evaluator"}
SHARED_ROLES = {"red": (), "blue": ("attacker",), "eval": ("attacker", "defender")}
CHECKPOINT = "checkpoint"
JUDGE_CACHE = "judge_cache.jsonl"
TRANSCRIPTS = "transcripts.jsonl"
JUDGE_ERROR = "judge_error.json"


def advantages_by_group(moves: Sequence[Move], group_size: int, cfg, baseline: RoleBaseline | None = None) -> tuple[list[float], float]:
    """GRPO advantages for the trained role's moves; returns (advantages in move order, zero-variance share).

    Moves are grouped by (group of envs, agent, game, round): the G samples that answered the same input.
    With ``cfg.role_baseline`` the per-role EMA baseline replaces group normalisation (SPIRAL).
    """
    rewards = torch.tensor([m.reward for m in moves], dtype=torch.float32)  # [M]
    if baseline is not None:
        return baseline.advantages(moves[0].role, rewards).tolist(), float("nan")
    groups: dict[tuple, list[int]] = {}
    for k, m in enumerate(moves):
        groups.setdefault((m.env // group_size, m.agent, m.game, m.round), []).append(k)
    order = [k for members in groups.values() for k in members]
    sizes = {len(members) for members in groups.values()}
    advantages = torch.zeros(len(moves))  # [M]
    if sizes == {group_size}:  # the usual case: whole groups, one vectorised call (batch scaling sees them all)
        grouped = rewards[order]  # [M]
        adv = group_advantages(grouped, group_size, scale=cfg.scale_rewards, leave_one_out=cfg.leave_one_out)
        advantages[order] = adv
        zero = zero_variance_groups(grouped, group_size).float().mean().item()
    else:  # groups that diverged in multi-round games: normalise each on its own, singletons get 0
        zero_count = 0
        for members in groups.values():
            if len(members) >= 2:
                advantages[members] = group_advantages(rewards[members], len(members), scale=cfg.scale_rewards,
                                                       leave_one_out=cfg.leave_one_out)
            zero_count += len(members) < 2 or bool(zero_variance_groups(rewards[members], len(members)).all())
        zero = zero_count / len(groups)
    return advantages.tolist(), zero


def _jsonable(record: dict) -> dict:
    """The record with every nan/inf float as None: metrics files are strict JSON (null, never a bare NaN)."""
    return {k: finite_or_none(v) if isinstance(v, float) else v for k, v in record.items()}


def _sampler_state(policy):
    """A policy's sampling RNG state: a ``torch.Generator`` (``RolePolicy``) or a ``random.Random``
    (``VLLMRolePolicy``, which seeds each request from it); None for agents without one."""
    if hasattr(policy, "generator"):
        return policy.generator.get_state()
    if getattr(policy, "rng", None) is not None:
        return policy.rng.getstate()
    return None


def _set_sampler_state(policy, state) -> None:
    if hasattr(policy, "generator"):
        policy.generator.set_state(state)
    else:
        policy.rng.setstate(state)


class CoEvolution:
    """Owns the model, the envs and the trainer; :meth:`run` trains and writes ``run_dir``.

    Args:
        cfg: a validated :class:`~training.config.TrainConfig`.
        resume: continue from ``run_dir/checkpoint`` (refuses a config that differs, naming the keys).
        log: where progress lines go (``print`` by default; rank 0 only).
        dist: the ranks sharing the run; by default read from torchrun's environment (one process without it).
    """

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, log: Callable[[str], None] = print,
                 dist: Dist | None = None):
        self.cfg = cfg.validate()
        self.dist = dist if dist is not None else from_env(timeout_s=cfg.dist.timeout_s, device=cfg.model.device)
        cfg.check_world(self.dist.world_size, gpus=torch.cuda.device_count() if torch.cuda.is_available() else 0)
        self.run_dir = cfg.run_dir
        self.log = log if self.dist.is_main else (lambda line: None)
        self.resume = resume
        if resume:
            self._check_resumable()
        elif (self.run_dir / CHECKPOINT).exists():
            raise FileExistsError(
                f"{self.run_dir} already holds a checkpoint: pass --resume to continue it, or choose another "
                f"--set loop.run_name=... (or delete the folder)"
            )
        self._seed_everything(cfg.loop.seed)
        self._build()

    # ------------------------------------------------------------------ set-up

    def _seed_everything(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)

    def _build(self) -> None:
        import triplay_env
        from agents.hf import LoRARoles
        from agents.models import load_model, tiny_random
        from agents.scripted import make_scripted

        cfg = self.cfg
        from agents.judge_spec import check_endpoints

        self.judge_spec = cfg.judges.spec()
        check_endpoints(self.judge_spec)  # an unreachable judge fails here, in one line, before any model loads
        if cfg.model.backend == "vllm":
            import importlib.util

            if importlib.util.find_spec("vllm") is None:
                raise Unavailable("model.backend=vllm needs vLLM, which is not installed: pip install -e '.[vllm]' "
                                  "(a GPU machine), or sample with transformers: --set model.backend=hf")
        t0 = time.perf_counter()
        if cfg.model.name == "tiny":
            model, tokenizer = tiny_random(seed=cfg.loop.seed)
        else:
            model, tokenizer = load_model(cfg.model.name, dtype=getattr(torch, cfg.model.dtype))
        device = cfg.model.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.dist.enabled and device.startswith("cuda"):
            device = self.dist.device  # one GPU per rank: cuda:LOCAL_RANK
        model = model.to(device)
        self.load_seconds = time.perf_counter() - t0
        self.roles = LoRARoles(
            model, tokenizer, r=cfg.model.lora_r, alpha=cfg.model.lora_alpha,
            target_modules=cfg.model.lora_target_modules, max_prompt_tokens=cfg.model.max_prompt_tokens,
        )
        if self.dist.enabled:  # every rank seeded the same, so built the same adapters; a mismatch stops here
            self.dist.check_equal(self._checksum(self.roles.roles), "the initial adapters")
        if cfg.loop.opponents == "league":
            for role in ROLES:  # one extra adapter per role that its past snapshots are loaded into
                self.roles.add_slot(slot_name(role))
        gen = cfg.generation
        self.engine = self._vllm_engine() if cfg.model.backend == "vllm" else None
        """who samples the rollouts: a ``VLLMRoles`` fed the adapters after every update, or None (``self.roles``)"""
        samplers = self.engine if self.engine is not None else self.roles
        self.policies = {role: self._policy(samplers, role, seed=cfg.loop.seed * 1000 + k)
                         for k, role in enumerate(("attacker", "defender", "evaluator"))}
        self.players: dict[str, Agent] = dict(self.policies)
        self.league = None
        """past snapshots the frozen roles play (``loop.opponents=league``), and their players"""
        if cfg.loop.opponents == "league":
            self.league = League(ROLES, size=cfg.loop.league_size, sampling=cfg.loop.league_sampling,
                                 seed=cfg.loop.seed * 1000 + 99)
            self.league_players = {role: self._policy(samplers, role, seed=cfg.loop.seed * 1000 + 20 + k, adapter=slot_name(role))
                                   for k, role in enumerate(ROLES)}
        for i in range(1, cfg.game.num_defenders):
            if cfg.game.reference_defender == "base":
                self.players[agent_id("defender", i)] = samplers.policy(None, SamplingSettings(
                    max_new_tokens=gen.defender_max_new_tokens, temperature=gen.temperature, top_p=gen.top_p,
                    seed=cfg.loop.seed * 1000 + 10 + i))
            else:
                self.players[agent_id("defender", i)] = make_scripted(cfg.game.reference_defender)
        minilm = None
        if cfg.game.embedder or self.judge_spec.needs_minilm:
            from agents.models import load_embedder

            minilm = load_embedder()
        self.embedder = minilm if cfg.game.embedder else None
        """R_sem's and the pool's embedder (``game.embedder``); the judges get MiniLM when their spec asks"""
        from agents.judge_spec import build_panel

        # one writer: rank 0 keeps the cache file, the other ranks cache in memory
        cache = VerdictCache(self.run_dir / JUDGE_CACHE if cfg.judges.cache and self.dist.is_main else None)
        self.panel = build_panel(self.judge_spec, embedder=minilm, cache=cache, check=False)
        """the one panel every phase, the held-out evaluation and the evaluator's labels use"""
        self.gate = None
        if cfg.game.verdict_source == "gated":
            self.gate = VerdictGate(cfg.game.gate_threshold, cfg.game.gate_window, cfg.game.gate_min_items)
        self.pool = triplay_env.AttackSuccessPool(capacity=cfg.game.pool_capacity)
        if self.dist.enabled:  # one logical pool and gate: each step's additions are exchanged in global game order
            self.pool.exchange = self.dist.concat
            if self.gate is not None:
                self.gate.exchange = self.dist.concat
        G, ranks = cfg.grpo.group_size, self.dist.world_size
        groups = block(cfg.grpo.batch_size // G, self.dist.rank, ranks)
        self.train_games = range(groups.start * G, groups.stop * G)
        """the global indices of the training games this rank plays (whole GRPO groups)"""
        self.eval_games = block(cfg.loop.eval_scenarios, self.dist.rank, ranks)
        """the global indices of the held-out games this rank plays"""
        env_cfg = dict(num_defenders=cfg.game.num_defenders, max_rounds=cfg.game.max_rounds,
                       reward_scheme=cfg.game.reward_scheme, reward_kwargs=dict(cfg.game.reward_kwargs),
                       defender_weights=tuple(cfg.game.defender_weights) or None, scenarios=cfg.game.scenarios,
                       embedder=self.embedder, panel=self.panel)
        self.train_envs = [
            triplay_env.parallel_env(**env_cfg, split="train", benign_fraction=cfg.game.benign_fraction,
                                     verdict_source=cfg.game.verdict_source, gate=self.gate,
                                     attack_success_pool=self.pool)
            for _ in self.train_games
        ]
        # held-out seeds, half benign; a private pool so evaluation never feeds the training pool; every
        # held-out number is the panel's, so who would pay there does not matter (no gate to move)
        self.eval_envs = [
            triplay_env.parallel_env(**env_cfg, split="heldout", benign_fraction=0.5,
                                     verdict_source="panel" if self.gate else cfg.game.verdict_source,
                                     attack_success_pool=triplay_env.AttackSuccessPool(capacity=1))
            for _ in self.eval_games
        ]
        self.trainer = GRPOTrainer(self.roles, cfg.grpo, temperature=gen.temperature, dist=self.dist)
        self.baseline = RoleBaseline() if cfg.grpo.role_baseline else None
        self.metrics: list[dict] = []
        self.start_iteration = 1
        self.iteration = 0
        """the iteration being trained (0: the evaluation before training)"""
        self.checkpointed_iteration: int | None = None
        """the iteration the checkpoint on disk ends with (None: none yet)"""
        self._judge_errors_logged: dict[str, bool] = {}
        self.judge_error: dict | None = None
        """the panel's sensitivity and specificity on the human objective judgments (``judges.measure_error``)"""

    def _checksum(self, roles: Sequence[str]) -> float:
        """A number that changes when any LoRA weight of ``roles`` does (ranks compare it: ``dist.check_sync``)."""
        return sum(float(w.double().sum()) + float(w.double().abs().sum()) for r in roles for w in self.roles.weights(r).values())

    def _policy(self, samplers, role: str, *, seed: int, adapter: str | None = None):
        """``role``'s sampling policy with the configured lengths, temperature and top-p (played by
        ``adapter``, default the role's own)."""
        gen = self.cfg.generation
        return samplers.policy(adapter or role, SamplingSettings(
            max_new_tokens=self._max_new_tokens[role], temperature=gen.temperature, top_p=gen.top_p, seed=seed,
            response_prefix=gen.evaluator_prefix if role == "evaluator" else ""))

    @property
    def _max_new_tokens(self) -> dict[str, int]:
        gen = self.cfg.generation
        return {"attacker": gen.attacker_max_new_tokens, "defender": gen.defender_max_new_tokens,
                "evaluator": gen.evaluator_max_new_tokens}

    def _vllm_engine(self):
        """The vLLM backend: one in-process engine over the same base, serving the three role adapters.

        The trainer keeps the peft model; after every update the trained role's adapter is saved and pushed
        to the engine under a fresh id (``VLLMRoles.push_from``), so rollouts never sample stale weights.
        """
        from agents.models import model_folder
        from agents.vllm_agent import VLLMRoles

        m = self.cfg.model
        served = self.roles.roles + self.roles.slots  # league slots are served like roles
        # under torchrun each rank owns an engine on its own GPU; vLLM's external launcher lets it live in the
        # process group torchrun made (as TRL's colocated mode does) instead of starting one of its own
        launcher = {"distributed_executor_backend": "external_launcher"} if self.dist.enabled else {}
        engine = VLLMRoles(
            model_folder(m.name), roles=served, max_lora_rank=m.lora_r, max_loras=max(3, len(served)), dtype=m.dtype,
            max_model_len=m.max_prompt_tokens + max(self._max_new_tokens.values()),
            gpu_memory_utilization=m.vllm_memory_fraction, seed=self.cfg.loop.seed,
            tensor_parallel_size=m.vllm_tensor_parallel_size, **launcher,
        )
        engine.push_from(self.roles)
        return engine

    # ------------------------------------------------------------------ the loop

    def run(self) -> list[dict]:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:
            (self.run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        if self.resume:
            self._load_checkpoint()
        writer = self._tensorboard()
        measure = cfg.judges.measure_error
        if measure == "always" or (measure == "offline" and not any(e.is_http for e in self.judge_spec.panel)):
            # rank 0 judges the 395 items once (an HTTP judge is asked once, not once per rank) and shares the result
            error = self._measure_judge_error() if self.dist.is_main else None
            self.judge_error = self.dist.all_gather(error, "sharing the judge's error")[0]
        if self.start_iteration == 1:
            self._record(self.evaluate(iteration=0), writer)
            self._snapshot(0)
        for iteration in range(self.start_iteration, cfg.loop.iterations + 1):
            self.iteration = iteration
            for phase in cfg.loop.phases:
                for step in range(cfg.loop.steps_per_phase):
                    self._record(self.train_phase(phase, iteration, step), writer)
            self._record(self.evaluate(iteration), writer)
            self._snapshot(iteration)
            self.save_checkpoint(iteration)
        if writer is not None:
            writer.close()
        if self.dist.is_main:
            from training.report import write_report

            write_report(self.run_dir, self.metrics, judges=f"the panel {self.panel.label}")  # reads transcripts.jsonl too
        self.dist.barrier("the end of the run")  # no rank leaves before the report is written
        return self.metrics

    def train_phase(self, phase: str, iteration: int, step: int) -> dict:
        """One rollout shaped for ``phase`` and one GRPO update of its role."""
        cfg, role = self.cfg, PHASE_ROLE[phase]
        t0 = time.perf_counter()
        G = cfg.grpo.group_size
        scenario_seeds = self.rng.integers(0, 2**31 - 1, size=cfg.grpo.batch_size // G)
        sample_seed = int(self.rng.integers(0, 2**31 - 1))  # every game's sampling: (this, its global index, ...)
        seeds = [int(s) for s in scenario_seeds for _ in range(G)][self.train_games.start : self.train_games.stop]
        players, opponents = self._opponents(role)
        bar = self._progress(f"iter {iteration} {phase:>4} ({role})", 3 * cfg.game.max_rounds)
        rollout = run_lockstep(self.train_envs, players, seeds, group_size=G, shared_roles=SHARED_ROLES[phase],
                               on_step=(lambda n: bar.update(1)) if bar else None, sample_seed=sample_seed,
                               env_offset=self.train_games.start, dist=self.dist)
        if bar:
            bar.close()
        local_moves = rollout.moves
        rollout = gather_rollout(rollout, self.dist)  # every rank's games, in one process's order
        t1 = time.perf_counter()
        # defender_1.. are fixed references; every evaluator_i trains (they share the adapter)
        trained_agents = [agent_id("defender", 0)] if role == "defender" else [
            a for a in self.train_envs[0].possible_agents if is_role(a, role)]
        played = [m for m in rollout.moves if m.agent in trained_agents and m.completion_ids is not None]
        # a move whose verdict no judge gave is left out of its GRPO group: no advantage, no sample
        moves = [m for m in played if m.has_verdict]
        advantages, zero_share = advantages_by_group(moves, G, cfg.grpo, self.baseline) if moves else ([], float("nan"))
        mine = {id(m) for m in local_moves}  # this rank trains on its own games; the all-reduce adds the others'
        samples = [Sample(m.prompt_ids, m.completion_ids, m.logprobs, a) for m, a in zip(moves, advantages) if id(m) in mine]
        gap = None
        if cfg.grpo.recompute_old_logprobs:
            samples, gap = self.trainer.recompute_old_logprobs(role, samples)
        update = self.trainer.step(role, samples)
        if gap is not None:
            update["sampler_logprob_gap"] = gap
        if self.engine is not None:
            self.engine.push_from(self.roles, roles=[role])  # the next rollout samples the updated adapter
        if cfg.dist.check_sync and self.dist.enabled:
            self.dist.check_equal(self._checksum([role]), f"the {role} adapter after iteration {iteration} {phase} step {step}")
        t2 = time.perf_counter()
        if moves and self.dist.is_main:
            self._write_transcripts(iteration, phase, step, moves)
        p = f"{phase}/"
        rewards = [m.reward for m in moves]
        record = {"iteration": iteration, "phase": phase, "step": step,
                  p + f"reward_{role}": float(np.mean(rewards)) if rewards else float("nan"),
                  p + "zero_variance_groups": zero_share,
                  p + "unjudged_samples": float(len(played) - len(moves)),
                  **self._judging_metrics(p, rollout.judged),
                  p + "pool_size": float(len(self.pool)),
                  **{p + "rollout_" + k: v for k, v in judged_metrics(rollout.judged).items() if not k.startswith("n_")},
                  **({p + "rollout_" + k: v for k, v in hit_at_k_metrics(rollout.judged, G).items()} if phase == "red" else {}),
                  **{p + k: v for k, v in update.items()},
                  "time/" + phase + "_rollout_s": t1 - t0, "time/" + phase + "_update_s": t2 - t1}
        # the mean reward's 95% interval: a bootstrap over GRPO groups (the G samples of a group share their input,
        # so they are resampled together), seeded by the step so a resumed run logs the same bounds
        spread = bootstrap_mean(rewards, clusters=[(m.env // G, m.game, m.round) for m in moves],
                                seed=iteration * 1000 + step, resamples=1000)
        nan = float("nan")
        record[p + f"reward_{role}_low"] = nan if spread["low"] is None else spread["low"]
        record[p + f"reward_{role}_high"] = nan if spread["high"] is None else spread["high"]
        record[p + f"n_reward_{role}"] = float(len(rewards))
        for agent, total in rollout.returns.items():
            record[p + f"return_{agent}"] = total / cfg.grpo.batch_size
        if opponents:
            items, lost = trained_role_lost(role, rollout.judged)
            for other, snapshot in opponents.items():
                self.league.credit(snapshot, items, lost)
                record[p + f"opponent_{other}"] = float(snapshot.iteration)  # the iteration it was taken after
                record[p + f"league_size_{other}"] = float(len(self.league.snapshots[other]))
            record[p + "opponents_beat_rate"] = lost / items if items else float("nan")
        self.log(f"[iter {iteration}] {phase:>4} step {step}: {role} reward {record[p + f'reward_{role}']:+.3f}  "
                 f"loss {update.get('loss', float('nan')):+.4f}  ASR {record[p + 'rollout_attack_success_rate']:.2f}  "
                 f"({t1 - t0:.1f}s rollout, {t2 - t1:.1f}s update)")
        return record

    def _opponents(self, role: str) -> tuple[dict[str, Agent], dict]:
        """Who plays this step: the players, with each frozen role's league snapshot in its slot (league), and
        ``{frozen role: the snapshot drawn}`` (empty with ``loop.opponents=latest``)."""
        if self.league is None:
            return self.players, {}
        players, drawn = dict(self.players), {}
        for other in ROLES:
            if other == role:
                continue
            drawn[other] = self.league.draw(other)
            self.roles.set_weights(slot_name(other), drawn[other].weights)
            players[other] = self.league_players[other]
        if self.engine is not None:
            self.engine.push_from(self.roles, roles=[slot_name(r) for r in drawn])
        return players, drawn

    def _measure_judge_error(self) -> dict | None:
        """Judge PyRIT's human objective-achieved judgments with the panel (cached, so a resumed run asks no judge
        again) and write ``judge_error.json``; None, said once, when they are not pulled."""
        from training.evaluation.judging import SafetyJudge, judge_error, judge_objective_scores
        from triplay_env.datasets import load_objective_judgments

        try:
            rows = load_objective_judgments()
        except FileNotFoundError:
            self.log("held-out unsafe rates are not corrected for the judge's error: the human objective judgments "
                     "are not pulled (triplay data pull objective-judgments)")
            return None
        objective = judge_objective_scores(SafetyJudge(self.panel), rows)
        self.panel.take_stats()  # these items are not a training phase's
        self.panel.cache.take_counts()
        error = judge_error(objective)
        if error is not None:
            atomic_write(self.run_dir / JUDGE_ERROR, json.dumps(
                {**error, "accuracy": objective["accuracy"], "rows": len(rows), "judges": self.panel.label}, indent=2))
            self.log(f"judge error on {len(rows)} human objective judgments: sensitivity {error['sensitivity']:.3f}, "
                     f"specificity {error['specificity']:.3f} (held-out unsafe rates also given corrected)")
        return error

    def _snapshot(self, iteration: int) -> None:
        """League: keep every role's adapter as it is after ``iteration`` (0: before training)."""
        if self.league is not None:
            for role in ROLES:
                self.league.add(role, iteration, self.roles.weights(role))

    @torch.no_grad()
    def evaluate(self, iteration: int) -> dict:
        """Held-out games played by the current policies, judged by the panel; fresh seeded sampling each time."""
        from triplay_env import AttackSuccessPool

        t0 = time.perf_counter()
        for env in self.eval_envs:
            # a fresh private pool per evaluation: held-out numbers depend on the current policies alone, not on
            # the attacks the previous evaluation left in the pool (which a resumed run does not have)
            env.attack_success_pool = AttackSuccessPool(capacity=1)
        # the same seeds every evaluation (common random numbers: iterations differ by their policies alone)
        seeds = [100_000 + i for i in self.eval_games]
        rollout = run_lockstep(self.eval_envs, self.players, seeds, sample_seed=10_000, env_offset=self.eval_games.start,
                               dist=self.dist)
        rollout = gather_rollout(rollout, self.dist)
        games = self.cfg.loop.eval_scenarios
        record = {"iteration": iteration, "phase": "heldout", "step": 0,
                  **{"heldout/" + k: v for k, v in judged_metrics(rollout.judged).items()},
                  **self._judging_metrics("heldout/", rollout.judged)}
        nan = float("nan")
        for role in ROLES:  # held-out metrics are heldout/...; eval/... is the P_Eval training phase
            agent = agent_id(role, 0)
            record[f"heldout/reward_{role}"] = rollout.returns.get(agent, 0.0) / games
            per_game = [sum(m.reward for m in rollout.moves if m.env == i and m.agent == agent) for i in range(games)]
            spread = bootstrap_mean(per_game, seed=iteration, resamples=1000)  # games are independent: no clusters
            record[f"heldout/reward_{role}_low"] = nan if spread["low"] is None else spread["low"]
            record[f"heldout/reward_{role}_high"] = nan if spread["high"] is None else spread["high"]
        n_unsafe = int(record["heldout/n_unsafe_rate"])
        if self.judge_error is not None and n_unsafe:
            corrected = rogan_gladen(round(record["heldout/unsafe_rate"] * n_unsafe), n_unsafe, **self.judge_error)
            for suffix, key in (("", "value"), ("_low", "low"), ("_high", "high")):
                record["heldout/unsafe_rate_corrected" + suffix] = nan if corrected[key] is None else corrected[key]
        record["time/eval_s"] = time.perf_counter() - t0
        self.log(f"[iter {iteration}] held-out: ASR {record['heldout/attack_success_rate']:.2f}  unsafe {record['heldout/unsafe_rate']:.2f}  "
                 f"refusal {record['heldout/refusal_rate']:.2f}  guidance {record['heldout/guidance_rate']:.2f}  "
                 f"over-refusal {record['heldout/over_refusal_rate']:.2f}  evaluator agreement {record['heldout/evaluator_agreement']:.2f}")
        return record

    def _judging_metrics(self, prefix: str, judged: Sequence[dict]) -> dict[str, float]:
        """How the panel did since the last call: each judge's abstain rate, the verdict cache's hit rate, which
        source paid defender_0's rounds, and the gate's agreement (``gated``)."""
        out: dict[str, float] = {}
        stats: dict[str, dict] = {}
        for part in self.dist.all_gather(self.panel.take_stats(), "the judges' counts"):  # every rank judged its games
            for name, stat in part.items():
                total = stats.setdefault(name, {"items": 0, "abstained": 0, "first_error": None})
                total["items"] += stat["items"]
                total["abstained"] += stat["abstained"]
                total["first_error"] = total["first_error"] or stat["first_error"]
        for name, stat in stats.items():
            out[f"{prefix}judge_abstain_rate/{name}"] = stat["abstained"] / stat["items"] if stat["items"] else 0.0
            if stat["first_error"] and not self._judge_errors_logged.get(name):
                self._judge_errors_logged[name] = True
                self.log(f"judge {name} abstained ({stat['abstained']} of {stat['items']} items): {stat['first_error']}")
        hits, misses = self.dist.sum(self.panel.cache.take_counts(), "the verdict cache's counts")
        out[prefix + "judge_cache_hit_rate"] = hits / (hits + misses) if hits + misses else float("nan")
        sources = [r["verdict_sources"][0] for r in judged]
        if sources:
            for source in ("evaluator", "panel", "rule"):
                out[f"{prefix}paid_by_{source}"] = sources.count(source) / len(sources)
        if self.gate is not None:
            agreement = self.gate.agreement
            out[prefix + "gate_agreement"] = agreement
            out[prefix + "gate_open"] = float(self.gate.paying == "evaluator")
        return out

    def close(self) -> None:
        """Stop the vLLM engine, if any (the transformers model needs no closing), and leave the process group."""
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        self.dist.close()

    # ------------------------------------------------------------------ logging

    @property
    def global_step(self) -> int:
        """Optimizer steps taken so far, over all roles (TensorBoard's x-axis)."""
        return sum(r.get("phase") in PHASE_ROLE for r in self.metrics)

    def _record(self, record: dict, writer) -> None:
        record["judges"] = self.judge_spec.config_hash  # which panel judged it (config.json holds the spec)
        record["global_step"] = self.global_step + (record.get("phase") in PHASE_ROLE)
        self.metrics.append(record)
        if not self.dist.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(_jsonable(record), allow_nan=False) + "\n")
        if writer is not None:
            step = record["global_step"]
            for k, v in record.items():
                if isinstance(v, float) and "/" in k:
                    writer.add_scalar(k, v, step)

    def _write_transcripts(self, iteration: int, phase: str, step: int, moves: Sequence[Move]) -> None:
        """Append the highest- and the lowest-reward game of this step to ``transcripts.jsonl`` (the report
        shows them per iteration)."""
        best, worst = max(moves, key=lambda m: m.reward), min(moves, key=lambda m: m.reward)
        picks = [("highest", best)] + ([("lowest", worst)] if worst.reward < best.reward else [])
        with open(self.run_dir / TRANSCRIPTS, "a") as f:
            for which, m in picks:
                judged = m.judged or {}
                row = {"iteration": iteration, "phase": phase, "step": step, "which": which, "agent": m.agent,
                       "reward": m.reward, "seed": m.info.get("scenario", {}).get("text"),
                       "harmful": m.info.get("scenario", {}).get("harmful"), "attack": judged.get("attack", m.info.get("attack")),
                       "responses": list(judged.get("responses", m.info.get("responses") or ())), "text": m.text,
                       "verdicts": list(judged.get("verdicts", ())), "panel_verdicts": list(judged.get("panel_verdicts", ()))}
                f.write(json.dumps(row, default=str) + "\n")

    def _tensorboard(self):
        if not self.cfg.loop.tensorboard or not self.dist.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.log("tensorboard is not installed: skipping TensorBoard logs (pip install 'triplay[train]')")
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.global_step + 1)

    def _progress(self, desc: str, total: int):
        if not self.cfg.loop.progress or not self.dist.is_main:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="phase", leave=False)

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, iteration: int) -> Path:
        """Write ``run_dir/checkpoint`` atomically (built beside it, flushed, swapped in with renames)."""
        final = self.run_dir / CHECKPOINT
        # each rank's own RNG states (rank 0 writes them all); the rest is identical on every rank
        ranks = self.dist.all_gather(self._rng_state(), "gathering the ranks' RNG states")
        if not self.dist.is_main:
            self.dist.barrier("the checkpoint")  # rank 0 has written it
            self.checkpointed_iteration = iteration
            return final
        state = {
            "iteration": iteration,
            "world_size": self.dist.world_size,
            "trainer": self.trainer.state_dict(),
            "baseline": None if self.baseline is None else self.baseline.state_dict(),
            "gate": None if self.gate is None else self.gate.state_dict(),
            "league": None if self.league is None else self.league.state_dict(),
            "rng": ranks[0],
            "rng_per_rank": ranks,
        }
        with atomic_dir(final, fsync=True) as tmp:
            self.roles.save_adapters(tmp / "adapters")
            torch.save(state, tmp / "state.pt")
            (tmp / "pool.json").write_text(json.dumps(self.pool.state_dict()))
            (tmp / "metrics.json").write_text(json.dumps([_jsonable(r) for r in self.metrics], allow_nan=False))
            (tmp / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))
        self.checkpointed_iteration = iteration
        self.dist.barrier("the checkpoint")  # every rank knows the checkpoint is complete before it goes on
        return final

    def _rng_state(self) -> dict:
        return {
            "numpy_loop": self.rng.bit_generator.state,
            "python": random.getstate(),
            "numpy_global": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "policies": {name: _sampler_state(p) for name, p in self.players.items() if _sampler_state(p) is not None},
            "league_players": {} if self.league is None else {r: _sampler_state(p) for r, p in self.league_players.items()},
        }

    def _checkpoint_dir(self) -> Path | None:
        for name in (CHECKPOINT, f"{CHECKPOINT}.old"):  # .old survives a crash between the two renames
            if (self.run_dir / name / "state.pt").is_file():
                return self.run_dir / name
        return None

    def _check_resumable(self) -> None:
        ckpt = self._checkpoint_dir()
        if ckpt is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {self.run_dir} (expected {self.run_dir / CHECKPOINT}/state.pt)")
        saved = json.loads((ckpt / "config.json").read_text())
        differ = [k for k in config_diff(saved, self.cfg.to_dict()) if k not in RUN_CONTROL_KEYS]
        if differ:
            raise ConfigError(f"--resume: the config differs from the checkpoint's in {differ}; "
                              f"use the same preset and overrides (only {list(RUN_CONTROL_KEYS)} may change)")

    def _load_checkpoint(self) -> None:
        ckpt = self._checkpoint_dir()
        state = torch.load(ckpt / "state.pt", weights_only=False)
        self.roles.load_adapters(ckpt / "adapters")
        self.trainer.load_state_dict(state["trainer"])
        if self.baseline is not None and state["baseline"] is not None:
            self.baseline.load_state_dict(state["baseline"])
        if self.gate is not None and state.get("gate") is not None:
            self.gate.load_state_dict(state["gate"])
        # every game is seeded by its global index and every rank holds the same state, so a run written by N ranks
        # resumes on M: with the same N each rank takes its own RNG states back, else rank 0's (the same values)
        ranks = state.get("rng_per_rank", [state["rng"]])
        saved_world = state.get("world_size", 1)
        rng = ranks[self.dist.rank] if saved_world == self.dist.world_size else ranks[0]
        self.rng.bit_generator.state = rng["numpy_loop"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy_global"])
        torch.set_rng_state(rng["torch"])
        for name, gen_state in rng["policies"].items():
            _set_sampler_state(self.players[name], gen_state)
        if self.league is not None:
            self.league.load_state_dict(state["league"])
            for role, gen_state in rng["league_players"].items():
                _set_sampler_state(self.league_players[role], gen_state)
        if self.engine is not None:
            self.engine.push_from(self.roles)
        self.pool.load_state_dict(json.loads((ckpt / "pool.json").read_text()))
        self.metrics = json.loads((ckpt / "metrics.json").read_text())
        self.start_iteration = state["iteration"] + 1
        self.checkpointed_iteration = state["iteration"]
        if not self.dist.is_main:
            return
        # metrics logged after the checkpoint belong to work that is being redone: rewrite the log
        with open(self.run_dir / "metrics.jsonl", "w") as f:
            for record in self.metrics:
                f.write(json.dumps(_jsonable(record), allow_nan=False) + "\n")
        transcripts = self.run_dir / TRANSCRIPTS
        if transcripts.exists():  # games after the checkpoint are being replayed: keep each once
            kept = [line for line in transcripts.read_text().splitlines() if json.loads(line)["iteration"] <= state["iteration"]]
            transcripts.write_text("".join(line + "\n" for line in kept))
        moved = "" if saved_world == self.dist.world_size else f" (written by {saved_world} rank(s), now {self.dist.world_size})"
        self.log(f"resumed {self.run_dir} after iteration {state['iteration']}{moved}")
