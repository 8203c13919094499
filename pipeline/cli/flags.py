"""Flags shared by every command: one definition, so the commands cannot drift apart."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeAlias

__all__ = ["Handler", "Subcommands", "add_logging_flags"]

#: A command's handler: plain or async; returns the exit code.
Handler = Callable[[argparse.Namespace], Any]
#: What ``add_subparsers`` returns: each command module registers its parsers on it.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_logging_flags(p: argparse.ArgumentParser) -> None:
    """``--log-format``, ``--log-level`` and ``--log-file``."""
    p.add_argument(
        "--log-format",
        choices=("auto", "console", "json"),
        default="auto",
        help="auto: readable lines on a terminal, JSON lines otherwise",
    )
    p.add_argument(
        "--log-level",
        default=None,
        choices=("debug", "info", "warning", "error"),
        help="default info (warning while the live progress display is on)",
    )
    p.add_argument("--log-file", type=Path, default=None, help="write logs there instead of stderr")
