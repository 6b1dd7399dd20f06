"""The plugin's docks share one dock area as tabs, so each keeps the window's full height.

Stacked one under another (napari's default for a second dock in an area), the main dock showed a
third of its steps. The main and UMAP docks call ``dock_as_tab(self)`` when made; once napari has
docked one, it joins the plugin's other docks in its area as a tab and the window is watched, so
any later dock of this plugin (from ``launch.py`` or the Plugins menu, whichever widget it holds)
joins too and comes to the front. A dock the user drags elsewhere or floats later stays there.
Only Qt's own parent chain is used to find the window (napari's private attributes are not).
"""

from __future__ import annotations

from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QDockWidget, QMainWindow

PACKAGE = "napari_dinoloc."
WATCHED = "dinoloc_docks_watched"


def is_plugin_dock(dock: QDockWidget) -> bool:
    """A dock holding one of this plugin's widgets (any of them, present or future)."""
    inner = dock.widget()
    return inner is not None and type(inner).__module__.startswith(PACKAGE)


def plugin_docks(window: QMainWindow, area=None) -> list[QDockWidget]:
    """The plugin's docked (not floating, not closed) docks, in ``area`` if given."""
    docks = [dock for dock in window.findChildren(QDockWidget)
             if is_plugin_dock(dock) and not dock.isFloating() and not _closed(dock)]
    return [dock for dock in docks if area is None or window.dockWidgetArea(dock) == area]


def join_as_tab(dock: QDockWidget, bring_to_front: bool = True) -> bool:
    """Make ``dock`` a tab beside the plugin's other docks in its area (and show it, when it was not
    one already); False when there are none."""
    window = dock.parentWidget()
    if not isinstance(window, QMainWindow) or dock.isFloating():
        return False
    others = [other for other in plugin_docks(window, window.dockWidgetArea(dock)) if other is not dock]
    if not others:
        return False
    if dock in window.tabifiedDockWidgets(others[0]):
        return True  # already a tab (launch.py asks napari for tabs): leave the front tab as it is
    window.tabifyDockWidget(others[0], dock)
    if bring_to_front:
        dock.show()
        dock.raise_()
    return True


class _DockWatcher(QObject):
    """Sees every dock napari adds to the window; the plugin's join the others as tabs."""

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.ChildAdded and isinstance(event.child(), QDockWidget):
            dock = event.child()
            # deferred: napari adds the dock to its area (and may tabify it itself) after parenting it
            QTimer.singleShot(0, lambda: _join_if_plugin_dock(dock))
        return False


def watch_window(window: QMainWindow) -> None:
    """From now on every plugin dock added to ``window`` becomes a tab (once per window)."""
    if not window.property(WATCHED):
        window.installEventFilter(_DockWatcher(window))
        window.setProperty(WATCHED, True)


def dock_as_tab(widget) -> None:
    """Called by a plugin dock widget when made: once napari has docked it (after the call that made
    it), it joins the plugin's other docks as a tab, and later plugin docks join it."""
    QTimer.singleShot(0, lambda: _join_when_docked(widget))


def _join_when_docked(widget) -> None:
    try:
        dock = widget.parentWidget()
        window = dock.parentWidget() if isinstance(dock, QDockWidget) else None
        if isinstance(window, QMainWindow):
            watch_window(window)
            join_as_tab(dock)
    except RuntimeError:  # the widget was deleted before it was docked
        pass


def _join_if_plugin_dock(dock: QDockWidget) -> None:
    try:
        if is_plugin_dock(dock):
            join_as_tab(dock)
    except RuntimeError:  # the dock was deleted meanwhile
        pass


def _closed(dock: QDockWidget) -> bool:
    """Closed by the user: hidden although its window shows (a tab behind another is not closed)."""
    window = dock.parentWidget()
    if window is None or not window.isVisible():
        return False
    return not dock.isVisible() and not any(other.isVisible() for other in window.tabifiedDockWidgets(dock))
