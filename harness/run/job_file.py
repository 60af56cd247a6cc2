"""`job.json`: what the runner prepared for one run and a worker process reads back, typed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.run_spec import Spec


@dataclass(frozen=True)
class Job:
    spec: Spec
    run_dir: Path  # the run's work directory: job.json, train.jsonl, the adapter, every worker's output
    model_dir: Path  # the resolved checkpoint (an embedded model's cached build, or the user's directory)
    dataset_dir: Path
    train_jsonl: Path  # the rows every framework trains on, with absolute image paths
    n_train: int
    eval_jsonl: Path  # the evaluation split's samples
    deepspeed_config: Path | None  # written by the runner for a ZeRO run; None without DeepSpeed

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "run_dir": str(self.run_dir), "model_dir": str(self.model_dir),
                "dataset_dir": str(self.dataset_dir), "train_jsonl": str(self.train_jsonl),
                "n_train": self.n_train, "eval_jsonl": str(self.eval_jsonl),
                "deepspeed_config": str(self.deepspeed_config) if self.deepspeed_config else None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        config = data.get("deepspeed_config")
        return cls(spec=Spec.from_dict(data["spec"]), run_dir=Path(data["run_dir"]),
                   model_dir=Path(data["model_dir"]), dataset_dir=Path(data["dataset_dir"]),
                   train_jsonl=Path(data["train_jsonl"]), n_train=data["n_train"],
                   eval_jsonl=Path(data["eval_jsonl"]), deepspeed_config=Path(config) if config else None)

    def write(self) -> Path:
        path = self.run_dir / "job.json"
        path.write_text(json.dumps(self.to_json(), indent=1))
        return path

    @classmethod
    def read(cls, path: str | Path) -> Job:
        return cls.from_json(json.loads(Path(path).read_text()))
