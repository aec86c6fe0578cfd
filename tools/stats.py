"""Statistics the critic uses to turn per-prompt effects into verdicts on claims.

A claim about a component predicts a bound on an effect ("ablating head 9.9 lowers the logit
difference by at least 0.5"). The critic bootstraps a confidence interval of the effect over
prompts (`bootstrap_ci`, `paired_bootstrap_ci`), tests it against the bound
(`bootstrap_pvalue`), corrects for testing many claims at once (`holm`) and reads the verdict
off the interval (`decide`). `random_component_sets` draws the equal-size random controls a
claim is compared against.

Every interval of a mean (or ratio of means) is the *expanded* percentile interval
(Hesterberg 2015, "What teachers should know about the bootstrap"): the plain percentile
bootstrap is too narrow on few items (its spread is the sample's, which divides by n, and it
reads normal quantiles where Student's t applies: on 8 normal items a nominal 95% interval
covered the mean 90% of the time in `tests/test_stats.py`, the expanded one 94%). The expanded
interval reads the bootstrap quantiles at the level ``α'`` with
``z(α'/2) = sqrt(n / (n − 1)) · t(α/2, n − 1)`` (`expanded_tail`): about 25% wider on 9 items,
3% on 64, and 0.3% on 512. The p-values are not mapped so: a bootstrap p-value is a
count, never below ``1 / (1 + n_resamples)``, and on the t scale that floor grows (to 0.0009 on
32 items) until Holm over a few dozen tests could reject nothing however large the effects; an
interval has no such floor. The critic's verdicts ask for both (`decide`): the p-value below
alpha after Holm, and the expanded interval clear of the bound, the stricter of the two on few
items. (`sleuth diff` decides "significant" on its p-values alone; there only the ``2 ** -n``
floor guards few prompts, and the expanded interval is what its report shows.)

Everything is seeded and deterministic: the same inputs and seed give the same numbers, so a
verdict can be re-derived from what the memory stores.
"""

from __future__ import annotations

import math
from functools import lru_cache
from itertools import combinations
from numbers import Integral
from typing import Callable, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

from tools.errors import UserInputError

Statistic = Literal["mean", "median"]
Alternative = Literal["greater", "less"]
Verdict = Literal["supported", "refuted", "inconclusive"]

_STATISTICS: dict[str, Callable[..., np.ndarray]] = {"mean": np.mean, "median": np.median}
_MAX_DRAWS_PER_CHUNK = 1 << 22
"""Resampled values held in memory at once (32 MiB of indices), whatever the sample size."""


