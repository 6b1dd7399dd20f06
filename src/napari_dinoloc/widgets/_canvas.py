"""Removing a layer from a shown viewer without losing what the canvas still has to draw.

napari removes a layer by flushing vispy's queued GL commands at once (``context.finish()``), outside a
paint, in whichever GL context happens to be current. After Qt repaints the window (the docks, a progress
bar) that is Qt's own compositing context, not the canvas's: the first GL call fails, napari hides the
error, and every command still queued behind it is dropped, among them the creation of the colour
textures the Labels layers got earlier in the same turn. The next paint then draws those layers with a
texture that was never made ("Could not find texture with id ..."), which under PyQt6 can abort napari.
Making the canvas's context current first lets that flush run where it belongs.
"""

from __future__ import annotations


def remove_layer_safely(viewer, layer) -> None:
    """Remove ``layer`` (a layer or its name) from ``viewer`` with the canvas's GL context current."""
    canvas = scene_canvas(viewer)
    if canvas is not None:
        canvas.set_current()  # vispy: makes the canvas's own GL context current (no-op before it is shown)
    viewer.layers.remove(layer)


def scene_canvas(viewer):
    """The vispy canvas napari draws ``viewer`` on, or None (no window, or a napari without one)."""
    qt_viewer = getattr(getattr(viewer, "window", None), "_qt_viewer", None)
    canvas = getattr(qt_viewer, "canvas", None)
    return getattr(canvas, "_scene_canvas", None)
