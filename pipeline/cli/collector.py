"""The cyclic garbage collector during start-up: paused while the command's modules import, then
the imported objects frozen and the collector resumed.

Imports create a few hundred thousand long-lived objects (functions, classes, their dicts) and
next to no garbage cycles, yet the collector walks them about a hundred times before a run's
first request (~5 % of its start-up instructions under callgrind), and every later full
collection walks them again. Only the process's own command line pauses it (``main()`` with no
argv, and ``python -m pipeline`` from its first line), so code that calls ``main([...])``
in-process keeps its collector as it was. :func:`settled` then freezes what the imports built
(``gc.freeze``: later collections skip it) and resumes collecting.
"""

from __future__ import annotations

import gc

__all__ = ["pause", "settled"]

_paused = False


def pause() -> None:
    """Stop collecting until :func:`settled`; for the process's own entry point only."""
    global _paused
    gc.disable()
    _paused = True


def settled() -> None:
    """The command has imported what it needs: freeze those objects and collect again. Does
    nothing unless :func:`pause` stopped the collector."""
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()
