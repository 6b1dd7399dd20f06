"""The per-image summary: counts and fractions of the predicted classes of each image."""

import csv

import pytest

from napari_dinoloc.core.image_summary import ImageSummary, summarise, summary_columns, summary_path_for


def rows(image, classes, confidence=0.5):
    return [{"image": image, "predicted_class": name, "confidence": confidence} for name in classes]


def test_counts_and_fractions_per_image_in_the_order_met():
    table = summarise(rows("b", ["er", "er", "nucleus", ""]) + rows("a", ["nucleus"], 0.9), ["nucleus", "er", "golgi"])
    assert [r["image"] for r in table] == ["b", "a"]
    b, a = table
    assert (b["cells"], b["n_er"], b["n_nucleus"], b["n_golgi"]) == (3, 2, 1, 0)  # the unpredicted cell counts nowhere
    assert b["fraction_er"] == pytest.approx(2 / 3, abs=1e-6) and b["fraction_golgi"] == 0
    assert sum(b[f"fraction_{n}"] for n in ("nucleus", "er", "golgi")) == pytest.approx(1, abs=1e-5)
    assert (a["cells"], a["fraction_nucleus"], a["mean_confidence"]) == (1, 1.0, 0.9)


def test_written_beside_the_cells_csv(tmp_path):
    assert summary_path_for(tmp_path / "cells.csv") == tmp_path / "cells_per_image.csv"
    summary = ImageSummary(["x", "y"])
    summary.add_rows(rows("one", ["x", "y", "y", "y"]))
    path = summary.write(tmp_path / "s.csv")
    with open(path, newline="") as handle:
        written = list(csv.DictReader(handle))
    assert list(written[0]) == summary_columns(["x", "y"])
    assert [(r["image"], r["cells"], r["n_y"], r["fraction_y"]) for r in written] == [("one", "4", "3", "0.75")]


def test_the_summary_row_is_not_hidden_by_the_scroll_bar(qtbot):
    from napari_dinoloc.widgets.image_summary import SummaryTable

    names = [f"class_{i}" for i in range(12)]
    table = SummaryTable()
    qtbot.addWidget(table)
    table.setFixedWidth(300)  # many classes in a narrow dock: the table scrolls sideways
    table.show_rows(summarise(rows("synthetic-0", names), names), names)
    qtbot.waitExposed(table)
    assert table.horizontalScrollBar().isVisible()
    assert table.viewport().height() >= table.rowHeight(0)  # the image's row is shown whole
