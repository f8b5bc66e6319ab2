"""Catalog queries about index versions (the published one per space, the next number, publishing a
new one atomically) and the counts and failures ``xmodal stats`` reports."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update

from xmodal.storage.catalog.engine import CatalogBase
from xmodal.storage.catalog.tables import (
    INDEX_PUBLISHED,
    INDEX_SUPERSEDED,
    STATUS_DELETED,
    STATUS_FAILED,
    IndexVersion,
    Item,
)


class IndexQueries(CatalogBase):
    """Index versions and stats."""

    # index versions ---------------------------------------------------------------------------

    def index_versions(self, collection_id: int) -> list[IndexVersion]:
        """Every index version the catalog records (published and superseded)."""
        with self.Session() as s:
            return list(s.scalars(select(IndexVersion).where(IndexVersion.collection_id == collection_id)))

    def published_index(self, collection_id: int, space: str) -> IndexVersion | None:
        q = select(IndexVersion).where(
            IndexVersion.collection_id == collection_id, IndexVersion.space == space,
            IndexVersion.status == INDEX_PUBLISHED,
        )
        with self.Session() as s:
            return s.scalar(q)

    def next_index_version(self, collection_id: int, space: str) -> int:
        q = select(func.max(IndexVersion.version)).where(
            IndexVersion.collection_id == collection_id, IndexVersion.space == space
        )
        with self.Session() as s:
            return int(s.scalar(q) or 0) + 1

    def publish_index(
        self, collection_id: int, space: str, version: int, path: str, kind: str, n_vectors: int,
        nbytes: int, fingerprint: str, summary: dict[str, Any], build_s: float,
    ) -> None:
        """Make a written index version the served one, superseding the previous, atomically."""
        with self.Session.begin() as s:
            s.execute(
                update(IndexVersion)
                .where(IndexVersion.collection_id == collection_id, IndexVersion.space == space,
                       IndexVersion.status == INDEX_PUBLISHED)
                .values(status=INDEX_SUPERSEDED)
            )
            s.add(IndexVersion(
                collection_id=collection_id, space=space, version=version, path=path, status=INDEX_PUBLISHED,
                kind=kind, n_vectors=n_vectors, bytes=nbytes, fingerprint=fingerprint, summary=summary,
                build_s=build_s,
            ))

    # stats ------------------------------------------------------------------------------------

    def counts(self, collection_id: int) -> dict[str, dict[str, int]]:
        by_status: dict[str, int] = {}
        by_modality: dict[str, int] = {}
        with self.Session() as s:
            q = (
                select(Item.status, Item.modality, func.count())
                .where(Item.collection_id == collection_id)
                .group_by(Item.status, Item.modality)
            )
            for status, modality, n in s.execute(q):
                by_status[status] = by_status.get(status, 0) + int(n)
                if status != STATUS_DELETED:
                    by_modality[modality] = by_modality.get(modality, 0) + int(n)
        return {"status": by_status, "modality": by_modality}

    def failures(self, collection_id: int, limit: int | None = None) -> list[tuple[str, str]]:
        q = (
            select(Item.uri, Item.reason)
            .where(Item.collection_id == collection_id, Item.status == STATUS_FAILED)
            .order_by(Item.uri)
        )
        if limit is not None:
            q = q.limit(limit)
        with self.Session() as s:
            return [(r[0], r[1] or "") for r in s.execute(q)]

    def failure_groups(self, collection_id: int, examples: int = 3) -> list[dict[str, Any]]:
        """The collection's failed items grouped by reason, most common first: each reason's count and
        its first few URIs (by URI)."""
        where = (Item.collection_id == collection_id, Item.status == STATUS_FAILED)
        counted = func.count(Item.id).label("n")
        out = []
        with self.Session() as s:
            rows = s.execute(select(Item.reason, counted).where(*where).group_by(Item.reason)
                             .order_by(counted.desc(), Item.reason)).all()
            for reason, n in rows:
                same = Item.reason.is_(None) if reason is None else Item.reason == reason
                uris = s.scalars(select(Item.uri).where(*where, same).order_by(Item.uri).limit(examples))
                out.append({"reason": reason or "", "count": int(n), "examples": list(uris)})
        return out