class Interval(BaseModel):
    """A point estimate with a two-sided confidence interval, over a sample of ``n`` values."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    estimate: float
    """The statistic of the observed sample."""
    low: float
    high: float
    n: int
    """Sample size (number of prompts, or of pairs)."""
    confidence: float
    """Nominal coverage, e.g. 0.95."""

    @model_validator(mode="after")
    def _ordered(self) -> Interval:
        if not self.low <= self.high:
            raise ValueError(f"interval low {self.low} is above high {self.high}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence {self.confidence} is not strictly between 0 and 1")
        return self


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    statistic: Statistic = "mean",
) -> Interval:
    """Bootstrap CI of the mean (or median) of a 1-D sample.

    Resamples the values with replacement ``n_resamples`` times and takes the quantiles of the
    resampled statistic at ``α'/2`` and ``1 − α'/2``: for the mean, ``α'`` is the expanded
    percentile interval's level (`expanded_tail`: wider on few values); for the median, the
    plain percentile interval's ``α = 1 − confidence`` (the expansion is derived for means).
    The estimate is the statistic of the sample itself.
    """
    x = _sample(values, "values")
    stat = _statistic(statistic)
    _check_confidence(confidence)
    rng = np.random.default_rng(seed)
    draws = _resampled(x, stat, _check_resamples(n_resamples), rng)
    tail = (1.0 - confidence) / 2.0
    if statistic == "mean":
        tail = expanded_tail(tail, x.size)
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return Interval(estimate=float(stat(x)), low=float(low), high=float(high), n=x.size,
                    confidence=confidence)


def paired_bootstrap_ci(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    statistic: Statistic = "mean",
) -> Interval:
    """Bootstrap CI of the mean (or median) of ``a - b`` for paired samples.

    Pairs are resampled together (the differences are bootstrapped), so the prompt-to-prompt
    variation shared by ``a`` and ``b`` cancels, as in a clean vs. ablated comparison.
    """
    xa, xb = _sample(a, "a"), _sample(b, "b")
    if xa.size != xb.size:
        raise UserInputError(
            f"paired samples differ in length (a has {xa.size}, b has {xb.size}); "
            "pass one value per prompt in both"
        )
    return bootstrap_ci(xa - xb, n_resamples=n_resamples, confidence=confidence, seed=seed,
                        statistic=statistic)


def ratio_bootstrap_ci(
    numerator: Sequence[float] | np.ndarray,
    denominator: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Bootstrap CI of ``mean(numerator) / mean(denominator)`` over paired items (the
    expanded percentile interval: `expanded_tail`).

    The ablation and patching scores are ratios of means over prompts (e.g. necessity =
    mean(clean − ablated) / mean(clean − everything-ablated)); resampling prompts and
    recomputing both means keeps the denominator's uncertainty in the interval, which a
    bootstrap of per-prompt values divided by a fixed denominator would hide. A resample whose
    denominator mean is zero is dropped; if more than 1% are, the ratio is too unstable to
    report and `UserInputError` says so.
    """
    num, den = _sample(numerator, "numerator"), _sample(denominator, "denominator")
    if num.size != den.size:
        raise UserInputError(f"numerator has {num.size} values but denominator has {den.size}; "
                             "pass one of each per item")
    _check_confidence(confidence)
    if den.mean() == 0.0:
        raise UserInputError("the denominator's mean is zero; the ratio is undefined")
    n_resamples = _check_resamples(n_resamples)
    ratios = _ratio_draws(num, den, n_resamples, seed)
    tail = expanded_tail((1.0 - confidence) / 2.0, num.size)
    low, high = np.quantile(ratios, [tail, 1.0 - tail])
    return Interval(estimate=float(num.mean() / den.mean()), low=float(low), high=float(high),
                    n=num.size, confidence=confidence)


def ratio_bootstrap_pvalue(
    numerator: Sequence[float] | np.ndarray,
    denominator: Sequence[float] | np.ndarray,
    *,
    threshold: float,
    n_resamples: int = 2000,
    seed: int = 0,
) -> float:
    """One-sided p-value for H0: ``mean(numerator) / mean(denominator) <= threshold``.

    The shifted bootstrap of the ratio itself, on the same resamples as `ratio_bootstrap_ci`
    with the same seed (so the test and the interval never disagree about which side of the
    threshold the data lie): the bootstrap distribution of the ratio is centred on the
    threshold and the draws at least as far above it as the observed ratio are counted::

        p = max((1 + #{ratio* - ratio >= ratio - threshold}) / (1 + n_resamples), 2 ** -n)

    A bootstrap of per-prompt values divided by a fixed denominator would ignore how numerator
    and denominator move together (restoring an activation that carries everything gives
    numerator = denominator on every prompt: a ratio of exactly 1, however much the prompts'
    logit differences vary).
    """
    num, den = _sample(numerator, "numerator"), _sample(denominator, "denominator")
    if num.size != den.size:
        raise UserInputError(f"numerator has {num.size} values but denominator has {den.size}; "
                             "pass one of each per item")
    if not math.isfinite(threshold):
        raise UserInputError(f"threshold {threshold} is not a finite number")
    if den.mean() == 0.0:
        raise UserInputError("the denominator's mean is zero; the ratio is undefined")
    observed = float(num.mean() / den.mean())
    draws = _ratio_draws(num, den, _check_resamples(n_resamples), seed)
    extreme = (draws - observed) >= (observed - threshold)
    return _floored(float((1 + np.count_nonzero(extreme)) / (1 + draws.size)), num.size)


