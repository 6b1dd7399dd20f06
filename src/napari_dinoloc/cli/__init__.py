"""The ``dinoloc`` command: the same engine as the widgets, from a terminal.

Every problem the user can fix ends with one line on stderr and exit status 2; nothing
half-written is left behind (all outputs are written atomically).

``_parser.py`` holds the options, ``_commands.py`` turns them into one call of
``core.workflows`` per subcommand, ``_output.py`` the progress bar and the error line.
"""

from __future__ import annotations

import sys

from ..core.errors import Cancelled, DinolocError
from ._output import TextProgress, say_error
from ._parser import build_parser

__all__ = ["TextProgress", "build_parser", "main"]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from ._commands import run

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
