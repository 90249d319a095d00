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
