"""What `lorabench run` shows while a suite runs, read from each run's `progress.jsonl`.

On a terminal: a tqdm bar per run (optimizer steps, then evaluated samples) with its rate and ETA.
Without one (CI logs, `| tee`), plain lines: one when a run starts, a heartbeat every
HEARTBEAT_STEPS steps or HEARTBEAT_S seconds (run, step/total, loss, elapsed, ETA), one when it
ends. A run that did not end ok also prints its last error line and the path of its worker log.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

HEARTBEAT_STEPS = 10
HEARTBEAT_S = 30.0
RECENT_STEPS = 10  # the ETA assumes the next steps take as long as the last few


def duration(seconds: float | None) -> str:
    """45s, 1m05s, 2h03m; "?" when unknown."""
    if seconds is None:
        return "?"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def last_error_line(error: str | None) -> str | None:
    lines = [line.strip() for line in (error or "").splitlines() if line.strip()]
    return lines[-1] if lines else None


class RunCounter:
    """Runs started and finished, shared by the displays of parallel lanes."""

    def __init__(self):
        self._lock = threading.Lock()
        self.started = self.done = 0

    def start(self) -> int:
        with self._lock:
            self.started += 1
            return self.started

    def finish(self) -> None:
        with self._lock:
            self.done += 1


class Progress:
    """One display over the runs of a suite: `start` a run, `poll` its progress file while it runs
    (the runner calls it about twice a second), `finish` it with its record."""

    def __init__(self, total: int, results_dir: Path | None = None, *, tty: bool | None = None,
                 out=None, clock=time.monotonic, counter: RunCounter | None = None, lanes: int = 1):
        """`lanes` > 1: runs go on in parallel lanes, one Progress each, sharing one `counter`; their
        lines name the run they belong to, and no bars are drawn (bars of parallel runs would overwrite
        each other)."""
        self.total = total
        self.counter = counter or RunCounter()
        self.lanes = lanes
        self.results_dir = Path(results_dir) if results_dir is not None else None
        self.out = out or sys.stdout
        self.tty = (self.out.isatty() if tty is None else tty) and lanes == 1
        self.clock = clock
        self.current = ""
        self.bar = None

    @property
    def done(self) -> int:
        return self.counter.done

    # ---- one run --------------------------------------------------------------------------------

    def start(self, cell, steps: int):
        self.current = " ".join(f"{k}={v}" for k, v in cell.key.items()) or cell.run_id
        self.run_id = cell.run_id
        self.steps = steps
        self.started = self.clock()
        self.lines_read = 0
        self.phase = "setup"  # setup -> train -> eval
        self.step = 0
        self.loss = None
        self.step_seconds: list[float] = []
        self.eval_done = self.eval_total = 0
        self.eval_first: tuple[float, int] | None = None  # (time, samples done) at the first eval event
        self.beat_at, self.beat_step = self.started, 0
        number = self.counter.start()
        if self.tty:
            self._open_bar(steps, "step")
        else:
            self._print(f"[{number}/{self.total}] {cell.run_id} {self.current}")

    def poll(self, progress_file: Path):
        new_events = self._read_events(Path(progress_file))
        if not self.tty:
            self._heartbeat()
        elif new_events:
            self._draw()
        elif self.bar is not None:
            self.bar.refresh()  # the elapsed time moves on between steps too

    def finish(self, record: dict):
        self.counter.finish()
        self._close_bar()
        m = record.get("metrics") or {}
        summary = (f"{record['status']}" + (f" cer={m['cer']:.4f}" if "cer" in m else "") +
                   (f" field_f1={m['field_f1']:.3f}" if "field_f1" in m else "") +
                   (f" anon+{m['peak_anon_above_baseline_mib']:.0f}MiB"
                    if m.get("peak_anon_above_baseline_mib") else "") +
                   f" {record['wall_s']:.0f}s")
        if self.lanes > 1:  # lines of parallel runs interleave: say whose result this is
            summary = f"{record['run_id']} {summary}"
        self._print(f"[{self.done}/{self.total}] {self.current}: {summary}" if self.tty else f"    -> {summary}")
        if record["status"] != "ok":
            error = last_error_line(record.get("error"))
            if error:
                self._print(f"    error: {error}")
            log = self.worker_log(record["run_id"])
            if log is not None:
                self._print(f"    log: {log}")

    def worker_log(self, run_id: str) -> Path | None:
        """The run's worker log, where the runner leaves it; None when there is none (e.g. the run
        failed before a worker started)."""
        if self.results_dir is None:
            return None
        log = self.results_dir / "work" / run_id / "worker.log"
        return log if log.is_file() else None

    # ---- reading progress.jsonl -----------------------------------------------------------------

    def _read_events(self, path: Path) -> bool:
        """Apply the lines written since the last poll; True when there were any."""
        try:
            lines = path.read_text().splitlines()
        except OSError:  # not there yet
            return False
        new = False
        for i in range(self.lines_read, len(lines)):
            try:
                event = json.loads(lines[i])
            except ValueError:
                if i == len(lines) - 1:
                    break  # the worker is still writing this line: read it next time
                event = {}
            self.lines_read = i + 1
            self._apply(event)
            new = True
        return new

    def _apply(self, event: dict):
        if event.get("event") == "step":
            self.phase = "train"
            self.step = int(event.get("step", self.step))
            self.loss = event.get("loss", self.loss)
            if isinstance(event.get("seconds"), (int, float)):
                self.step_seconds = (self.step_seconds + [float(event["seconds"])])[-RECENT_STEPS:]
        elif event.get("event") == "eval":
            self.phase = "eval"
            self.eval_done, self.eval_total = int(event.get("done", 0)), int(event.get("total", 0))
            if self.eval_first is None:
                self.eval_first = (self.clock(), self.eval_done)

    # ---- estimates and lines --------------------------------------------------------------------

    def eta(self) -> float | None:
        """Seconds left in the current phase (training or evaluation); None when unknown."""
        if self.phase == "train" and self.step_seconds:
            return max(0, self.steps - self.step) * sum(self.step_seconds) / len(self.step_seconds)
        if self.phase == "eval" and self.eval_first is not None:
            since, done_then = self.eval_first
            rate = (self.eval_done - done_then) / max(1e-9, self.clock() - since)
            return max(0, self.eval_total - self.eval_done) / rate if rate > 0 else None
        return None

    def status_line(self) -> str:
        elapsed = duration(self.clock() - self.started)
        if self.phase == "train":
            loss = f" loss {self.loss:.4f}" if isinstance(self.loss, (int, float)) else ""
            return f"{self.run_id} step {self.step}/{self.steps}{loss} elapsed {elapsed} ETA {duration(self.eta())}"
        if self.phase == "eval":
            return (f"{self.run_id} eval {self.eval_done}/{self.eval_total} elapsed {elapsed} "
                    f"ETA {duration(self.eta())}")
        return f"{self.run_id} setting up, elapsed {elapsed}"

    def _heartbeat(self):
        now = self.clock()
        steps_due = self.phase == "train" and self.step - self.beat_step >= HEARTBEAT_STEPS
        if steps_due or now - self.beat_at >= HEARTBEAT_S:
            self._print(f"    {self.status_line()}")
            self.beat_at, self.beat_step = now, self.step

    def _print(self, line: str):
        print(line, file=self.out, flush=True)

    # ---- the terminal bar -----------------------------------------------------------------------

    def _open_bar(self, total: int, unit: str):
        from tqdm import tqdm

        self._close_bar()
        self.bar = tqdm(total=total, unit=unit, file=self.out, leave=False, dynamic_ncols=True,
                        desc=f"[{self.done + 1}/{self.total}] {self.current}")
        self.bar.set_postfix_str("setting up" if unit == "step" else "evaluating")
        self.bar_unit = unit
        self.bar_counting = False  # set once the first step or sample arrived

    def _close_bar(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _draw(self):
        if self.phase == "eval":
            if self.bar_unit != "sample":
                self._open_bar(self.eval_total, "sample")
            self.bar.update(self.eval_done - self.bar.n)
            return
        if self.phase == "train":
            if not self.bar_counting:
                self.bar.reset(total=self.steps)  # the rate and ETA count steps, not the set-up
                self.bar_counting = True
            self.bar.update(self.step - self.bar.n)
            if isinstance(self.loss, (int, float)):
                self.bar.set_postfix_str(f"loss {self.loss:.4f}")
