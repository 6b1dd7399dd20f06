"""The Cell gallery screenshot for the docs (docs/images/10-gallery.png): now part of make_screenshots.py.

Run: xvfb-run -a -s "-screen 0 1700x1100x24" .venv/bin/python docs/make_gallery_screenshot.py
(the same as `docs/make_screenshots.py 10-gallery.png`: steps 1-4 on the synthetic sample, then the gallery).
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    sys.argv[1:] = ["10-gallery.png"]
    import make_screenshots  # docs/ is on the path when this file is run

    sys.exit(make_screenshots.main())
