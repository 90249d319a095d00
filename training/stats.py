"""Uncertainty for every number TriPlay prints: Wilson intervals, bootstrap intervals, differences with a reading,
hit@k, and the attack success rate corrected for the judge's own error (Rogan-Gladen).

Intervals are 95% by default. Proportions use Wilson's score interval (``scipy.stats.binomtest``); a difference
of two independent proportions uses Newcombe's hybrid score interval (method 10 of Newcombe 1998), built from the
two Wilson intervals; means and differences of means use a seeded percentile bootstrap that resamples whole
clusters (seeds) when clusters are given (written here: ``scipy.stats.bootstrap`` resamples items, not clusters).

>>> lo, hi = wilson(81, 263)              # Newcombe (1998), Table I: 0.2553 - 0.3662
>>> round(lo, 4), round(hi, 4)
(0.2553, 0.3662)
>>> d = proportion_difference(56, 70, 48, 80)  # Newcombe (1998), method 10: 0.2 (0.0524, 0.3339)
>>> round(d["diff"], 4), round(d["low"], 4), round(d["high"], 4), d["reading"]
(0.2, 0.0524, 0.3339, 'higher')
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["wilson", "rate", "proportion_difference", "bootstrap_mean", "bootstrap_difference", "reading",
           "hit_at_k", "rogan_gladen", "finite_or_none"]

Z95 = 1.959963984540054


def finite_or_none(value):
    """``None`` for ``nan``/``inf``/``None``, the float otherwise (JSON holds no bare NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float | None, float | None]:
    """Wilson score interval of ``k`` successes in ``n`` trials; ``(None, None)`` when ``n == 0``.

    >>> wilson(0, 10)[0], round(wilson(0, 10)[1], 4)  # Wilson never gives a zero-width interval at 0/n
    (0.0, 0.2775)
    """
    if k < 0 or n < 0 or k > n:
        raise ValueError(f"wilson needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return None, None
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def rate(k: int, n: int) -> dict:
    """``{"value", "n", "low", "high"}`` for ``k`` of ``n`` (value and bounds ``None`` when ``n == 0``).

    >>> r = rate(3, 4); r["value"], r["n"], round(r["low"], 4), round(r["high"], 4)
    (0.75, 4, 0.3006, 0.9544)
    """
    lo, hi = wilson(k, n)
    return {"value": k / n if n else None, "n": int(n), "low": lo, "high": hi}


def reading(low: float | None, high: float | None, *, higher_is_better: bool | None = None) -> str:
    """A plain reading of a difference's interval: ``improved``/``worse`` when a direction is good or bad,
    ``higher``/``lower`` when it is neither, ``within noise`` when the interval holds 0 (or is undefined)."""
    if low is None or high is None or low <= 0 <= high:
        return "within noise"
    up = low > 0
    if higher_is_better is None:
        return "higher" if up else "lower"
    return "improved" if up == higher_is_better else "worse"



def proportion_difference(k1: int, n1: int, k0: int, n0: int, *, higher_is_better: bool | None = None) -> dict:
    """``k1/n1 - k0/n0`` with Newcombe's hybrid score interval (independent samples) and its reading."""
    if not n1 or not n0:
        return {"diff": None, "low": None, "high": None, "reading": "within noise"}
    p1, p0 = k1 / n1, k0 / n0
    l1, u1 = wilson(k1, n1)
    l0, u0 = wilson(k0, n0)
    d = p1 - p0
    low = d - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)
    return {"diff": d, "low": low, "high": high, "reading": reading(low, high, higher_is_better=higher_is_better)}


def _clusters(values: Sequence[float], clusters: Sequence | None) -> list[np.ndarray]:
    values = np.asarray(values, dtype=np.float64)
    if clusters is None:
        return [values[i : i + 1] for i in range(len(values))]
    groups: dict = {}
    for v, c in zip(values, clusters):
        groups.setdefault(c, []).append(v)
    return [np.asarray(g) for g in groups.values()]


def _boot(combine, samples: Sequence[Sequence[np.ndarray]], resamples: int, seed: int, confidence: float):
    """Percentile bootstrap of ``combine(mean of each resampled sample)``: each sample (a list of clusters) is
    resampled cluster by cluster, independently of the others. Vectorised: a resample's mean is the sum of its
    clusters' sums over the sum of their sizes, so no resample is ever concatenated."""
    rng = np.random.default_rng(seed)
    means = []
    for groups in samples:
        sums = np.array([g.sum() for g in groups])
        sizes = np.array([len(g) for g in groups], dtype=np.float64)
        idx = rng.integers(0, len(groups), (resamples, len(groups)))  # [resamples, clusters]
        means.append(sums[idx].sum(axis=1) / sizes[idx].sum(axis=1))
    draws = combine(*means)
    alpha = (1 - confidence) / 2
    return float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha))


