"""The report's statistics: Wilson intervals, (stratified, paired) bootstrap intervals, verdicts."""


import numpy as np
import pytest

from loramix.errors import LoramixError
from loramix.stats import (bootstrap_mean_ci, paired_difference, paired_difference_groups, ratio_ci, seed_spread,
                           stratified_mean_ci, verdict, verdict_between, wilson)


# --- Wilson ---------------------------------------------------------------------------------------

def test_wilson_known_values():
    lo, hi = wilson(30, 100)
    assert lo == pytest.approx(0.2189, abs=5e-4) and hi == pytest.approx(0.3959, abs=5e-4)
    # 0 of 10: lower bound exactly 0, upper z^2 / (n + z^2)
    assert wilson(0, 10) == (0.0, pytest.approx(1.96 ** 2 / (10 + 1.96 ** 2)))
    assert wilson(10, 10) == (pytest.approx(1 - 1.96 ** 2 / (10 + 1.96 ** 2)), 1.0)
    assert wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(50, 100)  # symmetric around 1/2
    assert lo + hi == pytest.approx(1.0)
    assert wilson(30, 100, z=2.576)[0] < wilson(30, 100)[0]  # 99% is wider
    for bad in [(5, 3), (-1, 3), (1, -1)]:
        with pytest.raises(LoramixError, match="wilson"):
            wilson(*bad)


def test_wilson_covers_the_true_rate_about_95_percent():
    p, n, reps = 0.3, 300, 400
    successes = np.random.default_rng(12345).binomial(n, p, size=reps)
    covered = sum(lo <= p <= hi for lo, hi in (wilson(int(s), n) for s in successes))
    assert 0.90 * reps <= covered <= 0.99 * reps, covered / reps
    # and it is not trivially wide: a typical interval is about +-0.05 at n=300
    widths = [hi - lo for lo, hi in (wilson(int(s), n) for s in successes)]
    assert 0.09 < float(np.mean(widths)) < 0.11


# --- bootstrap of a mean --------------------------------------------------------------------------

def test_bootstrap_mean_ci_covers_the_true_rate():
    rng = np.random.default_rng(7)
    p, n, reps = 0.3, 300, 200
    covered = 0
    for i in range(reps):
        lo, hi = bootstrap_mean_ci(rng.random(n) < p, n_boot=1000, seed=i)
        covered += lo <= p <= hi
    assert 0.88 * reps <= covered <= 0.99 * reps, covered / reps


def test_bootstrap_mean_ci_matches_wilson_roughly():
    values = [True] * 30 + [False] * 70
    lo, hi = bootstrap_mean_ci(values)
    wlo, whi = wilson(30, 100)
    assert lo == pytest.approx(wlo, abs=0.02) and hi == pytest.approx(whi, abs=0.02)
    assert bootstrap_mean_ci([1.0] * 10) == (1.0, 1.0)
    with pytest.raises(LoramixError, match="empty"):
        bootstrap_mean_ci([])
    with pytest.raises(LoramixError, match="finite"):
        bootstrap_mean_ci([1.0, float("nan")])
    with pytest.raises(LoramixError, match="level"):
        bootstrap_mean_ci([1.0, 0.0], level=95)
    with pytest.raises(LoramixError, match="n_boot"):
        bootstrap_mean_ci([1.0, 0.0], n_boot=0)


# --- stratified mean ------------------------------------------------------------------------------

def test_stratified_mean_ci_is_the_unweighted_mean_of_domains():
    # 1000 prompts at 0.9 and 50 at 0.1: the average over domains is 0.5, the pooled rate ~0.86
    groups = {"big": [1] * 900 + [0] * 100, "small": [1] * 5 + [0] * 45}
    lo, hi = stratified_mean_ci(groups)
    assert lo < 0.5 < hi and hi < 0.7
    # resampling stays within each domain: a domain all right and one all wrong is exactly 1/2
    assert stratified_mean_ci({"a": [1] * 100, "b": [0] * 100}) == (0.5, 0.5)


def test_stratified_mean_ci_covers_the_true_mean():
    rates, sizes = {"add": 0.9, "sort": 0.4, "bool": 0.7}, {"add": 200, "sort": 80, "bool": 300}
    truth = float(np.mean(list(rates.values())))
    rng = np.random.default_rng(99)
    reps, covered = 200, 0
    for i in range(reps):
        groups = {k: rng.random(sizes[k]) < rates[k] for k in rates}
        lo, hi = stratified_mean_ci(groups, n_boot=1000, seed=i)
        covered += lo <= truth <= hi
    assert 0.88 * reps <= covered <= 0.99 * reps, covered / reps


