"""Statistics shared by scoring, reports and regression checks: bootstrap intervals and paired
p-values over samples, t intervals over seeds, and Holm's correction for multiple comparisons."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

CI_LEVEL = 0.95


_BOOT_CELLS_PER_BATCH = 4_000_000  # resample indices held at once: bounds memory for large n


def resample_indices(n: int, n_boot: int, seed: int) -> Iterable[np.ndarray]:
    """Index arrays of shape (b, n), b summing to n_boot, drawn from one seeded Generator."""
    if n < 1:
        raise ValueError("bootstrap needs at least one sample")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    per_batch = max(1, _BOOT_CELLS_PER_BATCH // n)
    for start in range(0, n_boot, per_batch):
        yield rng.integers(0, n, size=(min(per_batch, n_boot - start), n))


def take_samples(stats, idx):
    if isinstance(stats, Mapping):
        return {name: col[idx] for name, col in stats.items()}
    return stats[idx]


def as_sample_arrays(stats):
    if isinstance(stats, Mapping):
        arrays = {name: np.asarray(col, dtype=float) for name, col in stats.items()}
        lengths = {len(a) for a in arrays.values()}
        if len(lengths) != 1:
            raise ValueError(f"per-sample columns differ in length: {sorted(lengths)}")
        return arrays, lengths.pop()
    array = np.asarray(stats, dtype=float)
    return array, len(array)


def bootstrap_distribution(per_sample_stats, statistic_fn, n_boot: int = 1000,
                           seed: int = 0) -> np.ndarray:
    """statistic_fn on each of `n_boot` resamples (with replacement) of the samples; shape (n_boot,).

    per_sample_stats: a mapping of equal-length per-sample columns (e.g. `columns(rows)`), or one
    1-D array. statistic_fn receives the same kind, each column shaped (B, n), and must reduce the
    last axis to shape (B,) (e.g. `c["x"].sum(-1) / c["y"].sum(-1)`).
    """
    stats, n = as_sample_arrays(per_sample_stats)
    return np.concatenate([np.asarray(statistic_fn(take_samples(stats, idx)), dtype=float)
                           for idx in resample_indices(n, n_boot, seed)])


def bootstrap_ci(per_sample_stats, statistic_fn, n_boot: int = 1000, seed: int = 0,
                 level: float = CI_LEVEL) -> tuple[float, float]:
    """Percentile bootstrap interval (2.5th, 97.5th percentiles at level 0.95) of a corpus statistic.

    Inputs as `bootstrap_distribution`. Deterministic for a given (n, n_boot, seed).
    """
    dist = bootstrap_distribution(per_sample_stats, statistic_fn, n_boot, seed)
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(dist, [tail, 100.0 - tail])
    return float(low), float(high)


def paired_bootstrap_pvalue(a_stats, b_stats, statistic_fn, n_boot: int = 1000,
                            seed: int = 0) -> float:
    """Two-sided paired bootstrap p-value for "systems A and B score the same on these samples".

    Method: both systems are resampled with the *same* indices (the samples are paired: same ids, same
    order). d = stat(A) - stat(B) on the full set, d_b on each resample. Centring d_b on d gives the
    null distribution (Efron & Tibshirani 1993, sec. 16.4; Berg-Kirkpatrick et al. 2012), so
    p = (1 + #{b : |d_b - d| >= |d|}) / (1 + n_boot). The +1 keeps p > 0 with finite resamples;
    p = 1.0 when d = 0. Inputs as `bootstrap_distribution`; A and B must have the same n.
    """
    a, n_a = as_sample_arrays(a_stats)
    b, n_b = as_sample_arrays(b_stats)
    if n_a != n_b:
        raise ValueError(f"paired comparison needs the same samples: {n_a} vs {n_b}")
    observed = float(statistic_fn(a)) - float(statistic_fn(b))
    extreme = 0
    for idx in resample_indices(n_a, n_boot, seed):
        deltas = np.asarray(statistic_fn(take_samples(a, idx))) - np.asarray(statistic_fn(take_samples(b, idx)))
        # tiny tolerance: a resample equal to the observed gap up to rounding counts as extreme
        extreme += int(np.sum(np.abs(deltas - observed) >= abs(observed) - 1e-12))
    return (1 + extreme) / (1 + n_boot)




# ---------------------------------------------------------------------------------------------
# Over seeds: Student t intervals

# two-sided 95 % quantiles of Student's t for df = 1..30; beyond, a close approximation
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042)


def t_quantile_975(df: int) -> float:
    return _T975[df - 1] if df <= len(_T975) else 1.96 + 2.5 / df


def mean_t_interval(values: Sequence[float]) -> tuple[float, float | None]:
    """(mean, 95 % t-interval half-width); the half-width is None with fewer than 2 values."""
    mean = _fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, t_quantile_975(len(values) - 1) * _stdev(values) / math.sqrt(len(values))




def _fmean(values: Sequence[float]) -> float:
    import statistics

    return statistics.fmean(values)


def _stdev(values: Sequence[float]) -> float:
    import statistics

    return statistics.stdev(values)


# ---------------------------------------------------------------------------------------------
# Many comparisons at once


def holm_adjust(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone), in the input order; None stays None.

    With m p-values sorted ascending p(1) <= ... <= p(m): adj(i) = max over j <= i of min(1, (m - j + 1) p(j)).
    Rejecting where adj < alpha controls the family-wise error rate at alpha.
    """
    indexed = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(indexed)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out
