"""What `lorabench run` prints while it runs: heartbeat lines without a TTY, a bar with an ETA on one,
and a failed run's last error line and worker log."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import pytest

from harness.run.progress import HEARTBEAT_S, Progress, duration


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _cell(run_id="fast-0123456789"):
    return SimpleNamespace(key={"framework": "peft", "seed": 0}, run_id=run_id)


def _steps(path, first, last, seconds=2.0, loss=1.5):
    with open(path, "a") as fh:
        for step in range(first, last + 1):
            fh.write(json.dumps({"event": "step", "step": step, "loss": loss, "lr": 1e-4,
                                 "samples": 4, "seconds": seconds}) + "\n")


def _plain(tmp_path, steps=50):
    out, clock = io.StringIO(), Clock()
    progress = Progress(2, tmp_path, tty=False, out=out, clock=clock)
    progress.start(_cell(), steps)
    return progress, out, clock


def test_heartbeat_every_ten_steps_with_step_loss_elapsed_and_eta(tmp_path):
    progress, out, clock = _plain(tmp_path)
    events = tmp_path / "progress.jsonl"
    _steps(events, 1, 9)
    clock.now += 20
    progress.poll(events)
    assert out.getvalue().splitlines() == ["[1/2] fast-0123456789 framework=peft seed=0"]  # 9 steps, 20 s: quiet
    _steps(events, 10, 10)
    clock.now += 5
    progress.poll(events)
    # 40 steps left at 2 s each
    assert out.getvalue().splitlines()[-1] == "    fast-0123456789 step 10/50 loss 1.5000 elapsed 25s ETA 1m20s"
    progress.poll(events)  # nothing new: no second line
    assert len(out.getvalue().splitlines()) == 2


def test_heartbeat_every_30_seconds_without_new_steps(tmp_path):
    progress, out, clock = _plain(tmp_path)
    events = tmp_path / "progress.jsonl"
    progress.poll(events)  # no file yet
    clock.now += HEARTBEAT_S
    progress.poll(events)
    assert out.getvalue().splitlines()[-1] == "    fast-0123456789 setting up, elapsed 30s"
    _steps(events, 1, 3, seconds=1.0)
    clock.now += HEARTBEAT_S
    progress.poll(events)
    assert out.getvalue().splitlines()[-1] == "    fast-0123456789 step 3/50 loss 1.5000 elapsed 1m00s ETA 47s"


def test_eval_heartbeat_estimates_from_the_evaluation_rate(tmp_path):
    progress, out, clock = _plain(tmp_path, steps=3)
    events = tmp_path / "progress.jsonl"
    _steps(events, 1, 3)
    with open(events, "a") as fh:
        fh.write(json.dumps({"event": "eval", "done": 10, "total": 60}) + "\n")
    progress.poll(events)
    with open(events, "a") as fh:
        fh.write(json.dumps({"event": "eval", "done": 20, "total": 60}) + "\n")
    clock.now += HEARTBEAT_S  # 10 samples in 30 s: 40 left take 2 min
    progress.poll(events)
    assert out.getvalue().splitlines()[-1] == "    fast-0123456789 eval 20/60 elapsed 30s ETA 2m00s"


def test_a_line_still_being_written_is_read_next_time(tmp_path):
    progress, out, clock = _plain(tmp_path)
    events = tmp_path / "progress.jsonl"
    _steps(events, 1, 9)
    with open(events, "a") as fh:
        fh.write('{"event": "step", "step": 10, "lo')
    progress.poll(events)
    assert progress.step == 9
    with open(events, "a") as fh:
        fh.write('ss": 1.25, "seconds": 2.0}\n')
    progress.poll(events)
    assert progress.step == 10 and progress.loss == 1.25
    assert out.getvalue().splitlines()[-1].startswith("    fast-0123456789 step 10/50 loss 1.2500")


def _failed(run_id="fast-0123456789"):
    return {"run_id": run_id, "status": "failed", "wall_s": 3.2, "metrics": None,
            "error": "Traceback (most recent call last):\n  File \"x.py\", line 1\n"
                     "json.decoder.JSONDecodeError: Expecting property name: line 1 column 2\n\n"}


def test_failed_run_prints_its_last_error_line_and_worker_log(tmp_path):
    log = tmp_path / "work" / "fast-0123456789" / "worker.log"
    log.parent.mkdir(parents=True)
    log.write_text("...")
    progress, out, _ = _plain(tmp_path)
    progress.finish(_failed())
    assert out.getvalue().splitlines()[1:] == [
        "    -> failed 3s",
        "    error: json.decoder.JSONDecodeError: Expecting property name: line 1 column 2",
        f"    log: {log}",
    ]


def test_failed_before_a_worker_started_has_no_log_line(tmp_path):
    progress, out, _ = _plain(tmp_path)
    progress.finish({**_failed(), "error": "lorabench: error: dataset x has no train.extract.jsonl"})
    assert out.getvalue().splitlines()[1:] == [
        "    -> failed 3s", "    error: lorabench: error: dataset x has no train.extract.jsonl"]


def test_ok_run_prints_no_error_lines(tmp_path):
    progress, out, _ = _plain(tmp_path)
    progress.finish({"run_id": "fast-0123456789", "status": "ok", "wall_s": 12.0, "error": None,
                     "metrics": {"cer": 0.25}})
    assert out.getvalue().splitlines()[1:] == ["    -> ok cer=0.2500 12s"]


def test_terminal_bar_shows_steps_and_an_eta(tmp_path):
    out, clock = io.StringIO(), Clock()
    progress = Progress(1, tmp_path, tty=True, out=out, clock=clock)
    progress.start(_cell(), 20)
    events = tmp_path / "progress.jsonl"
    _steps(events, 1, 5)
    progress.poll(events)
    assert progress.bar.n == 5 and progress.bar.total == 20
    shown = out.getvalue()
    assert "5/20" in shown and "loss 1.5000" in shown and "<" in shown  # tqdm's elapsed<remaining
    with open(events, "a") as fh:
        fh.write(json.dumps({"event": "eval", "done": 4, "total": 8}) + "\n")
    progress.poll(events)
    assert progress.bar.unit == "sample" and progress.bar.n == 4 and progress.bar.total == 8
    progress.finish({"run_id": "fast-0123456789", "status": "ok", "wall_s": 9.0, "error": None, "metrics": {}})
    assert progress.bar is None
    assert out.getvalue().rstrip().endswith("[1/1] framework=peft seed=0: ok 9s")


@pytest.mark.parametrize("seconds, text", [(None, "?"), (0.4, "0s"), (45, "45s"), (65, "1m05s"),
                                           (3725, "1h02m")])
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_runner_uses_this_progress():
    from harness.run import runner

    assert runner.Progress is Progress
