"""The negative control: is a deliberately harmful cell detected as worse than its sound twin?

A control cell has a `control` key in its `record["cell"]` naming the harmful setting (e.g.
"lr / 20"); its reference is the cell with the same keys and no control. The two are compared on
field F1 (CER for tasks without fields) with the same paired bootstrap as the significance marks,
Holm-corrected over all control comparisons of the report. A control that is not detected means the
benchmark, at its present size, cannot tell cells apart by that much; the report says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from harness.analysis.report.model import fmt_quality
from harness.analysis.cell_names import group_label
from harness.analysis.report.significance import SIGNIFICANCE_P, holm_pvalues, pooled_sample_columns
from harness.results.metric_table import METRIC_DIRECTION, METRICS
from harness.results.store import metric_values

CONTROL_KEY = "control"


@dataclasses.dataclass
class ControlFinding:
    control: str  # cell title of the control
    reference: str | None  # cell title of its reference, None when there is none
    verdict: str  # "detected" | "not detected" | "untestable"
    metric: str = "field_f1"
    control_value: float | None = None  # mean over ok seeds, as in the quality table
    reference_value: float | None = None
    p_holm: float | None = None
    family: int = 0  # control comparisons corrected together
    n_boot: int = 0
    n_samples: int = 0  # test samples paired by id
    n_seeds: tuple[int, int] = (0, 0)  # ok seeds of (control, reference)
    n_steps: int | None = None
    reason: str = ""  # why untestable, or what else is odd

    @property
    def size(self) -> str:
        steps = "unknown steps" if self.n_steps is None else f"{self.n_steps} steps"
        return (f"{self.n_samples} test samples, {self.n_seeds[0]} seed{'s' if self.n_seeds[0] != 1 else ''} "
                f"of the control and {self.n_seeds[1]} of the reference, {steps}")

    def headline(self) -> str:
        return {"detected": "Detected", "not detected": "Not detected",
                "untestable": "Not tested"}[self.verdict]

    def sentence(self) -> str:
        """The finding in plain words, after the headline."""
        if self.verdict == "untestable":
            return f"control {self.control}: {self.reason}"
        name = METRICS[self.metric].label
        delta = self.control_value - self.reference_value
        common = (f"control {self.control} against {self.reference}: {name} "
                  f"{fmt_quality(self.control_value)} vs {fmt_quality(self.reference_value)} "
                  f"(Δ {delta:+.4f}), p = {self.p_holm:.4f} after Holm's correction over "
                  f"{self.family} control test{'s' if self.family != 1 else ''} (paired "
                  f"bootstrap, {self.n_boot} resamples over {self.n_samples} test samples).")
        if self.verdict == "detected":
            return (common + f" The control is significantly worse, so at this size ({self.size}) "
                    "the benchmark tells a harmful setting from a sound one.")
        return (common + f" The control is not significantly worse than its reference{self.reason}. "
                f"At this size ({self.size}) the benchmark lacks the power to tell cells apart: "
                "a difference between other cells that is not marked significant is no evidence "
                "either way; more test samples, seeds or steps are needed.")


def _steps(group: Sequence[Mapping]) -> int | None:
    """Optimizer steps of the runs: the last logged step, else the spec's step count."""
    found = []
    for record in group:
        if record.get("status") != "ok":
            continue
        logged = [s.get("step") for s in (record.get("train") or {}).get("steps") or []
                  if isinstance(s.get("step"), int)]
        spec_train = (record.get("spec") or {}).get("train") or {}
        planned = spec_train.get("steps", spec_train.get("max_steps"))
        found.append(max(logged) if logged else planned if isinstance(planned, int) else None)
    found = [n for n in found if n is not None]
    return max(found) if found else None


def _seeds(group: Sequence[Mapping]) -> int:
    return sum(r.get("status") == "ok" for r in group)


def control_findings(groups: dict[tuple, list[dict]], keys: Sequence[str],
                     shown: Sequence[str]) -> list[ControlFinding]:
    """One finding per control cell; empty when the suite has no control."""
    if CONTROL_KEY not in keys:
        return []
    at = keys.index(CONTROL_KEY)
    findings: list[ControlFinding] = []
    testable: list[tuple[ControlFinding, dict, dict]] = []
    for key, group in groups.items():
        if key[at] is None:
            continue
        ref_key = key[:at] + (None,) + key[at + 1:]
        finding = ControlFinding(group_label(key, keys, group), None, "untestable")
        findings.append(finding)
        ref_group = groups.get(ref_key, [])
        if not _seeds(ref_group):
            finding.reason = "no ok run of an ordinary cell with the same settings to compare with."
            continue
        finding.reference = group_label(ref_key, keys, ref_group)
        pooled, ref_pooled = pooled_sample_columns(group), pooled_sample_columns(ref_group)
        if pooled is None or ref_pooled is None:
            finding.reason = f"no per-sample files for it or for {finding.reference}, so no paired test."
            continue
        has_fields = all("field_tp" in cols for cols in (*pooled.values(), *ref_pooled.values()))
        # Field F1 and CER are both tested (Holm-corrected together): a harmful setting may show in
        # reading before the extraction scores leave zero, and the one that shows it is reported.
        candidates = []
        for metric in (("field_f1", "cer") if has_fields else ("cer",)):
            values, ref_values = metric_values(group, metric), metric_values(ref_group, metric)
            if values and ref_values:
                candidates.append(dataclasses.replace(
                    finding, metric=metric, control_value=sum(values) / len(values),
                    reference_value=sum(ref_values) / len(ref_values),
                    n_samples=len(set(pooled) & set(ref_pooled)), n_seeds=(_seeds(group), _seeds(ref_group)),
                    n_steps=_steps(group + ref_group)))
        if not candidates:
            finding.reason = "no field_f1 or cer in its records or its reference's."
            continue
        testable.append((finding, candidates, pooled, ref_pooled))
    tests = [(p, r, c.metric) for _, candidates, p, r in testable for c in candidates]
    adjusted, family, n_boot = holm_pvalues(tests)
    adjusted = iter(adjusted)
    for finding, candidates, _, _ in testable:
        results = []
        for candidate in candidates:
            p = next(adjusted)
            if p is None:
                continue
            worse = (candidate.control_value < candidate.reference_value
                     if METRIC_DIRECTION[candidate.metric] == "higher"
                     else candidate.control_value > candidate.reference_value)
            results.append((not (worse and p < SIGNIFICANCE_P), p, worse, candidate))
        if not results:
            finding.reason = "too few paired test samples for a paired test."
            continue
        _, p, worse, best = min(results, key=lambda r: (r[0], r[1]))  # a detection first, then the smallest p
        for name in ("metric", "control_value", "reference_value", "n_samples", "n_seeds", "n_steps"):
            setattr(finding, name, getattr(best, name))
        finding.p_holm, finding.family, finding.n_boot = p, family, n_boot
        finding.verdict = "detected" if worse and p < SIGNIFICANCE_P else "not detected"
        if not worse and p < SIGNIFICANCE_P:
            finding.reason = (" (it is significantly better, which a harmful setting should not be: "
                              "check the control)")
    return findings
