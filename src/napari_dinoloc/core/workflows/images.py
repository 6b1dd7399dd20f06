"""A CellImage from channels a user marked with stains: the same checks as reading a file."""

from __future__ import annotations

from typing import Sequence

import numpy as np

NOT_USED = "not used"


def image_from_channels(data: np.ndarray, stains: Sequence[str], name: str, notes: Sequence[str] = ()):
    """Drop the channels marked 'not used', check the stains (a protein channel is required) and make
    the CellImage as the command line does (``core.images.make_cell_image``)."""
    from ..images import make_cell_image
    from ..stains import validate_stains

    keep = [i for i, stain in enumerate(stains) if stain != NOT_USED]
    kept = validate_stains([stains[i] for i in keep], len(keep), need_protein=True)
    return make_cell_image(np.asarray(data)[keep], kept, name, notes)
