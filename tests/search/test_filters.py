"""Structured filters compiled to SQL, run on the real catalog on SQLite and PostgreSQL.

Each positive case checks which items ``select(Item.id).where(collection, compile_filter(...))``
returns. Cases are grouped into a few tests (one catalog per test and database) to keep them fast;
validation errors need no database and are parametrized one per case.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select, update

from xmodal.search.columns import ColumnView
from xmodal.search.filters import FilterError, apply_filter, compile_filter, metadata_fields
from xmodal.storage.catalog import STATUS_OK, Catalog, Item

pytestmark = pytest.mark.backends  # the catalog's own SQL: SQLite and PostgreSQL


# e holds stray values: a string width, a scalar tags, an integer in_stock, a null price
ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "a": ("image", {"format": "PNG", "width": 100, "price": 9.5, "in_stock": True, "tags": ["red", "sale"],
                    "code": "B"}),
    "b": ("image", {"format": "JPEG", "width": 800, "price": 20, "in_stock": False, "tags": ["blue"],
                    "code": "a"}),
    "c": ("image", {"format": "JPEG", "width": 1600, "price": 120.25, "in_stock": True, "tags": ["red", 7],
                    "code": "é"}),
    "d": ("text", {"title": "Kettle", "chars": 40, "tags": []}),
    "e": ("text", {"title": "Mug", "chars": 12, "width": "wide", "tags": "red", "in_stock": 1, "price": None}),
}
# another collection whose values have other types: the guards keep PostgreSQL's casts from failing on them
OTHER: dict[str, dict[str, Any]] = {
    "x": {"width": "huge", "price": "n/a", "in_stock": "yes", "tags": {"red": 1}, "format": 5},
}
FIELDS = {"chars": "integer", "code": "string", "format": "string", "in_stock": "boolean", "price": "number",
          "tags": "list", "title": "string", "width": "integer"}
ALL = set(ROWS)


class Shop:
    """A catalog with the ROWS collection, and the names of its items by id."""

    def __init__(self, database_url: str) -> None:
        self.catalog = Catalog(database_url)
        self.cid = self.catalog.collection_id("shop", create=True)
        ids = self._fill(self.cid, {name: row for name, row in ROWS.items()})
        self._fill(self.catalog.collection_id("other", create=True), {n: ("image", m) for n, m in OTHER.items()})
        self.ids = ids
        self.by_id = {v: k for k, v in ids.items()}

    def _fill(self, cid: int, rows: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, int]:
        ids = self.catalog.add_items(cid, [(f"mem://{cid}/{name}", modality) for name, (modality, _) in rows.items()])
        by_name = {uri.rsplit("/", 1)[1]: i for uri, i in ids.items()}
        with self.catalog.Session.begin() as s:
            for name, (_, meta) in rows.items():
                s.execute(update(Item).where(Item.id == by_name[name]).values(status=STATUS_OK, meta=meta))
        return by_name

    def names(self, spec: Any, fields: dict[str, str] | None = None) -> set[str]:
        where = compile_filter(spec, FIELDS if fields is None else fields)
        q = select(Item.id).where(Item.collection_id == self.cid, where)
        with self.catalog.Session() as s:
            return {self.by_id[i] for i in s.scalars(q)}

    def check(self, cases: list[tuple[dict[str, Any], set[str]]]) -> None:
        """Run every case on one catalog; a failure shows each mismatching filter beside its result. The
        searcher's column view (``search.columns``, which plans filtered searches) must agree: the same
        items where it says its answer is exact, a superset where a condition is unknown to it."""
        got = {json.dumps(spec, ensure_ascii=False): self.names(spec) for spec, _ in cases}
        want = {json.dumps(spec, ensure_ascii=False): expected for spec, expected in cases}
        assert got == want
        view = ColumnView.build(self.catalog, self.cid)
        seen = {}
        for spec, expected in cases:
            found = view.matching(spec, FIELDS)
            if found is not None:
                names = {self.by_id[int(i)] for i in found[0]}
                seen[json.dumps(spec, ensure_ascii=False)] = names if found[1] else (names & expected)
        assert seen == {key: want[key] for key in seen}


@pytest.fixture
def shop(database_url: str) -> Iterator[Shop]:
    made = Shop(database_url)
    yield made
    made.catalog.close()


def leaf(field: str, op: str, value: Any) -> dict[str, Any]:
    return {"field": field, "op": op, "value": value}


# metadata fields --------------------------------------------------------------------------------


def test_metadata_fields_are_inferred_by_majority(shop: Shop) -> None:
    # width: 3 integers beat 1 string; in_stock: 3 booleans beat 1 integer; tags: 4 lists beat 1 string;
    # price: integers and floats make number, the null is ignored
    assert metadata_fields(shop.catalog, shop.cid) == FIELDS


def test_metadata_fields_types_and_sample(database_url: str) -> None:
    catalog = Catalog(database_url)
    try:
        cid = catalog.collection_id("m", create=True)
        metas = [
            {"old": "only in the oldest item"},
            {"flag": True, "n": 1, "x": 1, "s": "a", "mix": "a", "tie": 1, "obj": {"k": 1}, "nul": None,
             "id": 5, "uri": "u", 'q"uote': 1, "tags": ["a"]},
            {"flag": False, "n": 0, "x": 2.5, "s": "b", "mix": 1, "tie": "one", "tags": []},
            {"mix": "b"},
        ]
        ids = catalog.add_items(cid, [(f"mem://m/{i}", "text") for i in range(len(metas) + 1)])
        with catalog.Session.begin() as s:
            for i, meta in enumerate(metas):
                s.execute(update(Item).where(Item.id == ids[f"mem://m/{i}"]).values(status=STATUS_OK, meta=meta))
            # a pending item's metadata is not sampled
            s.execute(update(Item).where(Item.id == ids[f"mem://m/{len(metas)}"]).values(meta={"pending": 1}))
        expected = {"flag": "boolean", "n": "integer", "x": "number", "s": "string", "mix": "string",
                    "tie": "string", "tags": "list"}
        assert metadata_fields(catalog, cid, sample=3) == dict(sorted(expected.items()))
        assert metadata_fields(catalog, cid)["old"] == "string"
        assert metadata_fields(catalog, catalog.collection_id("empty", create=True)) == {}
    finally:
        catalog.close()


# operators --------------------------------------------------------------------------------------


def test_string_operators(shop: Shop) -> None:
    shop.check([
        (leaf("format", "eq", "JPEG"), {"b", "c"}),
        (leaf("format", "ne", "JPEG"), {"a", "d", "e"}),  # a missing field is "not JPEG"
        (leaf("format", "in", ["PNG", "GIF"]), {"a"}),
        (leaf("format", "nin", ["PNG"]), {"b", "c", "d", "e"}),
        (leaf("format", "gt", "JPEG"), {"a"}),
        (leaf("format", "gte", "JPEG"), {"a", "b", "c"}),
        (leaf("format", "lt", "PNG"), {"b", "c"}),
        (leaf("format", "lte", "PNG"), {"a", "b", "c"}),
        (leaf("format", "range", {"gte": "A", "lt": "K"}), {"b", "c"}),
        (leaf("title", "eq", "Mug"), {"e"}),
        # code point order on both databases (whatever PostgreSQL's collation): "B" < "a" < "é"
        (leaf("code", "lt", "a"), {"a"}),
        (leaf("code", "gt", "a"), {"c"}),
        (leaf("code", "range", {"gte": "B", "lte": "a"}), {"a", "b"}),
        (leaf("code", "eq", "é"), {"c"}),
    ])


def test_integer_operators(shop: Shop) -> None:
    shop.check([
        (leaf("width", "eq", 800), {"b"}),
        (leaf("width", "ne", 800), {"a", "c", "d", "e"}),
        (leaf("width", "in", [100, 1600]), {"a", "c"}),
        (leaf("width", "nin", [100]), {"b", "c", "d", "e"}),
        (leaf("width", "gt", 100), {"b", "c"}),  # e's "wide" is no number (SQLite would order text last)
        (leaf("width", "gte", 100), {"a", "b", "c"}),
        (leaf("width", "lt", 800), {"a"}),
        (leaf("width", "lte", 800), {"a", "b"}),
        (leaf("width", "range", {"gt": 100, "lte": 1600}), {"b", "c"}),
        (leaf("width", "range", {"lt": 1000}), {"a", "b"}),
        (leaf("width", "range", {"gte": 1600}), {"c"}),
        (leaf("chars", "range", {"gt": -(2**63), "lt": 2**63 - 1}), {"d", "e"}),
    ])


def test_number_operators(shop: Shop) -> None:
    shop.check([
        (leaf("price", "eq", 20), {"b"}),
        (leaf("price", "eq", 20.0), {"b"}),
        (leaf("price", "eq", 9.5), {"a"}),
        (leaf("price", "ne", 20), {"a", "c", "d", "e"}),
        (leaf("price", "in", [9.5, 120.25]), {"a", "c"}),
        (leaf("price", "nin", [9.5, 20]), {"c", "d", "e"}),
        (leaf("price", "gt", 9.5), {"b", "c"}),
        (leaf("price", "gte", 9.5), {"a", "b", "c"}),
        (leaf("price", "lt", 20), {"a"}),
        (leaf("price", "lte", 120.25), {"a", "b", "c"}),
        (leaf("price", "range", {"gte": 10, "lt": 120.25}), {"b"}),
        (leaf("price", "range", {"gt": 9.5}), {"b", "c"}),
        (leaf("price", "range", {"lte": 19.99}), {"a"}),
    ])


def test_boolean_operators(shop: Shop) -> None:
    shop.check([
        (leaf("in_stock", "eq", True), {"a", "c"}),  # e's integer 1 is not true
        (leaf("in_stock", "eq", False), {"b"}),
        (leaf("in_stock", "ne", True), {"b", "d", "e"}),
        (leaf("in_stock", "in", [False]), {"b"}),
        (leaf("in_stock", "in", [True, False]), {"a", "b", "c"}),
        (leaf("in_stock", "nin", [True]), {"b", "d", "e"}),
    ])


def test_exists(shop: Shop) -> None:
    shop.check([
        (leaf("title", "exists", True), {"d", "e"}),
        (leaf("title", "exists", False), {"a", "b", "c"}),
        (leaf("price", "exists", True), {"a", "b", "c"}),  # a JSON null counts as absent
        (leaf("price", "exists", False), {"d", "e"}),
        (leaf("in_stock", "exists", True), {"a", "b", "c", "e"}),  # false is present
        (leaf("tags", "exists", True), ALL),
        (leaf("modality", "exists", True), ALL),
        (leaf("modality", "exists", False), set()),
    ])


def test_columns(shop: Shop) -> None:
    ids = shop.ids
    uri = f"mem://{shop.cid}/"
    shop.check([
        (leaf("modality", "eq", "text"), {"d", "e"}),
        (leaf("modality", "ne", "image"), {"d", "e"}),
        (leaf("modality", "in", ["image", "audio"]), {"a", "b", "c"}),
        (leaf("modality", "nin", ["image"]), {"d", "e"}),
        (leaf("uri", "eq", uri + "c"), {"c"}),
        (leaf("uri", "ne", uri + "c"), ALL - {"c"}),
        (leaf("uri", "in", [uri + "a", uri + "b", "mem://nowhere"]), {"a", "b"}),
        (leaf("uri", "nin", [uri + "a"]), ALL - {"a"}),
        (leaf("id", "eq", ids["b"]), {"b"}),
        (leaf("id", "in", [ids["a"], ids["e"]]), {"a", "e"}),
        (leaf("id", "gt", ids["c"]), {"d", "e"}),
        (leaf("id", "range", {"gte": ids["b"], "lt": ids["d"]}), {"b", "c"}),
        (leaf("id", "nin", [ids["a"]]), ALL - {"a"}),
    ])


def test_list_contains(shop: Shop) -> None:
    shop.check([
        (leaf("tags", "eq", "red"), {"a", "c"}),  # e's scalar "red" is no list
        (leaf("tags", "eq", "sale"), {"a"}),
        (leaf("tags", "eq", 7), {"c"}),
        (leaf("tags", "eq", 7.0), {"c"}),
        (leaf("tags", "eq", "7"), set()),  # a string is not a number
        (leaf("tags", "in", ["blue", 7]), {"b", "c"}),
        (leaf("tags", "in", ["green"]), set()),
        (leaf("tags", "ne", "red"), {"b", "d", "e"}),
        (leaf("tags", "nin", ["red", "blue"]), {"d", "e"}),
        ({"and": [leaf("tags", "eq", "red"), leaf("tags", "eq", "sale")]}, {"a"}),
    ])


def test_and_or_not(shop: Shop) -> None:
    jpeg = leaf("format", "eq", "JPEG")
    shop.check([
        ({"and": [jpeg, leaf("in_stock", "eq", True)]}, {"c"}),
        ({"and": [jpeg]}, {"b", "c"}),
        ({"or": [leaf("width", "lt", 200), leaf("chars", "gt", 20)]}, {"a", "d"}),
        ({"not": jpeg}, {"a", "d", "e"}),
        ({"not": {"not": jpeg}}, {"b", "c"}),
        ({"not": {"or": [leaf("format", "eq", "PNG"), leaf("width", "gt", 1000)]}}, {"b", "d", "e"}),
        ({"or": [{"and": [jpeg, leaf("price", "lt", 100)]}, {"and": [leaf("modality", "eq", "text"),
                                                                        {"not": leaf("title", "eq", "Mug")}]}]},
         {"b", "d"}),
        ({"and": [{"not": leaf("tags", "eq", "red")}, leaf("tags", "exists", True),
                  {"or": [leaf("modality", "eq", "image"), leaf("chars", "lt", 20)]}]}, {"b", "e"}),
    ])


def test_same_shape_other_values_on_one_engine(shop: Shop) -> None:
    """Compiled statements are cached by shape: each run must still bind its own values."""
    for _ in range(2):
        assert shop.names(leaf("width", "eq", 100)) == {"a"}
        assert shop.names(leaf("width", "eq", 1600)) == {"c"}
        assert shop.names(leaf("tags", "eq", "blue")) == {"b"}
        assert shop.names(leaf("tags", "eq", "sale")) == {"a"}
        assert shop.names(leaf("code", "lt", "a")) == {"a"}
        assert shop.names(leaf("code", "lt", "é")) == {"a", "b"}


def test_orm_queries_apply_filter_and_count(shop: Shop) -> None:
    spec = {"or": [leaf("tags", "eq", "red"), leaf("title", "eq", "Kettle")]}
    items = shop.catalog.items(list(shop.ids.values()), where=compile_filter(spec, FIELDS))
    assert {shop.by_id[i] for i in items} == {"a", "c", "d"}
    q = apply_filter(select(Item.id).where(Item.collection_id == shop.cid), leaf("width", "gte", 800), FIELDS)
    count = select(func.count()).where(Item.collection_id == shop.cid, compile_filter(spec, FIELDS))
    with shop.catalog.Session() as s:
        assert {shop.by_id[i] for i in s.scalars(q)} == {"b", "c"}
        assert s.scalar(count) == 3
    assert apply_filter(q, None, FIELDS) is q
    assert "json_each" in str(select(Item.id).where(compile_filter(spec, FIELDS)))


# errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "message"), [
    (leaf("colour", "eq", "red"),
     "filters.field: unknown field 'colour' (fields: chars, code, format, id, in_stock, modality, price, source_id, tags, "
     "title, uri, width)"),
    (leaf("width", "like", 3),
     "filters.op: unknown operator 'like' (known: eq, ne, in, nin, gt, gte, lt, lte, range, exists)"),
    ({"and": [leaf("width", "eq", 1), leaf("width", "like", 1)]}, "filters.and[1].op: unknown operator 'like'"),
    ({"or": [{"not": {"and": [leaf("width", "eq", 1), leaf("width", "eq", "x")]}}]},
     "filters.or[0].not.and[1].value: expected an integer, got string"),
    (leaf("width", "eq", "wide"), "filters.value: expected an integer, got string"),
    (leaf("width", "eq", 1.5), "filters.value: expected an integer, got number"),
    (leaf("width", "eq", True), "filters.value: expected an integer, got boolean"),
    (leaf("id", "eq", "7"), "filters.value: expected an integer, got string"),
    (leaf("price", "eq", "cheap"), "filters.value: expected a number, got string"),
    (leaf("price", "eq", None), "filters.value: expected a number, got null"),
    (leaf("in_stock", "eq", 1), "filters.value: expected a boolean, got integer"),
    (leaf("format", "eq", 3), "filters.value: expected a string, got integer"),
    (leaf("format", "eq", ["PNG"]), "filters.value: expected a string, got list"),
    (leaf("format", "in", ["PNG", 3]), "filters.value[1]: expected a string, got integer"),
    (leaf("width", "range", {"gte": "a"}), "filters.value.gte: expected an integer"),
    (leaf("tags", "eq", True), "filters.value: expected a string or a number, got boolean"),
    (leaf("tags", "in", [["red"]]), "filters.value[0]: expected a string or a number, got list"),
    (leaf("in_stock", "gt", True), "filters.op: gt does not apply to boolean field 'in_stock'"),
    (leaf("tags", "range", {"gt": "a"}), "filters.op: range does not apply to list field 'tags'"),
    (leaf("uri", "gt", "a"), "filters.op: gt does not apply to column 'uri' (use: eq, ne, in, nin, exists)"),
    ({"field": "width", "op": "eq"}, "filters.value: missing"),
    ({"field": "width", "value": 1}, "filters.op: missing"),
    ({"op": "eq", "value": 1}, "filters.field: missing"),
    ({"field": 3, "op": "eq", "value": 1}, "filters.field: expected a string, got integer"),
    ({"field": "width", "op": "eq", "value": 1, "extra": 2}, "filters: unknown key 'extra'"),
    (leaf("width", "in", []), "filters.value: in takes a non-empty list of at most 1000 values"),
    (leaf("width", "nin", 3), "filters.value: nin takes a non-empty list"),
    (leaf("width", "in", list(range(1001))), "at most 1000 values"),
    (leaf("width", "range", {"between": 1}), "range takes an object with gt or gte and/or lt or lte"),
    (leaf("width", "range", {}), "range takes an object"),
    (leaf("width", "range", [1, 2]), "range takes an object"),
    (leaf("width", "range", {"gt": 1, "gte": 2}), "one lower and one upper bound at most"),
    (leaf("title", "exists", "yes"), "filters.value: exists takes true or false, got string"),
    (leaf("format", "eq", "x" * 1001), "filters.value: string longer than 1000 characters"),
    (leaf("format", "in", ["PNG", "x" * 1001]), "filters.value[1]: string longer than 1000"),
    (leaf("price", "gt", float("nan")), "filters.value: expected a finite number"),
    (leaf("price", "lt", float("inf")), "filters.value: expected a finite number"),
    (leaf("width", "eq", 2**63), "filters.value: integer out of the 64-bit range"),
    ({"and": []}, "filters.and: expected a non-empty list of filters, got an empty list"),
    ({"or": leaf("width", "eq", 1)}, "filters.or: expected a non-empty list of filters, got object"),
    ({"xor": []}, "filters: unknown key 'xor'"),
    ({}, "filters: expected 'field' (a condition) or one of 'and', 'or', 'not' (got keys: none)"),
    ({"and": [leaf("width", "eq", 1)], "or": [leaf("width", "eq", 1)]}, "(got keys: 'and', 'or')"),
    ([leaf("width", "eq", 1)], "filters: expected an object, got list"),
    ("width = 1", "filters: expected an object, got string"),
    ({"not": None}, "filters.not: expected an object, got null"),
    ({"and": [leaf("width", "eq", 1), "x"]}, "filters.and[1]: expected an object, got string"),
    (leaf("x" * 5000, "eq", 1), "filters.field: unknown field 'xxxxx"),
])
def test_bad_filters_say_what_and_where(spec: Any, message: str) -> None:
    with pytest.raises(FilterError) as caught:
        compile_filter(spec, FIELDS)
    assert message in str(caught.value)
    assert len(str(caught.value)) < 300


def test_size_bounds() -> None:
    deep: dict[str, Any] = leaf("width", "eq", 1)
    for _ in range(7):
        deep = {"not": deep}
    compile_filter(deep, FIELDS)  # the leaf is at depth 8
    with pytest.raises(FilterError, match=r"^filters(\.not){8}: nested deeper than 8 levels$"):
        compile_filter({"not": deep}, FIELDS)
    compile_filter({"or": [leaf("width", "eq", i) for i in range(64)]}, FIELDS)
    with pytest.raises(FilterError, match=r"^filters\.or\[64\]: more than 64 conditions"):
        compile_filter({"or": [leaf("width", "eq", i) for i in range(65)]}, FIELDS)
    wide = {"or": [leaf("width", "in", list(range(1000))) for _ in range(11)]}
    with pytest.raises(FilterError, match=r"^filters\.or\[10\]\.value: more than 10000 in/nin values"):
        compile_filter(wide, FIELDS)
    nested = {"and": [{"or": [leaf("width", "eq", i) for i in range(40)]}] * 2}
    with pytest.raises(FilterError, match=r"^filters\.and\[1\]\.or\[24\]: more than 64"):
        compile_filter(nested, FIELDS)


def test_unknown_field_type_is_a_bug_not_a_user_error() -> None:
    with pytest.raises(ValueError, match="'date'"):
        compile_filter(leaf("when", "eq", "x"), {"when": "date"})
