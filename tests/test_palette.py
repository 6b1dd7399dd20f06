"""Class and confidence colours stay clear of the channels' colours and of grey, and apart from each other."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from napari_dinoloc.core import palette
from napari_dinoloc.core.annotations import OLD_PALETTE, PALETTE, AnnotationStore
from napari_dinoloc.core.synthetic import CLASS_NAMES


@pytest.mark.parametrize("colour", sorted(set(palette.CLASS_PALETTE + palette.CONFIDENCE_COLOURS)))
def test_no_class_colour_is_near_a_channel_colour_or_grey(colour):
    assert palette.distance_to_channels(colour) >= palette.MIN_CHANNEL_DISTANCE
    assert palette.chroma(colour) >= palette.MIN_CHROMA
    assert not palette.hides_a_stain(colour)


def test_class_colours_differ_from_each_other():
    for a, b in itertools.combinations(palette.CLASS_PALETTE, 2):
        assert palette.colour_difference(a, b) >= palette.MIN_CLASS_DISTANCE, (a, b)
    assert len(set(palette.CLASS_PALETTE)) >= len(CLASS_NAMES)  # every synthetic class its own colour


def test_the_check_catches_the_old_colours_that_hid_the_protein():
    for bad in ("#2ca02c", "#7f7f7f", "#00c000", "#1f77b4", "#808080", "#ffffff", "#d62728"):
        assert palette.hides_a_stain(bad), bad
    assert palette.distance_to_channels("#006400") < 5  # a dim protein is dark green


def test_confidence_bins_and_legend():
    bins = palette.confidence_bins(np.array([0.2, 0.5, 0.64, 0.7, 0.85, 0.95, 1.0]))
    assert bins.tolist() == [1, 2, 2, 3, 4, 5, 5]
    legend = palette.confidence_legend()
    assert legend[0] == ("0.00–0.50", "#ff3080") and legend[-1] == ("0.90–1.00", "#2080ff")


def test_new_classes_get_palette_colours_and_an_old_grey_class_is_recoloured(tmp_path):
    store = AnnotationStore.open(tmp_path / "a.dinoloc.json", "h", "img", CLASS_NAMES)
    assert [c.colour for c in store.classes] == list(PALETTE[:len(CLASS_NAMES)])
    store.set_colour("centrosome", "#7f7f7f")     # as the old palette gave it
    store.set_colour("golgi", "#2ca02c")          # the old green
    store.set_colour("er", "#123456")             # the user's own choice stays
    reopened = AnnotationStore.open(store.path, "h", "img")
    colours = {c.name: c.colour for c in reopened.classes}
    assert "#7f7f7f" in OLD_PALETTE and colours["centrosome"] != "#7f7f7f" and colours["golgi"] != "#2ca02c"
    assert not palette.hides_a_stain(colours["centrosome"]) and colours["er"] == "#123456"
