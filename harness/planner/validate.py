"""Check the memory planner against measured runs: for each record of a results directory
(the memory suite), rebuild the set-up as a PlanInput and compare the estimate with the peak
memory the run measured.

On a GPU (`device: cuda`) the estimate per GPU, without the CUDA context and fragmentation terms,
is compared with `torch.cuda.max_memory_allocated` (largest rank), and the host side (offloaded
states, per process) is shown next to the measured anonymous memory above imports.

On the CPU there is one memory: what a GPU would hold plus what would be offloaded to the host all
lives in the process's anonymous memory (heap and tensors; records from before it was metered fall
back to RSS). That memory also holds runtime state the planner does not model (the data, processor,
Trainer, allocator caches; a roughly constant few hundred MiB per framework), so two figures are
reported: the raw estimate, and a calibrated one where that runtime term is measured once on each
framework's `baseline` run and every other lever is predicted. The estimate compared is per
process: GPU bytes + host bytes divided by the processes, without the CUDA context and
fragmentation terms, against the measured peak above the post-import baseline (largest rank).
The ZeRO buffers are those the run's DeepSpeed config had: the planner and the runs read them from
the same function (harness.planner.zero_templates.zero_optimization). The sequence length is the longest
padded batch the run saw (its steps' `max_seq_len`), the image tokens per sample the run's own
average: the estimate is for the batch that set the peak.
"""

from __future__ import annotations

from pathlib import Path

from harness.planner.memory import PlanInput, estimate, plan_input_from_spec
from harness.planner.hf_shape import shape_from_hf_config
from harness.results.store import load_records
from harness.run_spec import Spec

MIB = 1024 * 1024


def plan_input_for(record: dict, shape) -> PlanInput:
    """The record's spec as planner input, for the batch that set the peak: the longest padded
    sequence the run saw and its average image tokens per sample; no CUDA context, no
    fragmentation, GPU memory unbounded (the measured peak is compared, not a verdict)."""
    steps = record["train"]["steps"]
    seq = max(s.get("max_seq_len", 0) for s in steps)
    samples = sum(s["samples"] for s in steps)
    image_per_sample = round(sum(s.get("image_tokens", 0) for s in steps) / max(1, samples))
    return plan_input_from_spec(Spec.from_dict(record["spec"]), shape, max_length=max(1, seq - image_per_sample),
                                image_tokens=image_per_sample, gpu_mem_gib=1e6, cuda_context_gib=0.0,
                                fragmentation_factor=1.0)


def validate_against_runs(results: str | Path) -> list[dict]:
    rows = []
    for record in load_records(results):
        if record["status"] != "ok" or not record.get("train", {}).get("steps"):
            continue
        model_dir = record["env"]["model"]["path"]
        shape = shape_from_hf_config(model_dir)
        try:
            inputs = plan_input_for(record, shape)
        except ValueError as exc:  # a set-up the planner does not model
            rows.append({"run_id": record["run_id"], "lever": record["cell"].get("lever"), "error": str(exc)})
            continue
        plan = estimate(inputs)
        # host bytes without the planner's import baseline: the measured figure is above that baseline
        host = (plan.cpu_bytes.get("total", 0) - plan.cpu_bytes.get("process_baseline", 0)) / inputs.world_size
        per_rank = record["memory"]["per_rank"]
        cpu_figure = _cpu_figure(per_rank)
        row = {"run_id": record["run_id"], "lever": record["cell"].get("lever") or record["cell"].get("framework"),
               "framework": record["spec"]["framework"],
               "gpu_breakdown_mib": {k: v / MIB for k, v in plan.gpu_bytes.items()}}
        if record["spec"].get("device") == "cuda":
            measured = _max(per_rank, "gpu_max_allocated_mib")
            estimate_mib = plan.gpu_bytes["total"] / MIB
            row.update(figure="gpu_max_allocated_mib", host_estimate_mib=host / MIB,
                       host_measured_mib=_max(per_rank, cpu_figure), host_figure=cpu_figure)
        else:
            measured = _max(per_rank, cpu_figure)
            estimate_mib = (plan.gpu_bytes["total"] + host) / MIB
            row["figure"] = cpu_figure
        row.update(estimate_mib=estimate_mib, measured_mib=measured,
                   ratio=estimate_mib / measured if measured else None)
        rows.append(row)
    _add_deltas(rows)
    return rows