# --- paired differences ---------------------------------------------------------------------------

def test_paired_difference_crafted():
    a = [True] * 300
    b = [True] * 270 + [False] * 30  # b wrong on 30 prompts where a is right
    r = paired_difference(a, b)
    assert r["diff"] == pytest.approx(0.1) and r["n"] == 300
    lo, hi = r["ci"]
    assert lo > 0  # excludes 0
    assert lo == pytest.approx(0.066, abs=0.01) and hi == pytest.approx(0.134, abs=0.01)
    assert paired_difference(b, a)["diff"] == pytest.approx(-0.1)


def test_paired_difference_identical_is_exactly_zero():
    a = list(np.random.default_rng(3).random(200) < 0.5)
    assert paired_difference(a, a) == {"diff": 0.0, "ci": [0.0, 0.0], "n": 200}


def test_paired_difference_ci_includes_zero_when_it_should():
    # 15 prompts only a gets right, 15 only b gets right, the rest agree
    a = [1] * 15 + [0] * 15 + [1] * 100 + [0] * 170
    b = [0] * 15 + [1] * 15 + [1] * 100 + [0] * 170
    r = paired_difference(a, b)
    assert r["diff"] == 0.0 and r["ci"][0] < 0 < r["ci"][1]
    # a small edge: 3 against 2 discordant prompts
    a = [1] * 3 + [0] * 2 + [1] * 295
    b = [0] * 3 + [1] * 2 + [1] * 295
    r = paired_difference(a, b)
    assert r["diff"] == pytest.approx(1 / 300) and r["ci"][0] < 0 < r["ci"][1]


def test_paired_difference_uses_the_same_prompts_for_both_sides():
    # two noisy, strongly correlated systems: resampling them independently would give a CI about
    # twice as wide (and including 0); the paired one is ~0.1 +- 0.035
    a = np.random.default_rng(5).random(300) < 0.5
    b = a.copy()
    b[np.flatnonzero(a)[:30]] = False
    r = paired_difference(a, b)
    assert r["diff"] == pytest.approx(0.1)
    assert r["ci"][1] - r["ci"][0] < 0.09 and r["ci"][0] > 0.05


def test_paired_difference_refuses_bad_input():
    with pytest.raises(LoramixError, match="same prompts"):
        paired_difference([1, 0, 1], [1, 0])
    with pytest.raises(LoramixError, match="empty"):
        paired_difference([], [])


def test_paired_difference_groups():
    a = {"add": [1] * 300, "sort": [1] * 25 + [0] * 25}
    b = {"add": [1] * 270 + [0] * 30, "sort": [1] * 25 + [0] * 25}
    r = paired_difference_groups(a, b)
    assert r["diff"] == pytest.approx(0.05) and r["n"] == 350  # (0.1 + 0) / 2, not pooled 30/350
    lo, hi = r["ci"]
    assert lo == pytest.approx(0.033, abs=0.008) and hi == pytest.approx(0.067, abs=0.008)
    assert paired_difference_groups(a, a) == {"diff": 0.0, "ci": [0.0, 0.0], "n": 350}
    with pytest.raises(LoramixError, match="different groups"):
        paired_difference_groups(a, {"add": b["add"]})
    with pytest.raises(LoramixError, match="'sort'.*same prompts"):
        paired_difference_groups(a, {"add": b["add"], "sort": [1] * 49})


def test_ratio_ci():
    oracle = {"add": [1] * 100, "sort": [1] * 80 + [0] * 20}
    assert ratio_ci(oracle, oracle) == {"value": 1.0, "ci": [1.0, 1.0], "n": 200}
    hard = {"add": [1] * 95 + [0] * 5, "sort": [1] * 70 + [0] * 30}  # hard wrong only where oracle is
    r = ratio_ci(hard, oracle)
    assert r["value"] == pytest.approx((0.95 + 0.70) / (1.0 + 0.8))
    lo, hi = r["ci"]
    assert lo < r["value"] < hi <= 1.0  # paired: hard never beats the oracle on a resample
    assert lo == pytest.approx(0.876, abs=0.01) and hi == pytest.approx(0.951, abs=0.01)
    assert verdict(r["ci"], 0.95) == "undecided"  # 0.917, but 15 discordant prompts of 200 leave it open
    worse = {"add": [1] * 90 + [0] * 10, "sort": [1] * 64 + [0] * 36}
    assert verdict(ratio_ci(worse, oracle)["ci"], 0.95) == "not met"
    assert verdict(ratio_ci({"a": [1] * 99 + [0]}, {"a": [1] * 100})["ci"], 0.95) == "met"
    with pytest.raises(LoramixError, match="positive"):
        ratio_ci({"a": [1, 0]}, {"a": [0, 0]})