@lru_cache(maxsize=256)
def expanded_tail(tail: float, n: int) -> float:
    """The bootstrap quantile level ``α'`` that the expanded percentile interval (Hesterberg
    2015) reads in place of the nominal one-sided ``tail`` ``α`` on ``n`` items:
    ``α' = Φ(−sqrt(n / (n − 1)) · t(1 − α, n − 1))``. Smaller than ``α`` (a wider interval):
    it corrects the bootstrap's spread, which divides by ``n``, and its normal tails, where a
    mean of ``n`` items has Student's. Cached: a run asks for the same few levels (one per
    prompt count) for every interval, and each is a bisection."""
    if n < 2:
        raise UserInputError(f"an interval over {n} item(s) needs at least 2")
    # Φ(−x) = erfc(x / √2) / 2, without the rounding of 1 + erf near −1 in deep tails
    return 0.5 * math.erfc(math.sqrt(n / (n - 1)) * student_t_quantile(1.0 - tail, n - 1) / math.sqrt(2.0))


def student_t_cdf(x: float, df: int) -> float:
    """``P(T <= x)`` for Student's t with ``df`` (a positive integer) degrees of freedom: the
    exact finite series of Abramowitz & Stegun 26.7.3-4 in ``θ = atan(x / sqrt(df))``."""
    df = _degrees(df)
    return 0.5 + 0.5 * _t_central(math.atan(x / math.sqrt(df)), df)


def student_t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom (`student_t_cdf`
    inverted by bisection in ``θ``, where it is monotone on (−π/2, π/2))."""
    if not 0.0 < q < 1.0:
        raise UserInputError(f"quantile level {q} is not strictly between 0 and 1")
    df = _degrees(df)
    low, high = -math.pi / 2, math.pi / 2
    for _ in range(200):
        middle = (low + high) / 2
        if middle in (low, high):
            break
        if 0.5 + 0.5 * _t_central(middle, df) < q:
            low = middle
        else:
            high = middle
    return math.sqrt(df) * math.tan((low + high) / 2)


def _degrees(df: int) -> int:
    """``df`` as an int, if it is a positive integer (degrees of freedom)."""
    if isinstance(df, bool) or not isinstance(df, Integral) or df < 1:
        raise UserInputError(f"degrees of freedom must be a positive integer; got {df!r}")
    return int(df)


def _t_central(theta: float, df: int) -> float:
    """``P(|T| <= |x|)`` with the sign of ``x`` for ``θ = atan(x / sqrt(df))`` (A&S 26.7.3-4):
    odd ``df``:
    ``(2/π)(θ + sin θ (cos θ + (2/3) cos³θ + … + (2·4⋯(df−3))/(1·3⋯(df−2)) cos^(df−2) θ))``;
    even ``df``: ``sin θ (1 + (1/2) cos²θ + … + (1·3⋯(df−3))/(2·4⋯(df−2)) cos^(df−2) θ)``."""
    s, c = math.sin(theta), math.cos(theta)
    c2 = c * c
    if df % 2:
        if df == 1:
            return 2.0 * theta / math.pi
        k = np.arange(1, (df - 1) // 2)
        terms = np.concatenate(([c], c * np.cumprod(c2 * (2.0 * k) / (2.0 * k + 1.0))))
        return 2.0 / math.pi * (theta + s * float(terms.sum()))
    k = np.arange(1, df // 2)
    terms = np.concatenate(([1.0], np.cumprod(c2 * (2.0 * k - 1.0) / (2.0 * k))))
    return s * float(terms.sum())


def smallest_pvalue(n: int) -> float:
    """``2 ** -n``: the smallest p-value an exact sign test can give on ``n`` items that all
    point the same way, and the floor of every bootstrap p-value here (`_floored`). The
    bootstrap only resamples what it was shown, so on two prompts with large effects it finds
    no draw against them and reports ``1 / (1 + n_resamples)`` (the critic supported seven
    claims on two prompts that way); no test that assumes nothing about the items'
    distribution can say more than ``2 ** -n``. From about 11 items on the bound lies below
    the bootstrap's own smallest value (1/2001)."""
    return 0.5 ** n


