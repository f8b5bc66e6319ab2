"""The command line explains itself: every flag of every command has help that states its default,
and what `xmodal stats` prints about the device reads as words."""

from __future__ import annotations

import argparse
import socket

import pytest

from xmodal.cli import build_parser
from xmodal.cli.admin import device_words, page_urls

SILENT = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)


def _commands() -> list[tuple[str, argparse.ArgumentParser]]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [("xmodal", parser), *((f"xmodal {name}", p) for name, p in sub.choices.items())]


def _flags() -> list[tuple[str, argparse.Action]]:
    return [(name, a) for name, p in _commands() for a in p._actions if not isinstance(a, SILENT)]


def test_the_walk_sees_every_command_and_its_flags() -> None:
    names = {name for name, _ in _commands()}
    assert {"xmodal index", "xmodal search", "xmodal serve", "xmodal stats", "xmodal bench"} <= names
    assert len(_flags()) > 60


@pytest.mark.parametrize(("command", "action"), _flags(), ids=lambda x: x if isinstance(x, str) else x.dest)
def test_every_flag_has_help_that_states_its_default(command: str, action: argparse.Action) -> None:
    shown = "/".join(action.option_strings) or action.metavar or action.dest
    assert action.help and action.help.strip(), f"{command} {shown} has no help text"
    default = action.default
    if default in (None, False, argparse.SUPPRESS) or default == []:
        return  # no value unless given (a switch, or a value whose absence the help explains)
    assert "default" in action.help and str(default) in action.help, \
        f"{command} {shown}: help does not state the default {default!r}: {action.help!r}"


def test_help_of_each_command_renders() -> None:
    for _, parser in _commands():
        text = parser.format_help()
        assert "usage:" in text


def test_device_in_words() -> None:
    assert device_words({"torch": "cpu", "gpu_name": None, "faiss_gpus": 0}) == "cpu (torch), FAISS on CPU"
    assert device_words({"torch": "cuda:0", "gpu_name": "NVIDIA H100", "faiss_gpus": 1}) == \
        "cuda:0 NVIDIA H100 (torch), FAISS on 1 GPU"
    assert device_words({"torch": "cpu", "gpu_name": None, "faiss_gpus": 2}) == "cpu (torch), FAISS on 2 GPUs"


def test_the_serve_message_names_urls_a_browser_can_open() -> None:
    assert page_urls("127.0.0.1", 8000) == ("http://127.0.0.1:8000/", None)
    assert page_urls("localhost", 80) == ("http://localhost:80/", None)
    assert page_urls("0.0.0.0", 8000) == ("http://127.0.0.1:8000/", f"http://{socket.gethostname()}:8000/")
    assert page_urls("::", 8000) == ("http://[::1]:8000/", f"http://{socket.gethostname()}:8000/")
    assert page_urls("fe80::1", 8000) == ("http://[fe80::1]:8000/", None)
