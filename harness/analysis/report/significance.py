"""Paired significance tests between cells, corrected for the number of tests made at once.

Each cell's per-sample counts are averaged over its ok seeds per sample id ("pooled"), two cells are
paired by sample id, and `harness.results.stats.paired_bootstrap_pvalue` gives the p-value of one
corpus metric. Every family of comparisons (one table, or all negative controls) is corrected with
Holm's step-down method (`stats.holm_adjust`), so a mark means "significant after correction".
"""

from __future__ import annotations

import collections
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from harness.eval import metrics as quality
from harness.results import stats
from harness.results.store import resolve_sidecar

SIGNIFICANCE_P = 0.05
N_BOOT = 1000
BOOT_SEED = 0

Pooled = Mapping[str, Mapping[str, float]]  # sample id -> column -> mean over seeds


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def pooled_sample_columns(records: Sequence[Mapping]) -> dict[str, dict[str, float]] | None:
    """{sample id: {column: mean over the ok seeds}} from the records' per-sample files.

    Averaging each count over seeds keeps the corpus statistics exact: sum_i mean_s(edits_is) /
    sum_i mean_s(chars_is) is the CER of all seeds pooled when every seed scored every id.
    None when any ok record has no readable per-sample file (then no significance test).
    """
    sums: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = collections.Counter()
    ok = [r for r in records if r.get("status") == "ok"]
    if not ok:
        return None
    names = quality.TEXT_COLUMNS + quality.FIELD_COLUMNS
    for record in ok:
        path = resolve_sidecar(record, record.get("per_sample_file"))
        if path is None:
            return None
        try:  # a damaged file costs the significance marks, never the report
            for row in read_jsonl(path):
                acc = sums.setdefault(str(row["id"]), {})
                for name in names:
                    if name in row:
                        acc[name] = acc.get(name, 0.0) + float(row[name])
                counts[str(row["id"])] += 1
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
    return {sid: {k: v / counts[sid] for k, v in acc.items()} for sid, acc in sums.items()}


def paired_pvalue(a: Pooled, b: Pooled, metric: str, n_boot: int = N_BOOT) -> float | None:
    """Paired bootstrap p-value of `metric` between two pooled cells, over their common sample ids."""
    ids = sorted(set(a) & set(b))
    if len(ids) < 2 or metric not in quality.STATISTICS:
        return None
    names = set.intersection(*(set(a[i]) & set(b[i]) for i in ids))
    a_cols = {n: np.array([a[i][n] for i in ids]) for n in names}
    b_cols = {n: np.array([b[i][n] for i in ids]) for n in names}
    try:
        return stats.paired_bootstrap_pvalue(a_cols, b_cols, quality.STATISTICS[metric],
                                             n_boot=n_boot, seed=BOOT_SEED)
    except KeyError:  # a column this metric needs is missing (e.g. no fields in this task)
        return None


def resamples_for(n_comparisons: int) -> int:
    """Bootstrap resamples for a family of `n_comparisons` tests.

    The smallest p a bootstrap can give is 1 / (n_boot + 1), and Holm multiplies the smallest p by
    the family size m; with n_boot >= 2 m / alpha the corrected p can still fall below alpha / 2,
    so a large family is never "not significant" merely for lack of resamples.
    """
    return max(N_BOOT, math.ceil(2 * n_comparisons / SIGNIFICANCE_P))


def holm_pvalues(pairs: Sequence[tuple[Pooled, Pooled, str]]) -> tuple[list[float | None], int, int]:
    """Holm-adjusted paired p-values of (cell a, cell b, metric) comparisons made as one family.

    Returns (adjusted p per pair, None where untestable; the family size m, i.e. the number of
    testable pairs; the resamples used).
    """
    n_boot = resamples_for(len(pairs))
    raw = [paired_pvalue(a, b, metric, n_boot) for a, b, metric in pairs]
    return stats.holm_adjust(raw), sum(p is not None for p in raw), n_boot
