"""What the commands share: exit statuses, settings from flags, JSON output, the run report."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from xmodal.config import Settings, legacy_home, load_settings

EXIT_BUG = 1  # an unexpected error (a traceback): report it
EXIT_USER_ERROR = 2  # fatal: bad flags, settings, sources or models; nothing to retry as is
EXIT_PARTIAL = 3  # the run finished, but some files failed (listed in the report and `xmodal stats`)
EXIT_PROBLEMS = 4  # `xmodal verify` found disagreements
EXIT_BUSY = 75  # another run holds the collection's lock (EX_TEMPFAIL): try again later


def settings_of(args: argparse.Namespace, **extra: Any) -> Settings:
    return load_settings(home=getattr(args, "home", None), database_url=getattr(args, "database_url", None),
                         device=getattr(args, "device", None), **extra)


def tell_catalog(args: argparse.Namespace, settings: Settings) -> None:
    """One line on stderr saying which catalog a command used (never on stdout, which --json keeps clean)."""
    line = f"catalog: {settings.catalog_label} (collection {args.collection})"
    chosen = getattr(args, "home", None) is not None or bool(os.environ.get("XMODAL_HOME"))
    if not chosen and settings.home == legacy_home():
        line += "; ./xmodal-data of this folder, as before (--home or XMODAL_HOME to choose)"
    print(line, file=sys.stderr)


def dump(obj: Any) -> None:
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=str)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a file name with undecodable bytes: escape it, stay valid JSON
        text = json.dumps(obj, indent=2, ensure_ascii=True, default=str)
    sys.stdout.write(text + "\n")


def short(meta: dict[str, Any]) -> str:
    keep = {k: v for k, v in meta.items() if k in ("title", "width", "height", "format", "duration_s")}
    return json.dumps(keep, ensure_ascii=False) if keep else ""


def write_report(path: Path, report: dict[str, Any]) -> None:
    """The run report for schedulers, written atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=True, default=str) + "\n")
    os.replace(tmp, path)
