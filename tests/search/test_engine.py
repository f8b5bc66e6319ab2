"""Searcher: old index versions are released, repeated text queries come from the cache."""

from __future__ import annotations

import gc
import weakref

from helpers import write_photos

from xmodal.indexer.pipeline import index_sources
from xmodal.search.engine import Searcher


def test_old_version_is_released_when_no_request_holds_it(settings, tmp_path):
    media = tmp_path / "m"
    write_photos(media, 6)
    index_sources(settings, [media], "c", progress=False)
    searcher = Searcher(settings, "c")
    in_flight = searcher.loaded  # what a running request holds
    old = weakref.ref(in_flight)
    write_photos(media, 2, start=6)
    index_sources(settings, [media], "c", progress=False)
    assert searcher.refresh()
    assert searcher.loaded.version == in_flight.version + 1
    gc.collect()
    assert old() is not None  # the request still uses it: kept
    del in_flight
    gc.collect()
    assert old() is None  # no request uses it: freed
    searcher.close()


def test_repeated_text_queries_hit_the_cache(settings, tmp_path):
    media = tmp_path / "m"
    write_photos(media, 4)
    index_sources(settings, [media], "c", progress=False)
    searcher = Searcher(settings, "c")
    calls = []
    encoder = searcher.encoder
    real = encoder.embed_texts
    encoder.embed_texts = lambda texts: calls.append(list(texts)) or real(texts)  # type: ignore[method-assign]
    first = searcher.run(text="red boots", k=3)
    second = searcher.run(text="red boots", k=3)
    searcher.run(text="  red boots ", k=3)  # the same query once stripped
    assert calls == [["red boots"]]
    assert [r.id for r in first.results] == [r.id for r in second.results]
    searcher.run(text="blue boots", k=3)
    assert calls == [["red boots"], ["blue boots"]]
    searcher.close()
