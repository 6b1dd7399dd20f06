"""Open napari with the plugin docked and the built-in sample loaded (README's main job)."""

from __future__ import annotations


def open_viewer_with_sample(run: bool = True):
    import napari

    viewer = napari.Viewer(title="napari-dinoloc")
    viewer.open_sample("napari-dinoloc", "synthetic")
    viewer.window.add_plugin_dock_widget("napari-dinoloc", "DINO localization")
    viewer.window.add_plugin_dock_widget("napari-dinoloc", "Cell UMAP")  # also warms UMAP up early
    if run:
        napari.run()
    return viewer
