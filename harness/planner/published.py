"""The planner against published measurements (`lorabench plan --validate-published`).

harness/planner/published/lora_memory.yaml lists measured GPU memory of LoRA fine-tuning from public
sources, one row per configuration, each with the file and commit it was read from. Each row is
rebuilt as a PlanInput and estimated. A `point` row is compared with the estimate; a `bound` row
(sample lengths unknown) must lie between the estimate at its shortest plausible sample and at its
max_length, and its error is the distance to the nearer end when it does not.

Fitted on half the rows, judged on the other half: the one constant chosen from data, the allocator's
fragmentation factor (reserved / allocated, which nvidia-smi-style figures include), is picked from a
grid on the `fit` rows; the errors reported and the band `plan` prints come from the `check` rows only.
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

from harness.errors import UserError
from harness.planner.memory import GIB, FRAGMENTATION_FACTOR, Plan, PlanInput, estimate
from harness.planner.shape import Tower, builtin_shape, shape_from_dict

DATA = Path(__file__).with_name("published") / "lora_memory.yaml"
UNITS = {"GiB": GIB, "GB": 10**9, "MiB": 2**20}
# set-up keys a row may add to the ones every row has (lorabench's own measured rows set them all)
OPTIONAL_SETUP = {"lora_dropout": "lora_dropout", "cuda_context_gib": "cuda_context_gib",
                  "flash_attention": "flash_attention"}
FRAGMENTATION_GRID = tuple(round(1.0 + 0.01 * i, 2) for i in range(31))  # 1.00 .. 1.30
GOAL = 0.15  # held-out error the planner aims to stay within on every row


@dataclasses.dataclass(frozen=True)
class Band:
    """Measured / estimated over the held-out rows: the smallest (`low`) and largest (`high`) ratio."""

    low: float = 1.0
    high: float = 1.0

    def range_gib(self, plan: Plan) -> tuple[float, float]:
        return plan.gpu_total_gib * self.low, plan.gpu_total_gib * self.high

    def text(self, plan: Plan) -> str:
        """'13.20 GiB (11.90–15.00)'."""
        low, high = self.range_gib(plan)
        return f"{plan.gpu_total_gib:.2f} GiB ({low:.2f}–{high:.2f})"


@dataclasses.dataclass(frozen=True)
class Row:
    """One published configuration, estimated: `low` and `high` GiB (equal for a point)."""

    id: str
    half: str
    kind: str
    zero_or_offload: bool
    figure_gib: float
    low_gib: float
    high_gib: float
    source: str

    @property
    def error(self) -> float:
        """Relative error: |estimate / figure - 1| for a point; for a bound 0 inside [low, high], else
        the distance to the nearer end relative to the figure."""
        if self.low_gib <= self.figure_gib <= self.high_gib:
            return 0.0
        end = self.high_gib if self.figure_gib > self.high_gib else self.low_gib
        return abs(end / self.figure_gib - 1)

    @property
    def ratio(self) -> float:
        """Estimate (at max_length) / published figure."""
        return self.high_gib / self.figure_gib


@dataclasses.dataclass(frozen=True)
class Validation:
    rows: tuple[Row, ...]
    fragmentation_factor: float

    def errors(self, half: str = "check", zero_only: bool = False) -> list[float]:
        return [r.error for r in self.rows if r.half == half and (r.zero_or_offload or not zero_only)]

    @property
    def band(self) -> Band:
        """measured / estimate over the held-out rows: a point's ratio; a bound's only where it lies
        outside its interval (inside, the data set's lengths, not the planner, set the figure)."""
        low, high = 1.0, 1.0
        for r in self.rows:
            if r.half != "check":
                continue
            if r.figure_gib > r.high_gib or r.kind == "point":
                high = max(high, r.figure_gib / r.high_gib)
            if r.figure_gib < r.low_gib or r.kind == "point":
                low = min(low, r.figure_gib / r.low_gib)
        return Band(round(low, 3), round(high, 3))


def load_rows(path: Path = DATA) -> list[dict]:
    import yaml

    try:
        rows = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: cannot read the published measurements ({exc})") from None
    for row in rows:
        missing = {"id", "half", "kind", "source", "where", "model", "shape", "figure", "unit", "setup"} - set(row)
        if missing or row["half"] not in ("fit", "check") or row["kind"] not in ("point", "bound"):
            raise UserError(f"{path}: row {row.get('id')}: needs {sorted(missing)}, half fit|check, kind point|bound")
    return rows


def _shape(row: dict):
    # a built-in name for the published rows; our measured rows carry the checkpoint's shape itself
    shape = shape_from_dict(row["shape"], where=f"row {row['id']}: shape") if isinstance(row["shape"], dict) \
        else builtin_shape(row["shape"])
    if row.get("text_only"):
        shape = dataclasses.replace(shape, name=f"{shape.name} (language model)", vision=Tower(), projector=Tower(),
                                    image_tokens=dataclasses.replace(shape.image_tokens, default_per_sample=0))
    return shape


def plan_input(row: dict, lm_tokens: int, fragmentation_factor: float) -> PlanInput:
    """The row's set-up with `lm_tokens` LM tokens per sample (text + image)."""
    s = row["setup"]
    image = min(s.get("image_tokens", 0), lm_tokens - 1)
    return PlanInput(shape=_shape(row), lora_r=s["lora_r"], targets=s["targets"], freeze_vision=s["freeze_vision"],
                     train_embeddings=s.get("train_embeddings", False), micro_batch_size=s["batch"],
                     max_length=lm_tokens - image, image_tokens=image, grad_checkpointing=s.get("grad_ckpt", True),
                     precision=s["precision"], zero_stage=s["zero"],
                     offload_optimizer=s.get("offload_optimizer", False),
                     offload_params=s.get("offload_params", False), world_size=s["gpus"],
                     fragmentation_factor=fragmentation_factor,
                     **{field: s[key] for key, field in OPTIONAL_SETUP.items() if key in s})


def estimate_row(row: dict, fragmentation_factor: float) -> Row:
    s = row["setup"]
    high = estimate(plan_input(row, s["max_length"], fragmentation_factor)).gpu_total_gib
    low = high if row["kind"] == "point" else estimate(
        plan_input(row, s["length_low"], fragmentation_factor)).gpu_total_gib
    src = row["source"]
    where = src.get("commit", "")[:10] or src.get("url", "")
    if row.get("measured_by"):  # our own rows: say so where the table names the source
        where += f", measured by {row['measured_by']} {row.get('date', '')}".rstrip()
    return Row(row["id"], row["half"], row["kind"],
               s["zero"] == 3 or s.get("offload_optimizer", False) or s.get("offload_params", False),
               row["figure"] * UNITS[row["unit"]] / GIB, low, high, f"{src['repo']}/{src['path']}@{where}")


def fit_fragmentation(rows: list[dict]) -> float:
    """The grid value with the smallest median error over the `fit` rows (ties: the worst error, then
    the smaller factor): the median, so that rows the model misses for reasons a constant cannot fix
    do not drag the constant."""
    fit = [r for r in rows if r["half"] == "fit"]

    def score(f):
        errors = [estimate_row(r, f).error for r in fit]
        return statistics.median(errors), max(errors), f
    return min(FRAGMENTATION_GRID, key=score)


def validate_published(path: Path = DATA, fragmentation_factor: float | None = None) -> Validation:
    """Every row estimated with the planner's fragmentation factor (FRAGMENTATION_FACTOR, which
    fit_fragmentation chose on the fit rows; a test keeps the two equal)."""
    rows = load_rows(path)
    f = FRAGMENTATION_FACTOR if fragmentation_factor is None else fragmentation_factor
    return Validation(tuple(estimate_row(r, f) for r in rows), f)


def _stats(errors: list[float]) -> str:
    if not errors:
        return "no rows"
    return f"median {100 * statistics.median(errors):.1f} %, worst {100 * max(errors):.1f} % ({len(errors)} rows)"


def format_validation(v: Validation) -> str:
    lines = [f"published measurements ({DATA.name}); fragmentation factor {v.fragmentation_factor:.2f}, fitted on "
             "the 'fit' rows; errors are reported on the held-out 'check' rows",
             f"{'row':<38}{'half':<6}{'kind':<6}{'ZeRO-3/off':<11}{'estimate GiB':>18}{'published':>11}"
             f"{'est/pub':>9}{'error':>8}"]
    for r in v.rows:
        est = f"{r.high_gib:.1f}" if r.kind == "point" else f"{r.low_gib:.1f}–{r.high_gib:.1f}"
        lines.append(f"{r.id:<38}{r.half:<6}{r.kind:<6}{'yes' if r.zero_or_offload else '':<11}{est:>18}"
                     f"{r.figure_gib:>11.1f}{r.ratio:>9.2f}{100 * r.error:>7.1f}%")
    band = v.band
    lines += ["",
              f"held-out error, all rows:           {_stats(v.errors('check'))}",
              f"held-out error, ZeRO-3/offload rows: {_stats(v.errors('check', zero_only=True))}",
              f"fit-half error (for reference):     {_stats(v.errors('fit'))}",
              f"band (published / estimate, held-out): {band.low:.3f}–{band.high:.3f}",
              f"rows outside {100 * GOAL:.0f} %: " + (", ".join(
                  r.id for r in v.rows if r.half == "check" and r.error > GOAL) or "none")]
    ours = [r for r in v.rows if ", measured by " in r.source]
    if ours:
        lines += ["rows of our own (not published):"] + [f"  {r.id}: {r.source}" for r in ours]
    return "\n".join(lines)
