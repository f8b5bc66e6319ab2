"""Which model serves each space in an index run: named by the settings, checked against the one the
collection recorded, resolved (names validated, local checkpoints hashed) before any work and loaded
only when a space has work.

The primary space's model is always resolved (a wrong or missing one stops the run). Another space's
model is resolved the first time the run needs the space; when it is the default and cannot be had
(no extra installed, offline) the space is *unavailable*: its items are failed with the reason and
retried by the first run that can embed them. A model the user named that does not load stops the run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from xmodal.config import DEFAULT_AUDIO_MODEL, Settings
from xmodal.encoders import Encoder, load_encoder, resolve_model
from xmodal.errors import ModelLoadError
from xmodal.indexer.decode import UNKNOWN
from xmodal.spaces import PRIMARY, SPACES, native_spaces, optional_in
from xmodal.storage.catalog import Space, check_same_model

log = logging.getLogger(__name__)

#: failure reasons that start with this are retried as soon as a run can embed that modality again
UNAVAILABLE = "audio unavailable: "

#: per space: the settings that name its model (model, pretrained) and the default when none is named
_NAMED_BY = {"clip": ("clip_model", "clip_pretrained"), "clap": ("audio_model", None)}
_DEFAULTS = {"clap": DEFAULT_AUDIO_MODEL}


class RunModels:
    """The models of one run (or dry run), by space: ``recorded`` are the collection's spaces, if any."""

    def __init__(self, settings: Settings, collection: str, recorded: Iterable[Space],
                 warn: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.warn = warn or log.warning  # a run says a missing default model once, before the work
        self.collection = collection
        self.records: dict[str, dict[str, Any]] = {PRIMARY: self._resolve(PRIMARY, *self._named(PRIMARY))}
        self.encoders: dict[str, Encoder] = {}
        self.unavailable: dict[str, str] = {}  # space -> why this run can't embed into it
        for space in recorded:  # a wrong model fails now, before any scan
            given = {**space.model, "family": space.family}
            model, pretrained = self._named(space.name)
            if space.name == PRIMARY:
                check_same_model(given, self.records[PRIMARY], collection=collection)
            elif model:
                named = self._resolve(space.name, model, pretrained)
                check_same_model(given, named, collection=collection)
                self.records[space.name] = named
            else:
                self.records[space.name] = given  # loading checks that a local folder is unchanged

    def _named(self, space: str) -> tuple[str | None, str | None]:
        model_key, pretrained_key = _NAMED_BY[space]
        return getattr(self.settings, model_key), getattr(self.settings, pretrained_key) if pretrained_key else None

    @staticmethod
    def _resolve(space: str, model: str | None, pretrained: str | None) -> dict[str, Any]:
        return resolve_model(SPACES[space].family, model or _DEFAULTS[space], pretrained)

    def ready(self, space: str) -> bool:
        """Whether this run can embed into ``space``, resolving its model the first time it is asked."""
        if space in self.records:
            return True
        if space not in self.unavailable:
            model, pretrained = self._named(space)
            try:
                self.records[space] = self._resolve(space, model, pretrained)
            except ModelLoadError as exc:
                if model:  # named by the user: a mistake to fix, not a file to skip
                    raise
                self.unavailable[space] = f"{UNAVAILABLE}{exc}"
                self.warn(f"{exc}; its files wait as failed until a run can embed them")
                if exc.detail:
                    log.info("%s model: %s", space, exc.detail)
        return space in self.records

    def active(self, modalities: Iterable[str]) -> list[str]:
        """The spaces this run embeds into: the primary one, those the collection has, and those that embed
        the given modalities (the work's; ``unknown``: any), when their models can be had."""
        wanted = {s for m in modalities for s in (SPACES if m == UNKNOWN else native_spaces(m))
                  if optional_in(s, m) is None or self._named(s)[0]}  # a video's sound: when its model is named
        spaces = {PRIMARY, *self.records, *wanted}
        return [s for s in SPACES if s in spaces and self.ready(s)]

    def why_not(self, modality: str) -> str:
        """Why a modality gets no vector in this run (its space's model is unavailable)."""
        for space in native_spaces(modality):
            if space in self.unavailable:
                return self.unavailable[space]
        return f"{UNAVAILABLE}no model embeds {modality}"

    def encoder(self, space: str) -> Encoder:
        """The loaded encoder of a space (loaded once)."""
        if space not in self.encoders:
            self.encoders[space] = load_encoder(SPACES[space].family, self.records[space], self.settings.device)
        return self.encoders[space]
