"""The ``xmodal`` command line: index, search, eval, stats, bench.

Errors meant for people (bad flags, missing files, no network for a model) print one line on stderr
and exit with status 2; an unexpected error keeps its traceback and exits with 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from xmodal import __version__
from xmodal.config import Settings, load_settings, parse_bytes
from xmodal.errors import UserError
from xmodal.indexer.lock import CollectionBusy
from xmodal.spaces import ANY, TARGETS
from xmodal.storage.uris import path_to_uri

EXIT_BUG = 1  # an unexpected error (a traceback): report it
EXIT_USER_ERROR = 2  # fatal: bad flags, settings, sources or models; nothing to retry as is
EXIT_PARTIAL = 3  # the run finished, but some files failed (listed in the report and `xmodal stats`)
EXIT_PROBLEMS = 4  # `xmodal verify` found disagreements
EXIT_BUSY = 75  # another run holds the collection's lock (EX_TEMPFAIL): try again later


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


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    return load_settings(home=getattr(args, "home", None), database_url=getattr(args, "database_url", None),
                         device=getattr(args, "device", None), **extra)


def _dump(obj: Any) -> None:
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=str)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a file name with undecodable bytes: escape it, stay valid JSON
        text = json.dumps(obj, indent=2, ensure_ascii=True, default=str)
    sys.stdout.write(text + "\n")


def _short(meta: dict[str, Any]) -> str:
    keep = {k: v for k, v in meta.items() if k in ("title", "width", "height", "format", "duration_s")}
    return json.dumps(keep, ensure_ascii=False) if keep else ""


# commands ------------------------------------------------------------------------------------

def _write_report(path: Path, report: dict[str, Any]) -> None:
    """The run report for schedulers, written atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=True, default=str) + "\n")
    os.replace(tmp, path)


