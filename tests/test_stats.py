"""tools.stats: bootstrap intervals and p-values, Holm, verdicts, random control sets.

References are independent of the code under test: scipy's bootstrap and t-test, Holm written
as the classic step-down rejection procedure and as a brute-force loop over ranks, and
hand-worked numbers.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pydantic
import pytest
import scipy.stats

from tools.errors import UserInputError
from tools.stats import (
    Interval,
    bootstrap_ci,
    bootstrap_pvalue,
    decide,
    holm,
    paired_bootstrap_ci,
    random_component_sets,
)


# --- bootstrap_ci -------------------------------------------------------------------------

def test_bootstrap_ci_matches_scipy_percentile():
    x = np.random.default_rng(11).normal(1.0, 2.0, size=200)
    ours = bootstrap_ci(x, n_resamples=20_000, confidence=0.95, seed=5)
    ref = scipy.stats.bootstrap((x,), np.mean, method="percentile", n_resamples=20_000,
                                confidence_level=0.95, rng=np.random.default_rng(7))
    sd = x.std(ddof=1)
    assert ours.estimate == pytest.approx(x.mean())
    assert abs(ours.low - ref.confidence_interval.low) < 0.02 * sd
    assert abs(ours.high - ref.confidence_interval.high) < 0.02 * sd
    assert (ours.n, ours.confidence) == (200, 0.95)


def test_bootstrap_ci_90_percent_matches_scipy_and_is_narrower():
    x = np.random.default_rng(12).exponential(1.0, size=150)
    ours = bootstrap_ci(x, n_resamples=20_000, confidence=0.90, seed=1)
    ref = scipy.stats.bootstrap((x,), np.mean, method="percentile", n_resamples=20_000,
                                confidence_level=0.90, rng=np.random.default_rng(2))
    sd = x.std(ddof=1)
    assert abs(ours.low - ref.confidence_interval.low) < 0.02 * sd
    assert abs(ours.high - ref.confidence_interval.high) < 0.02 * sd
    wide = bootstrap_ci(x, n_resamples=20_000, confidence=0.99, seed=1)
    assert wide.low < ours.low and ours.high < wide.high


def test_bootstrap_ci_coverage_is_near_nominal():
    rng = np.random.default_rng(2024)
    hits = 0
    for i in range(200):
        ci = bootstrap_ci(rng.normal(0.0, 1.0, size=30), seed=i)
        hits += ci.low <= 0.0 <= ci.high
    assert 0.88 * 200 <= hits <= 0.99 * 200


@pytest.mark.parametrize("n", [8, 9])
def test_on_few_items_the_interval_covers_near_its_nominal_level_where_the_plain_percentile_falls_short(n):
    """The expanded percentile interval (Hesterberg 2015) against scipy's plain percentile
    bootstrap, on the same samples: 600 normal samples of ``n`` items with mean 0."""
    from tools.stats import ratio_bootstrap_ci

    rng = np.random.default_rng(500 + n)
    ours = plain = ratio = 0
    trials = 600
    for i in range(trials):
        x = rng.normal(0.0, 1.0, size=n)
        ci = bootstrap_ci(x, n_resamples=1000, seed=i)
        ref = scipy.stats.bootstrap((x,), np.mean, method="percentile", n_resamples=1000,
                                    rng=np.random.default_rng(i)).confidence_interval
        ours += ci.low <= 0.0 <= ci.high
        plain += ref.low <= 0.0 <= ref.high
        # a ratio of means whose true value is 0.5: numerator 0.5·d + noise over positive d
        d = rng.uniform(2.0, 6.0, size=n)
        r = ratio_bootstrap_ci(0.5 * d + x, d, n_resamples=1000, seed=i)
        ratio += r.low <= 0.5 <= r.high
    # binomial sd of a share near 0.95 over 600 trials: 0.009
    assert ours / trials >= 0.93 and ratio / trials >= 0.93, (ours, ratio)
    assert plain / trials <= 0.915 < ours / trials, (plain, ours)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 7, 8, 63, 511, 4000])
def test_student_t_cdf_and_quantile_match_scipy(df):
    from tools.stats import student_t_cdf, student_t_quantile

    for x in (-40.0, -5.0, -1.3, 0.0, 0.7, 2.0, 12.0):
        assert student_t_cdf(x, df) == pytest.approx(scipy.stats.t.cdf(x, df), abs=1e-12)
    for q in (1e-9, 0.005, 0.025, 0.5, 0.9, 0.975, 1 - 1e-9):
        assert student_t_quantile(q, df) == pytest.approx(scipy.stats.t.ppf(q, df), rel=1e-6, abs=1e-10)
    with pytest.raises(UserInputError, match="degrees of freedom"):
        student_t_cdf(1.0, 0)
    with pytest.raises(UserInputError, match="strictly between"):
        student_t_quantile(1.0, df)


def test_the_expanded_level_is_hesterbergs_and_vanishes_into_the_plain_one_on_many_items():
    from tools.stats import expanded_tail

    for n in (2, 3, 8, 64, 512):
        # z(α'/2) = sqrt(n / (n − 1)) · t(α/2, n − 1), written with scipy
        reference = scipy.stats.norm.cdf(math.sqrt(n / (n - 1)) * scipy.stats.t.ppf(0.025, n - 1))
        assert expanded_tail(0.025, n) == pytest.approx(reference, rel=1e-6)
        assert 0 < expanded_tail(0.025, n) < 0.025
    # half-widths relative to the plain interval's, for normal draws: 25% wider on 9, 3% on 64
    widen = {n: scipy.stats.norm.ppf(expanded_tail(0.025, n)) / scipy.stats.norm.ppf(0.025) for n in (9, 64, 512)}
    assert widen[9] == pytest.approx(1.248, abs=1e-3) and widen[64] == pytest.approx(1.028, abs=1e-3)
    assert 1 < widen[512] < 1.004
    with pytest.raises(UserInputError, match="at least 2"):
        expanded_tail(0.025, 1)


def test_bootstrap_ci_is_deterministic_for_a_seed():
    x = np.random.default_rng(0).normal(size=50)
    assert bootstrap_ci(x, seed=3) == bootstrap_ci(list(x), seed=3)
    assert bootstrap_ci(x, seed=3) != bootstrap_ci(x, seed=4)


def test_bootstrap_ci_median_resists_an_outlier():
    x = np.concatenate([np.random.default_rng(1).normal(0.0, 1.0, size=59), [1000.0]])
    median = bootstrap_ci(x, statistic="median", seed=0)
    mean = bootstrap_ci(x, statistic="mean", seed=0)
    assert median.estimate == pytest.approx(np.median(x))
    assert median.high - median.low < 1.5
    assert mean.high - mean.low > 20.0


def test_bootstrap_ci_of_a_constant_sample_is_a_point():
    ci = bootstrap_ci([2.5] * 10)
    assert (ci.estimate, ci.low, ci.high) == pytest.approx((2.5, 2.5, 2.5))


# --- paired_bootstrap_ci ------------------------------------------------------------------

def test_paired_ci_is_the_ci_of_the_differences_and_cancels_shared_noise():
    rng = np.random.default_rng(8)
    prompt_effect = rng.normal(0.0, 5.0, size=80)  # large, shared by both conditions
    a = prompt_effect + 1.0 + rng.normal(0.0, 0.3, size=80)
    b = prompt_effect + rng.normal(0.0, 0.3, size=80)
    paired = paired_bootstrap_ci(a, b, seed=2)
    assert paired == bootstrap_ci(a - b, seed=2)
    assert paired.estimate == pytest.approx(np.mean(a) - np.mean(b))
    assert 0.0 < paired.low < 1.0 < paired.high < 2.0
    # Treating the samples as independent would drown the effect in the shared noise.
    independent_sd = math.sqrt(a.var(ddof=1) / 80 + b.var(ddof=1) / 80)
    assert paired.high - paired.low < 0.5 * (2 * 1.96 * independent_sd)


def test_paired_ci_rejects_different_lengths():
    with pytest.raises(UserInputError, match="length"):
        paired_bootstrap_ci([1.0, 2.0, 3.0], [1.0, 2.0])


# --- bootstrap_pvalue ---------------------------------------------------------------------

def test_pvalue_small_for_a_clearly_positive_sample_and_large_for_a_zero_mean_one():
    rng = np.random.default_rng(3)
    positive = rng.normal(1.0, 1.0, size=50)
    p = bootstrap_pvalue(positive, n_resamples=2000)
    assert p < 0.01
    assert p >= 1 / 2001  # the +1 keeps it off zero
    zero = rng.normal(0.0, 1.0, size=50)
    zero = zero - zero.mean()
    assert bootstrap_pvalue(zero) > 0.3
    assert bootstrap_pvalue(zero, alternative="less") > 0.3


def test_pvalue_direction_and_threshold():
    x = np.random.default_rng(4).normal(1.0, 1.0, size=60)
    assert bootstrap_pvalue(x, alternative="less") > 0.99
    assert bootstrap_pvalue(x, threshold=3.0, alternative="less") < 0.01
    assert bootstrap_pvalue(x, threshold=3.0, alternative="greater") > 0.99
    assert bootstrap_pvalue(-x, alternative="less") < 0.01


@pytest.mark.parametrize("seed", range(5))
def test_pvalue_is_close_to_a_one_sided_t_test(seed):
    # n = 200 so that the bootstrap's small-sample tail bias is well inside the tolerance
    x = np.random.default_rng(100 + seed).normal(0.22, 1.0, size=200)
    ours = bootstrap_pvalue(x, threshold=0.1, n_resamples=20_000, seed=seed)
    ref = scipy.stats.ttest_1samp(x, 0.1, alternative="greater").pvalue
    assert ours == pytest.approx(ref, rel=0.2, abs=0.005)


def test_pvalue_is_roughly_calibrated_under_the_null():
    rng = np.random.default_rng(9)
    ps = [bootstrap_pvalue(rng.normal(0.0, 1.0, size=30), n_resamples=999, seed=i) for i in range(200)]
    assert 0.01 <= np.mean(np.asarray(ps) < 0.05) <= 0.12


def test_pvalue_is_deterministic_for_a_seed():
    x = np.random.default_rng(5).normal(0.2, 1.0, size=30)
    assert bootstrap_pvalue(x, seed=1) == bootstrap_pvalue(x, seed=1)


# --- holm ---------------------------------------------------------------------------------

def test_holm_textbook_example():
    # m = 4. Sorted: 0.005, 0.01, 0.03, 0.04 -> times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04;
    # the running maximum lifts the last to 0.06. Back in input order:
    raw = [0.01, 0.04, 0.03, 0.005]
    assert holm(raw) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_handles_trivial_inputs():
    assert holm([0.5, 0.6, 0.9]) == pytest.approx([1.0, 1.0, 1.0])
    assert holm([0.3]) == pytest.approx([0.3])
    assert holm([]) == []


def _holm_brute_force(p: list[float]) -> list[float]:
    """Holm from its definition, over ranks instead of a sort: the adjusted p-value of i is the
    largest (m - rank + 1) * p over every j no larger than p_i, capped at 1."""
    m = len(p)
    rank = [1 + sum(q < pj for q in p) for pj in p]
    return [min(1.0, max((m - rank[j] + 1) * p[j] for j in range(m) if p[j] <= p[i]))
            for i in range(m)]


def _holm_rejects(p: list[float], alpha: float) -> set[int]:
    """The classic step-down procedure: reject in ascending order while p_(i) <= alpha / (m - i)."""
    m = len(p)
    rejected = set()
    for i, j in enumerate(sorted(range(m), key=lambda j: p[j])):
        if p[j] > alpha / (m - i):
            break
        rejected.add(j)
    return rejected


@pytest.mark.parametrize("seed", range(30))
def test_holm_agrees_with_brute_force_and_step_down(seed):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 12))
    p = list(rng.uniform(0.0, 0.2, size=m) ** 2)
    if m > 2:
        p[1] = p[0]  # a tie
    adjusted = holm(p)
    assert adjusted == pytest.approx(_holm_brute_force(p), abs=1e-12)
    for alpha in (0.001, 0.01, 0.05, 0.1):
        assert {i for i, a in enumerate(adjusted) if a <= alpha} == _holm_rejects(p, alpha)
    # properties: never below raw, never above 1, monotone in the raw order
    assert all(r <= a + 1e-15 <= 1.0 + 1e-15 for r, a in zip(p, adjusted))
    for i in range(m):
        for j in range(m):
            if p[i] <= p[j]:
                assert adjusted[i] <= adjusted[j] + 1e-15


@pytest.mark.parametrize("bad", [[0.1, 1.2], [-0.01], [0.2, float("nan")]])
def test_holm_rejects_values_outside_unit_interval(bad):
    with pytest.raises(UserInputError, match=r"\[0, 1\]"):
        holm(bad)


# --- decide -------------------------------------------------------------------------------

def _ci(low: float, high: float) -> Interval:
    return Interval(estimate=(low + high) / 2, low=low, high=high, n=40, confidence=0.95)


@pytest.mark.parametrize(
    ("low", "high", "kwargs", "verdict"),
    [
        (0.1, 0.5, {"predicted_at_least": 0.0}, "supported"),
        (0.1, 0.5, {"predicted_at_least": 0.0, "adjusted_p": 0.01}, "supported"),
        (0.1, 0.5, {"predicted_at_least": 0.0, "adjusted_p": 0.2}, "inconclusive"),
        (0.1, 0.5, {"predicted_at_least": 0.0, "adjusted_p": 0.05}, "inconclusive"),
        (0.1, 0.5, {"predicted_at_least": 0.0, "adjusted_p": 0.04, "alpha": 0.01}, "inconclusive"),
        (-0.5, -0.1, {"predicted_at_least": 0.0}, "refuted"),
        (-0.5, -0.1, {"predicted_at_least": 0.0, "adjusted_p": 0.9}, "refuted"),
        (-0.1, 0.3, {"predicted_at_least": 0.0}, "inconclusive"),
        (0.0, 0.5, {"predicted_at_least": 0.0}, "inconclusive"),  # touching the bound
        (0.0, 0.0, {"predicted_at_least": 0.0}, "inconclusive"),  # exactly no effect
        (0.6, 0.9, {"predicted_at_least": 0.5}, "supported"),
        (0.2, 0.4, {"predicted_at_least": 0.5}, "refuted"),
        (-0.5, -0.1, {"predicted_at_most": 0.0}, "supported"),
        (0.1, 0.5, {"predicted_at_most": 0.0}, "refuted"),
        (-0.1, 0.3, {"predicted_at_most": 0.0}, "inconclusive"),
        (-0.5, -0.1, {"predicted_at_most": 0.0, "adjusted_p": 0.3}, "inconclusive"),
    ],
)
def test_decide(low, high, kwargs, verdict):
    assert decide(_ci(low, high), **kwargs) == verdict


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"predicted_at_least": 0.0, "predicted_at_most": 1.0},
        {"predicted_at_least": 0.0, "adjusted_p": 1.5},
        {"predicted_at_least": 0.0, "alpha": 0.0},
    ],
)
def test_decide_rejects_bad_arguments(kwargs):
    with pytest.raises(UserInputError):
        decide(_ci(0.1, 0.5), **kwargs)


def test_interval_is_frozen_and_validated():
    ci = _ci(0.1, 0.5)
    with pytest.raises(pydantic.ValidationError):
        ci.low = 0.0
    with pytest.raises(pydantic.ValidationError):
        Interval(estimate=0.0, low=1.0, high=0.0, n=10, confidence=0.95)
    with pytest.raises(pydantic.ValidationError):
        Interval(estimate=0.0, low=0.0, high=1.0, n=10, confidence=0.95, method="bca")


# --- random_component_sets ----------------------------------------------------------------

POOL = [f"head.{layer}.{head}" for layer in range(4) for head in range(5)]


def test_random_sets_are_deterministic_distinct_sorted_and_exclude():
    circuit = ["head.1.2", "head.3.0", "head.0.4"]
    sets = random_component_sets(POOL, 3, 25, exclude=circuit, seed=7)
    assert sets == random_component_sets(POOL, 3, 25, exclude=circuit, seed=7)
    assert sets != random_component_sets(POOL, 3, 25, exclude=circuit, seed=8)
    assert len(sets) == 25 and len(set(sets)) == 25
    allowed = set(POOL) - set(circuit)
    for s in sets:
        assert len(s) == 3 and len(set(s)) == 3
        assert list(s) == sorted(s)
        assert set(s) <= allowed


def test_random_sets_return_all_when_too_few_exist():
    pool = ["a", "b", "c", "d"]
    assert random_component_sets(pool, 2, 10) == sorted(combinations(pool, 2))
    assert random_component_sets(pool + ["e"], 2, 10, exclude=["e"], seed=3) == sorted(combinations(pool, 2))
    assert random_component_sets(pool, 4, 3) == [("a", "b", "c", "d")]


def test_random_sets_when_barely_more_sets_than_k_exist():
    pool = ["a", "b", "c", "d"]  # 6 pairs
    sets = random_component_sets(pool, 2, 5, seed=1)
    assert len(set(sets)) == 5 and set(sets) < set(combinations(pool, 2))


def test_random_sets_reach_every_subset_across_seeds():
    pool = ["p", "q", "r", "s", "t", "u"]  # 15 pairs; a draw of 1 takes the sampling path
    seen = {random_component_sets(pool, 2, 1, seed=s)[0] for s in range(300)}
    assert seen == set(combinations(pool, 2))


def test_random_sets_ignore_repeated_names():
    sets = random_component_sets(["a", "a", "b", "b", "c"], 2, 10)
    assert sets == [("a", "b"), ("a", "c"), ("b", "c")]


@pytest.mark.parametrize(
    ("size", "k", "exclude"),
    [(4, 1, ["a"]), (5, 1, []), (0, 3, []), (2, 0, [])],
)
def test_random_sets_reject_impossible_requests(size, k, exclude):
    with pytest.raises(UserInputError):
        random_component_sets(["a", "b", "c", "d"], size, k, exclude=exclude)


# --- bad samples --------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: bootstrap_ci([1.0]), "at least 2"),
        (lambda: bootstrap_ci([]), "at least 2"),
        (lambda: bootstrap_ci([1.0, float("nan"), 2.0, float("nan")]), "2 NaN"),
        (lambda: bootstrap_ci([1.0, float("inf"), 2.0]), "1 infinite"),
        (lambda: bootstrap_ci([[1.0, 2.0], [3.0, 4.0]]), "1-D"),
        (lambda: bootstrap_ci(["x", "y"]), "numbers"),
        (lambda: bootstrap_ci([1.0, 2.0], confidence=1.0), "confidence"),
        (lambda: bootstrap_ci([1.0, 2.0], statistic="mode"), "statistic"),
        (lambda: bootstrap_ci([1.0, 2.0], n_resamples=0), "n_resamples"),
        (lambda: paired_bootstrap_ci([1.0, 2.0], [1.0, float("nan")]), "b has 1 NaN"),
        (lambda: bootstrap_pvalue([1.0]), "at least 2"),
        (lambda: bootstrap_pvalue([1.0, float("nan")]), "1 NaN"),
        (lambda: bootstrap_pvalue([1.0, 2.0], alternative="two-sided"), "alternative"),
    ],
)
def test_bad_samples_raise_user_input_error(call, match):
    with pytest.raises(UserInputError, match=match):
        call()


def test_ratio_bootstrap_ci_covers_the_true_ratio_and_reflects_the_denominator():
    from tools.stats import ratio_bootstrap_ci

    rng = np.random.default_rng(3)
    hits = 0
    for trial in range(100):
        den = rng.normal(2.0, 1.0, size=40)
        num = 0.5 * den + rng.normal(0.0, 0.3, size=40)  # true ratio of means: 0.5
        ci = ratio_bootstrap_ci(num, den, seed=trial, n_resamples=1000)
        assert ci.low <= ci.estimate <= ci.high
        hits += ci.low <= 0.5 <= ci.high
    assert 85 <= hits <= 100
    # a noisier denominator widens the interval, with the numerator fixed in expectation
    num = rng.normal(1.0, 0.2, size=50)
    steady = ratio_bootstrap_ci(num, np.full(50, 2.0) + rng.normal(0, 0.01, 50), seed=0)
    noisy = ratio_bootstrap_ci(num, np.full(50, 2.0) + rng.normal(0, 1.5, 50), seed=0)
    assert noisy.high - noisy.low > 2 * (steady.high - steady.low)


def test_ratio_bootstrap_ci_rejects_undefined_ratios():
    from tools.stats import ratio_bootstrap_ci

    with pytest.raises(UserInputError, match="denominator's mean is zero"):
        ratio_bootstrap_ci([1.0, 2.0, 3.0], [1.0, -1.0, 0.0])
    with pytest.raises(UserInputError, match="one of each per item"):
        ratio_bootstrap_ci([1.0, 2.0], [1.0, 2.0, 3.0])


# --- ratio_bootstrap_pvalue ---------------------------------------------------------------

def test_ratio_pvalue_agrees_with_the_ratio_ci_and_sees_numerator_and_denominator_move_together():
    from tools.stats import ratio_bootstrap_ci, ratio_bootstrap_pvalue

    rng = np.random.default_rng(8)
    denominator = rng.lognormal(1.0, 1.2, size=64)  # heavy-tailed per-prompt logit differences
    # restoring an activation that carries everything: numerator = denominator on every prompt
    assert ratio_bootstrap_pvalue(denominator, denominator, threshold=0.75) == pytest.approx(1 / 2001)
    # the per-prompt values divided by a fixed denominator are far noisier than the ratio
    assert bootstrap_pvalue(denominator / denominator.mean(), threshold=0.75) > 0.01
    numerator = 0.6 * denominator + rng.normal(0, 0.3, size=64)
    ci = ratio_bootstrap_ci(numerator, denominator, seed=3)
    for threshold in (ci.low - 0.05, ci.high + 0.05):
        p = ratio_bootstrap_pvalue(numerator, denominator, threshold=threshold, seed=3)
        assert (p < 0.05) == (threshold < ci.low), (threshold, p, ci)
    assert ratio_bootstrap_pvalue(numerator, denominator, threshold=ci.estimate, seed=3) > 0.3


@pytest.mark.parametrize("n, floor", [(2, 0.25), (5, 1 / 32), (8, 1 / 256), (16, 1 / 2001)])
def test_a_pvalue_on_few_items_all_pointing_one_way_is_never_below_what_a_sign_test_allows(n, floor):
    from tools.stats import ratio_bootstrap_pvalue

    rng = np.random.default_rng(n)
    denominator = rng.uniform(4.0, 8.0, size=n)  # clean - corrupted logit differences
    numerator = 0.95 * denominator  # the claimed set removes 95% of it on every prompt
    # the bootstrap finds no draw against a 0.25 prediction and would say 1/2001 at any n
    assert ratio_bootstrap_pvalue(numerator, denominator, threshold=0.25) == pytest.approx(floor)
    assert bootstrap_pvalue(numerator / denominator, threshold=0.25) == pytest.approx(floor)
    # the floor is a minimum, not a replacement: data below the prediction keep their p
    assert ratio_bootstrap_pvalue(numerator, denominator, threshold=1.5) > 0.9


def test_ratio_pvalue_rejects_bad_input():
    from tools.stats import ratio_bootstrap_pvalue

    with pytest.raises(UserInputError, match="threshold"):
        ratio_bootstrap_pvalue([1.0, 2.0], [1.0, 2.0], threshold=float("nan"))
    with pytest.raises(UserInputError, match="denominator"):
        ratio_bootstrap_pvalue([1.0, 2.0], [1.0, -1.0], threshold=0.5)
    with pytest.raises(UserInputError, match="values but denominator has"):
        ratio_bootstrap_pvalue([1.0, 2.0, 3.0], [1.0, 2.0], threshold=0.5)
