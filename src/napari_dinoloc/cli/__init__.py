"""The ``dinoloc`` command: the same engine as the widgets, from a terminal.

Exit status: 0 done; 2 a problem the user can fix (one ``dinoloc: error:`` line on stderr, checked
before the long work where it can be, nothing half-written left behind); 3 a batch finished without
some images (listed with their reasons at the end; ``--fail-fast`` makes the first one fatal);
1 an engine bug; 130 cancelled or interrupted.

``_parser.py`` holds the options, ``_commands.py`` turns them into one call of
``core.workflows`` per subcommand, ``_output.py`` the progress bar and the error line.
"""

from __future__ import annotations

import sys

from ..core.errors import Cancelled, DinolocError
from ._output import TextProgress, say_error, warnings_as_lines
from ._parser import build_parser

__all__ = ["TextProgress", "build_parser", "main"]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from ._commands import run

    warnings_as_lines()
    try:
        return run(args) or 0
    except Cancelled as exc:
        say_error(f"dinoloc: {exc}")
        return 130
    except KeyboardInterrupt:
        print("\ndinoloc: interrupted; nothing half-written was left behind.", file=sys.stderr)
        return 130
    except DinolocError as exc:
        say_error(f"dinoloc: error: {exc}")
        return 2
    except Exception as exc:  # an engine bug: say so plainly, trace on request
        if args.debug:
            raise
        say_error(f"dinoloc: unexpected error: {exc!r}. Re-run with --debug for the traceback and please report it.")
        return 1
