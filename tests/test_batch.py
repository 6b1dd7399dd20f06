"""Annotation CSVs for batches: odd rows are reported, not silently used (issue 10, items 4 and 8)."""

import numpy as np
import pytest

from napari_dinoloc.core.batch import classes_for_image, read_cell_classes
from napari_dinoloc.core.errors import DinolocError


def write(tmp_path, text, encoding="utf-8"):
    path = tmp_path / "cells.csv"
    path.write_bytes(text.encode(encoding))
    return path


def test_conflicting_classes_for_one_cell_are_counted_with_examples(tmp_path):
    rows = ["image,label,class", "a,1,er", "a,1,mito", "a,2,er", "a,2,er", "b,1,er", "b,1,nucleoli", "b,1,er", "a,3,er"]
    classes = read_cell_classes(write(tmp_path, "\n".join(rows) + "\n"))
    assert classes == {"a": {1: "mito", 2: "er", 3: "er"}, "b": {1: "er"}}  # the last row still wins
    assert classes.conflicts == [("a", 1, ("er", "mito")), ("b", 1, ("er", "nucleoli"))]
    assert classes.repeated == 2
    (note,) = classes.notes
    assert note.startswith("2 cell(s) are given different classes in cells.csv")
    assert "a cell 1: er then mito" in note and "b cell 1: er then nucleoli" in note


def test_a_clean_file_has_no_notes(tmp_path):
    classes = read_cell_classes(write(tmp_path, "label,class\n1,er\n2,mito\n"))
    assert classes == {"": {1: "er", 2: "mito"}} and classes.conflicts == [] and classes.notes == []


def test_annotated_cells_missing_from_the_image_are_reported(tmp_path):
    rows = ["image,label,class"] + [f"field1,{label},er" for label in (1, 2, 7, 8, 9, 10, 11, 12, 40)]
    classes = read_cell_classes(write(tmp_path, "\n".join(rows) + "\n"))
    found = classes_for_image(classes, "field1", cell_ids=np.array([1, 2, 3]))
    assert found == {1: "er", 2: "er"}
    assert found.unknown == [7, 8, 9, 10, 11, 12, 40]
    (note,) = found.notes
    assert note.startswith("7 annotated cell(s) do not exist in field1") and "7, 8, 9, 10, 11 (and 2 more)" in note
    assert classes_for_image(classes, "field1") == {k: "er" for k in (1, 2, 7, 8, 9, 10, 11, 12, 40)}  # no ids: all


def test_a_utf8_file_with_a_byte_order_mark_reads(tmp_path):
    classes = read_cell_classes(write(tmp_path, "image,label,class\nfeld_ü,1,nucléole\n", "utf-8-sig"))
    assert classes == {"feld_ü": {1: "nucléole"}}


def test_a_file_that_is_not_utf8_is_refused_with_advice(tmp_path):
    with pytest.raises(DinolocError, match="not UTF-8 text .*CSV UTF-8"):
        read_cell_classes(write(tmp_path, "image,label,class\nfeld_ü,1,nucléole\n", "latin-1"))
