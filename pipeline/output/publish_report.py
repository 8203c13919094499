"""The gallery (``report.html``) of any output store: built in place for a folder, or built from a
local mirror of a bucket's sidecars and run records and then uploaded beside the assets.

Its links are relative (``<item>/<step>-<n>.<ext>``), so the page works when opened from the
bucket (a static website, a CDN, a presigned listing) as it does from a folder.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

import anyio.to_thread

from pipeline.output.local import LocalOutputStore
from pipeline.output.report import build_report
from pipeline.output.sidecar import append_index, write_bytes
from pipeline.output.store import OutputStore
from pipeline.state.opening import SharedState

__all__ = ["REPORT_KEY", "publish_report"]

REPORT_KEY = "report.html"


async def publish_report(
    output: OutputStore,
    *,
    state_path: Path | SharedState | None,
    title: str | None = None,
    groups: Mapping[str, tuple[str, str]] | None = None,
) -> str:
    """Write the report into ``output``; returns where it is (a path, or an ``s3://`` URL).

    ``groups``: matrix variants shown side by side (:func:`pipeline.output.report.variant_groups`)."""
    if isinstance(output, LocalOutputStore):
        path = await anyio.to_thread.run_sync(
            lambda: build_report(output.root, state_path=state_path, title=title, groups=groups)
        )
        return str(path)
    objects = await output.list_objects()
    present = {o.key for o in objects}
    records = await output.index_records()
    runs = sorted(o.key for o in objects if o.key.startswith("runs/") and o.key.endswith(".json"))
    latest = await output.read_bytes(runs[-1]) if runs else None
    heading = title or f"{output.location} · PhotoGPT outputs"

    def build(mirror: Path) -> bytes:
        for record in records:
            append_index(mirror / "index.jsonl", record)
        if latest is not None:
            (mirror / "runs").mkdir()
            write_bytes(mirror / runs[-1], latest)
        page = build_report(
            mirror, state_path=state_path, title=heading, groups=groups, exists=present.__contains__
        )
        return page.read_bytes()

    with tempfile.TemporaryDirectory(prefix="photogpt-report-") as folder:
        page = await anyio.to_thread.run_sync(build, Path(folder))
    await output.put_bytes(REPORT_KEY, page, content_type="text/html; charset=utf-8")
    return f"{output.location}/{REPORT_KEY}"
