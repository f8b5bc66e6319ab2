"""Where the data dir is when nobody says: the platform's user data dir, an old ./xmodal-data kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from xmodal.config import Settings


@pytest.fixture
def nothing_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No XMODAL_HOME, XDG_DATA_HOME in a temporary folder, and an empty current folder."""
    monkeypatch.delenv("XMODAL_HOME", raising=False)
    monkeypatch.delenv("XMODAL_CONFIG", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path


def test_default_home_is_the_platform_user_data_dir(nothing_set):
    assert Settings().home == nothing_set / "xdg" / "xmodal"
    assert Settings().resolved_database_url == f"sqlite:///{nothing_set / 'xdg' / 'xmodal' / 'catalog.sqlite'}"


def test_an_old_xmodal_data_with_a_catalog_in_the_current_folder_is_kept(nothing_set):
    (nothing_set / "work" / "xmodal-data").mkdir()
    assert Settings().home == nothing_set / "xdg" / "xmodal"  # an empty folder is no catalog
    (nothing_set / "work" / "xmodal-data" / "catalog.sqlite").write_bytes(b"")
    assert Settings().home == nothing_set / "work" / "xmodal-data"


def test_env_and_flag_win_over_the_default(nothing_set, monkeypatch):
    monkeypatch.setenv("XMODAL_HOME", str(nothing_set / "env-home"))
    assert Settings().home == nothing_set / "env-home"
    assert Settings(home=nothing_set / "flag-home").home == nothing_set / "flag-home"


def test_catalog_label_hides_a_database_password(tmp_path):
    s = Settings(home=tmp_path, database_url="postgresql+psycopg://u:secret@db.example/x")
    assert "secret" not in s.catalog_label and "db.example/x" in s.catalog_label and str(tmp_path) in s.catalog_label
