"""The typed run spec: one frozen dataclass per section, each key's default and why in one place.

`harness.config.spec` merges YAML, suite cells and `--set` into the JSON form (`to_dict`), checks it,
and hands out a `Spec`; every other package reads attributes (`spec.train.steps`), so a renamed key is
an error for the editor and mypy, not a KeyError in a worker minutes into a suite. The JSON form is
what the spec hash, records and job files hold: `to_dict` gives it back key for key (lists as lists),
so hashes, run ids and baselines made before the spec had types stay valid.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar


@dataclass(frozen=True)
class LoraSpec:
    # a preset (lm-linear: the language model's linears; lm+vision-linear: also the vision blocks;
    # every-linear: PEFT's all-linear) or module names
    targets: str | tuple[str, ...] = "lm-linear"
    r: int = 8
    alpha: float = 16
    dropout: float = 0.0  # 0 keeps runs deterministic and comparable; swift's native default is 0.05
    init: str = "kaiming"  # PEFT's default (A kaiming-uniform, B zero)
    rslora: bool = False
    # modules trained in full besides LoRA (names or dotted suffixes, e.g. embed_tokens, model.merger);
    # the vision tower's are added by train.freeze_vision: false
    modules_to_save: tuple[str, ...] = ()


@dataclass(frozen=True)
class OptimSpec:
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    decay_norm_and_bias: bool = False  # Trainer never decays norms and biases; swift neither


@dataclass(frozen=True)
class ScheduleSpec:
    type: str = "constant"
    warmup_steps: int = 0


@dataclass(frozen=True)
class TrainSpec:
    steps: int = 20
    batch_size: int = 2
    grad_accum: int = 2
    loss_norm: str = "tokens"  # per token over the accumulated batch (transformers >= 4.46, swift)
    max_length: int = 1024
    precision: str = "fp32"
    grad_checkpointing: bool = False
    freeze_vision: bool = True  # vision tower gets no full-weight training (LoRA on it only via targets)
    seed: int = 0
    data_seed: int = 0
    data_order: str = "sampler"  # sampler: Trainer's shuffled sampler only; swift_shuffle: swift's pre-shuffle too
    system_prompt: str = "default"
    label_mask: str = "answer"  # answer: loss on the answer only; all: on every non-pad, non-image token
    # template: the family's unsupervised answer prefix (MiniCPM-V's empty thinking block, as swift writes
    # it); none: the answer right after the assistant header (MiniCPM-V's own fine-tuning scripts)
    answer_prefix: str = "template"
    max_train_samples: int | None = None  # None = the whole train split


@dataclass(frozen=True)
class DistributedSpec:
    world_size: int = 1
    zero_stage: int | None = None
    offload_optimizer: bool = False
    offload_params: bool = False


@dataclass(frozen=True)
class EvalSpec:
    split: str = "test"
    max_samples: int = 200
    max_new_tokens: int = 320
    batch_size: int = 16
    enabled: bool = True


@dataclass(frozen=True)
class Spec:
    framework: str = "peft"
    # aligned: every knob below applies identically; native: each framework's library defaults; or a named
    # profile (harness.config.profiles: swift-default, peft-default, minicpmv-official) that sets its factors
    alignment: str = "aligned"
    # an embedded model ("tiny": Qwen2-VL, "tiny-minicpmv": MiniCPM-V 4.6) or a checkpoint directory
    model: str = "tiny"
    dataset: str = "synthdocs"  # a card name, a card path, or a directory of <split>.<task>.jsonl files
    task: str = "extract"  # transcribe | extract
    lora: LoraSpec = field(default_factory=LoraSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    distributed: DistributedSpec = field(default_factory=DistributedSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    device: str = "cpu"  # cpu | cuda
    timeout_s: float = 3600
    # the package set the train worker runs in: None = the main environment; a name under harness/envs/, or
    # pins on top of constraints.txt ("peft==0.21.2,transformers==5.19.1"); see harness.config.envs
    env: str | None = None

    @property
    def native(self) -> bool:
        """Each framework on its own library defaults (not aligned, not a named profile)."""
        return self.alignment == "native"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (records, job files, the hash): sections as dicts, tuples as lists; OPTIONAL keys
        only when set."""
        out = _plain(self)
        for key, default in OPTIONAL.items():
            if out[key] == default:
                del out[key]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Spec:
        """A spec from its JSON form: a record's or job file's `spec`, or a merged mapping.

        Keys are not checked here (harness.config.spec.make_spec does, with did-you-mean errors);
        a key this version does not know is a TypeError naming it."""
        values = {}
        for key, value in data.items():
            kind = SECTIONS.get(key)
            values[key] = _build(kind, value) if kind else _frozen(value)
        return cls(**values)


# Top-level keys added after records existed, left out of the JSON form while at their default: a record's
# spec then reads back key for key, and its hash (harness.config.spec.spec_hash) stays what it was.
OPTIONAL: dict[str, Any] = {"env": None}

SECTIONS: dict[str, type] = {"lora": LoraSpec, "optim": OptimSpec, "schedule": ScheduleSpec, "train": TrainSpec,
                             "distributed": DistributedSpec, "eval": EvalSpec}

T = TypeVar("T")


def _build(kind: type[T], values: dict[str, Any]) -> T:
    return kind(**{k: _frozen(v) for k, v in values.items()})


def _frozen(value: Any) -> Any:
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


# Every key a spec holds, with its default, in JSON form: what merging and validation start from
# (OPTIONAL keys are accepted besides these).
DEFAULTS: dict[str, Any] = Spec().to_dict()
