"""``python -m napari_dinoloc.cli``."""

import sys

from . import main

sys.exit(main())
