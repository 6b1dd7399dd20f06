"""napari widgets: they gather choices, start engine work off the main thread and show results."""
