from pathlib import Path

from harness.config.spec import make_spec
from harness.run.job_file import Job


def test_a_job_file_reads_back_as_written(tmp_path):
    job = Job(spec=make_spec({"distributed": {"zero_stage": 2}}), run_dir=tmp_path, model_dir=tmp_path / "m",
              dataset_dir=tmp_path / "d", train_jsonl=tmp_path / "train.jsonl", n_train=3,
              eval_jsonl=tmp_path / "test.jsonl", deepspeed_config=tmp_path / "deepspeed.json")
    assert Job.read(job.write()) == job
    plain = Job(**{**job.__dict__, "deepspeed_config": None})
    assert Job.read(plain.write()).deepspeed_config is None
    assert isinstance(Job.read(tmp_path / "job.json").run_dir, Path)
