"""Structured filters compiled to SQL, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, update

from xmodal.search.filters import FilterError, compile_filter, metadata_fields
from xmodal.storage.catalog import STATUS_OK, Catalog, Item

ROWS: dict[str, dict[str, Any]] = {
    "a": {"format": "PNG", "width": 100, "price": 9.5, "in_stock": True},
    "b": {"format": "JPEG", "width": 800, "price": 20, "in_stock": False},
    "c": {"format": "JPEG", "width": 1600, "price": 120.25, "in_stock": True},
    "d": {"title": "Kettle", "chars": 40},
}


@pytest.fixture
def catalog(database_url: str):
    cat = Catalog(database_url)
    cid = cat.collection_id("f", create=True)
    ids = cat.add_items(cid, [(name, "text" if name == "d" else "image") for name in ROWS])
    with cat.Session.begin() as s:
        for name, meta in ROWS.items():
            s.execute(update(Item).where(Item.id == ids[name]).values(status=STATUS_OK, meta=meta))
    cat.cid = cid  # type: ignore[attr-defined]
    cat.by_id = {v: k for k, v in ids.items()}  # type: ignore[attr-defined]
    yield cat
    cat.close()


def names(catalog, spec) -> set[str]:
    fields = metadata_fields(catalog, catalog.cid)
    q = select(Item.id).where(Item.collection_id == catalog.cid, compile_filter(spec, fields))
    with catalog.Session() as s:
        return {catalog.by_id[i] for i in s.scalars(q)}


def test_fields_and_types_are_inferred(catalog) -> None:
    assert metadata_fields(catalog, catalog.cid) == {"chars": "integer", "format": "string", "in_stock": "boolean",
                                                      "price": "number", "title": "string", "width": "integer"}


@pytest.mark.parametrize(("spec", "expected"), [
    ({"field": "format", "op": "eq", "value": "JPEG"}, {"b", "c"}),
    ({"field": "format", "op": "ne", "value": "JPEG"}, {"a", "d"}),  # a missing field is "not JPEG"
    ({"field": "format", "op": "in", "value": ["PNG", "GIF"]}, {"a"}),
    ({"field": "format", "op": "nin", "value": ["PNG"]}, {"b", "c", "d"}),
    ({"field": "width", "op": "gt", "value": 100}, {"b", "c"}),
    ({"field": "width", "op": "gte", "value": 100}, {"a", "b", "c"}),
    ({"field": "width", "op": "lt", "value": 800}, {"a"}),
    ({"field": "width", "op": "lte", "value": 800}, {"a", "b"}),
    ({"field": "price", "op": "range", "value": {"gte": 10, "lt": 120.25}}, {"b"}),
    ({"field": "price", "op": "range", "value": {"gt": 9.5}}, {"b", "c"}),
    ({"field": "in_stock", "op": "eq", "value": True}, {"a", "c"}),
    ({"field": "in_stock", "op": "eq", "value": False}, {"b"}),
    ({"field": "title", "op": "exists", "value": True}, {"d"}),
    ({"field": "title", "op": "exists", "value": False}, {"a", "b", "c"}),
    ({"field": "modality", "op": "eq", "value": "text"}, {"d"}),
    ({"and": [{"field": "format", "op": "eq", "value": "JPEG"}, {"field": "in_stock", "op": "eq", "value": True}]},
     {"c"}),
    ({"or": [{"field": "width", "op": "lt", "value": 200}, {"field": "chars", "op": "gt", "value": 10}]}, {"a", "d"}),
    ({"not": {"field": "format", "op": "eq", "value": "JPEG"}}, {"a", "d"}),
    ({"not": {"or": [{"field": "format", "op": "eq", "value": "PNG"}, {"field": "width", "op": "gt", "value": 1000}]}},
     {"b", "d"}),
])
def test_operators_and_combinations(catalog, spec, expected) -> None:
    assert names(catalog, spec) == expected


@pytest.mark.parametrize(("spec", "message"), [
    ({"field": "colour", "op": "eq", "value": "red"}, "unknown field 'colour'"),
    ({"field": "width", "op": "like", "value": 3}, "unknown operator 'like'"),
    ({"field": "width", "op": "eq", "value": "wide"}, "expected a integer"),
    ({"field": "width", "op": "eq"}, "value: missing"),
    ({"field": "width", "op": "in", "value": []}, "non-empty list"),
    ({"field": "width", "op": "range", "value": {"between": 1}}, "range takes"),
    ({"field": "in_stock", "op": "gt", "value": True}, "does not apply"),
    ({"field": "title", "op": "exists", "value": "yes"}, "true or false"),
    ({"and": []}, "non-empty list"),
    ({"xor": []}, "unknown key 'xor'"),
    ([{"field": "width"}], "expected an object"),
    ({"and": [{"field": "width", "op": "eq", "value": 1}, {"field": "nope", "op": "eq", "value": 1}]},
     "filters.and[1].field"),
    ({"field": "format", "op": "eq", "value": "x" * 1001}, "longer than"),
])
def test_bad_filters_say_what_and_where(catalog, spec, message) -> None:
    with pytest.raises(FilterError, match=message.replace("[", r"\[").replace("]", r"\]")):
        names(catalog, spec)


def test_size_bounds(catalog) -> None:
    deep: dict[str, Any] = {"field": "width", "op": "eq", "value": 1}
    for _ in range(8):
        deep = {"not": deep}
    with pytest.raises(FilterError, match="deeper than 8"):
        names(catalog, deep)
    many = {"or": [{"field": "width", "op": "eq", "value": i} for i in range(65)]}
    with pytest.raises(FilterError, match="more than 64"):
        names(catalog, many)
