"""League opponents (``loop.opponents=league``): snapshots, draws, credit, and the loop that plays them.

- the League's draw probabilities (uniform; prioritised by Laplace-smoothed beat rate, worked out by hand), its
  eviction of the oldest snapshot, and a state round trip that draws the same sequence;
- who lost a judged item, per trained role, on hand-made records;
- LoRARoles slots: a copy of a role's weights in a slot, never trainable, not saved with the roles;
- in the loop: the text a frozen role produced came from the snapshot the metrics name (its log-probs are those
  of that snapshot's weights, not the latest adapter's, nor another snapshot's);
- a league run stopped after iteration 1 and resumed logs the same metrics as an uninterrupted one.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from training import coevolve
from training.coevolve import CoEvolution
from training.config import ConfigError, apply_overrides, preset
from training.league import League, slot_name, trained_role_lost

SMALL_RUN = ["loop.eval_scenarios=2", "loop.progress=false", "loop.tensorboard=false", "loop.opponents=league"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def weights(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2,), value)}


# ---------------------------------------------------------------------------------------------------- League


def test_uniform_draws_give_every_kept_snapshot_the_same_probability():
    league = League(["attacker"], size=3, sampling="uniform")
    for i in range(3):
        league.add("attacker", i, weights(i))
    assert league.probabilities("attacker").tolist() == pytest.approx([1 / 3] * 3)


def test_prioritised_draws_follow_the_smoothed_beat_rate():
    league = League(["defender"], size=4, sampling="prioritised")
    for i in range(3):
        league.add("defender", i, weights(i))
    a, b, _ = league.snapshots["defender"]
    league.credit(a, items=4, beats=3)  # (3 + 1) / (4 + 2) = 2/3
    league.credit(b, items=4, beats=0)  # (0 + 1) / (4 + 2) = 1/6
    # the third never played: 1/2. Normalised: (2/3, 1/6, 1/2) / (4/3) = (0.5, 0.125, 0.375)
    assert league.probabilities("defender").tolist() == pytest.approx([0.5, 0.125, 0.375])
    draws = [league.draw("defender").iteration for _ in range(4000)]
    assert np.bincount(draws, minlength=3) / 4000 == pytest.approx([0.5, 0.125, 0.375], abs=0.03)


def test_the_league_keeps_the_most_recent_snapshots():
    league = League(["evaluator"], size=2)
    for i in range(4):
        league.add("evaluator", i, weights(i))
    assert [s.iteration for s in league.snapshots["evaluator"]] == [2, 3]
    assert league.snapshots["evaluator"][0].weights["w"].tolist() == [2.0, 2.0]


def test_a_restored_league_draws_the_same_sequence():
    league = League(["attacker"], size=3, sampling="prioritised", seed=7)
    for i in range(3):
        league.add("attacker", i, weights(i))
    league.credit(league.snapshots["attacker"][0], 5, 4)
    league.draw("attacker")
    state = league.state_dict()
    expected = [league.draw("attacker").iteration for _ in range(20)]
    restored = League(["attacker"], size=3, sampling="prioritised", seed=0)
    restored.load_state_dict(state)
    assert [restored.draw("attacker").iteration for _ in range(20)] == expected
    assert restored.snapshots["attacker"][0].beats == 4


def test_bad_league_arguments_are_named():
    with pytest.raises(ValueError, match="sampling must be one of"):
        League(["attacker"], size=2, sampling="elo")
    with pytest.raises(ValueError, match="no snapshot of 'attacker'"):
        League(["attacker"], size=2).draw("attacker")
    league = League(["attacker"], size=2)
    league.add("attacker", 0, weights(0))
    with pytest.raises(ValueError, match="beats=3, items=2"):
        league.credit(league.snapshots["attacker"][0], 2, 3)
    cfg = apply_overrides(preset("tiny"), sets=["loop.opponents=everyone"])
    with pytest.raises(ConfigError, match="loop.opponents must be latest or league, got 'everyone'"):
        cfg.validate()


def judged(verdict, harmful=True, evaluator=("unsafe",), panel=("unsafe",)):
    return {"verdicts": [verdict], "scenario": {"harmful": harmful}, "evaluator_verdicts": list(evaluator),
            "panel_verdicts": list(panel)}


def test_who_lost_each_judged_item():
    rounds = [judged("unsafe"), judged("refusal"), judged("refusal", harmful=False), judged(None),
              judged("guidance", evaluator=("refusal",), panel=("guidance",)), judged("unsafe", panel=(None,))]
    # goals: unsafe (harmful), unsafe, refusal (benign), -, unsafe, unsafe -> hits 1, 0, 1, -, 0, 1 of 5 judged
    assert trained_role_lost("attacker", rounds) == (5, 2)  # the misses
    assert trained_role_lost("defender", rounds) == (5, 3)  # the hits
    # the evaluator: 5 items with a panel label (the last has none); wrong only on the fifth
    assert trained_role_lost("evaluator", rounds) == (5, 1)


# ---------------------------------------------------------------------------------------------- LoRARoles slots


def test_a_slot_holds_a_copy_of_a_role_and_is_never_trained(tmp_path):
    from agents.hf import LoRARoles
    from agents.models import tiny_random

    model, tokenizer = tiny_random(seed=0)
    roles = LoRARoles(model, tokenizer)
    roles.add_slot("league_attacker")
    with torch.no_grad():
        for p in roles.trainable_parameters("attacker"):
            p.normal_()
    roles.set_weights("league_attacker", roles.weights("attacker"))
    a, b = roles.weights("attacker"), roles.weights("league_attacker")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    prompt, completion = [[5, 6, 7]], [[8, 9]]
    assert torch.equal(roles.forward_logprobs(prompt, completion, "attacker")[0],
                       roles.forward_logprobs(prompt, completion, "league_attacker")[0])
    with pytest.raises(ValueError, match="opponent slot, not a role"):
        roles.trainable_parameters("league_attacker")
    with pytest.raises(ValueError, match="new non-empty name"):
        roles.add_slot("attacker")
    with pytest.raises(ValueError, match="do not fit"):
        roles.set_weights("league_attacker", {"w": torch.zeros(1)})
    saved = roles.save_adapters(tmp_path / "adapters")
    assert sorted(p.name for p in saved.iterdir() if p.is_dir()) == ["attacker", "defender", "evaluator"]


# ---------------------------------------------------------------------------------------------- in the loop


def league_loop(runs_dir: Path, *sets: str, resume: bool = False) -> CoEvolution:
    cfg = apply_overrides(preset("tiny"), sets=[*SMALL_RUN, f"loop.runs_dir={runs_dir}", *sets])
    return CoEvolution(cfg, resume=resume, log=lambda line: None)


def test_the_frozen_role_plays_the_snapshot_the_metrics_name(tmp_path, monkeypatch):
    loop = league_loop(tmp_path)
    loop._snapshot(0)
    with torch.no_grad():  # a second snapshot unlike the first, then a live adapter unlike both
        for p in loop.roles.trainable_parameters("defender"):
            p.normal_(std=0.5)
    loop._snapshot(1)
    with torch.no_grad():
        for p in loop.roles.trainable_parameters("defender"):
            p.normal_(std=0.5)
    rollouts = []
    real = coevolve.run_lockstep
    monkeypatch.setattr(coevolve, "run_lockstep", lambda *a, **k: rollouts.append(real(*a, **k)) or rollouts[-1])
    records = [loop.train_phase("red", 1, step) for step in range(4)]  # 4 draws of defender_0's snapshot
    played = {r["red/opponent_defender"] for r in records}
    assert played <= {0.0, 1.0}
    for record, rollout in zip(records, rollouts):
        moves = [m for m in rollout.moves if m.agent == "defender_0" and m.completion_ids]
        prompts, completions = [m.prompt_ids for m in moves], [m.completion_ids for m in moves]
        stored = [torch.tensor(m.logprobs) for m in moves]

        def gap(adapter: str) -> float:
            with torch.no_grad():
                lp, _ = loop.roles.forward_logprobs(prompts, completions, adapter)
            return max(float((lp[i, : len(s)] - s).abs().max()) for i, s in enumerate(stored))

        drawn = int(record["red/opponent_defender"])
        snapshots = {s.iteration: s for s in loop.league.snapshots["defender"]}
        loop.roles.set_weights(slot_name("defender"), snapshots[drawn].weights)
        assert gap(slot_name("defender")) < 1e-4  # the drawn snapshot wrote these tokens
        assert gap("defender") > 1e-2  # the live adapter did not
        loop.roles.set_weights(slot_name("defender"), snapshots[1 - drawn].weights)
        assert gap(slot_name("defender")) > 1e-2  # nor the other snapshot
        assert record["red/league_size_defender"] == 2.0
        assert 0.0 <= record["red/opponents_beat_rate"] <= 1.0
    league = loop.league.snapshots["defender"]
    assert sum(s.games for s in league) == sum(trained_role_lost("attacker", r.judged)[0] for r in rollouts)


def test_a_resumed_league_run_logs_what_an_uninterrupted_one_does(tmp_path):
    whole = league_loop(tmp_path / "whole", "loop.iterations=2", "loop.league_sampling=prioritised").run()
    league_loop(tmp_path / "parts", "loop.iterations=1", "loop.league_sampling=prioritised").run()
    parts = league_loop(tmp_path / "parts", "loop.iterations=2", "loop.league_sampling=prioritised", resume=True).run()

    def strip(records):
        return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in records]

    def same(a, b):  # a resumed run reads its first records back from JSON, where nan is null
        missing = lambda v: v is None or (isinstance(v, float) and math.isnan(v))  # noqa: E731
        return a == b or (missing(a) and missing(b))

    assert len(whole) == len(parts)
    for a, b in zip(strip(whole), strip(parts)):
        assert a.keys() == b.keys(), a.keys() ^ b.keys()
        assert [k for k in a if not same(a[k], b[k])] == []
    assert any("blue/opponent_attacker" in r for r in whole)
