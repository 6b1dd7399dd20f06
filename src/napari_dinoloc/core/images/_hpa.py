"""Human Protein Atlas per-stain files (``<id>_red.png``, ``_green``, ``_blue``, ``_yellow``) grouped
into one image each, and folders expanded into the files they hold."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

HPA_FILE_PATTERN = re.compile(
    r"^(?P<id>.+)_(?P<colour>red|green|blue|yellow)\.(png|jpe?g|tiff?)$", re.IGNORECASE
)
#: HPA colours in the Kaggle / DINO4Cells channel order.
HPA_COLOUR_ORDER = ("red", "green", "blue", "yellow")


def hpa_colour(path: Path) -> str | None:
    match = HPA_FILE_PATTERN.match(path.name)
    return match.group("colour").lower() if match else None


def hpa_id(path: Path) -> str | None:
    match = HPA_FILE_PATTERN.match(path.name)
    return match.group("id") if match else None


def hpa_siblings(path: Path) -> list[Path]:
    """The stain files of the same HPA id beside ``path`` (red, green, blue, yellow order)."""
    if not hpa_colour(path) or not path.parent.is_dir():
        return [path]
    return next((g for g in find_hpa_groups(path.parent.iterdir()) if path.resolve() in [p.resolve() for p in g]), [path])


def find_hpa_groups(paths: Iterable[str | Path]) -> list[list[Path]]:
    """Group HPA stain files by id: ``<id>_red.png``, ``_green``, ``_blue``, ``_yellow``.

    Folders among ``paths`` are searched (not recursively). Each group is ordered red, green,
    blue, yellow (the HPA_SLOTS order); groups are sorted by folder and id. Other files are ignored.
    """
    groups: dict[tuple[Path, str], dict[str, Path]] = {}
    for path in expand_folders(paths):
        match = HPA_FILE_PATTERN.match(path.name)
        if match:
            key = (path.parent, match.group("id"))
            groups.setdefault(key, {})[match.group("colour").lower()] = path
    return [
        [files[c] for c in HPA_COLOUR_ORDER if c in files]
        for _, files in sorted(groups.items(), key=lambda item: (str(item[0][0]), item[0][1]))
    ]


def expand_folders(paths: Iterable[str | Path]) -> list[Path]:
    found = []
    for path in map(Path, paths):
        found.extend(sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path])
    return found
