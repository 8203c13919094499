"""``export``: finished assets and their sidecars copied from one output store to another.

Only what the source trusts leaves (an asset whose sidecar lists it); every copy is a
create-only put verified against the sidecar's sha256, and the sidecar goes last, so a killed
export resumes where it stopped and a finished one skips everything (one listing, no copy).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog

from pipeline.errors import ConfigError, OutputError, PipelineError
from pipeline.output.layout import OutputLayout
from pipeline.output.store import OutputStore, PutOutcome, sidecar_key

__all__ = ["ExportSummary", "export_outputs"]

_log = structlog.get_logger("pipeline.output.export")


@dataclass(kw_only=True)
class ExportSummary:
    copied: int = 0
    skipped: int = 0
    bytes: int = 0
    #: ``source path: why`` for each asset that did not make it (conflicts, checksum refusals).
    failed: list[str] = field(default_factory=list)


async def export_outputs(
    source: OutputStore,
    dest: OutputStore,
    *,
    only: Collection[str] | None = None,
    layout: OutputLayout | None = None,
    concurrency: int = 4,
) -> ExportSummary:
    """Copy every trusted asset of ``source`` (whose sha256 is in ``only``, when given) to ``dest``.

    ``layout`` renames on the way (its template's ``{n}`` is the output's number within its unit,
    ``{index}`` the unit's); two assets landing on one name is a :class:`ConfigError`.
    """
    latest: dict[str, dict[str, Any]] = {}
    for record in await source.index_records():
        latest[str(record["path"])] = record
    plan: dict[str, dict[str, Any]] = {}
    for path, record in sorted(latest.items()):
        if not source.exists(path) or (only is not None and str(record.get("sha256")) not in only):
            continue
        target = _target(path, record, layout)
        if target in plan:
            raise ConfigError(f"--layout puts {plan[target]['path']} and {path} on one name {target!r}")
        plan[target] = record
    summary = ExportSummary()
    limit = anyio.CapacityLimiter(concurrency)

    async def one(target: str, record: dict[str, Any]) -> None:
        async with limit:
            try:
                await _copy(source, dest, target, record, summary)
            except (PipelineError, OSError) as exc:
                summary.failed.append(f"{record['path']}: {exc}")
                _log.error("export_failed", path=record["path"], error=str(exc))

    async with anyio.create_task_group() as tg:
        for target, record in plan.items():
            tg.start_soon(one, target, record)
    return summary


def _target(path: str, record: dict[str, Any], layout: OutputLayout | None) -> str:
    if layout is None:
        return path
    ext = path.rsplit(".", 1)[-1]
    try:
        return layout.asset_key(
            str(record["item"]),
            str(record["step"]),
            int(record["n"]),
            ext,
            key=str(record.get("key", "")),
            model=str(record.get("model") or ""),
            index=int(record["index"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: its sidecar lacks what --layout needs ({exc})") from exc


async def _copy(
    source: OutputStore, dest: OutputStore, target: str, record: dict[str, Any], summary: ExportSummary
) -> None:
    size, sha256 = int(record["bytes"]), str(record["sha256"])
    side = sidecar_key(target)
    if dest.exists(side) and dest.exists(target) and await dest.verify(target, size, sha256):
        summary.skipped += 1
        return
    outcome = await dest.put_stream(target, source.read_stream(str(record["path"])), sha256=sha256)
    await dest.put_sidecar(side, {**record, "path": target})
    if outcome is PutOutcome.CREATED:
        summary.copied += 1
        summary.bytes += size
    else:
        summary.skipped += 1
    if outcome is not PutOutcome.CREATED and outcome is not PutOutcome.ALREADY:  # pragma: no cover
        raise OutputError(f"{target}: unexpected outcome {outcome}")
