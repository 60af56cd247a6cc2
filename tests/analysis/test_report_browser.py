"""report.html in a real browser: a page of a wide matrix fits a 1280-px window (no sideways scroll).

Headless Chromium loads the page with a small script appended that writes the document's scroll
width into the DOM after load; `--dump-dom` prints that DOM. When Chromium is missing it is installed
once per session with apt-get (root only); when that is not possible the test skips, saying why.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest


from tests import fixtures_records as fx

from harness.analysis.report import write_report  # noqa: E402
from harness.results.store import load_records  # noqa: E402

WINDOW_WIDTH = 1280
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--window-size={WINDOW_WIDTH},2000", "--virtual-time-budget=10000")
# Appended to a copy of the page: after load, the measurements become attributes of <body>, plus
# the elements sticking out of the window, to say what is too wide when the test fails.
PROBE = """<script>window.addEventListener('load', function () {
  var b = document.body, w = window.innerWidth, wide = [];
  document.querySelectorAll('body *').forEach(function (e) {
    var r = e.getBoundingClientRect();
    if (r.right > w + 0.5 && !e.closest('.table-box'))
      wide.push(e.tagName + '.' + e.className + ' ' + Math.round(r.right));
  });
  b.setAttribute('data-scroll-width', String(document.documentElement.scrollWidth));
  b.setAttribute('data-inner-width', String(w));
  b.setAttribute('data-too-wide', wide.slice(0, 5).join('; '));
  var q = document.getElementById('quality');
  if (q) {
    var box = q.parentElement, right = 0;
    q.querySelectorAll('th').forEach(function (h) { right = Math.max(right, h.getBoundingClientRect().right); });
    b.setAttribute('data-quality-right', String(Math.round(right)));
    b.setAttribute('data-quality-box-overflow', String(box.scrollWidth - box.clientWidth));
  }
});</script>"""
HASH = "0123456789abcdef" * 4


def _find_browser() -> str | None:
    for name in BROWSER_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    """A headless-capable Chromium, installed with apt-get when missing and allowed (once)."""
    path = _find_browser()
    if path:
        return path
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("no Chromium on this machine, and installing it needs root and apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = None
    for command in (["apt-get", "install", "-y", "chromium"],
                    ["sh", "-c", "apt-get update && apt-get install -y chromium"]):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
        if result.returncode == 0 and _find_browser():
            return _find_browser()
    pytest.skip(f"could not install Chromium with apt-get: {(result.stderr or result.stdout)[-300:]}")


def _measure(chromium: str, page_html: str, tmp_path) -> dict[str, str]:
    probe = tmp_path / "probe.html"
    probe.write_text(page_html.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    result = subprocess.run([chromium, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                             probe.resolve().as_uri()], capture_output=True, text=True, timeout=180)
    found = dict(re.findall(r'data-(scroll-width|inner-width|too-wide|quality-right|quality-box-overflow)="([^"]*)"',
                            result.stdout))
    assert "scroll-width" in found, f"no measurement from the browser: {result.stderr[-500:]}"
    return found


def _wide_report(root):
    """Six cells of two seeds with every newer section, a control, a long error and long values."""
    results = root / "results"
    failed = {("torch", "native", 1): "RuntimeError: " + "x" * 300}
    fx.write_suite(results, seeds=(0, 1), failed=failed, detail=True,
                   extra_cell={"targets": "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"})
    for seed in (0, 1):
        record, rows = fx.make_record("peft", "aligned", seed, detail=True, field_hit=0.3,
                                      extra_cell={"targets": "q_proj,k_proj,v_proj,o_proj,gate_proj,"
                                                             "up_proj,down_proj", "control": "lr / 20"})
        fx.write_run(results, record, rows)
    parity = {"settings_diff": [
        {"setting": "model.checksum", "values": {"peft": HASH, "swift": HASH[::-1], "torch": HASH},
         "differs": True},
        {"setting": "lora.target_modules", "values": {"peft": "q_proj,k_proj,v_proj,o_proj,gate_proj,"
                                                      "up_proj,down_proj,lm_head,embed_tokens",
                                                      "swift": ["all-linear"] * 6, "torch": "x" * 90},
         "differs": True}],
        "ablation": [{"factor": "lora." + "very_long_factor_name_" * 4, "max_abs_dloss": 0.2,
                      "final_loss_gap": 0.1}], "max_abs_dloss": 0.2, "first_divergent_step": 1}
    return write_report(load_records(results), root / "out", [parity])["html"]


@pytest.mark.filterwarnings("ignore:Tight layout not applied")  # the long cell labels of the bar chart
@pytest.mark.slow  # installs Chromium on first use (about a minute)
def test_report_fits_a_1280_px_window(chromium, tmp_path):
    page = _wide_report(tmp_path).read_text(encoding="utf-8")
    found = _measure(chromium, page, tmp_path)
    assert int(found["inner-width"]) == WINDOW_WIDTH
    assert int(found["scroll-width"]) <= WINDOW_WIDTH, f"too wide: {found.get('too-wide')}"
    # the measurement can see a page that is too wide
    wide = _measure(chromium, '<!DOCTYPE html><html><body><div style="width:2000px">x</div></body></html>',
                    tmp_path)
    assert int(wide["scroll-width"]) >= 2000


@pytest.mark.slow  # installs Chromium on first use (about a minute)
def test_quality_table_shows_every_column_without_scrolling(chromium, tmp_path):
    """Table 1 of a default-suite report (two frameworks x aligned/native over two seeds, a control)
    shows field F1, CER and JSON validity, every column, inside a 1280-px window: its box does not scroll."""
    results = tmp_path / "results"
    fx.write_suite(results, frameworks=("peft", "swift"), alignments=("aligned", "native"), seeds=(0, 1),
                   detail=True)
    for seed in (0, 1):
        record, rows = fx.make_record("peft", "aligned", seed, detail=True, field_hit=0.3,
                                      extra_cell={"control": "lr / 20"})
        fx.write_run(results, record, rows)
    page = write_report(load_records(results), tmp_path / "out")["html"].read_text(encoding="utf-8")
    for column in ("field F1", "CER", "JSON valid"):
        assert f">{column}</th>" in page, f"Table 1 has no {column} column"
    found = _measure(chromium, page, tmp_path)
    assert int(found["quality-box-overflow"]) <= 0, "Table 1 scrolls sideways"
    assert int(found["quality-right"]) <= WINDOW_WIDTH, f"Table 1's last column ends at {found['quality-right']} px"
