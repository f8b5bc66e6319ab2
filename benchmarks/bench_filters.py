"""Filters planned by selectivity (issue 15, point 3): filtered queries against the unfiltered one, in one run.

A synthetic shop of N products (default 1,000,000), one image item each, goes through the real catalog,
shard and publish path: items inserted by ``Catalog.add_items``, their 512-d vectors (``ann_data``'s
seeded Gaussian mixture, as ``bench_ann`` uses) written as a Parquet shard and committed with each
item's metadata by ``Catalog.commit_shard``, then ``build_and_publish`` (IVF-PQ, tuned and calibrated).
Metadata: a long-tailed ``category`` (one holding 50% of the products, one 5%, 0.5%, 0.05%, one
product, the rest a Zipf tail of 2,000 small ones), a numeric ``price`` and a ``brand`` of 50.

Queries are "more like this" by item id (``Searcher.run(item=...)``: no model to run, so the time is
the search's: the plan, FAISS, the SQL of hydration), top 10, the query item left out. Per
selectivity (50%, 5%, 0.5%, 0.05%, one match, none, and a brand + price range filter), p50 and p95 of
``Searcher.run`` with the filter, each as a ratio to the unfiltered query's p50 / p95 measured in the
same loop (queries interleaved: every query runs unfiltered and under each filter in turn), and
recall@10 against the exact filtered ranking (every product SQL says matches, scored by its vector).
The same filters as a bare SQL condition (what the searcher did before: post-filtering that looks
further x4) are timed on a few queries for comparison. The first filtered query builds the column view
(one streamed query over the items): its time is reported.

``--plans-only`` is for sizes whose full build does not fit the machine (on the 2-core machine, idle, the
full path took 2m41s at 100,000 products and 19m53s at 1,000,000; shared with other work, 10 minutes at
100,000): the same vectors
and metadata, no catalog and no searcher; ``build_index``, the column view filled from the same rows,
and per query the plans' FAISS work (the local-tail search and the plan's own search) against the
unfiltered search of the same depth, with recall@10 over what hydration would keep.

    python benchmarks/bench_filters.py [--products 1000000] [--queries 200] [--plans-only] [--quick]

Writes docs/benchmarks/filters.json (or filters-plans.json) and filters.md from whichever of the two is
there (``--quick``: 20,000 products into benchmarks/out/filters-quick/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from ann_data import synthetic_mixture  # noqa: E402  (this folder's helpers)
from bench_lexical import DOCS, pct  # noqa: E402

K = 10
TAIL_CATEGORIES = 2000
SHARES = {"50%": 0.5, "5%": 0.05, "0.5%": 0.005, "0.05%": 0.0005}


def categories(n: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, str]]:
    """A long-tailed category per product, and the category each selectivity filters on."""
    labels = np.empty(n, dtype=object)
    wanted = {name: max(1, round(n * share)) for name, share in SHARES.items()}
    order = rng.permutation(n)  # categories spread over ids
    at = 0
    chosen = {}
    for name, count in wanted.items():
        labels[order[at:at + count]] = f"cat-{name}"
        chosen[name] = f"cat-{name}"
        at += count
    labels[order[at]] = "cat-one"
    chosen["one match"] = "cat-one"
    at += 1
    rest = order[at:]
    zipf = 1.0 / np.arange(1, TAIL_CATEGORIES + 1)
    labels[rest] = np.char.add("tail-", rng.choice(TAIL_CATEGORIES, rest.shape[0], p=zipf / zipf.sum()).astype(str))
    chosen["none"] = "cat-nowhere"
    return labels, chosen


def build(home: Path, n: int, seed: int) -> tuple[Any, np.ndarray, np.ndarray, dict[str, Any]]:
    """The collection through the catalog, shard and publish path; returns settings, item ids, vectors, times."""
    from bench_index import make_clip_checkpoint

    from xmodal.config import Settings
    from xmodal.encoders import resolve_model
    from xmodal.indexer.publish import build_and_publish
    from xmodal.storage.catalog import Catalog, EmbeddedItem
    from xmodal.storage.layout import Layout
    from xmodal.storage.shards import write_shard

    times: dict[str, Any] = {}
    t0 = time.perf_counter()
    data = synthetic_mixture(n, 0, 0, dim=512, seed=seed, progress=False)
    vectors = data.base
    rng = np.random.default_rng(seed)
    labels, chosen = categories(n, rng)
    times["chosen"] = chosen
    model, ckpt = make_clip_checkpoint("ViT-B-32")  # the space's recorded model (never run here)
    settings = Settings(home=home, database_url=f"sqlite:///{home / 'catalog.sqlite'}", clip_model=model,
                        clip_pretrained=ckpt)
    catalog = Catalog(settings.resolved_database_url)
    layout = Layout(settings.home)
    cid = catalog.collection_id("shop", create=True)
    record = resolve_model("open_clip", model, ckpt)
    catalog.ensure_space(cid, "clip", "open_clip", record, 512)
    times["generate_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    uris = [f"https://shop.example/img/{i}.jpg" for i in range(n)]
    got = catalog.add_items(cid, [(u, "image") for u in uris])
    ids = np.asarray([got[u] for u in uris], dtype=np.int64)
    path = layout.new_shard_path("shop", "clip")
    hashes = [f"{i:064x}" for i in ids]
    info = write_shard(path, ids, vectors, hashes, {"space": "clip", "family": "open_clip",
                                                   "identity": record["identity"], "model": model,
                                                   "pretrained": ckpt, "normalized": True})
    price = np.round(rng.lognormal(3.5, 0.8, n), 2)
    brand = rng.integers(0, 50, n)
    items = [EmbeddedItem(int(i), row, hashes[row], 1000, 0, {"category": str(labels[row]),
                                                              "price": float(price[row]), "brand": f"b{brand[row]}"})
             for row, i in enumerate(ids)]
    catalog.commit_shard(cid, "clip", layout.relative(path), info.rows, info.sha256, info.bytes, items)
    times["catalog_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    summary = build_and_publish(catalog, layout, settings, "shop", cid, "clip", progress=False)
    times["build_and_publish_s"] = round(time.perf_counter() - t0, 1)
    times["index"] = {k: summary.get(k) for k in ("version", "kind", "vectors")}
    catalog.close()
    return settings, ids, vectors, times


def specs(chosen: dict[str, str]) -> dict[str, dict[str, Any]]:
    out = {name: {"field": "category", "op": "eq", "value": value} for name, value in chosen.items()}
    out["brand + price"] = {"and": [{"field": "brand", "op": "eq", "value": "b7"},
                                    {"field": "price", "op": "range", "value": {"gte": 20, "lt": 40}}]}
    return out


def truth(searcher: Any, spec: dict[str, Any], fields: dict[str, str], ids: np.ndarray) -> np.ndarray:
    """Rows (into ``ids``) of the products SQL says match: the exact filtered ranking is over these."""
    from sqlalchemy import select

    from xmodal.search.filters import compile_filter
    from xmodal.storage.catalog import Item

    with searcher.catalog.Session() as s:
        matching = np.fromiter(s.scalars(select(Item.id).where(Item.collection_id == searcher.collection_id,
                                                                compile_filter(spec, fields))), dtype=np.int64)
    return np.searchsorted(ids, np.sort(matching))


def exact_top(vectors: np.ndarray, rows: np.ndarray, ids: np.ndarray, query_row: int) -> set[int]:
    rows = rows[rows != query_row]
    if not rows.shape[0]:
        return set()
    scores = vectors[rows] @ vectors[query_row]
    top = np.argsort(-scores, kind="stable")[:K]
    return {int(i) for i in ids[rows[top]]}


def measure(settings: Any, ids: np.ndarray, vectors: np.ndarray, chosen: dict[str, str], queries: int,
            before_queries: int, seed: int) -> dict[str, Any]:
    from xmodal.search.engine import Searcher
    from xmodal.search.filters import metadata_fields, prepare_filter

    searcher = Searcher(settings, "shop")
    searcher.warm_up()
    fields = metadata_fields(searcher.catalog, searcher.collection_id)
    filters = {name: prepare_filter(spec, fields) for name, spec in specs(chosen).items()}
    rng = np.random.default_rng(seed + 1)
    query_rows = rng.choice(ids.shape[0], queries, replace=False)
    t0 = time.perf_counter()
    first = searcher.run(item=int(ids[query_rows[0]]), target="image", k=K, where=filters["5%"])
    view_ms = (time.perf_counter() - t0) * 1000
    truths = {name: truth(searcher, spec, fields, ids) for name, spec in specs(chosen).items()}
    for flt in filters.values():  # each filter's matches once (as a shop's repeated category page)
        searcher.run(item=int(ids[query_rows[0]]), target="image", k=K, where=flt)
    times: dict[str, list[float]] = {"unfiltered": [], **{name: [] for name in filters}}
    clicks: dict[str, list[float]] = {name: [] for name in filters}  # the same query after its unfiltered one
    recall: dict[str, list[float]] = {name: [] for name in filters}
    plans: dict[str, dict[str, Any]] = {}
    found: list[tuple[str, int, set[int]]] = []
    for row in query_rows:
        item = int(ids[row])
        for name in [*filters, "unfiltered", *filters]:
            flt = filters.get(name)
            click = flt is not None and bool(times["unfiltered"]) and len(times[name]) == len(times["unfiltered"])
            if flt is not None and not click:
                searcher._tails.clear()  # the query's first search: its local tail is searched beside the plan's
            t = time.perf_counter()
            outcome = searcher.run(item=item, target="image", k=K, where=flt)
            (clicks if click else times)[name].append((time.perf_counter() - t) * 1000)
            if flt is None or click:
                continue
            plans[name] = outcome.ann.get("clip/image", {})
            found.append((name, int(row), {r.id for r in outcome.results}))
    for name, row, got in found:  # after the timing: the exact answer reads every match's vector (100 MB at 5%
        want = exact_top(vectors, truths[name], ids, row)  # of a million), which would empty the caches
        assert len(got) == min(K, len(want)), (name, len(got), len(want))  # between the queries timed
        if want:
            recall[name].append(len(got & want) / len(want))
    before: dict[str, list[float]] = {name: [] for name in filters}
    for row in query_rows[:before_queries]:  # the same filters as bare SQL conditions: post-filtering, x4
        for name, flt in filters.items():
            t = time.perf_counter()
            searcher.run(item=int(ids[row]), target="image", k=K, where=flt.condition)
            before[name].append((time.perf_counter() - t) * 1000)
    part = searcher.loaded.parts["image"]
    searcher.close()
    base50, base95 = pct(times["unfiltered"], 50), pct(times["unfiltered"], 95)
    rows = {}
    for name in filters:
        p50, p95 = pct(times[name], 50), pct(times[name], 95)
        rows[name] = {"matches": int(truths[name].shape[0]), "plan": plans[name].get("plan"),
                      "plan_nprobe": plans[name].get("plan_nprobe"), "p50_ms": p50, "p95_ms": p95,
                      "p50_ratio": round(p50 / base50, 3), "p95_ratio": round(p95 / base95, 3),
                      "click_p50_ratio": round(pct(clicks[name], 50) / base50, 3),
                      "click_p95_ratio": round(pct(clicks[name], 95) / base95, 3),
                      "recall@10": round(float(np.mean(recall[name])), 4) if recall[name] else None,
                      "before_p50_ms": pct(before[name], 50) if before[name] else None,
                      "before_ratio": round(pct(before[name], 50) / base50, 2) if before[name] else None}
    return {"unfiltered": {"p50_ms": base50, "p95_ms": base95}, "filters": rows, "view_build_ms": round(view_ms, 1),
            "first_plan": first.ann.get("clip/image", {}), "recipe": part.recipe.describe(),
            "queries": queries, "before_queries": before_queries}


def plans_only(n: int, queries: int, seed: int) -> dict[str, Any]:
    """``--plans-only``: the same vectors and metadata without the catalog and the searcher, where the full
    path does not fit the machine: ``build_index`` (the builder's own recipe, tuning and re-rank store),
    the column view filled from the same rows, and per query the plan's work (the local-tail search, the
    plan's search) against the unfiltered search of the same depth; no SQL, no hydration."""
    from xmodal.indexer.build import build_index
    from xmodal.indexer.recipe import choose_recipe
    from xmodal.search.columns import ColumnView
    from xmodal.search.plans import EMPTY, choose
    from xmodal.storage.ann import IdSet
    from xmodal.storage.calibration import TAIL

    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    vectors = synthetic_mixture(n, 0, 0, dim=512, seed=seed, progress=False).base
    labels, chosen = categories(n, rng)
    price = np.round(rng.lognormal(3.5, 0.8, n), 2)
    brand = rng.integers(0, 50, n)
    ids = np.arange(1, n + 1, dtype=np.int64)
    generate_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    part = build_index(vectors, ids, choose_recipe(n, 512, exact_threshold=50_000), recall_target=0.95,
                       seed=seed).part
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    view = ColumnView(0, np.empty(0, np.int64), np.empty(0, bool), {}).patched(
        ((int(ids[i]), "ok", "image", None, {"category": str(labels[i]), "price": float(price[i]),
                                              "brand": f"b{brand[i]}"}) for i in range(n)), None)
    view_s = time.perf_counter() - t0
    fields = {"category": "string", "price": "number", "brand": "string"}
    query_rows = rng.choice(n, queries, replace=False)
    fetch = max(K + 16, TAIL + 1)
    out: dict[str, Any] = {"recipe": part.recipe.describe(), "build_index_s": round(build_s, 1),
                           "generate_s": round(generate_s, 1), "view_from_rows_s": round(view_s, 1), "filters": {}}
    sets: dict[str, Any] = {}
    for name, spec in specs(chosen).items():
        t = time.perf_counter()
        found = view.matching(spec, fields, "image")
        assert found is not None
        sets[name] = (IdSet(found[0]), round((time.perf_counter() - t) * 1000, 2))
    times: dict[str, list[float]] = {"unfiltered": [], **{name: [] for name in sets}}
    recall: dict[str, list[float]] = {name: [] for name in sets}
    plans: dict[str, Any] = {}
    for row in [*query_rows[:5], *query_rows]:  # the first five twice: the first round is a warm-up, dropped
        warm = len(times["unfiltered"]) < 5
        exclude = np.asarray([row + 1], dtype=np.int64)
        t = time.perf_counter()
        part.search(vectors[row][None], fetch, exclude=exclude)
        times["unfiltered"].append((time.perf_counter() - t) * 1000)
        for name, (among, _) in sets.items():  # interleaved: every query unfiltered and under each filter
            t = time.perf_counter()
            plan = plans[name] = choose(part, among, True, None, 4096)
            if plan.name != EMPTY:
                part.search(vectors[row][None], TAIL + 1, exclude=exclude)  # the local tail, as the searcher does
                _, got = plan.search(part, vectors[row][None], plan.first_fetch(fetch, n, K), recall=None,
                                     exclude=exclude)
            times[name].append((time.perf_counter() - t) * 1000)
            want = exact_top(vectors, among.ids - 1, ids, int(row))
            if want and plan.name != EMPTY and not warm:
                kept = got[0][np.isin(got[0], among.ids)][:K]  # what hydration keeps (post-filter: the matches)
                recall[name].append(len({int(i) for i in kept} & want) / len(want))
    times = {name: v[5:] for name, v in times.items()}  # the warm-up rounds dropped
    out["unfiltered"] = {"p50_ms": pct(times["unfiltered"], 50), "p95_ms": pct(times["unfiltered"], 95)}
    for name, (among, eval_ms) in sets.items():
        p50, p95 = pct(times[name], 50), pct(times[name], 95)
        out["filters"][name] = {"matches": len(among), "plan": plans[name].name, "plan_nprobe": plans[name].nprobe,
                                "view_eval_ms": eval_ms, "p50_ms": p50, "p95_ms": p95,
                                "p50_ratio": round(p50 / out["unfiltered"]["p50_ms"], 3),
                                "p95_ratio": round(p95 / out["unfiltered"]["p95_ms"], 3),
                                "recall@10": round(float(np.mean(recall[name])), 4) if recall[name] else None}
    return out


def markdown(full: dict[str, Any] | None, plans: dict[str, Any] | None) -> str:
    """docs/benchmarks/filters.md from the two reports beside it (either may be missing)."""
    lines = ["# Filters planned by selectivity", "",
             "Written by `benchmarks/bench_filters.py` from `filters.json` (the full path) and `filters-plans.json` "
             "(`--plans-only`). Targets: at most 1.5x the unfiltered p50 and p95, recall@10 at least 0.95, at every "
             "selectivity.", ""]
    if full is not None:
        m = full["measured"]
        lines += [
            f"## The full path: {full['products']:,} products", "",
            f"`{full.get('command', '')}` on {full['when']} ({full['machine']['cpus']} CPUs, shared).", "",
            f"{full['products']:,} products (one 512-d image vector each) through the catalog, shard and publish "
            f"path on SQLite; index: {m['recipe']}. Build: catalog {full['times']['catalog_s']} s, build and "
            f"publish {full['times']['build_and_publish_s']} s. Queries: {m['queries']} \"more like this\" by item "
            f"id through `Searcher.run` (plan, FAISS, SQL hydration), top {K}. Each query runs under every filter as "
            "its first search (the searcher's kept local tails cleared: the plan searches the tail beside its own), "
            "then unfiltered, then under every filter again as a facet click would (the tail kept from the "
            "unfiltered query).", "",
            f"Unfiltered: p50 {m['unfiltered']['p50_ms']} ms, p95 {m['unfiltered']['p95_ms']} ms. The first "
            f"filtered query built the column view: {m['view_build_ms']} ms.", "",
            "| filter | matches | plan | nprobe | p50 ms | p95 ms | p50 / unfiltered | p95 / unfiltered | recall@10 "
            "| facet click: p50, p95 / unfiltered | before: p50 / unfiltered |",
            "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name, row in m["filters"].items():
            click = f"{row['click_p50_ratio']}, {row['click_p95_ratio']}" if "click_p50_ratio" in row else ""
            lines.append(f"| {name} | {row['matches']:,} | {row['plan']} | {row['plan_nprobe'] or ''} "
                         f"| {row['p50_ms']} | {row['p95_ms']} | {row['p50_ratio']} | {row['p95_ratio']} "
                         f"| {row['recall@10']} | {click} | {row['before_ratio']} |")
        lines += ["", "\"before\": the same filter given as a bare SQL condition, which the searcher post-filters "
                  f"(looking further x4 per round, as before plans); {m['before_queries']} queries each.", ""]
    if plans is not None:
        p = plans["plans_only"]
        lines += [
            f"## The plans' own work: {plans['products']:,} vectors (`--plans-only`)", "",
            f"`{plans.get('command', '')}` on {plans['when']} ({plans['machine']['cpus']} CPUs, shared). No catalog "
            f"and no searcher: `build_index` ({p['recipe']}, {p['build_index_s']} s), the column view filled from "
            f"the same rows ({p['view_from_rows_s']} s, no SQL), and per query what the searcher's FAISS side does: "
            "the unfiltered search of the same depth against the plan (its local-tail search and its own search); "
            "recall@10 over what hydration would keep.", "",
            f"Unfiltered: p50 {p['unfiltered']['p50_ms']} ms, p95 {p['unfiltered']['p95_ms']} ms.", "",
            "| filter | matches | plan | nprobe | view eval ms | p50 ms | p95 ms | p50 / unfiltered | p95 / unfiltered "
            "| recall@10 |",
            "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name, row in p["filters"].items():
            lines.append(f"| {name} | {row['matches']:,} | {row['plan']} | {row['plan_nprobe'] or ''} "
                         f"| {row['view_eval_ms']} | {row['p50_ms']} | {row['p95_ms']} | {row['p50_ratio']} "
                         f"| {row['p95_ratio']} | {row['recall@10']} |")
        lines.append("")
    return "\n".join(lines)


NOTES = """## What it says (the runs above: the 2-core machine, idle for the full path)

- Recall@10 against the exact filtered ranking is at least 0.95 at every selectivity in every run (0.996 or
  more at a million), and every filtered query returned min(k, matching) items that match (asserted per
  query by the full path, after the timing).
- Full path at 1,000,000 products (2026-12-01 07:33, 8m51s in all: catalog 112 s, build and publish 68 s,
  the rest the queries and the "before" rows). **As the query's first search, p50 is within 1.5x at every
  selectivity but 5%** (1.64x): 50% 1.15x, 0.5% 1.42x, 0.05% 1.18x, one match 1.04x, none 0.42x, brand +
  price 1.38x. **p95 misses at 5% (2.21x), 0.5% (2.44x) and brand + price (1.86x)**, all three restricted
  ANN searches; the rest are within (1.12x to 1.23x). **As a facet click** (the same query after its
  unfiltered search: the local tail kept), every row is within 1.5x at p50 and p95 but 5% (1.90x, 2.28x).
- What changed this day, each measured on a kept build in a process that only queries (200 queries, the
  filters interleaved as the full path runs them): the exact plan finds its matches' store rows once per
  filter (0.85 ms of its 1.8 at 5,000 matches); kept local tails (`Tails`) for facet clicks and next pages;
  `EXACT_COST` 50, was 20 (interleaved, caches cold, 5,000 matches: exact 1.68x, restricted at nprobe 453
  1.45x; brand + price 1.83x against 1.40x); and this benchmark computes recall after the timing, not
  between the timed queries: the exact answer at 5% reads 100 MB of vectors, which emptied the caches
  before the next query (5% read 3.29x with it, 1.61x without). The run the day before (05:27) read 5%
  1.72x, 0.5% 1.72x, brand + price 1.69x at an unfiltered p50 of 9.8 ms (3.2 ms here).
- Why 5% (50,000 matches) still misses: its restricted search probes 144 lists, 4.5 times the tuned 32
  (4.5 MB of codes against 1 MB), and beside it the local tail (the query's best 33 in the whole part,
  which calibrated relevance is fitted on) is a second, unfiltered search: on two CPUs both read memory
  at once. The p95 misses are the same searches meeting caches another query emptied. What would close
  it: more cores (the tail overlaps fully), or a smaller nprobe raise (nprobe 79 instead of 144 kept recall
  1.0 here at 1.46x, but this synthetic mixture's clusters flatter recall, and the raise was not lowered
  without real embeddings to check it on).
- Before plans, one match or none took about 6,000 times the unfiltered query at a million (150 to 500
  times at 100,000): plans are what keep selective filters usable.
- The plans-only run (below) measured the FAISS side alone at a million, before the full path fitted.
"""


def write_docs(dest: Path) -> None:
    def read(name: str) -> dict[str, Any] | None:
        path = dest / name
        return json.loads(path.read_text()) if path.exists() else None

    (dest / "filters.md").write_text(markdown(read("filters.json"), read("filters-plans.json")) + "\n" + NOTES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--before-queries", type=int, default=5)
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="20,000 products, 40 queries, into benchmarks/out")
    parser.add_argument("--plans-only", action="store_true", help="no catalog or searcher: the index, the view "
                        "and the plans' FAISS work (for sizes whose full build does not fit the machine)")
    args = parser.parse_args()
    if args.quick:
        args.products, args.queries = 20_000, 40
    command = " ".join(["python", "benchmarks/bench_filters.py", *sys.argv[1:]])
    if args.plans_only:
        report = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "products": args.products,
                  "command": command,
                  "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                  "plans_only": plans_only(args.products, args.queries, args.seed)}
        print(json.dumps(report, indent=1), flush=True)
        dest = HERE / "out" / "filters-quick" if args.quick else DOCS
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "filters-plans.json").write_text(json.dumps(report, indent=1) + "\n")
        write_docs(dest)
        return
    home = Path(tempfile.mkdtemp(prefix="bench-filters-"))
    settings, ids, vectors, times = build(home, args.products, args.seed)
    print(f"built {args.products} products: {json.dumps(times)}", flush=True)
    measured = measure(settings, ids, vectors, times.pop("chosen"), args.queries, args.before_queries, args.seed)
    report = {"when": datetime.now(UTC).isoformat(timespec="seconds"),
              "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform()},
              "products": args.products, "command": command, "times": times, "measured": measured}
    print(json.dumps(report, indent=1), flush=True)
    dest = HERE / "out" / "filters-quick" if args.quick else DOCS
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "filters.json").write_text(json.dumps(report, indent=1) + "\n")
    write_docs(dest)


if __name__ == "__main__":
    main()
