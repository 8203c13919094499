"""A resume that skips the rows already done: the nightly run of a big catalog.

The manifest load fingerprints every row (:mod:`pipeline.manifest.prints`) and asks the state
which rows are settled: known to the index, every unit done with its outputs recorded. Those rows
are not expanded, so their units never exist in memory and the diff sees only the rest; the first
POST goes out after reading the rows file and two sequential walks of the state.

The promise of every resume still holds for the skipped rows: every recorded output is checked on
disk, at its size. That check (a ``stat`` per file: seconds for a million) runs after the run's
work, not in front of it (:meth:`Skipping.missing`); a file found missing reopens its unit, and the
run makes a second pass, which expands those rows again and fetches the files without paying.

Only a run on a SQLite state and a local output folder skips, and only when it resets nothing
before the diff (``--retry-failed``, ``--resubmit-unknown`` and ``--regenerate-rejected`` change
phases after the load, so such a run expands everything). After the load the expanded rows are
indexed, so that the next run can skip them once they are done.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import anyio.to_thread

from pipeline.engine.options import RunSummary
from pipeline.engine.request import RunRequest, default_out, default_state
from pipeline.manifest.load import Manifest
from pipeline.manifest.prints import NoneSettled, Settled
from pipeline.output.local import LocalOutputStore
from pipeline.output.open import is_s3_url
from pipeline.state.opening import resolve_state
from pipeline.state.sqlite_prints import Index, missing_outputs, read_index
from pipeline.state.store import StateStore

__all__ = ["Skipping", "combine", "none_settled"]


def none_settled(prints: Sequence[bytes]) -> Settled:
    """A first run: nothing to skip, but the rows are fingerprinted to be indexed."""
    return NoneSettled()


class Skipping:
    """One run's skip: the load's ``settle`` callback, and the file check of what it skipped."""

    def __init__(self, state_path: Path, out: Path) -> None:
        self.state_path, self.out = state_path, out
        self.settled: Settled = NoneSettled()
        self._index: list[Index | None] = []
        # The index is read while the rows file is parsed and fingerprinted (SQLite lets go of the
        # GIL): a daemon thread, so a manifest with problems does not wait for it to exit.
        self._reading = threading.Thread(
            target=lambda: self._index.append(read_index(state_path)), daemon=True
        )
        self._reading.start()

    @classmethod
    def for_run(cls, request: RunRequest, state_path: Path, out: Path | str | None) -> Skipping | None:
        """``None`` when this run cannot skip; ``out`` is the output folder as far as it is known
        before the load (checked after it by :meth:`fits`)."""
        if request.retry_failed or request.resubmit_unknown or request.regenerate_rejected:
            return None
        if out is None or is_s3_url(out):
            return None
        return cls(state_path, Path(out))

    def settle(self, prints: Sequence[bytes]) -> Settled:
        """The load's callback. The index read at the start serves the first load only: a second
        pass (after reopening units) reads it again."""
        self._reading.join()
        index = self._index.pop() if self._index else read_index(self.state_path)
        self.settled = NoneSettled() if index is None else index.settled(prints)
        return self.settled

    def fits(self, request: RunRequest, manifest: Manifest) -> bool:
        """Whether the loaded manifest names the state and output folder the skip was decided on."""
        out = request.out or default_out(manifest)
        return (
            str(out) == str(self.out) and resolve_state(request.state, default_state(out)) == self.state_path
        )

    async def reopen_missing(self, store: StateStore) -> int:
        """Check every recorded output of the skipped rows on disk; reopen the units with one
        missing (or resized). Returns how many were reopened: a second pass fetches them."""
        present = LocalOutputStore(self.out).present
        missing = await anyio.to_thread.run_sync(missing_outputs, self.state_path, self.settled.rows, present)
        for key, numbers in missing.items():
            await store.reopen(key, numbers)
        self.settled = NoneSettled()
        return len(missing)


def combine(first: RunSummary, second: RunSummary) -> RunSummary:
    """One summary for a run that made a second pass: the second's state, both passes' work."""
    requests = dict(first.requests)
    for name, count in second.requests.items():
        requests[name] = requests.get(name, 0) + count
    return RunSummary(
        counts=second.counts,
        failures=first.failures + second.failures,
        stopped=second.stopped,
        submitted=first.submitted + second.submitted,
        rate_limited=first.rate_limited + second.rate_limited,
        downloaded_bytes=first.downloaded_bytes + second.downloaded_bytes,
        elapsed_s=first.elapsed_s + second.elapsed_s,
        stale=second.stale,
        left=second.left,
        requests=requests,
        credits_spent=None
        if first.credits_spent is None and second.credits_spent is None
        else (first.credits_spent or 0.0) + (second.credits_spent or 0.0),
        rate_limit_rps=second.rate_limit_rps,
        active_cap=second.active_cap,
    )
