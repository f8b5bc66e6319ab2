"""``xmodal eval``: recall@1, recall@k, MRR and latency over a JSONL file of labelled queries.

Each line: ``{"text"|"image"|"audio"|"item": ..., "expected": [uri, ...], "target": optional, ...}``;
other keys are carried through to ``per_query``. An expected entry may be ``{"uri": ..., "start": s, "end":
e}``: a video expected at a time range (seconds), found only when the result's segment overlaps it. A query
counts as a hit at k when at least one expected item is among its first k results (the hit-rate form of recall used by CLIP retrieval benchmarks);
MRR uses the rank of the first expected item found (0 when none is in the top k). Relative paths
(expected URIs and image queries) resolve against the current directory, then the queries file's.
Recall is also reported per modality of the expected items. With ``min_relevance``, a result below it
does not count (as a served page would drop it), and the report says how often that cutoff dropped a
relevant item that was in the top k, and how many queries it left with no good match.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from xmodal.errors import UserError
from xmodal.search.engine import Searcher
from xmodal.search.results import Cutoff, SearchResult
from xmodal.storage.uris import path_to_uri, uri_to_path

QUERY_KEYS = ("text", "image", "audio", "item")


def _candidates(value: str, bases: list[Path]) -> set[str]:
    """The catalog URIs an expected value may name."""
    if value.startswith("file://"):
        return {value, path_to_uri(uri_to_path(value))}
    if "://" in value:
        return {value}
    if os.path.isabs(value):
        return {path_to_uri(os.path.normpath(value))}
    return {path_to_uri(os.path.abspath(base / value)) for base in bases}


@dataclass(frozen=True)
class Expected:
    """One expected item of a query: the URIs it may have in the catalog and, for a video, the time range
    (seconds) its returned segment must overlap."""

    uris: set[str]
    span: tuple[float, float] | None = None

    def found(self, result: SearchResult) -> bool:
        if result.uri not in self.uris:
            return False
        if self.span is None:
            return True
        seg = result.segment
        return seg is not None and seg["start_s"] < self.span[1] and self.span[0] < seg["end_s"]


def _check_range(entry: dict[str, Any], where: str) -> None:
    if not isinstance(entry.get("uri"), str) or set(entry) - {"uri", "start", "end"}:
        raise UserError(f"{where}: an expected entry that is an object takes 'uri', 'start' and 'end'")
    start, end = entry.get("start"), entry.get("end")
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in (start, end)) or not (
            0 <= start < end):  # type: ignore[operator]
        raise UserError(f"{where}: 'start' and 'end' must be seconds with 0 <= start < end, not {start!r} and {end!r}")


def load_queries(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise UserError(f"queries file {path} not found")
    queries = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                q = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(q, dict):
                raise UserError(f"{path}:{lineno}: each line must be a JSON object")
            kinds = [k for k in QUERY_KEYS if k in q]
            if len(kinds) != 1:
                raise UserError(f"{path}:{lineno}: give exactly one of {', '.join(QUERY_KEYS)}")
            expected = q.get("expected")
            if isinstance(expected, str | dict):
                expected = [expected]
            if not isinstance(expected, list) or not expected or not all(isinstance(e, str | dict) for e in expected):
                raise UserError(f"{path}:{lineno}: 'expected' must be a non-empty list of URIs "
                                "(or of {\"uri\": ..., \"start\": s, \"end\": e})")
            for e in expected:
                if isinstance(e, dict):
                    _check_range(e, f"{path}:{lineno}")
            q["expected"] = expected
            q["_line"] = lineno
            queries.append(q)
    if not queries:
        raise UserError(f"queries file {path} holds no queries")
    return queries


def evaluate(searcher: Searcher, queries_file: Path, *, k: int = 10, progress: bool = True,
             recall: float | None = None, fusion: str = "relevance", min_relevance: float | None = None,
             mode: str | None = None) -> dict[str, Any]:
    """``recall``: search approximate indexes at the operating point for that recall@10 (see
    ``Searcher.run``), so that a recall/speed trade can be judged on labelled queries; ``fusion``,
    ``min_relevance`` and ``mode`` (text queries; the others are vector only) as a search takes them."""
    queries = load_queries(queries_file)
    cutoff = Cutoff(min_relevance=min_relevance)
    bases = [Path.cwd(), queries_file.absolute().parent]
    searcher.warm_up()
    per_query: list[dict[str, Any]] = []
    latencies: list[float] = []
    for q in tqdm(queries, desc="eval", unit=" queries", disable=not progress):
        lineno = q.pop("_line")
        kind = next(key for key in QUERY_KEYS if key in q)
        value = q[kind]
        kwargs: dict[str, Any] = {}
        if kind in ("image", "audio"):
            options = [Path(value)] if os.path.isabs(value) else [b / value for b in bases]
            kwargs[kind] = next((p for p in options if p.exists()), options[0])
        elif kind == "item":
            try:
                kwargs["item"] = int(value)
            except (TypeError, ValueError) as exc:
                raise UserError(f"{queries_file}:{lineno}: 'item' must be an integer id") from exc
        else:
            kwargs["text"] = str(value)
        t0 = time.perf_counter()
        try:
            results = searcher.run(target=q.get("target") or "any", k=k, recall=recall, fusion=fusion,
                                   mode=mode if "text" in kwargs else None, **kwargs).results
        except UserError as exc:
            raise UserError(f"{queries_file}:{lineno}: {exc}") from exc
        latencies.append((time.perf_counter() - t0) * 1000)
        expected = [Expected(_candidates(e["uri"] if isinstance(e, dict) else e, bases),
                             (float(e["start"]), float(e["end"])) if isinstance(e, dict) else None)
                    for e in q["expected"]]
        expected_sets = [e.uris for e in expected]
        kept = [r for r in results if cutoff.passes(r)]
        found = next((pos for pos, r in enumerate(results, 1) if any(e.found(r) for e in expected)), None)
        rank = next((pos for pos, r in enumerate(kept, 1) if any(e.found(r) for e in expected)), None)
        per_query.append({**q, "rank": rank, "hit@1": rank == 1, f"hit@{k}": rank is not None,
                          "dropped_by_cutoff": found is not None and rank is None, "no_good_match": not kept,
                          "expected_modality": _modality(searcher, expected_sets),
                          "latency_ms": round(latencies[-1], 3), "results": [r.uri for r in kept],
                          **({"segments": [r.segment for r in kept]} if any(e.span for e in expected) else {}),
                          "relevance": [r.relevance for r in kept]})
    n = len(per_query)
    ranks = [p["rank"] for p in per_query]
    lat = np.asarray(latencies)
    return {
        "queries": n,
        "k": k,
        "ann_recall": recall,
        "recall@1": sum(1 for r in ranks if r == 1) / n,
        "recall@k": sum(1 for r in ranks if r is not None) / n,
        "mrr": sum(1.0 / r for r in ranks if r is not None) / n,
        "by_modality": _by_modality(per_query),
        "fusion": fusion, "mode": mode, "min_relevance": min_relevance,
        "dropped_by_cutoff": sum(1 for p in per_query if p["dropped_by_cutoff"]) / n,
        "no_good_match": sum(1 for p in per_query if p["no_good_match"]) / n,
        "latency_ms_p50": round(float(np.percentile(lat, 50)), 3),
        "latency_ms_p95": round(float(np.percentile(lat, 95)), 3),
        "per_query": per_query,
    }


def _modality(searcher: Searcher, expected_sets: list[set[str]]) -> str:
    """The modality of a query's expected items ("mixed" when they differ, "unknown" when none is indexed)."""
    uris = [u for cands in expected_sets for u in cands]
    found = {it.modality for it in searcher.catalog.items_by_uri(searcher.collection_id, uris).values()}
    return found.pop() if len(found) == 1 else ("mixed" if found else "unknown")


def _by_modality(per_query: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """recall@1, recall@k and how many queries, per modality of the expected items."""
    out: dict[str, dict[str, float]] = {}
    for modality in sorted({p["expected_modality"] for p in per_query}):
        group = [p for p in per_query if p["expected_modality"] == modality]
        out[modality] = {"queries": len(group), "recall@1": sum(1 for p in group if p["rank"] == 1) / len(group),
                         "recall@k": sum(1 for p in group if p["rank"] is not None) / len(group)}
    return out
