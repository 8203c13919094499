"""The live progress line: what the operator reads while a run goes."""

from __future__ import annotations

from rich.console import Console

from pipeline.cli.progress import render
from pipeline.engine.tally import Tally


def text_of(paced: float | None) -> str:
    tally = Tally([("a", "image"), ("b", "image")])
    tally.rate_limited = 7
    snap = tally.snapshot(now=10.0, started=0.0, target=16, in_use=3, paced_rps=paced)
    console = Console(width=200, record=True, color_system=None)
    console.print(render(snap))
    return console.export_text()


def test_the_learned_pace_shows_once_the_limit_is_known() -> None:
    assert "paced 19.4 req/s" in text_of(19.43)
    assert "429s 7" in text_of(19.43) and "active 3/16" in text_of(19.43)


def test_no_pace_is_shown_before_any_limit_is_learned() -> None:
    assert "paced" not in text_of(None)
