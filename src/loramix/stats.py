"""The statistics behind the experiment report: every accuracy carries a 95% interval, every
comparison named in a target carries the paired difference over the same prompts with its bootstrap
95% interval, and a target is `met`, `not met` or `undecided` by where that interval lies.

| concept | function | returns |
| --- | --- | --- |
| interval of one accuracy | `wilson(successes, n)` | `(lo, hi)` Wilson score interval |
| interval of a mean | `bootstrap_mean_ci(values)` | `(lo, hi)` percentile bootstrap |
| interval of an average over domains | `stratified_mean_ci(groups)` | `(lo, hi)`, unweighted mean of the domains' means, resampling within each domain |
| A vs B on the same prompts | `paired_difference(a, b)` | `{diff, ci, n}`, one resample of prompt indices shared by A and B |
| A vs B, averaged over domains | `paired_difference_groups(a, b)` | `{diff, ci, n}`, the same, resampling within each domain |
| A as a fraction of B, averaged over domains | `ratio_ci(a, b)` | `{value, ci, n}`, paired resampling within each domain |
| a target's state | `verdict(ci, threshold, ">=")`, `verdict_between(ci, lo, hi)` | `"met"`, `"not met"` or `"undecided"` |
| the spread over training seeds | `seed_spread(values)` | `{mean, std, min, max, n}` |

Outcomes are numbers or booleans (True counts 1). Bootstrap functions take `n_boot` (resamples),
`seed` (the same seed gives the same interval) and `level` (0.95 gives the 2.5th and 97.5th
percentiles). Domains are resampled in sorted-name order, so a dict's insertion order does not
change a result. numpy is used throughout (it comes with transformers, datasets and matplotlib);
resamples are drawn as index matrices (in cache-sized chunks), so 2000 resamples of 1500 prompts
take about 10-20 ms. Bad input (empty, unequal lengths, non-finite values, a bad level) raises
`LoramixError`.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from loramix.errors import LoramixError

Outcomes = Sequence[float] | Sequence[bool] | np.ndarray
Groups = Mapping[str, Outcomes]

VERDICTS = ("met", "not met", "undecided")
_DIRECTIONS = (">=", "<=")
_CHUNK_CELLS = 250_000  # resampled values held at once: chunks of n_boot stay in cache (~2 MB)


# --- one accuracy ---------------------------------------------------------------------------------

def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion `successes / n` (z=1.96: 95%).

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0 or n successes.
    n=0 gives (0.0, 1.0): no data, no information."""
    if n < 0 or successes < 0 or successes > n:
        raise LoramixError(f"wilson: need 0 <= successes <= n, got successes={successes}, n={n}")
    if z <= 0:
        raise LoramixError(f"wilson: z must be positive, got {z}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo, hi = max(0.0, center - half), min(1.0, center + half)
    # exact at the edges (rounding would otherwise leave e.g. 1e-17 for 0 successes)
    return (0.0 if successes == 0 else lo), (1.0 if successes == n else hi)


# --- bootstrap helpers ----------------------------------------------------------------------------

def _array(values: Outcomes, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise LoramixError(f"{what}: expected a flat sequence of outcomes, got shape {arr.shape}")
    if arr.size == 0:
        raise LoramixError(f"{what}: no outcomes (empty sequence)")
    if not np.all(np.isfinite(arr)):
        raise LoramixError(f"{what}: outcomes must be finite numbers")
    return arr


def _check(n_boot: int, level: float) -> None:
    if int(n_boot) != n_boot or n_boot < 1:
        raise LoramixError(f"bootstrap: n_boot must be a positive integer, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise LoramixError(f"bootstrap: level must lie strictly between 0 and 1, got {level}")


def _resampled_means(rng: np.random.Generator, arrays: Sequence[np.ndarray], n_boot: int) -> list[np.ndarray]:
    """For each of `arrays` (all of one length n), its mean under each of `n_boot` resamples of the
    indices 0..n-1 with replacement; the same indices for every array (paired)."""
    n = arrays[0].size
    chunk = max(1, _CHUNK_CELLS // n)
    out = [np.empty(n_boot) for _ in arrays]
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        for arr, dest in zip(arrays, out):
            dest[start:stop] = arr[idx].mean(axis=1)
    return out


def _interval(boot: np.ndarray, level: float) -> tuple[float, float]:
    """The percentile interval of bootstrap statistics: the (1-level)/2 and (1+level)/2 quantiles."""
    tail = (1.0 - level) / 2.0
    qs = [tail, 1.0 - tail]
    boot = boot[~np.isnan(boot)]
    if boot.size == 0:
        return math.nan, math.nan
    # with infinities (a ratio over a zero resampled denominator) interpolation would give inf-inf=nan
    method = "linear" if np.all(np.isfinite(boot)) else "inverted_cdf"
    lo, hi = np.quantile(boot, qs, method=method)
    return float(lo), float(hi)


def _groups(groups: Groups, what: str) -> list[tuple[str, np.ndarray]]:
    if not groups:
        raise LoramixError(f"{what}: no groups")
    return [(str(k), _array(groups[k], f"{what}: group {k!r}")) for k in sorted(groups)]


def _paired_groups(a: Groups, b: Groups, what: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    if set(a) != set(b):
        raise LoramixError(f"{what}: the two sides name different groups: "
                           f"{sorted(set(a) ^ set(b))} on one side only")
    ga, gb = _groups(a, what), _groups(b, what)
    out = []
    for (k, x), (_, y) in zip(ga, gb):
        if x.size != y.size:
            raise LoramixError(f"{what}: group {k!r} has {x.size} outcomes on one side and {y.size} on "
                               "the other; a paired comparison needs the same prompts")
        out.append((k, x, y))
    return out


# --- means ----------------------------------------------------------------------------------------

def bootstrap_mean_ci(values: Outcomes, *, n_boot: int = 2000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float]:
    """The percentile-bootstrap interval of the mean of `values` (resampling the values)."""
    _check(n_boot, level)
    arr = _array(values, "bootstrap_mean_ci")
    (boot,) = _resampled_means(np.random.default_rng(seed), [arr], n_boot)
    return _interval(boot, level)


def stratified_mean_ci(groups: Groups, *, n_boot: int = 2000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """The bootstrap interval of the unweighted mean of the groups' means (an average over domains,
    each domain counting once), resampling items within each group so each keeps its size."""
    _check(n_boot, level)
    rng = np.random.default_rng(seed)
    boot = np.zeros(n_boot)
    items = _groups(groups, "stratified_mean_ci")
    for _, arr in items:
        boot += _resampled_means(rng, [arr], n_boot)[0]
    return _interval(boot / len(items), level)


# --- paired comparisons ---------------------------------------------------------------------------

def paired_difference(a: Outcomes, b: Outcomes, *, n_boot: int = 2000, seed: int = 0,
                      level: float = 0.95) -> dict:
    """mean(a) - mean(b) over the same prompts (a[i] and b[i] are one prompt's outcomes), with its
    paired percentile-bootstrap interval: each resample draws prompt indices once and uses them for
    both sides. Returns `{"diff": float, "ci": [lo, hi], "n": prompts}`."""
    _check(n_boot, level)
    x, y = _array(a, "paired_difference: a"), _array(b, "paired_difference: b")
    if x.size != y.size:
        raise LoramixError(f"paired_difference: a has {x.size} outcomes and b has {y.size}; a paired "
                           "comparison needs the same prompts")
    d = x - y  # resampling d is resampling a and b with the same indices
    (boot,) = _resampled_means(np.random.default_rng(seed), [d], n_boot)
    lo, hi = _interval(boot, level)
    return {"diff": float(d.mean()), "ci": [lo, hi], "n": int(d.size)}


def paired_difference_groups(a: Groups, b: Groups, *, n_boot: int = 2000, seed: int = 0,
                             level: float = 0.95) -> dict:
    """The difference of unweighted averages over domains, avg_g mean(a[g]) - avg_g mean(b[g]),
    with a paired bootstrap interval: prompts are resampled within each domain, the same indices
    for a and b. Both sides must name the same domains, each with the same number of prompts.
    Returns `{"diff": float, "ci": [lo, hi], "n": total prompts}`."""
    _check(n_boot, level)
    pairs = _paired_groups(a, b, "paired_difference_groups")
    rng = np.random.default_rng(seed)
    boot, diff = np.zeros(n_boot), 0.0
    for _, x, y in pairs:
        d = x - y
        diff += float(d.mean())
        boot += _resampled_means(rng, [d], n_boot)[0]
    k = len(pairs)
    lo, hi = _interval(boot / k, level)
    return {"diff": diff / k, "ci": [lo, hi], "n": sum(x.size for _, x, _ in pairs)}


def ratio_ci(a: Groups, b: Groups, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """avg_g mean(a[g]) / avg_g mean(b[g]) (for example a router's average accuracy over domains as
    a fraction of the oracle's), with a paired bootstrap interval: prompts resampled within each
    domain, the same indices for a and b, the ratio taken per resample. Both sides must name the
    same domains, each with the same number of prompts; b's average must be positive. A resample
    whose b-average is 0 gives an infinite ratio (or none, if a's is 0 too: it is dropped).
    Returns `{"value": float, "ci": [lo, hi], "n": total prompts}`."""
    _check(n_boot, level)
    pairs = _paired_groups(a, b, "ratio_ci")
    rng = np.random.default_rng(seed)
    num, den = np.zeros(n_boot), np.zeros(n_boot)
    num_hat = den_hat = 0.0
    for _, x, y in pairs:
        bx, by = _resampled_means(rng, [x, y], n_boot)
        num += bx
        den += by
        num_hat += float(x.mean())
        den_hat += float(y.mean())
    if den_hat <= 0:
        raise LoramixError(f"ratio_ci: the denominator's average is {den_hat / len(pairs)}; "
                           "a ratio needs a positive one")
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = num / den  # the 1/k of the two averages cancels
    lo, hi = _interval(boot, level)
    return {"value": num_hat / den_hat, "ci": [lo, hi], "n": sum(x.size for _, x, _ in pairs)}


# --- verdicts -------------------------------------------------------------------------------------

def _ci(ci: Sequence[float], what: str) -> tuple[float, float]:
    if len(ci) != 2:
        raise LoramixError(f"{what}: an interval is two numbers (lo, hi), got {list(ci)}")
    lo, hi = float(ci[0]), float(ci[1])
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise LoramixError(f"{what}: bad interval ({lo}, {hi}); need lo <= hi")
    return lo, hi


def verdict(ci: Sequence[float], threshold: float, direction: str = ">=") -> str:
    """Whether a target "value >= threshold" (or "<=") holds, judged by the value's interval.

    ">=": "met" if lo >= threshold, "not met" if hi < threshold, otherwise "undecided".
    "<=": "met" if hi <= threshold, "not met" if lo > threshold, otherwise "undecided".
    An interval touching the threshold from the right side is met; one touching it from the wrong
    side is undecided."""
    lo, hi = _ci(ci, "verdict")
    if direction == ">=":
        return "met" if lo >= threshold else "not met" if hi < threshold else "undecided"
    if direction == "<=":
        return "met" if hi <= threshold else "not met" if lo > threshold else "undecided"
    raise LoramixError(f"verdict: unknown direction {direction!r}; valid: {', '.join(_DIRECTIONS)}")


def verdict_between(ci: Sequence[float], lo_threshold: float, hi_threshold: float) -> str:
    """Whether a target "lo_threshold <= value <= hi_threshold" holds, judged by the value's
    interval: "met" if the whole interval lies inside [lo_threshold, hi_threshold], "not met" if it
    lies entirely outside (wholly below or wholly above), otherwise "undecided"."""
    if lo_threshold > hi_threshold:
        raise LoramixError(f"verdict_between: lo_threshold {lo_threshold} > hi_threshold {hi_threshold}")
    lo, hi = _ci(ci, "verdict_between")
    if lo >= lo_threshold and hi <= hi_threshold:
        return "met"
    if hi < lo_threshold or lo > hi_threshold:
        return "not met"
    return "undecided"


# --- seeds ----------------------------------------------------------------------------------------

def seed_spread(values: Sequence[float]) -> dict:
    """The spread of one result over training seeds: `{mean, std, min, max, n}`, with the sample
    standard deviation (n-1 in the denominator; 0.0 for a single value)."""
    arr = _array(values, "seed_spread")
    n = int(arr.size)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if n > 1 else 0.0,
            "min": float(arr.min()), "max": float(arr.max()), "n": n}