def _pair(text: str, flag: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise UserError(f"{flag} takes NAME=VALUE, not {text!r}")
    return name.strip(), value.strip()


def _media_columns(values: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for text in values:
        name, sep, modality = text.partition("=")
        out[name.strip()] = modality.strip() if sep else None
    return out


def cmd_index(args: argparse.Namespace) -> int:
    from xmodal.indexer.pipeline import index_sources

    settings = _settings(
        args, clip_model=args.clip_model, clip_pretrained=args.clip_pretrained, audio_model=args.audio_model,
        batch_size=args.batch_size, workers=args.workers, exact_threshold=args.exact_threshold,
        recall_target=args.recall_target, max_index_memory=args.max_index_memory,
    )
    started = time.time()
    if bool(args.sources) == bool(args.manifest):
        raise UserError("give folders or files to index, or --manifest FILE (not both)")
    media = _media_columns(args.media) if args.media else None
    column_types = dict(_pair(v, "--column-type") for v in args.column_type or [])
    if args.manifest and args.dry_run:
        from xmodal.indexer.pipeline import plan_manifest

        plan = plan_manifest(settings, args.manifest, args.collection, media=media, column_types=column_types,
                             retry_failed=args.retry_failed)
        if args.json:
            _dump(plan)
            return 0
        print(f"{args.collection} (dry run, nothing changed): {plan['entries']} entries from {plan['rows']} rows | "
              f"insert {plan['inserted']} | update {plan['updated']} | metadata {plan['metadata_updated']} | "
              f"unfinished {plan['unfinished']} | retry {plan['retry']} | delete {plan['deleted']} | "
              f"unchanged {plan['unchanged']} | problems {plan['problem_count']}")
        for kind, keys in plan["examples"].items():
            for key in keys:
                print(f"  {kind}: {key}")
        for problem in plan["problems"]:
            print(f"  problem: {problem}")
        if plan["held"]:
            print(f"  {plan['held']} deletes would be held back: some rows could not be read far enough to know their id")
        print("the index would be rebuilt" if plan["would_rebuild_index"] else "the index would stay as it is")
        return 0
    if args.dry_run:
        from xmodal.indexer.pipeline import plan_sources

        plan = plan_sources(settings, args.sources, args.collection, retry_failed=args.retry_failed)
        if args.json:
            _dump(plan)
            return 0
        print(f"{args.collection} (dry run, nothing changed): {plan['scanned']} files scanned | new {plan['new']} | "
              f"changed {plan['changed']} | unfinished {plan['unfinished']} | retry {plan['retry']} | "
              f"deleted {plan['deleted']} | unreadable {plan['unreadable']} | unchanged {plan['unchanged']}")
        for kind, uris in plan["examples"].items():
            for uri in uris:
                print(f"  {kind}: {uri}")
        print("the index would be rebuilt" if plan["would_rebuild_index"] else "the index would stay as it is")
        return 0
    try:
        if args.manifest:
            from xmodal.indexer.pipeline import index_manifest

            summary = index_manifest(settings, args.manifest, args.collection, media=media,
                                     column_types=column_types, progress=not args.no_progress,
                                     retry_failed=args.retry_failed, engine=args.engine, ray_address=args.ray_address)
        else:
            summary = index_sources(settings, args.sources, args.collection, progress=not args.no_progress,
                                    retry_failed=args.retry_failed, engine=args.engine, ray_address=args.ray_address)
    except UserError as exc:
        if args.report:
            _write_report(args.report, {"status": "error", "collection": args.collection, "message": str(exc),
                                        "started_at": started, "finished_at": time.time()})
        raise
    code = EXIT_PARTIAL if summary.failed or summary.manifest.get("skipped_rows") else 0
    if args.report:
        _write_report(args.report, {"status": "partial" if code else "ok", "exit_code": code, **summary.as_dict(),
                                    "started_at": started, "finished_at": time.time()})
    if args.json:
        _dump(summary.as_dict())
        return code
    s = summary
    if s.manifest:
        m = s.manifest
        print(f"{s.collection}: {m['entries']} entries from {m['rows']} manifest rows | inserted {m['inserted']} | "
              f"updated {m['updated']} | metadata {m['metadata_updated']} | deleted {m['deleted']} | ok {s.ok} | "
              f"failed {s.failed} | unchanged {s.unchanged} | rows skipped {m['skipped_rows']}")
    else:
        print(f"{s.collection}: {s.scanned} files scanned, {s.new} new | ok {s.ok} | failed {s.failed} | "
              f"unchanged {s.unchanged} | deleted {s.deleted}")
    if s.embedded:
        print(f"embedded {s.embedded} items in {s.seconds.get('embed', 0):.1f}s "
              f"({s.items_per_second:.1f} items/s on {s.device})")
    for folder in s.unlisted:
        print(f"  could not list {folder}: its indexed files were kept, not deleted")
    for uri, reason in s.failures[:20]:
        print(f"  failed: {uri}: {reason}")
    if len(s.failures) > 20:
        print(f"  ... and {len(s.failures) - 20} more (xmodal stats --collection {s.collection})")
    for warning in s.warnings:
        print(f"  warning: {warning}")
    print("collection now: " + ", ".join(f"{k} {v}" for k, v in sorted(s.totals.items())))
    for space, ix in sorted(s.index.items()):
        if ix:
            state = "built" if ix.get("built") else "unchanged"
            print(f"index {space}: version {ix['version']} ({ix['kind']}, {ix['vectors']} vectors, {state})")
    if s.alignment:
        a = s.alignment
        print(f"alignment clap -> clip fitted on {a['train']} bank texts; held-out ({a['held_out']}): "
              f"cosine {a['held_out_cosine_mean']}, recall@1 {a['held_out_recall@1']}, "
              f"recall@10 {a['held_out_recall@10']}")
    if s.swept:
        print(f"removed {len(s.swept)} files an interrupted run had left")
    if code:
        skipped = s.manifest.get("skipped_rows", 0)
        print(f"exit {code}: {s.failed} items failed" + (f", {skipped} manifest rows skipped" if skipped else "")
              + " (partial); the rest is indexed")
    return code


def _open_searcher(args: argparse.Namespace) -> Any:
    from xmodal.search.engine import Searcher

    return Searcher(_settings(args), args.collection, model=(args.clip_model, args.clip_pretrained),
                    audio_model=args.audio_model)


def cmd_search(args: argparse.Namespace) -> int:
    searcher = _open_searcher(args)
    try:
        outcome = searcher.run(text=args.text, image=args.image, audio=args.audio, item=args.item,
                               target=args.target, k=args.k, recall=args.recall)
    finally:
        searcher.close()
    results = outcome.results
    query = {"text": args.text} if args.text is not None else (
        {"image": path_to_uri(str(args.image))} if args.image is not None else
        {"audio": path_to_uri(str(args.audio))} if args.audio is not None else {"item": args.item})
    if args.json:
        _dump({"collection": args.collection, "query": query, "target": args.target, "k": args.k,
               "routes": outcome.routes, "fusion": outcome.fusion, "ann": outcome.ann,
               "results": [r.as_dict() for r in results]})
        return 0
    if not results:
        print("no results")
    for rank, r in enumerate(results, 1):
        where = f"{r.space}/{r.method}"
        seg = f"  [{r.segment['start_s']:.1f}-{r.segment['end_s']:.1f} s]" if r.segment else ""
        print(f"{rank:>3}  {r.score:7.4f}  {r.id:>8}  {r.modality:<5}  {where:<15}  {r.uri}{seg}  "
              f"{_short(r.metadata)}".rstrip())
    if outcome.fusion:
        print(f"(lists of different spaces merged by {outcome.fusion}: scores are fused ranks)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from xmodal.search.evaluate import evaluate

    searcher = _open_searcher(args)
    try:
        report = evaluate(searcher, args.queries, k=args.k, progress=not args.no_progress, recall=args.recall)
    finally:
        searcher.close()
    if args.json:
        _dump(report)
        return 0
    print(f"queries {report['queries']}  recall@1 {report['recall@1']:.3f}  recall@{args.k} {report['recall@k']:.3f}"
          f"  MRR {report['mrr']:.3f}  latency p50 {report['latency_ms_p50']:.1f} ms"
          f"  p95 {report['latency_ms_p95']:.1f} ms")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from xmodal.indexer.maintenance import repair, verify
    from xmodal.storage.catalog import Catalog
    from xmodal.storage.layout import Layout

    settings = _settings(args)
    catalog = Catalog(settings.resolved_database_url, create=False)
    try:
        layout = Layout(settings.home)
        report = (repair(catalog, layout, settings, args.collection, progress=not args.json) if args.repair
                  else verify(catalog, layout, args.collection))
    finally:
        catalog.close()
    if args.json:
        _dump({"collection": args.collection, **report.as_dict()})
    else:
        for line in report.repaired:
            print(f"repaired: {line}")
        print(f"collection {args.collection}: " + ", ".join(f"{k} {v}" for k, v in sorted(report.counts.items())))
        for line in report.problems:
            print(f"  problem: {line}")
        print("consistent" if report.ok else f"{len(report.problems)} problems (xmodal verify --repair)")
    return 0 if report.ok else EXIT_PROBLEMS


def cmd_gc(args: argparse.Namespace) -> int:
    from xmodal.indexer.maintenance import gc, parse_duration
    from xmodal.storage.catalog import Catalog
    from xmodal.storage.layout import Layout

    settings = _settings(args)
    grace = parse_duration(args.grace)
    catalog = Catalog(settings.resolved_database_url, create=False)
    try:
        removed = gc(catalog, Layout(settings.home), settings, args.collection, grace_s=grace)
    finally:
        catalog.close()
    if args.json:
        _dump({"collection": args.collection, "grace_s": grace, "removed": removed})
        return 0
    for path in removed:
        print(f"removed {path}")
    print(f"{args.collection}: removed {len(removed)} unpublished, superseded or unreferenced files")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from xmodal.indexer.publish import retrain_due
    from xmodal.storage.catalog import Catalog
    from xmodal.storage.stats import collection_stats

    settings = _settings(args)
    catalog = Catalog(settings.resolved_database_url, create=False)
    try:
        stats = collection_stats(catalog, args.collection)
        cid = catalog.collection_id(args.collection)
        for space in catalog.spaces(cid):
            published = catalog.published_index(cid, space.name)
            if published is not None:
                due = retrain_due(catalog, settings, cid, space, published.summary or {})
                for modality, part in stats["index"][space.name]["parts"].items():
                    part["retrain_due"] = due.get(modality)
    finally:
        catalog.close()
    stats["device"] = _device_report()
    if args.json:
        _dump(stats)
        return 0
    items = stats["items"]
    print(f"collection {stats['collection']}")
    print("  items by status:   " + ", ".join(f"{k} {v}" for k, v in sorted(items["status"].items())))
    print("  items by modality: " + ", ".join(f"{k} {v}" for k, v in sorted(items["modality"].items())))
    for sp in stats["spaces"]:
        print(f"  space {sp['name']}: {sp['family']} {sp['model']}"
              f"{' (' + str(sp['pretrained']) + ')' if sp['pretrained'] else ''}, dim {sp['dim']}")
    if stats.get("alignment"):
        a = stats["alignment"]
        print(f"  alignment {a['source']} -> {a['target']}: {a['method']} on {a['bank']} texts; held-out "
              f"({a['held_out']}): cosine {a['held_out_cosine_mean']}, recall@1 {a['held_out_recall@1']} "
              f"(chance {a['chance_recall@1']}), recall@10 {a['held_out_recall@10']}")
    for name, ix in stats["index"].items():
        print(f"  index {name}: version {ix['version']}, {ix['kind']}, {ix['vectors']} vectors, "
              f"{ix['bytes'] / 1e6:.2f} MB, built {ix['built_at']}")
        for modality, part in ix["parts"].items():
            aligned = ix.get("aligned") or {}
            via = f" (aligned from {aligned['source']})" if modality in aligned.get("parts", []) else ""
            print(f"    {modality}: {part['recipe']}, {part['vectors']} vectors{via}")
            if part["kind"] != "flat":
                grown = f", grown by {part['appended']} without retraining" if part.get("appended") else ""
                print(f"      measured on {part['probe_queries']} probes: recall@1 {part['recall@1']}, "
                      f"recall@10 {part['recall@10']} (target {part['recall_target']}"
                      f"{'' if part['target_met'] else ', NOT met'}), {part['latency_ms']} ms/query, "
                      f"{part['bytes_per_vector']} B/vector in RAM + {part['store_bytes_per_vector']} B/vector "
                      f"re-rank store; trained for {part['trained_n']} vectors{grown}")
            print(f"      retrain due: {part['retrain_due'] or 'no'}")
    print(f"  device: {stats['device']}")
    if stats["failed"]:
        print(f"  failed ({len(stats['failed'])}):")
        for f in stats["failed"][:50]:
            print(f"    {f['uri']}: {f['reason']}")
    return 0


def _device_report() -> dict[str, Any]:
    import faiss
    import torch

    return {"torch": "cuda" if torch.cuda.is_available() else "cpu",
            "faiss_gpus": int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0}


def cmd_serve(args: argparse.Namespace) -> int:
    from xmodal.api import server
    from xmodal.api.app import create_app
    from xmodal.api.service import Service

    settings = _settings(args)
    service = Service(settings, args.collection or None)
    print(f"xmodal: serving {', '.join(service.names)} on http://{args.host}:{args.port} "
          f"(docs at /docs; /readyz turns 200 once models and indexes are loaded)", file=sys.stderr)
    server.run(create_app(service), settings, host=args.host, port=args.port,
               log_level="info" if getattr(args, "verbose", 0) else "warning")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from xmodal.bench import run_index_bench

    report = run_index_bench(_settings(args, clip_model=args.clip_model, clip_pretrained=args.clip_pretrained),
                             sources=args.sources, n_images=args.images, work_dir=args.work_dir)
    _dump(report) if args.json else print(report["table"])
    return 0


# parser --------------------------------------------------------------------------------------

def _add_common(p: argparse.ArgumentParser) -> None:
    """Options taken before or after the command; SUPPRESS keeps a subcommand from resetting them."""
    g = p.add_argument_group("common options")
    g.add_argument("--home", type=Path, default=argparse.SUPPRESS,
                   help="data dir (env XMODAL_HOME; default ./xmodal-data)")
    g.add_argument("--database-url", default=argparse.SUPPRESS,
                   help="SQLAlchemy URL of the catalog (env XMODAL_DATABASE_URL; default SQLite in the data dir)")
    g.add_argument("--device", default=argparse.SUPPRESS, help="auto, cpu, cuda (env XMODAL_DEVICE)")
    g.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS)


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    _add_common(p)
    return p


def _model_flags(p: argparse.ArgumentParser, *, recorded: bool = False, audio: bool = True) -> None:
    if recorded:  # search/eval use the collection's model; these only say where its files are now
        p.add_argument("--clip-model", help="where the collection's model config is now, if it moved")
        p.add_argument("--clip-pretrained", help="where the collection's checkpoint is now, if it moved "
                                                 "(must be the same weights)")
        p.add_argument("--audio-model", help="where the collection's CLAP folder is now, if it moved")
        return
    p.add_argument("--clip-model", help="open_clip architecture, hf-hub:ID, local-dir:PATH or a config .json "
                                        "(env XMODAL_CLIP_MODEL; default ViT-B-32)")
    p.add_argument("--clip-pretrained", help="pretrained tag, hf-hub:ID or checkpoint PATH "
                                             "(env XMODAL_CLIP_PRETRAINED; default laion2b_s34b_b79k)")
    if audio:
        p.add_argument("--audio-model", help="CLAP model for audio: Hugging Face id or a local folder (env "
                                             "XMODAL_AUDIO_MODEL; default: the collection's, else "
                                             "laion/clap-htsat-unfused; needs the 'audio' extra)")


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def _fraction(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        x = float("nan")
    if not 0.0 < x <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], not {value!r}")
    return x


def _memory(value: str) -> int:
    try:
        n = parse_bytes(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    assert n is not None
    return n


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(prog="xmodal", description="Cross-modal search: index, search, evaluate.")
    parser.add_argument("--version", action="version", version=f"xmodal {__version__}")
    _add_common(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("index", parents=[common], help="index folders of images, sound and text, or a manifest")
    p.add_argument("sources", nargs="*", type=Path, metavar="SOURCE")
    p.add_argument("--manifest", type=Path, metavar="FILE",
                   help="index the rows of a CSV, TSV, JSONL or Parquet file (gzip too): an 'id' column, media "
                        "columns (default 'uri': a path, file://, http(s):// or an fsspec URL) and metadata columns; "
                        "rerunning with a changed manifest applies inserts, updates and deletes")
    p.add_argument("--media", action="append", metavar="COL[=MODALITY]",
                   help="a media column of the manifest (repeat for several: --media image --media title=text); "
                        "MODALITY is image, audio or text (text: the cell is the text itself); without it, from "
                        "the URL's extension or the fetched bytes")
    p.add_argument("--column-type", action="append", metavar="COL=TYPE",
                   help="type of a metadata column: str, int, float, bool or list (e.g. --column-type sku=str; "
                        "title, category, brand are str, price float and tags list unless told otherwise)")
    p.add_argument("--collection", "-c", required=True)
    _model_flags(p)
    p.add_argument("--batch-size", type=_positive)
    p.add_argument("--workers", type=int, help="decode processes (0 = cores - 1)")
    p.add_argument("--exact-threshold", type=int, help="vectors below which the index is exact")
    p.add_argument("--recall-target", type=_fraction, metavar="R",
                   help="recall@10 (against exact search, on held-out probes) the index is tuned for; default 0.95")
    p.add_argument("--max-index-memory", type=_memory, metavar="SIZE",
                   help="RAM budget of each space's index, e.g. 2GiB or 800MB (sizes the PQ codes; the re-rank "
                        "vectors stay in RAM only if they fit too, else they are memory-mapped)")
    p.add_argument("--retry-failed", action="store_true", help="try failed files again even if unchanged")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="where decode and encode run: worker processes here (local), or Ray Data on a Ray "
                        "cluster (ray; pip install 'xmodal[ray]')")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="Ray cluster to join with --engine ray, e.g. 10.0.0.5:6379 or auto (default: start a "
                        "local one)")
    p.add_argument("--dry-run", action="store_true",
                   help="print what would change (new, changed, deleted files) and change nothing")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    p.add_argument("--report", type=Path, metavar="FILE.json",
                   help="write a machine-readable run report (counts, failures, durations, throughput)")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", parents=[common], help="search a collection")
    p.add_argument("--collection", "-c", required=True)
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--text")
    q.add_argument("--image", type=Path)
    q.add_argument("--audio", type=Path)
    q.add_argument("--item", type=int)
    p.add_argument("--target", default=ANY, choices=TARGETS)
    p.add_argument("-k", type=_positive, default=10)
    p.add_argument("--recall", type=_fraction, metavar="R",
                   help="recall@10 wanted from approximate indexes: the cheapest point measured at build time "
                        "that reaches it (lower is faster); default: the tuned point")
    p.add_argument("--json", action="store_true")
    _model_flags(p, recorded=True)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("eval", parents=[common], help="measure recall and latency on labelled queries")
    p.add_argument("--collection", "-c", required=True)
    p.add_argument("--queries", type=Path, required=True, help="JSONL file of queries")
    p.add_argument("-k", type=_positive, default=10)
    p.add_argument("--recall", type=_fraction, metavar="R",
                   help="search approximate indexes at the operating point measured for this recall@10")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    _model_flags(p, recorded=True)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("stats", parents=[common], help="counts, failures, spaces and index of a collection")
    p.add_argument("--collection", "-c", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("verify", parents=[common],
                       help="check catalog, shards and index agree (exit 4 when not); --repair fixes what it can")
    p.add_argument("--collection", "-c", required=True)
    p.add_argument("--repair", action="store_true",
                   help="remove orphan files, mark items of damaged shards for re-embedding, rebuild the index")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("gc", parents=[common],
                       help="remove unpublished and superseded index versions and unreferenced shards")
    p.add_argument("--collection", "-c", required=True)
    p.add_argument("--grace", default="1h", metavar="DURATION",
                   help="keep superseded versions and unreferenced shards this long (90s, 30m, 2h, 7d; default 1h)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser("serve", parents=[common], help="the HTTP API and web page")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--collection", "-c", action="extend", nargs="+", default=[],
                   help="collections to serve (default: all)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("bench", parents=[common], help="indexing throughput against model-only forward")
    p.add_argument("sources", nargs="*", type=Path, metavar="SOURCE",
                   help="media to index (default: generated photos)")
    _model_flags(p, audio=False)
    p.add_argument("--images", type=_positive, default=512, help="generated images when no SOURCE is given")
    p.add_argument("--work-dir", type=Path, help="scratch dir (default: a temporary one)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "verbose", 0))
    try:
        return int(args.func(args))
    except CollectionBusy as exc:
        print(f"xmodal {args.command}: {exc}", file=sys.stderr)
        return EXIT_BUSY
    except UserError as exc:
        print(f"xmodal {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ())) or "settings"
        print(f"xmodal {args.command}: error: invalid setting {where}: {first.get('msg')}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
