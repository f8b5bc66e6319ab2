"""Shared fixtures: a tiny open_clip model saved to disk, catalogs on SQLite and PostgreSQL, media."""

from __future__ import annotations

import functools
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import _pytest.assertion.rewrite
import pytest
from helpers import load_script

from xmodal.config import Settings

PG_URL = os.environ.get("XMODAL_TEST_DATABASE_URL")


def _one_rewrite_at_a_time() -> None:
    """pytest rewrites a module of a plugin's package (anyio's, which a live server imports lazily) on its
    first import, by ``ast.parse`` and ``compile``; CPython 3.11's AST constructor keeps its recursion depth in
    state shared between threads, so two threads rewriting at once may fail with "SystemError: AST
    constructor recursion depth mismatch" (gh-106905; CI met it in a server thread as a 500). One rewrite
    at a time, in whichever thread."""
    rewrite = _pytest.assertion.rewrite._rewrite_test
    lock = threading.RLock()

    @functools.wraps(rewrite)
    def locked(*args, **kwargs):  # type: ignore[no-untyped-def]
        with lock:
            return rewrite(*args, **kwargs)

    _pytest.assertion.rewrite._rewrite_test = locked  # type: ignore[assignment]


_one_rewrite_at_a_time()

#: The test files that take longest (scripts/test.sh --durations=0), longest first. The workers take a whole
#: file each (--dist loadfile), in collection order (--no-loadscope-reorder); these come first so that the
#: workers finish together instead of one starting a five-minute file when the other is nearly done.
LONGEST_FIRST = ("indexer/test_ray_engine.py", "indexer/test_crash_sigkill.py", "test_cli_e2e.py",
                 "indexer/test_pipeline.py", "test_quickstart.py", "indexer/test_build.py", "test_cli_index_output.py",
                 "indexer/test_manifest_index.py", "api/test_web_page.py", "search/test_lexical.py",
                 "api/test_audio_http.py", "api/test_schemathesis.py", "indexer/test_audio_pipeline.py",
                 "api/test_manifest_http.py", "api/test_http.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    here = Path(__file__).parent
    items.sort(key=lambda item: rank.get(item.path.relative_to(here).as_posix(), len(rank)))  # stable: files stay whole


@pytest.fixture(autouse=True)
def _private_data_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test (nor a subprocess it starts, which inherits the environment) writes into the real user data
    dir: the platform default points into a temporary folder, and so does ``XMODAL_HOME`` unless a test
    sets its own."""
    base = tmp_path_factory.mktemp("user-data")
    monkeypatch.setenv("XDG_DATA_HOME", str(base / "xdg"))
    monkeypatch.setenv("XMODAL_HOME", str(base / "xmodal-home"))
    return base


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(--clip-model, --clip-pretrained) of a tiny random-weights open_clip model on disk."""
    model_arg, ckpt = load_script("make_tiny_clip").make_clip(tmp_path_factory.mktemp("tiny-clip"))
    return str(model_arg), str(ckpt)


@pytest.fixture(scope="session")
def tiny_clap(tmp_path_factory: pytest.TempPathFactory) -> str:
    """--audio-model: a folder with a tiny random-weights CLAP model and its processor."""
    return str(load_script("make_tiny_clap").make_clap(tmp_path_factory.mktemp("tiny-clap")))


def _pg_schema_url(base: str) -> Iterator[str]:
    """A fresh schema per test on the PostgreSQL server, dropped afterwards."""
    import sqlalchemy as sa

    schema = f"xm_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(base)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


DB_PARAMS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=[
        pytest.mark.postgres,
        pytest.mark.skipif(not PG_URL, reason="XMODAL_TEST_DATABASE_URL not set (.ci/run sets it)"),
    ]),
]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that takes a catalog (``database_url``, ``settings``) runs on SQLite; one marked ``backends``
    (where the database matters: the catalog's queries, filters, locks, transactions) on PostgreSQL too."""
    if "database_url" in metafunc.fixturenames:
        both = metafunc.definition.get_closest_marker("backends") is not None
        metafunc.parametrize("database_url", DB_PARAMS if both else DB_PARAMS[:1], indirect=True)


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    else:
        assert PG_URL
        yield from _pg_schema_url(PG_URL)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def settings(home: Path, database_url: str, tiny_clip: tuple[str, str]) -> Settings:
    return Settings(home=home, database_url=database_url, clip_model=tiny_clip[0], clip_pretrained=tiny_clip[1],
                    batch_size=16, exact_threshold=1000)


@pytest.fixture
def env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """XMODAL_* env for the in-process CLI, pointing at the test's home, catalog and tiny model."""
    monkeypatch.setenv("XMODAL_HOME", str(settings.home))
    monkeypatch.setenv("XMODAL_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("XMODAL_CLIP_MODEL", settings.clip_model)
    monkeypatch.setenv("XMODAL_CLIP_PRETRAINED", settings.clip_pretrained)
    monkeypatch.setenv("XMODAL_BATCH_SIZE", "16")
    return settings


def module_database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A catalog per backend held for a whole module (one collection built once, that its tests only read): a
    module overrides ``database_url`` with it, ``database_url = pytest.fixture(scope="module",
    name="database_url")(module_database_url)``; ``pytest_generate_tests`` still runs it on both backends."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('catalog') / 'catalog.sqlite'}"
    else:
        assert PG_URL
        yield from _pg_schema_url(PG_URL)
