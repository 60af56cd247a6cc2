"""Every report figure, built from fixture records, read as a reader would: each drawn cell named,
no two cells alike, no text off the figure, no internal cell key; and the checker itself catches a
figure that breaks those rules."""

from __future__ import annotations

import json

import pytest
from matplotlib.figure import Figure

from harness.analysis import figure_memory, figure_training, figures
from harness.analysis import report as rep
from harness.analysis.figure_style import CELL_GID, cell_styles
from harness.analysis.cell_names import cell_label, record_label
from harness.results.store import load_records
from tests import fixtures_records as fx
from tests.analysis.figure_checks import problems

CONTROL = "lr / 20"


def _with_memory(record: dict, above: float) -> dict:
    """The anonymous-memory figures and a timeline sidecar name, as the runner writes them."""
    record["metrics"].update(peak_anon_mib=300.0 + above, peak_anon_above_baseline_mib=above)
    for rank in record["memory"]["per_rank"]:
        rank.update(peak_anon_mib=300.0 + above, peak_anon_above_baseline_mib=above, baseline_anon_mib=300.0)
    record["memory"]["timeline_file"] = f"{record['run_id']}.memory_timeline.jsonl"
    return record


def _write(results, record, rows, above: float) -> None:
    path = fx.write_run(results, _with_memory(record, above), rows)
    points = [{"t_s": 1.0 + i, "phase": "load" if i < 3 else "train", "anon_mib": 300.0 + above * min(1, i / 5)}
              for i in range(12)]
    series = {"process": "train", "rank": 0, "points": points,
              "phase_peaks": {"load": {"peak_anon_mib": 300.0 + above * 0.4}}}
    (path.parent / record["memory"]["timeline_file"]).write_text(json.dumps(series) + "\n")


@pytest.fixture(scope="module")
def default_like(tmp_path_factory):
    """The default suite's shape: aligned peft and swift over two seeds (identical curves), the natives
    (peft's loss over every token, swift's with its own steps and a global batch of 16), a control."""
    results = tmp_path_factory.mktemp("figs") / "results"
    for framework in ("peft", "swift"):
        for seed in (0, 1):
            record, rows = fx.make_record("peft", "aligned", seed)  # same curve on both frameworks
            record, _ = fx.make_record(framework, "aligned", seed) if framework == "swift" else (record, rows)
            if framework == "swift":
                record["train"]["steps"] = fx.make_record("peft", "aligned", seed)[0]["train"]["steps"]
            _write(results, record, rows, 200.0 + seed)
    record, rows = fx.make_record("peft", "native", 0)
    record["effective_settings"]["label_mask"] = "all"
    _write(results, record, rows, 260.0)
    record, rows = fx.make_record("swift", "native", 0, n_steps=5, extra_cell={"train.steps": 5})
    record["effective_settings"]["global_batch"] = 16
    _write(results, record, rows, 240.0)
    record, rows = fx.make_record("peft", "aligned", 0, extra_cell={"control": CONTROL}, field_hit=0.3)
    _write(results, record, rows, 201.0)
    return load_records(results)


def _built(inputs: dict, name: str) -> Figure:
    """The figure object behind one figure input (the functions that save it build it first)."""
    _, draw, kwargs, *_ = inputs[name]
    build = {figure_training.loss_curves: figure_training.training_figure,
             figure_memory.memory_timeline: figure_memory.timeline_figure,
             figure_memory.peak_bars: figure_memory.peak_bars_figure,
             figures.bars: figures.bars_figure}.get(draw)
    if draw is figures.pareto:
        return figures.pareto_figure(**kwargs)[0]
    return build(**kwargs)


def test_cell_names_read_as_words():
    assert cell_label({"framework": "peft", "alignment": "aligned"}) == "peft · aligned"
    assert cell_label({"framework": "peft", "alignment": "aligned", "control": CONTROL}) == \
        "peft · aligned · control: lr ÷ 20"
    assert cell_label({"framework": "swift", "alignment": "native", "train.steps": 13}, 16) == \
        "swift · native (13 steps × 16)"
    assert cell_label({"framework": "peft", "alignment": "aligned", "lever": "zero3",
                       "train.max_length": 448}) == "peft · aligned · zero3 · max_length 448"
    record, _ = fx.make_record("peft", "aligned", 1)
    assert record_label(record) == "peft · aligned"  # the seed is not part of the name


@pytest.mark.parametrize("name", ["loss_curves", "pareto", "throughput", "memory_timeline", "memory_peaks"])
def test_every_report_figure_reads_without_the_code(default_like, name):
    inputs = rep.build_report(default_like).figure_inputs
    fig = _built(inputs, name)
    assert problems(fig) == []
    drawn = {line.get_gid()[len(CELL_GID):] for ax in fig.axes for line in ax.get_lines()
             if (line.get_gid() or "").startswith(CELL_GID)}
    cells = {record_label(r) for r in default_like}
    if name in ("throughput", "memory_peaks"):  # bars, named by their tick labels
        ticks = {t.get_text() for ax in fig.axes for t in ax.get_xticklabels() + ax.get_yticklabels()}
        assert cells <= ticks, "a cell is missing from the figure"
    else:
        assert drawn == cells, "a cell is missing from the figure"


