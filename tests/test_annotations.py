"""The annotation store, without Qt: saved atomically, restored after re-segmentation, corrupt files kept."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from napari_dinoloc.core import annotations as ann
from napari_dinoloc.core.annotations import AnnotationStore, next_cell_to_annotate, store_path
from napari_dinoloc.core.errors import DinolocError


def two_cells(offset=0) -> np.ndarray:
    """Two square cells; ``offset`` shifts them by a few pixels, as a new segmentation would."""
    labels = np.zeros((40, 60), np.int32)
    labels[5 + offset:20 + offset, 5:20] = 1
    labels[5:25, 30 + offset:50 + offset] = 2
    return labels


def new_store(tmp_path, classes=("nucleoli", "mitochondria")) -> AnnotationStore:
    return AnnotationStore.open(tmp_path / "img.tif.dinoloc.json", "hash1", "img", classes)


def test_every_change_is_saved_and_reloaded(tmp_path):
    store = new_store(tmp_path)
    store.annotate(1, "nucleoli", (12.0, 12.0))
    store.annotate(2, "mitochondria", (15.0, 40.0))
    store.clear(2)
    store.add_class("golgi")
    store.move_class("golgi", -2)

    again = new_store(tmp_path, classes=())
    assert again.annotations == {1: "nucleoli"}
    assert again.class_names == ["golgi", "nucleoli", "mitochondria"]  # order survives reload
    assert again.key_of("golgi") == "1" and again.class_for_key("2") == "nucleoli"
    assert "Restored 1" in again.notice


def test_save_is_atomic(tmp_path, monkeypatch):
    store = new_store(tmp_path)
    store.annotate(1, "nucleoli", (12.0, 12.0))
    before = store.path.read_text()

    monkeypatch.setattr(ann, "write_json_atomic", lambda path, data: _write_then_fail(path, data))
    with pytest.raises(OSError):
        store.annotate(2, "mitochondria", (15.0, 40.0))
    assert store.path.read_text() == before  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == [store.path.name]  # no temporary file left


def _write_then_fail(path, data):
    from napari_dinoloc.core.files import atomic_write

    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(data)[:10])
        raise OSError("disk full")


def test_restore_by_centroid_after_relabelling(tmp_path):
    labels = two_cells()
    store = new_store(tmp_path)
    store.annotate(1, "nucleoli", (12.0, 12.0))
    store.annotate(2, "mitochondria", (15.0, 40.0))

    relabelled = np.zeros_like(labels)
    relabelled[labels == 1] = 7
    relabelled[two_cells(offset=2) == 2] = 3  # cell 2 moved by 2 pixels and is now label 3
    report = new_store(tmp_path, ()).restore_onto(relabelled)
    restored = new_store(tmp_path, ())
    assert restored.annotations == {7: "nucleoli", 3: "mitochondria"}
    assert report.restored == 2 and report.lost == 0


def test_restore_reports_cells_that_vanished(tmp_path):
    store = new_store(tmp_path)
    store.annotate(1, "nucleoli", (12.0, 12.0))
    store.annotate(2, "mitochondria", (15.0, 40.0))
    only_first = np.where(two_cells() == 1, 1, 0).astype(np.int32)
    report = store.restore_onto(only_first)
    assert report.lost == 1 and store.annotations == {1: "nucleoli"}
    assert "dropped" in report.message()


def test_concave_cell_keeps_a_point_inside_it():
    labels = np.zeros((30, 30), np.int32)
    labels[5:25, 5:10] = 1  # an L-shaped cell whose centroid is outside it
    labels[20:25, 5:25] = 1
    centroid = np.argwhere(labels == 1).mean(axis=0)
    inside = ann.point_inside(labels, 1, centroid)
    assert labels[int(inside[0]), int(inside[1])] == 1


def test_corrupt_file_is_kept_aside_and_reported(tmp_path):
    path = tmp_path / "img.tif.dinoloc.json"
    path.write_text("{not json")
    store = AnnotationStore.open(path, "hash1", "img", ("a", "b"))
    assert "could not be read" in store.notice
    assert (tmp_path / "img.tif.dinoloc.json.corrupt").read_text() == "{not json"
    store.annotate(3, "a", (1.0, 1.0))  # a new file is started beside the kept one
    assert json.loads(path.read_text())["cells"][0]["label"] == 3


def test_annotations_of_another_image_version_are_not_applied(tmp_path):
    store = new_store(tmp_path)
    store.annotate(1, "nucleoli", (12.0, 12.0))
    other = AnnotationStore.open(store.path, "hash2", "img", ("x",))
    assert other.annotations == {} and "another version" in other.notice
    assert (tmp_path / "img.tif.dinoloc.json.hash1").exists()


def test_class_list_errors_say_what_to_do(tmp_path):
    store = new_store(tmp_path)
    with pytest.raises(DinolocError, match="already a class"):
        store.add_class("nucleoli")
    with pytest.raises(DinolocError, match="no class"):
        store.annotate(1, "golgi", (1.0, 1.0))
    store.annotate(1, "nucleoli", (1.0, 1.0))
    store.rename_class("nucleoli", "nucleolus")
    assert store.annotations == {1: "nucleolus"}
    assert store.remove_class("nucleolus") == 1 and store.annotations == {}


def test_store_path_next_to_image_or_in_project_folder(tmp_path, monkeypatch):
    assert store_path("abc", "img", image_path=tmp_path / "img.tif") == tmp_path / "img.tif.dinoloc.json"
    assert store_path("abcdef0123456789", "my img", project_folder=tmp_path).name == "my_img-abcdef012345.dinoloc.json"
    monkeypatch.setenv(ann.HOME_VARIABLE, str(tmp_path / "home"))
    assert store_path("abc", "x").parent == tmp_path / "home" / "annotations"


def test_annotations_csv(tmp_path):
    store = new_store(tmp_path)
    store.annotate(2, "mitochondria", (15.0, 40.0))
    store.annotate(1, "nucleoli", (12.0, 12.0))
    text = store.write_csv(tmp_path / "a.csv").read_text().splitlines()
    assert text == ["label,class,centroid_y,centroid_x", "1,nucleoli,12.0,12.0", "2,mitochondria,15.0,40.0"]


def test_next_cell_is_the_least_certain_unannotated_one():
    predictions = SimpleNamespace(labels=np.array([1, 2, 3]), margin=np.array([0.9, 0.1, 0.05]))
    assert next_cell_to_annotate([1, 2, 3], annotated=[3], predictions=predictions) == 2
    assert next_cell_to_annotate([1, 2, 3], annotated=[1, 2, 3], predictions=predictions) is None
    assert next_cell_to_annotate([1, 2], annotated=[1]) == 2  # no predictions yet: any open cell


# ---- undo and redo ----------------------------------------------------------------------------------
def saved(store) -> dict:
    data = json.loads(store.path.read_text())
    return {"classes": [c["name"] for c in data["classes"]], "cells": {c["label"]: c["class"] for c in data["cells"]}}


def test_undo_and_redo_walk_the_changes_and_save_each_step(tmp_path):
    store = new_store(tmp_path)
    store.annotate(1, "nucleoli", (12.0, 12.0))
    store.annotate(2, "mitochondria", (15.0, 40.0))
    store.annotate(1, "mitochondria", (12.0, 12.0))
    store.clear(2)
    assert store.annotations == {1: "mitochondria"} and store.undo_text() == "clear cell 2"

    assert store.undo() == "clear cell 2"
    assert store.annotations == {1: "mitochondria", 2: "mitochondria"} == saved(store)["cells"]
    assert store.undo() == "annotate cell 1 as 'mitochondria'"
    assert store.annotations == {1: "nucleoli", 2: "mitochondria"} == saved(store)["cells"]
    assert store.redo() == "annotate cell 1 as 'mitochondria'"
    assert store.annotations == {1: "mitochondria", 2: "mitochondria"}
    for _ in range(3):
        store.undo()
    assert store.annotations == {} == saved(store)["cells"] and not store.can_undo
    assert store.undo() is None  # nothing left: no change, no error
    store.redo()
    store.annotate(3, "nucleoli", (30.0, 30.0))  # a new change drops what could be redone
    assert not store.can_redo and store.redo() is None
    assert store.annotations == {1: "nucleoli", 3: "nucleoli"}


def test_undo_brings_back_a_removed_class_and_its_cells(tmp_path):
    store = new_store(tmp_path, classes=("golgi", "nucleoli", "mitochondria"))
    store.annotate(1, "nucleoli", (12.0, 12.0))
    store.annotate(2, "nucleoli", (15.0, 40.0))
    store.rename_class("golgi", "Golgi")
    assert store.remove_class("nucleoli") == 2
    assert saved(store) == {"classes": ["Golgi", "mitochondria"], "cells": {}}
    assert store.undo() == "remove the class 'nucleoli'"
    assert saved(store) == {"classes": ["Golgi", "nucleoli", "mitochondria"], "cells": {1: "nucleoli", 2: "nucleoli"}}
    assert store.undo() == "rename 'golgi' to 'Golgi'" and store.class_names[0] == "golgi"


def test_a_change_that_changes_nothing_is_not_recorded(tmp_path):
    store = new_store(tmp_path)
    store.annotate(1, "nucleoli", (12.0, 12.0))
    store.annotate(1, "nucleoli", (12.0, 12.0))
    assert not store.clear(5)
    store.move_class("nucleoli", -1)  # already first
    assert store.undo() == "annotate cell 1 as 'nucleoli'" and not store.can_undo


def test_a_failed_save_changes_nothing_and_undo_survives_it(tmp_path, monkeypatch):
    store = new_store(tmp_path)
    store.annotate(1, "nucleoli", (12.0, 12.0))
    before = store.path.read_text()
    monkeypatch.setattr(ann, "write_json_atomic", lambda path, data: _write_then_fail(path, data))
    with pytest.raises(OSError):
        store.remove_class("nucleoli")
    assert store.class_names == ["nucleoli", "mitochondria"] and store.annotations == {1: "nucleoli"}
    with pytest.raises(OSError):
        store.undo()
    assert store.annotations == {1: "nucleoli"} and store.can_undo and store.path.read_text() == before
    monkeypatch.undo()
    assert store.undo() and store.annotations == {} == saved(store)["cells"]


def test_history_is_dropped_with_a_new_segmentation(tmp_path):
    store = new_store(tmp_path)
    store.annotate(1, "nucleoli", (12.0, 12.0))
    store.restore_onto(two_cells(offset=3))
    assert not store.can_undo and store.annotations == {1: "nucleoli"}


def test_ten_classes_have_keys_1_to_9_then_0_and_key_changes_are_named():
    assert ann.KEYS == ("1", "2", "3", "4", "5", "6", "7", "8", "9", "0")
    store = AnnotationStore(classes=[ann.AnnotationClass(f"c{i}", "#000000") for i in range(11)])
    assert [store.key_of(f"c{i}") for i in (0, 8, 9, 10)] == ["1", "9", "0", ""]
    assert store.class_for_key("0") == "c9"
    before = store.class_names
    after = [n for n in before if n != "c1"]
    assert ann.key_changes(before, after)[:1] == ["c2: key 3 -> 2"]
    assert ann.key_changes(before, after)[-2:] == ["c9: key 0 -> 9", "c10: key none -> 0"]
    assert ann.key_changes(before, before) == []
