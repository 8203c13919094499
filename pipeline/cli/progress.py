"""The live progress display on a terminal (rich), refreshed from the run's tally.

Off when stderr is not a terminal, with ``--no-progress`` and with ``--quiet``:
cron logs stay clean JSON lines.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TextIO

import anyio
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from pipeline.engine.tally import PHASES, Snapshot

__all__ = ["human_bytes", "render", "show_progress"]

_STYLE = {"done": "green", "failed": "red", "unknown": "yellow", "running": "cyan", "downloading": "blue"}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def human_bytes(n: int) -> str:
    """``8.4 kB``, ``1.2 GB``: sizes as the summary and the display show them."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def render(snap: Snapshot) -> Group:
    """A table of units per step and phase, and one line of rates."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("step")
    for phase in PHASES:
        table.add_column(phase, justify="right", style=_STYLE.get(phase, ""))
    for step in sorted(snap.counts):
        table.add_row(step, *(str(snap.counts[step].get(p, 0)) for p in PHASES))
    paced = f"paced {snap.paced_rps:.1f} req/s · " if snap.paced_rps is not None else ""
    line = Text(
        f"{snap.finished}/{snap.total} finished · {snap.per_minute:.0f} submissions/min · "
        f"active {snap.in_use}/{snap.target} · 429s {snap.rate_limited} · {paced}"
        f"{human_bytes(snap.downloaded_bytes)} · "
        f"elapsed {_duration(snap.elapsed_s)} · ETA {_duration(snap.eta_s)}"
        + (f" · {snap.credits_spent:g} credits" if snap.credits_spent else "")
    )
    return Group(table, line)


async def show_progress(
    snapshot: Callable[[], Snapshot], stream: TextIO, *, interval_s: float = 0.25
) -> None:
    """Redraw until cancelled; log lines written to stderr meanwhile appear above the display."""
    console = Console(file=stream)
    with Live(render(snapshot()), console=console, refresh_per_second=4, transient=False) as live:
        try:
            while True:
                await anyio.sleep(interval_s)
                live.update(render(snapshot()))
        finally:
            live.update(render(snapshot()))
