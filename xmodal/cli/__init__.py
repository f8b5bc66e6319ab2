"""The ``xmodal`` command line: index, search, eval, stats, verify, gc, collections, serve, bench.

Errors meant for people (bad flags, missing files, no network for a model) print one line on stderr
and exit with status 2; an unexpected error keeps its traceback and exits with 1. Modules: ``parser``
(the flags), ``index``, ``query`` (search, eval), ``admin`` (stats, verify, gc, serve, bench),
``collections`` (list, describe, rename, drop), ``common``.
"""

from __future__ import annotations

import logging
import sys

from pydantic import ValidationError

from xmodal.cli.common import (
    EXIT_BUG,
    EXIT_BUSY,
    EXIT_PARTIAL,
    EXIT_PROBLEMS,
    EXIT_USER_ERROR,
    settings_of,
    tell_catalog,
)
from xmodal.cli.parser import build_parser
from xmodal.errors import UserError
from xmodal.indexer.lock import CollectionBusy

__all__ = ["EXIT_BUG", "EXIT_BUSY", "EXIT_PARTIAL", "EXIT_PROBLEMS", "EXIT_USER_ERROR", "build_parser", "main"]


class _QuietThirdParty(logging.Filter):
    """open_clip logs through the root logger at ERROR before raising what we report ourselves."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "open_clip" not in record.pathname


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if verbose == 0:
        handler.addFilter(_QuietThirdParty())
    logging.basicConfig(level=level, handlers=[handler], force=True)


#: commands that end by saying which catalog they used (one line on stderr)
_SAY_CATALOG = ("index", "search", "stats")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "verbose", 0))
    try:
        code = int(args.func(args))
        if code in (0, EXIT_PARTIAL) and args.command in _SAY_CATALOG:
            tell_catalog(args, settings_of(args))  # after the work: an error stays one line
        return code
    except CollectionBusy as exc:
        print(f"xmodal {args.command}: {exc}", file=sys.stderr)
        return EXIT_BUSY
    except UserError as exc:
        print(f"xmodal {args.command}: error: {exc}", file=sys.stderr)
        detail = getattr(exc, "detail", None)
        if detail and getattr(args, "verbose", 0):
            print(f"  detail: {detail}", file=sys.stderr)
        return EXIT_USER_ERROR
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ())) or "settings"
        print(f"xmodal {args.command}: error: invalid setting {where}: {first.get('msg')}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as exc:
        print(f"interrupted: {exc}" if str(exc) else "interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