def test_loss_curves_compare_like_with_like(default_like):
    title, _, kwargs, caption = rep.build_report(default_like).figure_inputs["loss_curves"]
    assert kwargs["xlabel"] == "samples seen (all processes)"  # swift native takes 16 samples a step
    native = next(s for s in kwargs["series"] if s["label"] == "swift · native (5 steps × 16)")
    assert native["x"] == [16 * s for s in range(1, 6)]
    assert len(kwargs["panels"]) == 2  # peft native's loss over every token stands apart
    assert next(s for s in kwargs["series"] if s["label"] == "peft · native")["panel"] != \
        next(s for s in kwargs["series"] if s["label"] == "peft · aligned")["panel"]
    assert kwargs["underlay"] == ["peft · aligned"]
    assert "peft · aligned and swift · aligned coincide" in caption and "own panel" in caption


def test_loss_panels_with_as_many_cells_come_in_the_same_order_every_time(tmp_path):
    """One cell per loss definition: the tie is broken by the definition, not by a set's order (which
    moves with the process's string hashing), so the same runs always draw the same figure."""
    record, rows = fx.make_record("peft", "native", 0)
    record["effective_settings"]["label_mask"] = "all"
    _write(tmp_path, record, rows, 260.0)
    record, rows = fx.make_record("peft", "aligned", 0)
    _write(tmp_path, record, rows, 200.0)
    _, _, kwargs, _ = rep.build_report(load_records(tmp_path)).figure_inputs["loss_curves"]
    assert kwargs["panels"] == sorted(kwargs["panels"]) and len(kwargs["panels"]) == 2


def test_the_checker_catches_an_unreadable_figure():
    fig = Figure(figsize=(4, 3))
    ax = fig.add_subplot()
    for name in ("peft · aligned", "peft · aligned · control: lr ÷ 20"):  # two cells, one style
        ax.plot([0, 1], [1, 0], color="#1f77b4", ls="-", gid=CELL_GID + name, label=name)
    ax.plot([0, 1], [0, 1], color="#d62728", gid=CELL_GID + "swift · aligned")  # drawn, never named
    ax.legend()
    ax.set_title("peft/aligned/-/- against the rest of the suite, with a title far too long to fit")
    found = problems(fig)
    assert any("share one style" in p for p in found)
    assert any("'swift · aligned' is drawn but not named" in p for p in found)
    assert any("runs off the figure" in p for p in found)
    assert any("internal cell key" in p for p in found)


def test_cells_that_share_framework_and_alignment_get_a_marker():
    styles = cell_styles([{"framework": "peft", "alignment": "aligned"},
                          {"framework": "peft", "alignment": "aligned"},
                          {"framework": "peft", "alignment": "native"},
                          {"framework": "swift", "alignment": "aligned"}])
    assert len({(s.color, s.linestyle, s.marker) for s in styles}) == 4
    assert styles[0].color == styles[1].color == styles[2].color != styles[3].color
    assert styles[1].marker and styles[0].linestyle == styles[1].linestyle != styles[2].linestyle


def test_a_long_bar_chart_title_wraps_inside_the_figure():
    fig = figures.bars_figure(["a", "b"], [1.0, 2.0], ylabel="max |Δloss|", horizontal=True,
                              title="Ablation: loss gap when one factor of swift-default takes "
                                    "minicpmv-official's value, one factor at a time")
    assert problems(fig) == []


@pytest.mark.parametrize("runtime_first", [False, True])
def test_peak_bars_with_every_part_fit(runtime_first):
    """Every planner term and the runtime term get a colour, in whichever order the cells bring them
    (an offload cell's host-side term after a baseline cell's runtime term once had none)."""
    from harness.analysis.report import memory_levers as ml

    parts = (*ml.ESTIMATE_PARTS, ml.RUNTIME_PART, ml.HOST_PART) if runtime_first else \
        (*ml.ESTIMATE_PARTS, ml.HOST_PART, ml.RUNTIME_PART)
    estimate = [(name, 20.0) for name in parts]
    cells = [{"label": cell_label({"framework": "peft", "alignment": "aligned", "lever": lever}),
              "measured": [(ml.LOAD_PART, 80.0), (ml.TRAIN_PART, 130.0)], "estimate": estimate}
             for lever in ("baseline", "zero3+offload", "batch 1 x accumulation 4")]
    cells.append({"label": "swift · aligned · baseline", "measured": [(ml.WHOLE_PART, 300.0)], "estimate": None})
    assert problems(figure_memory.peak_bars_figure(cells, xlabel="MiB")) == []


def test_three_loss_panels_keep_their_titles_inside_the_figure():
    """The MiniCPM-V report's three loss definitions side by side: the third title once ran off the edge."""
    panels = ["loss over the answer tokens, per token over the accumulated batch",
              "loss over every non-pad token, per token over the accumulated batch",
              "loss over the answer tokens, mean of micro-batch means"]
    curve = [3.0, 2.0, 1.5]
    series = [{"label": label, "framework": fw, "alignment": al, "x": [1, 2, 3], "mean": curve, "lo": curve,
               "hi": curve, "n_seeds": 1, "panel": panel}
              for (label, fw, al), panel in zip([("peft · aligned", "peft", "aligned"),
                                                 ("peft · peft-default", "peft", "peft-default"),
                                                 ("peft · minicpmv-official", "peft", "minicpmv-official")], panels)]
    fig = figure_training.training_figure(series, panels=panels, xlabel="samples seen (all processes)")
    assert problems(fig) == []
