"""``xmodal collections``: list, describe, rename and drop the collections of a catalog.

Rename and drop hold the collection's lock (an index run in progress makes them refuse, exit 75) and
change the catalog in one transaction; rename moves the collection's folder first (and back if the
catalog refuses), drop removes the folder after the rows are gone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from xmodal.cli.common import dump, settings_of
from xmodal.config import Settings
from xmodal.errors import ConflictError, UserError
from xmodal.indexer.lock import collection_lock
from xmodal.storage.catalog import STATUS_FAILED, Catalog, check_collection_name, describe_model
from xmodal.storage.layout import Layout


def _disk_bytes(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError  # pragma: no cover


def _summary(catalog: Catalog, layout: Layout, name: str) -> dict[str, Any]:
    cid = catalog.collection_id(name)
    counts = catalog.counts(cid)
    models, versions = {}, {}
    for space in catalog.spaces(cid):
        models[space.name] = describe_model(space.model)
        published = catalog.published_index(cid, space.name)
        versions[space.name] = published.version if published is not None else None
    return {"name": name, "items": counts["modality"], "models": models, "versions": versions,
            "disk_bytes": _disk_bytes(layout.collection_dir(name))}


def _describe(catalog: Catalog, layout: Layout, settings: Settings, name: str) -> dict[str, Any]:
    cid = catalog.collection_id(name)
    counts = catalog.counts(cid)
    spaces, index = [], {}
    for space in catalog.spaces(cid):
        spaces.append({"name": space.name, "family": space.family, "model": space.model.get("model"),
                       "pretrained": space.model.get("pretrained"), "dim": space.dim})
        published = catalog.published_index(cid, space.name)
        index[space.name] = None if published is None else {
            "version": published.version, "kind": published.kind, "vectors": published.n_vectors,
            "built_at": published.created_at.isoformat(), "path": str(layout.absolute(published.path))}
    folder = layout.collection_dir(name)
    return {"name": name, "spaces": spaces, "items": counts, "failed": counts["status"].get(STATUS_FAILED, 0),
            "index": index, "disk_bytes": _disk_bytes(folder), "source_roots": catalog.source_roots(cid),
            "paths": {"catalog": settings.catalog_label, "collection": str(folder),
                      "shards": str(folder / "shards"), "indexes": str(folder / "indexes")}}


def cmd_collections(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    layout = Layout(settings.home)
    catalog = Catalog(settings.resolved_database_url, create=False)
    try:
        return int(_ACTIONS[args.action](args, settings, catalog, layout))
    finally:
        catalog.close()


def _list(args: argparse.Namespace, settings: Settings, catalog: Catalog, layout: Layout) -> int:
    rows = [_summary(catalog, layout, name) for name in catalog.collection_names()]
    if args.json:
        dump({"catalog": settings.catalog_label, "collections": rows})
        return 0
    print(f"catalog: {settings.catalog_label}", file=sys.stderr)
    if not rows:
        print("no collections yet: `xmodal index FOLDER -c NAME` makes one")
        return 0
    print(f"{'name':<20}  {'items':<28}  {'version':<12}  {'disk':>10}  models")
    for r in rows:
        items = ", ".join(f"{m} {n}" for m, n in sorted(r["items"].items())) or "none"
        version = ", ".join(f"{s} v{v}" if v else f"{s} -" for s, v in r["versions"].items()) or "-"
        models = ", ".join(f"{s}: {m}" for s, m in r["models"].items()) or "-"
        print(f"{r['name']:<20}  {items:<28}  {version:<12}  {_size(r['disk_bytes']):>10}  {models}")
    return 0


def _show(args: argparse.Namespace, settings: Settings, catalog: Catalog, layout: Layout) -> int:
    d = _describe(catalog, layout, settings, args.name)
    if args.json:
        dump(d)
        return 0
    print(f"collection {d['name']}")
    for sp in d["spaces"]:
        model = f"{sp['model']} ({sp['pretrained']})" if sp["pretrained"] else sp["model"]
        index = d["index"].get(sp["name"])
        built = (f"index v{index['version']} ({index['kind']}, {index['vectors']} vectors, built {index['built_at']})"
                 if index else "no published index")
        print(f"  space {sp['name']}: {sp['family']} {model}, {sp['dim']}-d; {built}")
    items = ", ".join(f"{m} {n}" for m, n in sorted(d["items"]["modality"].items())) or "none"
    status = ", ".join(f"{s} {n}" for s, n in sorted(d["items"]["status"].items())) or "none"
    print(f"  items: {items} ({status}); failed {d['failed']} (`xmodal stats -c {d['name']}` lists them)")
    print(f"  on disk: {_size(d['disk_bytes'])} in {d['paths']['collection']}")
    print(f"  catalog: {d['paths']['catalog']}")
    for root in d["source_roots"]:
        print(f"  source: {root}")
    return 0


def _rename(args: argparse.Namespace, settings: Settings, catalog: Catalog, layout: Layout) -> int:
    old, new = args.name, check_collection_name(args.new_name)
    catalog.collection_id(old)  # not found: say so before anything moves
    if new in catalog.collection_names():
        raise ConflictError(f"a collection named {new!r} exists already: drop it first or choose another name")
    src, dst = layout.collection_dir(old), layout.collection_dir(new)
    with collection_lock(settings.home, old, settings.database_url), \
            collection_lock(settings.home, new, settings.database_url):
        if dst.exists():
            raise ConflictError(f"{dst} exists already (left by another catalog?): move it away or choose "
                                "another name")
        moved = src.exists()
        if moved:
            os.rename(src, dst)
        try:
            catalog.rename_collection(old, new, old_prefix=layout.relative(src) + os.sep,
                                      new_prefix=layout.relative(dst) + os.sep)
        except BaseException:
            if moved:
                os.rename(dst, src)
            raise
    if args.json:
        dump({"renamed": old, "to": new, "path": str(dst)})
    else:
        print(f"renamed collection {old} to {new}")
    return 0


def _confirm(args: argparse.Namespace, what: str) -> None:
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise UserError(f"{what}: pass --yes to confirm (no terminal to ask on)")
    answer = input(f"{what}? type the collection's name to confirm: ").strip()
    if answer != args.name:
        raise UserError("not confirmed: nothing was changed")


def _drop(args: argparse.Namespace, settings: Settings, catalog: Catalog, layout: Layout) -> int:
    summary = _summary(catalog, layout, args.name)
    items = sum(summary["items"].values())
    _confirm(args, f"drop collection {args.name} ({items} items, {_size(summary['disk_bytes'])} on disk)")
    with collection_lock(settings.home, args.name, settings.database_url):
        catalog.drop_collection(args.name)
        shutil.rmtree(layout.collection_dir(args.name), ignore_errors=True)
    if args.json:
        dump({"dropped": args.name, "items": items, "disk_bytes": summary["disk_bytes"]})
    else:
        print(f"dropped collection {args.name}: {items} items, {_size(summary['disk_bytes'])} freed")
    return 0


_ACTIONS = {"list": _list, "describe": _show, "rename": _rename, "drop": _drop}


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """``xmodal collections list|describe|rename|drop``."""
    p = sub.add_parser("collections", parents=[common], help="list, describe, rename or drop collections")
    p.set_defaults(func=cmd_collections, collection=None)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser("list", parents=[common], help="every collection: items, models, index version, disk")
    a.add_argument("--json", action="store_true")
    a = actions.add_parser("describe", parents=[common],
                           help="one collection: models, spaces, counts, failures, index version, paths")
    a.add_argument("name", metavar="NAME")
    a.add_argument("--json", action="store_true")
    a = actions.add_parser("rename", parents=[common], help="rename a collection (its files move with it)")
    a.add_argument("name", metavar="OLD")
    a.add_argument("new_name", metavar="NEW")
    a.add_argument("--json", action="store_true")
    a = actions.add_parser("drop", parents=[common],
                           help="remove a collection: its catalog rows, shards and indexes (asks first)")
    a.add_argument("name", metavar="NAME")
    a.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    a.add_argument("--json", action="store_true")