def test_ratio_ci_with_a_zero_resampled_denominator_is_finite_below():
    r = ratio_ci({"a": [1, 0, 0, 0, 0]}, {"a": [1, 0, 0, 0, 0]})
    assert r["value"] == 1.0 and r["ci"] == [1.0, 1.0]  # 0/0 resamples are dropped
    r = ratio_ci({"a": [0, 1, 0, 0, 0]}, {"a": [1, 0, 0, 0, 0]})
    assert r["value"] == 1.0 and r["ci"][0] == 0.0 and r["ci"][1] == float("inf")


# --- determinism and speed ------------------------------------------------------------------------

def test_same_seed_same_interval():
    rng = np.random.default_rng(11)
    a, b = rng.random(500) < 0.6, rng.random(500) < 0.5
    assert paired_difference(a, b, seed=4) == paired_difference(a, b, seed=4)
    assert paired_difference(a, b, seed=4)["ci"] != paired_difference(a, b, seed=5)["ci"]
    assert bootstrap_mean_ci(a, seed=1) == bootstrap_mean_ci(list(a), seed=1)
    ga, gb = {"x": a[:200], "y": a[200:]}, {"x": b[:200], "y": b[200:]}
    rev_a, rev_b = {"y": a[200:], "x": a[:200]}, {"y": b[200:], "x": b[:200]}
    assert paired_difference_groups(ga, gb, seed=2) == paired_difference_groups(rev_a, rev_b, seed=2)
    assert stratified_mean_ci(ga, seed=2) == stratified_mean_ci(rev_a, seed=2)
    assert ratio_ci(ga, gb, seed=2) == ratio_ci(rev_a, rev_b, seed=2)


# --- verdicts -------------------------------------------------------------------------------------

@pytest.mark.parametrize("ci, threshold, direction, expected", [
    ((0.96, 0.99), 0.95, ">=", "met"),
    ((0.95, 0.99), 0.95, ">=", "met"),  # touching from the right side
    ((0.90, 0.94), 0.95, ">=", "not met"),
    ((0.90, 0.95), 0.95, ">=", "undecided"),  # touching from the wrong side
    ((0.90, 0.99), 0.95, ">=", "undecided"),
    ((0.01, 0.05), 0.0, ">=", "met"),
    ((-0.02, 0.05), 0.0, ">=", "undecided"),
    ((0.10, 0.20), 0.20, "<=", "met"),
    ((0.21, 0.30), 0.20, "<=", "not met"),
    ((0.20, 0.30), 0.20, "<=", "undecided"),
    ((0.10, 0.30), 0.20, "<=", "undecided"),
    ([0.5, 0.5], 0.5, ">=", "met"),  # a list, as paired_difference returns
])
def test_verdict(ci, threshold, direction, expected):
    assert verdict(ci, threshold, direction) == expected


def test_verdict_refuses_bad_input():
    with pytest.raises(LoramixError, match="direction"):
        verdict((0.1, 0.2), 0.1, ">")
    with pytest.raises(LoramixError, match="lo <= hi"):
        verdict((0.3, 0.2), 0.1)
    with pytest.raises(LoramixError, match="two numbers"):
        verdict((0.1,), 0.1)


@pytest.mark.parametrize("ci, expected", [
    ((0.2, 0.3), "met"),
    ((0.1, 0.4), "met"),  # the interval may touch both ends
    ((0.0, 0.05), "not met"),  # wholly below
    ((0.45, 0.6), "not met"),  # wholly above
    ((0.05, 0.2), "undecided"),  # straddles the lower end
    ((0.3, 0.5), "undecided"),  # straddles the upper end
    ((0.0, 0.1), "undecided"),  # touches the lower end from outside
    ((0.0, 0.9), "undecided"),  # covers the whole range and more
])
def test_verdict_between(ci, expected):
    assert verdict_between(ci, 0.1, 0.4) == expected


def test_verdict_between_refuses_reversed_thresholds():
    with pytest.raises(LoramixError, match="lo_threshold"):
        verdict_between((0.2, 0.3), 0.4, 0.1)


# --- seeds ----------------------------------------------------------------------------------------

def test_seed_spread():
    assert seed_spread([0.5, 0.7, 0.6]) == {"mean": pytest.approx(0.6), "std": pytest.approx(0.1),
                                           "min": 0.5, "max": 0.7, "n": 3}
    assert seed_spread([0.42]) == {"mean": 0.42, "std": 0.0, "min": 0.42, "max": 0.42, "n": 1}
    with pytest.raises(LoramixError, match="empty"):
        seed_spread([])
