"""What ``xmodal stats`` reports about a collection, read from the catalog alone."""

from __future__ import annotations

from typing import Any

from xmodal.errors import UserError
from xmodal.storage.ann import IndexRecipe
from xmodal.storage.catalog import Catalog


def failed_summary(catalog: Catalog, collection_id: int, examples: int = 3) -> dict[str, Any]:
    """Failed items grouped by reason (most common first), each with its count and a few example URIs:
    a missing model's hundreds of files read as one line."""
    groups = catalog.failure_groups(collection_id, examples)
    return {"count": sum(g["count"] for g in groups), "by_reason": groups}


def collection_stats(catalog: Catalog, collection: str) -> dict[str, Any]:
    cid = catalog.collection_id(collection)
    spaces = []
    indexes: dict[str, Any] = {}
    for space in catalog.spaces(cid):
        spaces.append({"name": space.name, "family": space.family, "model": space.model.get("model"),
                       "pretrained": space.model.get("pretrained"), "dim": space.dim})
        published = catalog.published_index(cid, space.name)
        if published is not None:
            parts = {}
            for modality, info in (published.summary or {}).get("parts", {}).items():
                recipe, st = info.get("recipe", {}), info.get("stats", {})
                try:
                    described = IndexRecipe.from_dict(recipe).describe()
                except UserError:
                    described = str(recipe.get("kind"))
                parts[modality] = {
                    "kind": recipe.get("kind"), "recipe": described, "vectors": st.get("n"),
                    **{k: recipe.get(k) for k in ("nlist", "m", "nbits", "opq", "rerank", "nprobe", "k_factor")},
                    **{k: st.get(k) for k in ("recall@1", "recall@10", "recall_target", "target_met",
                                              "probe_queries", "latency_ms", "bytes_per_vector",
                                              "store_bytes_per_vector", "trained_n", "appended", "removed",
                                              "retrained", "device", "points")},
                    "max_memory": info.get("max_memory"),
                }
            indexes[space.name] = {"version": published.version, "kind": published.kind,
                                   "vectors": published.n_vectors, "bytes": published.bytes,
                                   "built_at": published.created_at.isoformat(), "build_s": published.build_s,
                                   "parts": parts, "aligned": (published.summary or {}).get("aligned"),
                                   "calibration": (published.summary or {}).get("calibration")}
    row = catalog.alignment(cid, "clap", "clip")
    alignment = None if row is None else {
        "source": row.source, "target": row.target, "fitted_at": row.created_at.isoformat(), **(row.metrics or {})}
    return {
        "collection": collection,
        "alignment": alignment,
        "items": catalog.counts(cid),
        "failed": failed_summary(catalog, cid),
        "spaces": spaces,
        "index": indexes,
        "lexical": {"fields": catalog.lexical_fields(cid), "indexed": catalog.has_lexical(cid)},
    }
