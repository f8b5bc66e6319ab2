"""One settings object for xmodal.

Values come from, in order of priority: explicit arguments (the CLI flags), environment variables
``XMODAL_*``, an optional TOML file (``XMODAL_CONFIG`` or ``$XMODAL_HOME/xmodal.toml``), defaults.
Derived values (database URL from the home, worker counts) are computed here and nowhere else.

The data dir defaults to the platform's per-user data folder (:func:`user_data_dir`: ``~/.local/share/xmodal``
on Linux), so every command finds the same catalog wherever it runs; a ``./xmodal-data`` holding a catalog in
the current folder (the default of earlier versions) is still used, so nobody loses a catalog.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_CLIP_MODEL = "ViT-B-32"
DEFAULT_CLIP_PRETRAINED = "laion2b_s34b_b79k"
DEFAULT_AUDIO_MODEL = "laion/clap-htsat-unfused"


#: the data dir of earlier versions, relative to the current folder: still used when it holds a catalog
LEGACY_HOME = "xmodal-data"


def user_data_dir(app: str = "xmodal") -> Path:
    """The platform's per-user data folder (platformdirs): ``$XDG_DATA_HOME/xmodal`` or ``~/.local/share/xmodal``
    on Linux and BSD, ``~/Library/Application Support/xmodal`` on macOS, ``%LOCALAPPDATA%\\xmodal`` on Windows."""
    return Path(platformdirs.user_data_dir(app, appauthor=False))


def legacy_home() -> Path | None:
    """``./xmodal-data`` when it holds a catalog (a data dir made by an earlier version), else None."""
    path = Path(LEGACY_HOME).absolute()
    return path if (path / "catalog.sqlite").is_file() else None


def default_home() -> Path:
    """The data dir when neither ``--home`` nor ``XMODAL_HOME`` names one."""
    return legacy_home() or user_data_dir()


def _toml_file() -> Path | None:
    explicit = os.environ.get("XMODAL_CONFIG")
    if explicit:
        return Path(explicit)
    home = Path(os.environ["XMODAL_HOME"]) if os.environ.get("XMODAL_HOME") else default_home()
    candidate = home / "xmodal.toml"
    try:
        return candidate if candidate.is_file() else None
    except OSError:  # a data dir this user may not look into (another user's): no settings file from it
        return None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="XMODAL_", extra="ignore", validate_default=True)

    home: Path = Field(default_factory=default_home, description="data dir: catalog, shards, indexes (default: "
                       "the user data dir, e.g. ~/.local/share/xmodal)")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite in home")

    clip_model: str = DEFAULT_CLIP_MODEL
    clip_pretrained: str = DEFAULT_CLIP_PRETRAINED
    audio_model: str | None = Field(
        default=None, description="CLAP model: Hugging Face id or local folder; default: the collection's, "
        "else laion/clap-htsat-unfused")
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N")

    # indexing
    batch_size: int = Field(default=64, ge=1, le=4096)
    workers: int = Field(default=0, ge=0, le=256, description="decode processes; 0 = one per core but one")
    decode_pool_min_bytes: int = Field(default=64 * 1024 * 1024, ge=0, description="decode in worker processes "
                                       "when a run's media add up to this many bytes (smaller runs decode in "
                                       "process: starting workers costs seconds); 0: always")
    shard_rows: int = Field(default=50_000, ge=1)
    shard_seconds: float = Field(default=300.0, gt=0, description="flush a shard at least this often")

    # media limits
    max_file_bytes: int = Field(default=512 * 1024 * 1024, ge=1, description="bytes of a file read whole (images, "
                                "texts, libsndfile audio, fetched media); a local video or container audio is streamed "
                                "and bounded by the video limits instead")
    max_image_pixels: int = Field(default=100_000_000, ge=1)
    max_text_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    max_audio_seconds: float = Field(default=3600.0, gt=0, le=86_400, description="longer clips are failed")
    max_video_seconds: float = Field(default=3 * 3600.0, gt=0, le=86_400, description="longer videos are failed")
    max_video_pixels: int = Field(default=7680 * 4320, ge=1, description="pixels of one video frame (8K)")
    video_timeout_s: float = Field(default=600.0, gt=0, description="seconds one video may take to decode")
    video_fps: float = Field(default=1.0, gt=0, le=60, description="video frames sampled per second")
    video_max_frames: int = Field(default=256, ge=2, le=100_000, description="frames kept per video: a longer one "
                                  "is sampled more sparsely (memory per decode worker is bounded by this)")
    video_max_segment_s: float = Field(default=10.0, gt=0, description="longest video segment (shot) in seconds")
    follow_external_symlinks: bool = Field(
        default=False, description="index files that symlinks lead to outside the sources (their targets are then "
        "served too); off: such links are recorded failed and symlinked folders outside are not walked")
    # remote media (manifest URLs); max_file_bytes caps their size too
    fetch_timeout: float = Field(default=10.0, gt=0, description="seconds to connect, and for each read")
    fetch_deadline: float = Field(default=60.0, gt=0, description="seconds for one fetch, retries included")
    fetch_retries: int = Field(default=3, ge=0, le=20, description="tries after the first (429, 5xx, timeouts)")

    # index
    exact_threshold: int = Field(default=50_000, ge=0, description="below this many vectors: exact search")
    filter_exact_max: int = Field(default=4096, ge=0, description="a filter matching at most this many items "
                                  "of a part is searched exactly over them (search.plans)")
    recall_target: float = Field(default=0.95, gt=0, le=1.0, description="recall@10 the index build tunes for")
    max_index_memory: int | None = Field(
        default=None, description="RAM budget of one space's index (e.g. 2GiB); sizes the PQ codes and "
        "decides whether the re-rank vectors are held in RAM (default: codes of dim/8 bytes, re-rank "
        "vectors memory-mapped)")

    # service
    api_keys: str = Field(default="", description="comma-separated API keys; empty = no auth")
    public_metrics: bool = Field(default=False, description="with API keys set: /metrics and /readyz answer "
                                 "without a key too (/healthz always does)")
    client_uris: Literal["absolute", "relative", "none"] = Field(
        default="absolute", description="what results and items show of a file's path: the absolute server path, "
        "the path relative to its source folder (prefixed by that folder's name), or nothing (media by id only)")
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1, description="bytes of one request body")
    max_query_chars: int = Field(default=1000, ge=1, le=100_000, description="characters of a text query")
    query_max_image_pixels: int = Field(default=40_000_000, ge=1, description="pixels of an uploaded query image")
    query_max_audio_seconds: float = Field(default=60.0, gt=0, le=3600, description="seconds of an uploaded query "
                                           "sound")
    query_max_video_seconds: float = Field(default=30.0, gt=0, le=3600, description="seconds of an uploaded query "
                                           "clip")
    query_max_video_pixels: int = Field(default=1920 * 1080, ge=1, description="pixels of one frame of an "
                                        "uploaded query clip")
    query_video_timeout_s: float = Field(default=30.0, gt=0, le=3600, description="seconds an uploaded query clip "
                                         "may take to decode")
    query_concurrency: int = Field(default=2, ge=1, le=64, description="uploaded media decoded and embedded at once; "
                                   "more answer 503 with Retry-After")
    request_header_timeout: float = Field(default=10.0, gt=0, le=600, description="seconds for a request's headers")
    request_body_timeout: float = Field(default=15.0, gt=0, le=600, description="seconds a request body may pause")
    request_body_seconds: float = Field(default=120.0, gt=0, le=3600, description="seconds for a whole request body")
    index_poll_seconds: float = Field(default=2.0, gt=0, description="how often serve looks for new versions")
    thumbnail_size: int = Field(default=256, ge=16, le=2048)

    @property
    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]

    @field_validator("max_index_memory", mode="before")
    @classmethod
    def _memory_size(cls, value: Any) -> int | None:
        return parse_bytes(value)

    @field_validator("home", mode="after")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml = _toml_file()
        if toml is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'catalog.sqlite'}"

    @property
    def catalog_label(self) -> str:
        """Where the catalog is, for the line commands print: the data dir, or the database URL (no password)."""
        if not self.database_url:
            return str(self.home)
        from sqlalchemy.engine import make_url

        try:
            url = make_url(self.database_url).render_as_string(hide_password=True)
        except Exception:  # noqa: BLE001 - an unreadable URL fails later with its own error
            url = self.database_url.split("@")[-1]
        return f"{url}, data dir {self.home}"

    @property
    def resolved_workers(self) -> int:
        if self.workers:
            return self.workers
        return max(1, (os.cpu_count() or 2) - 1)


def load_settings(**overrides: Any) -> Settings:
    """Settings from env/TOML, with non-None keyword overrides (CLI flags) on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def parse_bytes(text: str | int | None) -> int | None:
    """``"512MB"``, ``"2GiB"``, ``"1.5G"``, ``"1000000"`` -> bytes (None / "" -> None). SI units are
    powers of 1000, IEC (KiB, MiB, GiB, TiB) and bare letters (K, M, G, T) powers of 1024."""
    if isinstance(text, bool):
        raise ValueError(f"cannot read {text!r} as a memory size")
    if isinstance(text, int):
        if text <= 0:
            raise ValueError(f"a memory size must be > 0 bytes, not {text}")
        return text
    if text is None:
        return None
    s = str(text).strip().replace(" ", "")
    if not s:
        return None
    units = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4,
             "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
             "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
    i = len(s)
    while i and s[i - 1].isalpha():
        i -= 1
    number, unit = s[:i], s[i:].lower()
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in units or not value > 0 or not math.isfinite(value):
        raise ValueError(f"cannot read {text!r} as a memory size: use e.g. 512MB, 2GiB or a number of bytes")
    return int(value * units[unit])