def bootstrap_mean(values: Sequence[float], *, clusters: Sequence | None = None, resamples: int = 2000,
                   seed: int = 0, confidence: float = 0.95) -> dict:
    """Mean of ``values`` with a percentile bootstrap interval; ``clusters`` (e.g. the seed of each value)
    resamples whole clusters, so pooled runs are not treated as independent games.

    >>> m = bootstrap_mean([1.0, 1.0, 1.0]); m["value"], m["low"], m["high"]
    (1.0, 1.0, 1.0)
    """
    values = [float(v) for v in values if finite_or_none(v) is not None]
    if not values:
        return {"value": None, "n": 0, "low": None, "high": None}
    groups = _clusters(values, clusters if clusters is None else [c for c, v in zip(clusters, values)])
    if len(groups) < 2:
        return {"value": float(np.mean(values)), "n": len(values), "low": None, "high": None}
    lo, hi = _boot(lambda m: m, [groups], resamples, seed, confidence)
    return {"value": float(np.mean(values)), "n": len(values), "low": lo, "high": hi}


def bootstrap_difference(a: Sequence[float], b: Sequence[float], *, clusters_a: Sequence | None = None,
                         clusters_b: Sequence | None = None, higher_is_better: bool | None = None,
                         resamples: int = 2000, seed: int = 0, confidence: float = 0.95) -> dict:
    """``mean(a) - mean(b)`` of independent samples with a percentile bootstrap interval and its reading."""
    if len(a) < 2 or len(b) < 2:
        d = float(np.mean(a) - np.mean(b)) if len(a) and len(b) else None
        return {"diff": d, "low": None, "high": None, "reading": "within noise"}
    lo, hi = _boot(lambda x, y: x - y, [_clusters(a, clusters_a), _clusters(b, clusters_b)],
                   resamples, seed, confidence)
    return {"diff": float(np.mean(a) - np.mean(b)), "low": lo, "high": hi,
            "reading": reading(lo, hi, higher_is_better=higher_is_better)}


def hit_at_k(successes_per_seed: Sequence[Sequence[bool]], k: int) -> dict:
    """Share of seeds on which at least one of the first ``k`` tries succeeded, with its Wilson interval.

    Seeds with fewer than ``k`` tries are left out (their hit@k is not observed).

    >>> hit_at_k([[False, True], [False, False], [True, False]], k=1)["value"]
    0.3333333333333333
    >>> hit_at_k([[False, True], [False, False], [True, False]], k=2)["value"]
    0.6666666666666666
    """
    if k < 1:
        raise ValueError(f"hit_at_k needs k >= 1, got {k}")
    observed = [tries[:k] for tries in successes_per_seed if len(tries) >= k]
    out = rate(sum(any(t) for t in observed), len(observed))
    out["k"] = k
    return out


def rogan_gladen(k: int, n: int, sensitivity: float, specificity: float, *, n_sensitivity: int | None = None,
                 n_specificity: int | None = None) -> dict:
    """The rate of true positives corrected for the judge's error: ``(p + Sp - 1) / (Se + Sp - 1)``, clipped to
    [0, 1] (Rogan & Gladen 1978).

    The interval carries the sampling error of ``p`` through its Wilson bounds, mapped by the same correction (it
    is monotone in ``p``, so the bounds stay honest at 0/n and n/n, where a delta-method interval collapses), and,
    when ``n_sensitivity``/``n_specificity`` (the sizes of the human-labelled sets the judge was measured on) are
    given, the sampling error of Se and Sp by the delta method (Greiner & Gardner 2000), added in quadrature to
    each side like Newcombe's hybrid interval; so it is wider than the raw rate's. Undefined (``None``) when
    ``Se + Sp <= 1``: such a judge carries no information.

    >>> r = rogan_gladen(50, 100, sensitivity=0.9, specificity=0.8)  # (0.5 + 0.8 - 1) / 0.7
    >>> round(r["value"], 4)
    0.4286
    """
    youden = sensitivity + specificity - 1
    if n == 0 or youden <= 0:
        return {"value": None, "n": int(n), "low": None, "high": None, "raw": k / n if n else None}
    p = k / n
    correct = lambda x: (x + specificity - 1) / youden  # noqa: E731
    true = correct(p)
    p_low, p_high = wilson(k, n)
    var = 0.0  # the judge's own sampling error, by the delta method
    if n_sensitivity:
        var += true**2 * sensitivity * (1 - sensitivity) / n_sensitivity / youden**2
    if n_specificity:
        var += (1 - true) ** 2 * specificity * (1 - specificity) / n_specificity / youden**2
    low = true - math.sqrt((true - correct(p_low)) ** 2 + Z95**2 * var)
    high = true + math.sqrt((correct(p_high) - true) ** 2 + Z95**2 * var)
    clip = lambda x: min(1.0, max(0.0, x))  # noqa: E731
    return {"value": clip(true), "n": int(n), "low": clip(low), "high": clip(high), "raw": p,
            "sensitivity": sensitivity, "specificity": specificity}