def _cpu_figure(per_rank: list[dict]) -> str:
    """Anonymous memory above imports where the records have it, else RSS above imports."""
    if all(r.get("peak_anon_above_baseline_mib") is not None for r in per_rank):
        return "peak_anon_above_baseline_mib"
    return "peak_rss_above_baseline_mib"


def _max(per_rank: list[dict], key: str) -> float | None:
    values = [r[key] for r in per_rank if r.get(key) is not None]
    return max(values) if values else None


def _add_deltas(rows: list[dict]) -> None:
    """Each lever's change against its framework's baseline, estimated and measured.

    On the CPU the measured RSS also holds runtime state the planner does not model (data,
    processor, Trainer, allocator caches: a roughly constant few hundred MiB), so the change a
    lever makes is the fairer check of the planner's formulas.
    """
    base = {r["framework"]: r for r in rows if r.get("lever") == "baseline" and "error" not in r}
    for r in rows:
        b = base.get(r.get("framework"))
        if b is None or "error" in r or r is b or r["measured_mib"] is None or b["measured_mib"] is None:
            continue
        r["estimate_delta_mib"] = r["estimate_mib"] - b["estimate_mib"]
        r["measured_delta_mib"] = r["measured_mib"] - b["measured_mib"]
        # Calibrated: the runtime term the planner leaves out is measured once, on the framework's
        # baseline run, and every other lever is predicted from it.
        runtime = b["measured_mib"] - b["estimate_mib"]
        r["calibrated_estimate_mib"] = r["estimate_mib"] + runtime
        r["calibrated_ratio"] = r["calibrated_estimate_mib"] / r["measured_mib"] if r["measured_mib"] else None


FIGURE_NAMES = {"gpu_max_allocated_mib": "GPU max allocated (per GPU, largest rank)",
                "peak_anon_above_baseline_mib": "peak anonymous memory above imports (largest rank)",
                "peak_rss_above_baseline_mib": "peak RSS above imports (largest rank)"}


def format_rows(rows: list[dict]) -> str:
    figures = sorted({r["figure"] for r in rows if "figure" in r})
    out = [f"measured: {', '.join(FIGURE_NAMES.get(f, f) for f in figures)}"] if figures else []
    out.append(f"{'lever':<34}{'framework':<10}{'estimate MiB':>14}{'measured MiB':>14}{'est/meas':>10}"
               f"{'est. Δ vs baseline':>20}{'meas. Δ':>10}{'calibrated est/meas':>21}")
    for r in rows:
        if "error" in r:
            out.append(f"{str(r['lever']):<34}{'':<10}  not modelled: {r['error']}")
            continue
        if r["measured_mib"] is None:
            out.append(f"{str(r['lever']):<34}{r['framework']:<10}{r['estimate_mib']:>14.1f}  not measured")
            continue
        delta = (f"{r['estimate_delta_mib']:>+20.1f}{r['measured_delta_mib']:>+10.1f}{r['calibrated_ratio']:>21.2f}"
                 if "estimate_delta_mib" in r else "")
        host = (f"   host: est. {r['host_estimate_mib']:.1f}, meas. {r['host_measured_mib']:.1f} MiB"
                if r.get("host_measured_mib") is not None else "")
        out.append(f"{str(r['lever']):<34}{r['framework']:<10}{r['estimate_mib']:>14.1f}{r['measured_mib']:>14.1f}"
                   f"{r['ratio']:>10.2f}{delta}{host}")
    ok = [r for r in rows if r.get("ratio")]
    if ok:
        within = sum(1 for r in ok if abs(r["ratio"] - 1) <= 0.15)
        out.append(f"{within}/{len(ok)} runs within 15% of the measured peak (raw estimate)")
    cal = [r for r in rows if r.get("calibrated_ratio")]
    if cal:
        within = sum(1 for r in cal if abs(r["calibrated_ratio"] - 1) <= 0.15)
        worst = max(cal, key=lambda r: abs(r["calibrated_ratio"] - 1))
        out.append(f"{within}/{len(cal)} levers within 15% once the runtime term is measured on each framework's "
                   f"baseline run (worst {worst['calibrated_ratio']:.2f}, {worst['lever']})")
    return "\n".join(out)
