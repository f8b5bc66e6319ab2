"""``xmodal search`` and ``xmodal eval``: queries of a collection, one at a time or from a labelled file."""

from __future__ import annotations

import argparse
import json
from typing import Any

from xmodal.cli.common import dump, settings_of, short
from xmodal.storage.uris import path_to_uri


def _open_searcher(args: argparse.Namespace) -> Any:
    from xmodal.search.engine import Searcher

    return Searcher(settings_of(args), args.collection, model=(args.clip_model, args.clip_pretrained),
                    audio_model=args.audio_model)


def _fields(searcher: Any) -> dict[str, str]:
    from xmodal.search.filters import metadata_fields

    return metadata_fields(searcher.catalog, searcher.collection_id)


def _where(text: str | None, fields: dict[str, str]) -> Any:
    """``--filter``: the JSON filter of the HTTP API, checked against the collection's fields as they are now."""
    if not text:
        return None
    from xmodal.api.schemas import parse_filter_text
    from xmodal.search.filters import prepare_filter

    return prepare_filter(parse_filter_text(text), fields)


def cmd_search(args: argparse.Namespace) -> int:
    from xmodal.api.schemas import parse_weights_text
    from xmodal.search.browse import find

    searcher = _open_searcher(args)
    try:
        clip = ("video", searcher.query_file(args.video, "video")) if args.video is not None else None
        fields = _fields(searcher) if args.filter or args.sort or args.facet else {}
        page = find(searcher, fields=fields, where=_where(args.filter, fields), sort=args.sort, facets=args.facet,
                    group_by=args.group, group_weights=parse_weights_text(args.group_weights),
                    text=args.text, image=args.image, audio=args.audio, item=args.item, media=clip,
                    target=args.target, k=args.k, offset=args.offset, recall=args.recall, fusion=args.fusion,
                    min_relevance=args.min_relevance, min_score=args.min_score, mode=args.mode,
                    segments=args.segments)
    finally:
        searcher.close()
    outcome = page.outcome
    grouped = page.grouped
    results = outcome.results
    query = {"text": args.text} if args.text is not None else (
        {"image": path_to_uri(str(args.image))} if args.image is not None else
        {"audio": path_to_uri(str(args.audio))} if args.audio is not None else
        {"video": path_to_uri(str(args.video))} if args.video is not None else
        {"item": args.item} if args.item is not None else None)
    if args.json:
        t = outcome.timings
        dump({"collection": args.collection, "query": query, "mode": outcome.mode, "target": args.target, "k": args.k,
              "offset": args.offset,
               "filter": json.loads(args.filter) if args.filter else None, "routes": outcome.routes, "fusion": outcome.fusion, "ann": outcome.ann, "cutoff": outcome.cutoff,
               "no_good_match": outcome.no_good_match, **page.as_dict(), "results": page.results(lambda r: r.as_dict()),
               "timings_ms": {"encode": round(t.encode_ms, 3), "ann": round(t.ann_ms, 3), "sql": round(t.sql_ms, 3)}})
        return 0
    if outcome.no_good_match:
        dropped = (outcome.cutoff or {}).get("dropped", 0)
        print(f"no good match: none of the {dropped} closest results passes "
              + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in (outcome.cutoff or {}).items() if k != "dropped"))
        return 0
    if not results or (grouped is not None and grouped.products == []):
        print("no results")
        return 0
    if grouped is not None and grouped.products is not None:
        _print_products(grouped, args.offset)
        _print_counts(page)
        return 0
    print(f"{'rank':>4}  {'relev.':>7}  {'score':>7}  {'id':>8}  {'kind':<5}  {'space/method':<15}  uri")
    for rank, r in enumerate(results, args.offset + 1):
        where = f"{r.space}/{r.method}"
        seg = f"  [{r.segment['start_s']:.1f}-{r.segment['end_s']:.1f} s]" if r.segment else ""
        relevance = f"{r.relevance:7.2f}" if r.relevance is not None else f"{'exact' if r.exact else '-':>7}"
        print(f"{rank:>4}  {relevance}  {r.score:7.4f}  {r.id:>8}  {r.modality:<5}  {where:<15}  {r.uri}{seg}  "
              f"{short(r.metadata)}".rstrip())
        if r.segments:
            print(f"{'':>6}segments: " + ", ".join(f"{s['start_s']:.1f}-{s['end_s']:.1f} s ({s['score']:.3f})"
                                                  for s in r.segments))
    _print_counts(page)
    if outcome.mode not in ("vector", "browse"):
        print(f"({outcome.mode}: {outcome.fusion}; a lexical result's score is its full-text score)")
    elif outcome.fusion:
        print(f"(lists of several targets merged by {outcome.fusion}; relevance: -log10 of how many unrelated items "
              "would score as high, comparable across kinds; score: the raw inner product in its space)")
    return 0


def _print_products(grouped: Any, offset: int) -> None:
    """One line per product: rank, score, source id, the item that matched best, the row's title."""
    print(f"{'rank':>4}  {'score':>8}  {'relev.':>7}  {'source id':<16}  {'best item':<22}  items  title")
    for rank, p in enumerate(grouped.products, offset + 1):
        b = p["best"]
        relevance = f"{p['relevance']:7.2f}" if p["relevance"] is not None else f"{'exact' if p['exact'] else '-':>7}"
        best = f"{b['id']} {b['column'] or b['modality']}"
        title = p["metadata"].get("title")
        print(f"{rank:>4}  {p['score']:8.4f}  {relevance}  {str(p['source_id'] or '-'):<16}  {best:<22}  "
              f"{len(p['items']):>5}  {title if isinstance(title, str) else ''}".rstrip())
    print(f"(one row per product: {grouped.fusion}; {grouped.candidates} items considered)")


def _print_counts(page: Any) -> None:
    """The total ("N results", "(estimated)" when it is one), what the sort considered, and the facets."""
    over = "" if page.counted == "matches" else f" among the best {page.window} by relevance"
    print(f"{page.total} results{over}" + ("" if page.total_exact else " (estimated)")
          + (f", sorted by {', '.join(f'{s.field} {s.order}' for s in page.sort)}" if page.sort else ""))
    for name, facet in (page.facets or {}).items():
        values = [f"{v['value']} ({v['count']})" for v in facet["values"]]
        if facet["other"]:
            values.append(f"other ({facet['other']})")
        print(f"  {name}: {', '.join(values) or '-'}")


def cmd_eval(args: argparse.Namespace) -> int:
    from xmodal.search.evaluate import evaluate

    searcher = _open_searcher(args)
    try:
        report = evaluate(searcher, args.queries, k=args.k, progress=not args.no_progress, recall=args.recall,
                          fusion=args.fusion, min_relevance=args.min_relevance, mode=args.mode)
    finally:
        searcher.close()
    if args.json:
        dump(report)
        return 0
    print(f"queries {report['queries']}  recall@1 {report['recall@1']:.3f}  recall@{args.k} {report['recall@k']:.3f}"
          f"  MRR {report['mrr']:.3f}  latency p50 {report['latency_ms_p50']:.1f} ms"
          f"  p95 {report['latency_ms_p95']:.1f} ms")
    for modality, row in report["by_modality"].items():
        print(f"  {modality:<8} {row['queries']:>4} queries  recall@1 {row['recall@1']:.3f}  "
              f"recall@{args.k} {row['recall@k']:.3f}")
    if report["min_relevance"] is not None:
        print(f"  min relevance {report['min_relevance']}: dropped a relevant item in {report['dropped_by_cutoff']:.1%} "
              f"of queries; no good match in {report['no_good_match']:.1%}")
    return 0