def _floored(p: float, n: int) -> float:
    """``p``, but never below `smallest_pvalue` of ``n`` items."""
    return max(p, smallest_pvalue(n))


def _ratio_draws(num: np.ndarray, den: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Bootstrap draws of ``mean(num[idx]) / mean(den[idx])`` (resamples with a zero
    denominator dropped; more than 1% of them is an error)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, num.size, size=(n_resamples, num.size))
    den_means = den[idx].mean(axis=1)
    ok = den_means != 0.0
    if (~ok).mean() > 0.01:
        raise UserInputError(f"the denominator's mean is zero in {(~ok).sum()} of {n_resamples} "
                             "resamples; the ratio is too unstable for a confidence interval")
    return num[idx[ok]].mean(axis=1) / den_means[ok]


def bootstrap_pvalue(
    values: Sequence[float] | np.ndarray,
    *,
    threshold: float = 0.0,
    alternative: Alternative = "greater",
    n_resamples: int = 2000,
    seed: int = 0,
) -> float:
    """One-sided bootstrap p-value for the mean of a sample against ``threshold``.

    ``alternative="greater"`` tests H0: mean <= threshold; ``"less"`` tests H0: mean >= threshold.

    Method (shifted bootstrap): shift the sample by ``threshold - mean`` so that it obeys H0 at
    its boundary (its mean equals the threshold) while keeping its spread and shape, resample
    it with replacement ``n_resamples`` times, and count the resampled means at least as
    extreme as the observed mean::

        p = (1 + #{resampled mean >= observed mean}) / (1 + n_resamples)    # "greater"
        p = (1 + #{resampled mean <= observed mean}) / (1 + n_resamples)    # "less"

    The ``+1`` counts the observed sample as one of the resamples, so ``p`` is never 0 and its
    smallest value is ``1 / (1 + n_resamples)``, or ``2 ** -n`` on ``n`` values when that is
    larger (`_floored`).
    """
    x = _sample(values, "values")
    if alternative not in ("greater", "less"):
        raise UserInputError(f"unknown alternative {alternative!r}; use 'greater' or 'less'")
    if not math.isfinite(threshold):
        raise UserInputError(f"threshold {threshold} is not a finite number")
    rng = np.random.default_rng(seed)
    observed = float(np.mean(x))
    # Resampling x - mean and comparing with observed - threshold is the shifted bootstrap,
    # written so that no rounding error is added by the shift.
    null_draws = _resampled(x - observed, np.mean, _check_resamples(n_resamples), rng)
    excess = observed - threshold
    extreme = null_draws >= excess if alternative == "greater" else null_draws <= excess
    return _floored(float((1 + np.count_nonzero(extreme)) / (1 + null_draws.size)), x.size)


class MarginTest(BaseModel):
    """One row of `paired_margin_tests`: is the mean paired difference larger than a margin?"""

    model_config = ConfigDict(frozen=True, extra="forbid")

    interval: Interval
    """Bootstrap CI of the mean difference (as `bootstrap_ci`: the expanded percentile interval)."""
    margin: float
    """The smallest difference of interest ``δ`` (the null hypothesis is ``|mean| <= δ``)."""
    p_value: float
    """Two-sided minimum-effect p-value: ``min(1, 2 · min(p_above, p_below))`` where ``p_above``
    tests H0: mean <= δ and ``p_below`` tests H0: mean >= −δ (shifted bootstrap, as
    `bootstrap_pvalue`)."""


