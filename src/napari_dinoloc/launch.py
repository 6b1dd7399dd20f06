"""Open napari with the plugin docked and the built-in sample loaded (README's main job)."""

from __future__ import annotations

PLUGIN = "napari-dinoloc"
MAIN_DOCK = "DINO localization"


def plugin_dock_names() -> list[str]:
    """Every dock the plugin's manifest contributes, the main dock first (a new dock joins by itself).
    Call after napari has found its plugins (a Viewer exists): discovering again re-registers them."""
    from npe2 import PluginManager

    manifest = PluginManager.instance().get_manifest(PLUGIN)
    names = [widget.display_name for widget in manifest.contributions.widgets or ()]
    return sorted(names, key=lambda name: name != MAIN_DOCK)


def open_viewer_with_sample(run: bool = True):
    import napari

    viewer = napari.Viewer(title="napari-dinoloc")
    viewer.open_sample(PLUGIN, "synthetic")
    docks = {}
    for name in plugin_dock_names():  # the UMAP dock also warms UMAP up early
        # Tabs in one dock area: stacked, each dock got a third of the height (the main one's steps cut off).
        docks[name], _ = viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=True)
    if MAIN_DOCK in docks:
        docks[MAIN_DOCK].raise_()  # the user starts at step 1
    if run:
        napari.run()
    return viewer
