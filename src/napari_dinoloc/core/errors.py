"""Errors the user can act on. Their message says what went wrong and what to do."""


class DinolocError(Exception):
    """A problem with the user's input or environment, explained in plain words."""


class Cancelled(DinolocError):
    """The user cancelled a long-running job; nothing was written."""

    def __init__(self, message: str = "Cancelled: nothing was written."):
        super().__init__(message)


class NoCellsFound(DinolocError):
    """Segmentation found no nuclei or no cells (an image is skipped; a tile of a large image simply has none)."""
