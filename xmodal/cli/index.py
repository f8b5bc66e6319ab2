"""``xmodal index``: folders or a manifest into a collection, or what would change (``--dry-run``)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from xmodal.cli.common import EXIT_PARTIAL, dump, settings_of, write_report
from xmodal.errors import UserError


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


def _fields(chosen: list[str] | None) -> str:
    """The lexical fields of a collection, in words."""
    if chosen is None:
        return "id, every string column (default)"
    return ", ".join(["id", *chosen])


def _unchanged(s: Any) -> str:
    """The summary's unchanged count, saying how many of them stay failed (so it agrees with the totals)."""
    return f"unchanged {s.unchanged}" + (f" ({s.still_failed} still failed)" if s.still_failed else "")


def cmd_index(args: argparse.Namespace) -> int:
    from xmodal.indexer.pipeline import index_sources

    settings = settings_of(
        args, clip_model=args.clip_model, clip_pretrained=args.clip_pretrained, audio_model=args.audio_model,
        batch_size=args.batch_size, workers=args.workers, exact_threshold=args.exact_threshold,
        recall_target=args.recall_target, max_index_memory=args.max_index_memory,
    )
    started = time.time()
    if bool(args.sources) == bool(args.manifest):
        raise UserError("give folders or files to index, or --manifest FILE (not both)")
    media = _media_columns(args.media) if args.media else None
    column_types = dict(_pair(v, "--column-type") for v in args.column_type or [])
    lexical = args.lexical.split(",") if args.lexical is not None else None
    if lexical is not None and not args.manifest:
        raise UserError("--lexical chooses a manifest's columns: give it with --manifest FILE")
    if args.manifest and args.dry_run:
        from xmodal.indexer.pipeline import plan_manifest

        plan = plan_manifest(settings, args.manifest, args.collection, media=media, column_types=column_types,
                             retry_failed=args.retry_failed, lexical=lexical)
        if args.json:
            dump(plan)
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
        print(f"lexical fields: {_fields(plan['lexical_fields'])}"
              + (" (every item's words would be written again)" if plan["would_refill_words"] else ""))
        print("the index would be rebuilt" if plan["would_rebuild_index"] else "the index would stay as it is")
        return 0
    if args.dry_run:
        from xmodal.indexer.pipeline import plan_sources

        plan = plan_sources(settings, args.sources, args.collection, retry_failed=args.retry_failed)
        if args.json:
            dump(plan)
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
                                     retry_failed=args.retry_failed, engine=args.engine, ray_address=args.ray_address,
                                     lexical=lexical)
        else:
            summary = index_sources(settings, args.sources, args.collection, progress=not args.no_progress,
                                    retry_failed=args.retry_failed, engine=args.engine, ray_address=args.ray_address)
    except UserError as exc:
        if args.report:
            write_report(args.report, {"status": "error", "collection": args.collection, "message": str(exc),
                                        "started_at": started, "finished_at": time.time()})
        raise
    code = EXIT_PARTIAL if summary.failed or summary.manifest.get("skipped_rows") else 0
    if args.report:
        write_report(args.report, {"status": "partial" if code else "ok", "exit_code": code, **summary.as_dict(),
                                    "started_at": started, "finished_at": time.time()})
    if args.json:
        dump(summary.as_dict())
        return code
    s = summary
    if s.manifest:
        m = s.manifest
        print(f"{s.collection}: {m['entries']} entries from {m['rows']} manifest rows | inserted {m['inserted']} | "
              f"updated {m['updated']} | metadata {m['metadata_updated']} | deleted {m['deleted']} | ok {s.ok} | "
              f"failed {s.failed} | {_unchanged(s)} | rows skipped {m['skipped_rows']}")
        print(f"lexical fields: {_fields(m.get('lexical_fields'))}"
              + (" (every item's words written again)" if m.get("words_refilled") else ""))
    else:
        print(f"{s.collection}: {s.scanned} files scanned, {s.new} new | ok {s.ok} | failed {s.failed} | "
              f"{_unchanged(s)} | deleted {s.deleted}")
    if s.skipped:
        print("skipped: " + ", ".join(f"{n} {ext}" for ext, n in sorted(s.skipped.items(), key=lambda kv: (-kv[1], kv[0])))
              + " (not indexed: unsupported type)")
    if s.embedded:
        print(f"embedded {s.embedded} items in {s.seconds.get('embed', 0):.1f}s "
              f"({s.items_per_second:.1f} items/s on {s.device})")
    for folder in s.unlisted:
        print(f"  could not list {folder}: its indexed files were kept, not deleted")
    for group in s.still_failed_reasons[:5]:
        print(f"  still failed: {group['count']} x {group['reason']}")
    if s.still_failed:
        print(f"  (failed before and unchanged since: not retried; --retry-failed tries again, "
              f"xmodal stats -c {s.collection} lists them)")
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