def paired_margin_tests(
    differences: np.ndarray,
    margins: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[MarginTest]:
    """For each row of ``differences`` (``[tests, items]``: paired differences b − a per item),
    a bootstrap CI of the mean and a minimum-effect test of ``|mean| > margin``.

    Every row is resampled with the *same* item indices (drawn exactly as `bootstrap_ci` and
    `bootstrap_pvalue` draw them for this seed), so the rows are tested on the same resampled
    prompts and each row's numbers equal those functions' up to summation order. The margin
    makes "a change" mean a change of at least a chosen size: with many items a difference of
    no consequence is otherwise always significant.
    """
    d = np.asarray(differences, dtype=float)
    if d.ndim != 2:
        raise UserInputError(f"differences must be 2-D [tests, items]; got shape {d.shape}")
    delta = np.asarray(margins, dtype=float).reshape(-1)
    if delta.size != d.shape[0]:
        raise UserInputError(f"{delta.size} margins for {d.shape[0]} rows of differences; give one per row")
    if not np.all(np.isfinite(delta)) or np.any(delta < 0):
        raise UserInputError("margins must be finite and non-negative")
    if d.shape[0] == 0:
        return []
    for row in d:
        _sample(row, "differences")
    _check_confidence(confidence)
    n_resamples = _check_resamples(n_resamples)
    m, n = d.shape
    rng = np.random.default_rng(seed)
    rows = max(1, _MAX_DRAWS_PER_CHUNK // n)
    means = np.empty((n_resamples, m))
    for start in range(0, n_resamples, rows):
        stop = min(start + rows, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        offsets = (np.arange(stop - start) * n)[:, None]
        counts = np.bincount((idx + offsets).reshape(-1), minlength=(stop - start) * n)
        means[start:stop] = counts.reshape(stop - start, n).astype(float) @ d.T / n
    observed = d.mean(axis=1)
    tail = expanded_tail((1.0 - confidence) / 2.0, n)
    low, high = np.quantile(means, [tail, 1.0 - tail], axis=0)
    null = means - observed
    above = (1 + np.count_nonzero(null >= observed - delta, axis=0)) / (1 + n_resamples)
    below = (1 + np.count_nonzero(null <= observed + delta, axis=0)) / (1 + n_resamples)
    p = np.minimum(1.0, 2.0 * np.minimum(above, below))
    return [MarginTest(interval=Interval(estimate=float(observed[i]), low=float(low[i]), high=float(high[i]),
                                         n=n, confidence=confidence),
                       margin=float(delta[i]), p_value=float(p[i])) for i in range(m)]


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the input order.

    With the ``m`` p-values sorted ascending, the ``i``-th (1-based) is adjusted to
    ``max over j <= i of min(1, (m - j + 1) * p_(j))``; rejecting every hypothesis whose
    adjusted p-value is ``<= alpha`` controls the family-wise error rate at ``alpha``.
    """
    p = np.asarray(pvalues, dtype=float).reshape(-1)
    bad = [float(v) for v in p if not 0.0 <= v <= 1.0]  # NaN fails the comparison too
    if bad:
        raise UserInputError(f"p-values must lie in [0, 1]; got {bad[:5]}; check what produced them")
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(stepped)
    return [float(v) for v in adjusted]


def decide(
    interval: Interval,
    *,
    predicted_at_least: float | None = None,
    predicted_at_most: float | None = None,
    adjusted_p: float | None = None,
    alpha: float = 0.05,
) -> Verdict:
    """Verdict on a claim that predicts the effect is at least (or at most) a bound.

    ``supported``: the whole CI lies strictly on the predicted side of the bound (and
    ``adjusted_p``, when given, is below ``alpha``). ``refuted``: the whole CI lies strictly on
    the other side. Otherwise ``inconclusive``. The bound itself belongs to neither side, so a
    CI touching it is inconclusive: an effect of exactly zero never supports "at least 0".
    """
    if (predicted_at_least is None) == (predicted_at_most is None):
        raise UserInputError("give exactly one of predicted_at_least and predicted_at_most")
    if not 0.0 < alpha < 1.0:
        raise UserInputError(f"alpha {alpha} is not strictly between 0 and 1")
    if adjusted_p is not None and not 0.0 <= adjusted_p <= 1.0:
        raise UserInputError(f"adjusted_p {adjusted_p} is not in [0, 1]")
    if predicted_at_least is not None:
        on_side, other_side = interval.low > predicted_at_least, interval.high < predicted_at_least
    else:
        on_side, other_side = interval.high < predicted_at_most, interval.low > predicted_at_most
    if on_side and (adjusted_p is None or adjusted_p < alpha):
        return "supported"
    if other_side:
        return "refuted"
    return "inconclusive"


def random_component_sets(
    components: Sequence[str],
    size: int,
    k: int,
    *,
    exclude: Sequence[str] = (),
    seed: int = 0,
) -> list[tuple[str, ...]]:
    """``k`` distinct random sets of ``size`` components, drawn from ``components`` minus
    ``exclude``.

    The controls for a claimed circuit: random components of the same size, none of them in
    the circuit. Repeated names in ``components`` count once. Each set is a sorted tuple and
    the list is sorted; the same inputs and seed give the same sets. When fewer than ``k``
    distinct sets exist, all of them are returned.
    """
    if size < 1 or k < 1:
        raise UserInputError(f"size ({size}) and k ({k}) must both be at least 1")
    pool = sorted(set(components) - set(exclude))
    if size > len(pool):
        raise UserInputError(
            f"cannot draw sets of {size} from {len(pool)} components left after exclusion; "
            "use a smaller size or more components"
        )
    rng = np.random.default_rng(seed)
    total = math.comb(len(pool), size)
    if total < 2 * k:
        # Few sets exist: enumerate them and pick k (or all) without replacement.
        every = list(combinations(pool, size))
        chosen = rng.choice(total, size=min(k, total), replace=False)
        return sorted(every[i] for i in chosen)
    # Many sets exist: draw until k distinct; each draw is new with probability > 1/2.
    found: set[tuple[str, ...]] = set()
    while len(found) < k:
        picks = np.sort(rng.choice(len(pool), size=size, replace=False))
        found.add(tuple(pool[i] for i in picks))
    return sorted(found)


def _sample(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    """``values`` as a finite 1-D float array of at least two entries."""
    try:
        x = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise UserInputError(f"{name} must be a 1-D sequence of numbers ({exc})") from None
    if x.ndim != 1:
        raise UserInputError(f"{name} must be 1-D; got shape {x.shape}")
    if x.size < 2:
        raise UserInputError(f"{name} has {x.size} value(s); a bootstrap needs at least 2")
    n_nan = int(np.isnan(x).sum())
    if n_nan:
        raise UserInputError(f"{name} has {n_nan} NaN value(s) of {x.size}; drop or fix them first")
    n_inf = int(np.isinf(x).sum())
    if n_inf:
        raise UserInputError(f"{name} has {n_inf} infinite value(s) of {x.size}; drop or fix them first")
    return x


def _statistic(statistic: str) -> Callable[..., np.ndarray]:
    if statistic not in _STATISTICS:
        raise UserInputError(f"unknown statistic {statistic!r}; use 'mean' or 'median'")
    return _STATISTICS[statistic]


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise UserInputError(f"confidence {confidence} is not strictly between 0 and 1 (e.g. 0.95)")


def _check_resamples(n_resamples: int) -> int:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, Integral) or n_resamples < 1:
        raise UserInputError(f"n_resamples must be a positive integer; got {n_resamples!r}")
    return int(n_resamples)


def _resampled(x: np.ndarray, stat: Callable[..., np.ndarray], n_resamples: int,
               rng: np.random.Generator) -> np.ndarray:
    """``stat`` of ``n_resamples`` with-replacement resamples of ``x``, drawn in bounded chunks."""
    rows = max(1, _MAX_DRAWS_PER_CHUNK // x.size)
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, rows):
        stop = min(start + rows, n_resamples)
        idx = rng.integers(0, x.size, size=(stop - start, x.size))
        out[start:stop] = stat(x[idx], axis=1)
    return out
