"""Pareto figure labels: never overlapping, even for identical or nearly identical points."""

from __future__ import annotations

import itertools

from harness.analysis.figures import label_box, pareto, pareto_figure, renderer_of


def _points(coords):
    frameworks = ("peft", "swift", "torch")
    return [{"label": f"{frameworks[i % 3]}/aligned/lever-{i}", "framework": frameworks[i % 3],
             "alignment": "aligned", "x": x, "y": y, "xerr": None, "yerr": None}
            for i, (x, y) in enumerate(coords)]


def _assert_labels_apart(points):
    fig, labels = pareto_figure(points, "peak RSS (MiB)", "field F1")
    renderer = renderer_of(fig)
    boxes = [label_box(a, renderer) for a in labels]
    assert [a.get_text() for a in labels] == [p["label"] for p in points]  # one label per point
    for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2):
        assert not a.overlaps(b), f"labels {i} and {j} overlap: {a} vs {b}"
    ax = fig.axes[0]
    for box, p in itertools.product(boxes, points):  # no label hides a point
        px, py = ax.transData.transform((p["x"], p["y"]))
        assert not (box.x0 < px < box.x1 and box.y0 < py < box.y1)
    return fig


def test_identical_and_close_points_get_separate_labels():
    coords = [(1500.0, 0.80)] * 4 + [(1500.4, 0.8002), (1501.0, 0.7999), (900.0, 0.60)]
    _assert_labels_apart(_points(coords))


def test_many_identical_points_still_fit():
    _assert_labels_apart(_points([(1000.0, 0.5)] * 12))


def test_pareto_writes_png_and_pdf(tmp_path):
    png = pareto(_points([(1500.0, 0.8)] * 3), "x", "y", stem=tmp_path / "pareto")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "pareto.pdf").read_bytes()[:5] == b"%PDF-"
