"""Our own GPU measurements as rows of the validation set (`make memory-gpu`).

A memory-suite run on a GPU records each rank's allocator peaks; a ZeRO lever's record becomes one
row of harness/planner/published/lora_memory.yaml in the published rows' format, marked as measured
by lorabench with the command and the date, so `plan --validate-published` checks the DeepSpeed
terms against it next to the published figures.

What the row compares, and why:
- the figure is torch.cuda.max_memory_reserved on the largest rank: what the caching allocator held,
  fragmentation included, the closest a run gets to nvidia-smi from inside. It leaves out the CUDA
  context, so the row sets `cuda_context_gib: 0` and the estimate leaves it out too;
- the length is the longest padded batch the run saw (its steps' max_seq_len) with the run's average
  image tokens per sample, the batch that set the peak, so the row is a `point`;
- the shape is written into the row (the planner's shape of the checkpoint that ran), so the row
  stands without the checkpoint;
- `half: check`: these rows are measured after the planner's constants were chosen, so they are
  held-out data and count in the band.
"""

from __future__ import annotations

import re
from pathlib import Path

from harness.errors import UserError
from harness.planner.hf_shape import shape_from_hf_config
from harness.planner.published import DATA
from harness.planner.shape import shape_to_dict
from harness.planner.validate import plan_input_for
from harness.results.store import load_records, record_path

ZERO_LEVERS = ("zero2", "zero3", "zero3+offload")  # the DeepSpeed paths no published row pins down alone
FIGURE_KEY = "gpu_max_reserved_mib"
MEASURES = ("torch.cuda.max_memory_reserved per GPU (largest rank) over the whole run; no CUDA context, "
            "so the estimate leaves its context term out")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def measured_rows(results: str | Path, command: str, date: str, levers=ZERO_LEVERS) -> list[dict]:
    """One row per finished GPU run of `levers` in `results` (a memory-gpu results directory)."""
    rows = []
    for record in load_records(results):
        lever = record["cell"].get("lever")
        if record["status"] != "ok" or record["spec"].get("device") != "cuda" or lever not in levers:
            continue
        figures = [r[FIGURE_KEY] for r in record["memory"]["per_rank"] if r.get(FIGURE_KEY) is not None]
        if not figures or not record.get("train", {}).get("steps"):
            continue
        model_dir = record["env"]["model"]["path"]
        shape = shape_from_hf_config(model_dir)
        p = plan_input_for(record, shape)
        env = record["env"]
        gpu = (env.get("gpu") or ["unknown GPU"])[0]
        framework = record["spec"]["framework"]
        rows.append({
            "id": f"lorabench-{framework}-{_slug(lever)}-{_slug(shape.name)}-{_slug(gpu)}",
            "half": "check",
            "kind": "point",
            "source": {"repo": "lorabench", "path": str(record_path(results, record["run_id"])),
                       "commit": env.get("git_commit") or "unknown"},
            "where": f"record {record['run_id']}: memory.per_rank[].{FIGURE_KEY}, largest rank",
            "measured_by": "lorabench",
            "command": command,
            "date": date,
            "device": f"{gpu}, torch {env.get('packages', {}).get('torch', '?')}, "
                      f"deepspeed {env.get('packages', {}).get('deepspeed', '?')}"
                      + (" (dirty tree)" if env.get("git_dirty") else ""),
            "model": f"{env['model'].get('name')} ({model_dir})",
            "shape": shape_to_dict(shape),
            "figure": round(max(figures), 1),
            "unit": "MiB",
            "measures": MEASURES,
            "setup": {"gpus": p.world_size, "zero": p.zero_stage, "offload_optimizer": p.offload_optimizer,
                      "offload_params": p.offload_params, "precision": p.precision, "lora_r": p.lora_r,
                      "lora_dropout": p.lora_dropout, "targets": p.targets, "freeze_vision": p.freeze_vision,
                      "train_embeddings": p.train_embeddings, "batch": p.micro_batch_size,
                      "grad_ckpt": p.grad_checkpointing, "max_length": p.lm_seq_len,
                      "image_tokens": p.image_tokens_per_sample, "cuda_context_gib": 0.0},
            "note": f"{framework}, lever {lever}, memory-gpu suite ({framework} on one process per GPU)",
        })
    return rows


def _blocks(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(the text before the first row, [(row id, the row's text)]): rows start at a line `- id: X`."""
    parts = re.split(r"(?m)^(?=- id: )", text)
    head, blocks = parts[0], []
    for part in parts[1:]:
        blocks.append((part.split("\n", 1)[0][len("- id: "):].strip(), part))
    return head, blocks


def write_rows(rows: list[dict], path: Path = DATA) -> tuple[list[str], list[str]]:
    """Append `rows` to the validation set's YAML, replacing a row of the same id (a re-measurement);
    the other rows and the comments stay as they are. -> (ids added, ids replaced)."""
    import yaml

    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"{path}: cannot read the validation set ({exc})") from None
    new = {r["id"] for r in rows}
    head, blocks = _blocks(text)
    kept = [block for rid, block in blocks if rid not in new]
    replaced = [rid for rid, _ in blocks if rid in new]
    body = "".join([head, *kept])
    if body and not body.endswith("\n"):
        body += "\n"
    body += yaml.safe_dump(rows, sort_keys=False, width=120, default_flow_style=None, allow_unicode=True)
    path.write_text(body)
    return [r["id"] for r in rows if r["id"] not in replaced], replaced
