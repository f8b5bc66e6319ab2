"""Modalities and embedding spaces, as data: the one table every part of xmodal reads.

A **modality** is a kind of media an item can be (image, text, audio, video), with the file extensions and
upload types that mean it. A **space** is one encoder model with a fixed dimension; each embeds some
modalities natively (``clip``: images, text and video frames; ``clap``: audio, text and a video's sound track),
and a collection has the spaces its items need. A space may embed a modality only where an item has the
part it takes (``only_if``: a video with sound gets a ``clap`` vector, a silent one none). Spaces are
listed in **routing order**: a (query modality, target modality) pair is searched in the first space where both are native, else through an **alignment**, a linear
map from one space into another fitted on texts that both embed (``clap`` -> ``clip`` carries audio
into the space of images).

Adding a modality is a row here, a decoder registered for it (``xmodal.indexer.decode``) and the
encoder family that embeds it; nothing else names modalities or spaces one by one.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from xmodal.errors import UserError


@dataclass(frozen=True)
class Modality:
    name: str
    plural: str  # for messages: "images", "texts", "audio"
    extensions: frozenset[str]  # lower case, with the dot: files with these are indexed as this modality
    upload_types: frozenset[str] = frozenset()  # MIME types a query upload may have (none: not uploadable)
    windowed: bool = False  # an item is cut into windows, each embedded; a result names its best one
    always_segment: bool = False  # a result names its window even when there is only one (a video's one shot)
    may_be: frozenset[str] = frozenset()  # what a file of this kind may turn out to hold (an .mp4 with sound only)


@dataclass(frozen=True)
class Space:
    name: str
    family: str  # the encoder family (``xmodal.encoders`` registry) that serves it
    modalities: frozenset[str]  # embedded natively
    hint: str = ""  # what to do when a collection lacks the space and a query needs it
    #: (modality, metadata flag): items of that modality get a vector here only when their metadata's flag is
    #: true (a video's sound track in ``clap``: a silent video has none); the space also needs no model of
    #: its own for them (it embeds them when the collection has it or its model is named)
    only_if: tuple[tuple[str, str], ...] = ()

    @property
    def own_modalities(self) -> tuple[str, ...]:
        """The modalities only this space embeds (what a collection without it cannot hold)."""
        others = {m for s in SPACES.values() if s.name != self.name for m in s.modalities}
        return tuple(m for m in MODALITIES if m in self.modalities and m not in others)


@dataclass(frozen=True)
class AlignmentSpec:
    """A linear map from ``source`` into ``target``, fitted on a bank of texts both spaces embed; the
    ``carries`` modalities of ``source`` get vectors in ``target`` through it."""

    source: str
    target: str
    carries: frozenset[str]


@dataclass(frozen=True)
class AudioSpec:
    """How to cut audio for a model: its sample rate, the window length and what clips to accept. Set by
    the audio encoder, applied by the audio decoder (neither imports the other: both read it here)."""

    sample_rate: int
    window_s: float = 10.0
    min_seconds: float = 0.1  # shorter clips (a click) are zero-padded to this, not refused
    max_seconds: float = 3600.0
    silence_dbfs: float = -60.0

    def __post_init__(self) -> None:
        if self.sample_rate < 1:
            raise ValueError(f"sample_rate must be at least 1, got {self.sample_rate}")
        if not self.window_s > 0 or round(self.window_s * self.sample_rate) < 1:
            raise ValueError(f"window_s must be at least one sample long, got {self.window_s}")
        if not 0 <= self.min_seconds <= self.max_seconds:
            raise ValueError(
                f"need 0 <= min_seconds <= max_seconds, got {self.min_seconds} and {self.max_seconds}"
            )
        if math.isnan(self.silence_dbfs):
            raise ValueError("silence_dbfs must be a number")


IMAGE = Modality("image", "images", frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tiff",
                                     ".tif"}),
                 frozenset({"image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff"}))
TEXT = Modality("text", "texts", frozenset({".txt", ".md", ".markdown"}))
AUDIO = Modality("audio", "audio", frozenset({".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff",
                                             ".m4a", ".aac"}),
                 frozenset({"audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave", "audio/flac", "audio/x-flac",
                            "audio/ogg", "audio/opus", "audio/mpeg", "audio/mp3", "audio/aiff", "audio/x-aiff"}),
                 windowed=True)
VIDEO = Modality("video", "videos", frozenset({".mp4", ".m4v", ".webm", ".mkv", ".mov", ".avi", ".ts"}),
                 frozenset({"video/mp4", "video/x-m4v", "video/webm", "video/x-matroska", "video/quicktime",
                            "video/x-msvideo", "video/mp2t"}),
                 windowed=True, always_segment=True, may_be=frozenset({"audio"}))

#: every modality, in the order lists and pages show them
MODALITIES: dict[str, Modality] = {m.name: m for m in (IMAGE, TEXT, AUDIO, VIDEO)}
#: every space, in routing order (text -> text is searched in the first)
SPACES: dict[str, Space] = {s.name: s for s in (
    Space("clip", "open_clip", frozenset({"image", "text", "video"}), "run `xmodal index` on images, text or video"),
    Space("clap", "clap", frozenset({"audio", "text", "video"}),
          "audio indexed with a CLAP model: install the 'audio' extra and run `xmodal index` on audio files",
          only_if=(("video", "has_audio"),)),
)}
PRIMARY = "clip"  # the space every collection gets (its texts and images; the target of alignments)
ALIGNMENTS: tuple[AlignmentSpec, ...] = (AlignmentSpec("clap", "clip", frozenset({"audio"})),)
#: a query's target: one modality, or ``any`` (every modality the collection holds)
ANY = "any"
TARGETS: tuple[str, ...] = (ANY, *MODALITIES)

_BY_EXTENSION = {ext: m.name for m in MODALITIES.values() for ext in m.extensions}


def space(name: str) -> Space:
    try:
        return SPACES[name]
    except KeyError:
        raise UserError(f"unknown space {name!r}; known: {', '.join(SPACES)}") from None


def native_spaces(modality: str) -> tuple[str, ...]:
    """The spaces that embed ``modality`` natively, in routing order."""
    return tuple(s.name for s in SPACES.values() if modality in s.modalities)


def native(space_name: str, modality: str) -> bool:
    return modality in SPACES[space_name].modalities


def alignment_into(target: str) -> AlignmentSpec | None:
    """The alignment whose vectors land in ``target`` (``clap`` -> ``clip`` for ``clip``), if any."""
    return next((a for a in ALIGNMENTS if a.target == target), None)


def optional_in(space_name: str, modality: str) -> str | None:
    """The metadata flag an item of ``modality`` needs to get a vector in the space (``has_audio`` for a
    video in ``clap``), or ``None`` when every item of it does."""
    return dict(SPACES[space_name].only_if).get(modality)


def embeds(space_name: str, modality: str, meta: dict[str, object] | None = None) -> bool:
    """Whether the space embeds an item of ``modality`` whose decoded metadata is ``meta`` (``None``: not
    decoded yet, so it may)."""
    if not native(space_name, modality):
        return False
    flag = optional_in(space_name, modality)
    return flag is None or meta is None or bool(meta.get(flag))


def modality_for_path(path: str | os.PathLike[str]) -> str | None:
    """The modality a file's extension says (case-insensitive), or ``None``. Never raises for odd names:
    surrogate-escaped bytes from :func:`os.fsdecode` are fine."""
    return _BY_EXTENSION.get(os.path.splitext(os.fspath(path))[1].lower())


def upload_modality(media_type: str) -> str | None:
    """The modality an upload's declared MIME type means (parameters ignored), or ``None``."""
    declared = media_type.split(";")[0].strip().lower()
    return next((m.name for m in MODALITIES.values() if declared in m.upload_types), None)


UPLOAD_TYPES: frozenset[str] = frozenset(t for m in MODALITIES.values() for t in m.upload_types)


@dataclass(frozen=True)
class Route:
    """Where a (query modality, target modality) pair is searched, and how its scores come about."""

    query: str
    target: str
    space: str
    method: str  # "ip": inner product of native vectors; "aligned-ip": one side mapped through an alignment
    map_query: bool = False  # the query's vector is mapped through the alignment into ``space``


def route(query: str, target: str) -> Route:
    """The first space (routing order) where both modalities are native, else the target space of the
    alignment that carries one of them there."""
    for s in SPACES.values():
        if query in s.modalities and target in s.modalities:
            return Route(query, target, s.name, "ip")
    for a in ALIGNMENTS:
        into = SPACES[a.target].modalities
        if query in a.carries and target in into:  # the query is mapped (audio -> image)
            return Route(query, target, a.target, "aligned-ip", map_query=True)
        if target in a.carries and query in into:  # the target's vectors were carried (image -> audio)
            return Route(query, target, a.target, "aligned-ip")
    raise UserError(f"no route from {query} to {target}")
