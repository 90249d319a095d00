"""Intervals against published values and hand-worked numbers."""

import json
import math

import pytest

from training.stats import (bootstrap_difference, bootstrap_mean, finite_or_none, hit_at_k, proportion_difference,
                            rate, reading, rogan_gladen, wilson)


@pytest.mark.parametrize("k,n,low,high", [
    # Newcombe (1998), Statistics in Medicine 17:857-872, Table I, method 3 (Wilson score)
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_matches_newcombe_table(k, n, low, high):
    lo, hi = wilson(k, n)
    assert (round(lo, 4), round(hi, 4)) == (low, high)


def test_wilson_closed_form_and_edges():
    k, n, z = 7, 16, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo, hi = wilson(k, n)
    assert lo == pytest.approx(centre - half, abs=1e-12) and hi == pytest.approx(centre + half, abs=1e-12)
    assert wilson(0, 0) == (None, None)
    assert rate(0, 0) == {"value": None, "n": 0, "low": None, "high": None}
    with pytest.raises(ValueError, match="k=5, n=3"):
        wilson(5, 3)


def test_newcombe_difference_example_and_reading():
    # Newcombe (1998), Table II, example (a) 56/70 - 48/80, method 10: 0.0524 to 0.3339
    d = proportion_difference(56, 70, 48, 80, higher_is_better=True)
    assert round(d["diff"], 4) == 0.2 and (round(d["low"], 4), round(d["high"], 4)) == (0.0524, 0.3339)
    assert d["reading"] == "improved"
    assert proportion_difference(56, 70, 48, 80, higher_is_better=False)["reading"] == "worse"
    # 2 of 48 apart: the README's old "unsafe 0.979 -> 0.938" is noise
    assert proportion_difference(45, 48, 47, 48, higher_is_better=False)["reading"] == "within noise"
    assert reading(None, None) == "within noise" and reading(-0.3, -0.1) == "lower"


def test_rogan_gladen_by_hand():
    r = rogan_gladen(30, 100, sensitivity=0.8, specificity=0.9)
    assert r["value"] == pytest.approx((0.3 + 0.9 - 1) / 0.7)  # 0.2857
    # sampling error of p alone: p's Wilson bounds mapped by the correction, (bound + 0.9 - 1) / 0.7
    z, n, p = 1.959963984540054, 100, 0.3
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert (r["low"], r["high"]) == pytest.approx(((centre - half - 0.1) / 0.7, (centre + half - 0.1) / 0.7), rel=1e-9)
    # at 0/n the corrected interval keeps Wilson's width (a delta-method interval would collapse to [0, 0])
    zero = rogan_gladen(0, 2, sensitivity=0.8, specificity=0.9)
    assert (zero["value"], zero["low"]) == (0.0, 0.0)
    assert zero["high"] == pytest.approx((wilson(0, 2)[1] - 0.1) / 0.7)
    wider = rogan_gladen(30, 100, sensitivity=0.8, specificity=0.9, n_sensitivity=50, n_specificity=50)
    assert wider["high"] - wider["low"] > r["high"] - r["low"]
    assert rogan_gladen(5, 100, sensitivity=0.8, specificity=0.9)["value"] == 0.0  # below the false-positive floor: clipped
    assert rogan_gladen(30, 100, sensitivity=0.5, specificity=0.5)["value"] is None  # an uninformative judge


def test_hit_at_k_by_hand():
    seeds = [[False, False, True], [False, False, False], [True, False, False], [False, True]]
    assert hit_at_k(seeds, 1)["value"] == 1 / 4
    assert hit_at_k(seeds, 2)["value"] == 2 / 4
    h3 = hit_at_k(seeds, 3)  # the 2-try seed is not observed at k=3
    assert (h3["value"], h3["n"]) == (2 / 3, 3)
    with pytest.raises(ValueError, match="k >= 1"):
        hit_at_k(seeds, 0)


def test_bootstrap_clusters_widen_and_difference_reads():
    # two seeds whose games agree within a seed and disagree across: the per-game interval is too narrow
    values = [0.0] * 10 + [1.0] * 10 + [0.0] * 10 + [1.0] * 10
    seeds = [0] * 10 + [1] * 10 + [2] * 10 + [3] * 10
    naive, clustered = bootstrap_mean(values), bootstrap_mean(values, clusters=seeds)
    assert naive["value"] == clustered["value"] == 0.5
    assert clustered["high"] - clustered["low"] > 2 * (naive["high"] - naive["low"])
    assert bootstrap_mean([1.0, 1.0, 1.0])["low"] == 1.0
    assert bootstrap_mean([float("nan")])["value"] is None
    d = bootstrap_difference([1.0, 0.9, 1.1, 1.0], [0.0, 0.1, -0.1, 0.0], higher_is_better=True)
    assert d["diff"] == pytest.approx(1.0) and d["reading"] == "improved"
    assert bootstrap_difference([0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0])["reading"] == "within noise"


def test_finite_or_none_makes_strict_json():
    record = {k: finite_or_none(v) for k, v in {"a": float("nan"), "b": 1.5, "c": float("inf")}.items()}
    assert json.dumps(record, allow_nan=False) == '{"a": null, "b": 1.5, "c": null}'
