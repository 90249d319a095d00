"""Held-out numbers carry n and a 95% interval; changes read as improved / worse / within noise."""

import json

import pytest

from training.coevolve import _jsonable
from training.evaluation.metrics import hit_at_k_metrics, judged_metrics
from training.report import change_table, iteration_table


def _heldout(iteration, unsafe, n):
    return {"iteration": iteration, "phase": "heldout", "heldout/unsafe_rate": unsafe, "heldout/n_unsafe_rate": float(n)}


def test_change_table_reads_newcombe_example():
    # 56/70 -> 48/80 unsafe: Newcombe (1998) example (a) with the sign flipped: -0.2 [-0.3339, -0.0524]
    text = change_table([_heldout(0, 56 / 70, 70), _heldout(3, 48 / 80, 80)])
    row = next(line for line in text.splitlines() if "unsafe_rate" in line)
    assert "-0.200 [-0.334, -0.052]" in row and row.endswith("| improved |")
    noise = change_table([_heldout(0, 47 / 48, 48), _heldout(3, 45 / 48, 48)])  # the README's old 0.979 -> 0.938
    assert next(line for line in noise.splitlines() if "unsafe_rate" in line).endswith("| within noise |")
    assert change_table([_heldout(0, 0.5, 4)]) == ""


def _round(env, game, harmful, verdict):
    return {"env": env, "game": game, "round": 0, "scenario": {"harmful": harmful}, "panel_verdicts": [verdict],
            "evaluator_verdicts": [verdict], "attack": f"a{env}", "semantic_similarity": 0.0}


def test_judged_metrics_carry_wilson_intervals_and_hit_at_k():
    # 4 envs in 2 groups of 2 (group = one seed, G tries): group 0 has one success, group 1 none
    judged = [_round(0, 0, True, "unsafe"), _round(1, 0, True, "refusal"),
              _round(2, 0, True, "refusal"), _round(3, 0, True, "guidance")]
    m = judged_metrics(judged)
    assert (m["unsafe_rate"], m["n_unsafe_rate"]) == (0.25, 4.0)
    assert (round(m["unsafe_rate_low"], 4), round(m["unsafe_rate_high"], 4)) == (0.0456, 0.6994)  # Wilson 1/4
    h = hit_at_k_metrics(judged, group_size=2)
    assert (h["hit_at_2"], h["n_hit_at_2"]) == (0.5, 2.0)
    assert m["over_refusal_rate_low"] != m["over_refusal_rate_low"]  # no benign seeds: nan in memory ...
    line = json.dumps(_jsonable(m), allow_nan=False)  # ... and null on disk
    assert '"over_refusal_rate_low": null' in line


def test_iteration_table_shows_the_interval():
    row = {"iteration": 0, "phase": "heldout", "heldout/unsafe_rate": 0.25, "heldout/unsafe_rate_low": 0.0456,
           "heldout/unsafe_rate_high": 0.6994}
    assert "0.250 [0.046, 0.699]" in iteration_table([row], keys=["heldout/unsafe_rate"])


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_metrics_files_hold_no_bare_nan(value):
    assert _jsonable({"x/y": value, "phase": "red"}) == {"x/y": None, "phase": "red"}


def test_eval_md_delta_reads_a_change_against_its_interval():
    from training.evaluation.metrics import proportion
    from training.report import _stage_delta

    # Newcombe (1998) example (a): 48/80 -> 56/70 is +0.2 [+0.0524, +0.3339]
    assert _stage_delta(proportion(48, 80), proportion(56, 70)) == "+0.200 [+0.052, +0.334] beyond noise"
    assert _stage_delta(proportion(47, 48), proportion(45, 48)).endswith("within noise")
    assert _stage_delta({"value": 0.5, "n": 3}, {"value": 0.25, "n": 3}) == "-0.250"  # a mean: no proportion interval
    assert _stage_delta(proportion(0, 0), proportion(1, 2)) == "-"


def test_eval_rates_get_the_judge_error_correction_beside_them():
    from training.evaluation.judging import correct_for_judge
    from training.evaluation.metrics import proportion

    # the judge found 8 of 10 achieved and 9 of 10 not achieved: Se 0.8, Sp 0.9
    objective = {"confusion_matrix": {"achieved": {"achieved": 8, "not_achieved": 2, "invalid": 0},
                                      "not_achieved": {"achieved": 1, "not_achieved": 9, "invalid": 0}}}
    stages = {"final": {"defender": {"attacked": {"all": {"unsafe_rate": proportion(30, 100), "attack_success_rate": proportion(30, 100)}},
                                     "self_bleu": {"value": 0.4, "n": 10}}}}
    assert correct_for_judge(stages, objective) == 2
    rates = stages["final"]["defender"]["attacked"]["all"]
    fixed = rates["unsafe_rate_corrected"]
    assert fixed["value"] == pytest.approx((0.3 + 0.9 - 1) / 0.7) and fixed["raw"] == 0.3
    assert fixed["high"] - fixed["low"] > rates["unsafe_rate"]["high"] - rates["unsafe_rate"]["low"]  # widened
    assert "self_bleu_corrected" not in stages["final"]["defender"]
    assert correct_for_judge(stages, {"confusion_matrix": {"achieved": {}, "not_achieved": {}}}) == 0
