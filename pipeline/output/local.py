"""The output store as a local folder: ``.part`` files, fsync, ``os.replace``, directory fsync.

A part is verified before it is renamed onto its final name, so a final name only ever holds
a whole file. The sidecar follows the asset into the same directory and one directory fsync
makes both names durable before the index line. Publications run on a
:class:`~pipeline.lane.Lane` of their own: those queued together share one hop, one fsync per
directory and one index append. Create-only here means "checked before the rename": one
run holds the state lock per output folder, so no second writer races us (an S3 bucket,
shared by hosts, needs the conditional write of :mod:`pipeline.output.s3`).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio.to_thread
import structlog

from pipeline.crashpoints import crash_point
from pipeline.errors import DownloadError, IntegrityError, OutputConflictError, UnsafeAssetError
from pipeline.lane import Lane
from pipeline.output import sidecar
from pipeline.output.layout import check_inside, fsync_dir, make_dirs_inside
from pipeline.output.store import Adopted, Publication, PutOutcome, StoredObject, aside_key

__all__ = ["LocalOutputStore", "replace_part"]

_log = structlog.get_logger("pipeline.output.local")
_FLAGS = os.O_CLOEXEC | os.O_NOFOLLOW
_CHUNK = 1024 * 1024
_HIDDEN_TOP = frozenset({".state", ".stale", ".rejected"})


def replace_part(root: Path | None, part: Path, size: int, final: Path, *, sync: bool = True) -> Path:
    """Move a verified part onto ``final`` atomically (and durably with ``sync``); refuses a symlink there.

    Raises:
        UnsafeAssetError: ``final`` is a symlink or not a regular file, or outside the root.
        IntegrityError: the part is missing or no longer ``size`` bytes.
        DownloadError: the rename failed (the part is kept).
    """
    try:
        if root is not None:
            check_inside(root, final)
            make_dirs_inside(root, final.parent)
        else:
            final.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISREG(os.lstat(final).st_mode):
                raise UnsafeAssetError(f"{final} exists and is a symlink or not a regular file")
        try:
            st = os.lstat(part)
        except FileNotFoundError:
            raise IntegrityError(f"{part}: the part file is gone") from None
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            raise IntegrityError(f"{part}: expected {size} bytes, found {st.st_size}")
        os.replace(part, final)
        if sync:
            fsync_dir(final.parent)
            if part.parent != final.parent:
                fsync_dir(part.parent)
    except OSError as exc:
        raise DownloadError(f"{final}: cannot publish: {exc.strerror}") from exc
    return final


class LocalOutputStore:
    """:class:`~pipeline.output.store.OutputStore` on a folder; the blocking work runs in worker threads."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        #: Publications run here, one group at a time: see :meth:`_publish_group`.
        self._lane = Lane("publish")

    @property
    def location(self) -> str:
        return str(self.root)

    @property
    def staging(self) -> Path:
        return self.root

    @property
    def index_path(self) -> Path:
        return self.root / "index.jsonl"

    def path(self, key: str) -> Path:
        """The file of ``key``, after proving no component under the root is a symlink."""
        return check_inside(self.root, self.root / key)

    async def open(self) -> None:
        await anyio.to_thread.run_sync(lambda: self.root.mkdir(parents=True, exist_ok=True))

    async def close(self) -> None:
        self._lane.close()

    def exists(self, key: str) -> bool:
        return os.path.lexists(self.root / key)

    def present(self, key: str, size: int | None) -> bool:
        try:  # os.stat of a string: a resume checks every output, and Path.stat costs 3x as much
            return os.stat(os.path.join(self.location, key)).st_size == size
        except OSError:
            return False

    # -- the delivery path -------------------------------------------------------------------------

    async def publish(self, pub: Publication) -> PutOutcome:
        return await self._lane.run_grouped(self._publish_group, pub)

    def _publish_group(self, pubs: list[Publication]) -> list[PutOutcome | BaseException]:
        """Publications queued together, on the lane: each placed (older work aside, rename,
        sidecar), then one fsync per directory, then their index lines in one append and fsync.

        Until its directory's fsync nothing says a file is done; a power cut that kept the
        asset but not its sidecar leaves a file the next run sets aside and fetches again.
        A publication that fails fails alone; the others of its group go on.
        """
        results: list[PutOutcome | BaseException] = []
        records: dict[int, dict[str, Any]] = {}
        dirs: dict[Path, list[int]] = {}
        for i, pub in enumerate(pubs):
            try:
                outcome, records[i], final = self._place(pub)
            except Exception as exc:  # this publication's failure, raised to its own caller
                results.append(exc)
                continue
            results.append(outcome)
            for directory in {final.parent, pub.part.parent}:
                dirs.setdefault(directory, []).append(i)
        for directory, members in dirs.items():
            try:
                fsync_dir(directory)
            except OSError as exc:
                for i in members:
                    results[i] = exc
                    records.pop(i, None)
        crash_point("after_replace_before_record")
        if records:
            try:
                sidecar.append_index_records(self.index_path, list(records.values()))
            except OSError as exc:
                for i in records:
                    results[i] = exc
        return results

    def _place(self, pub: Publication) -> tuple[PutOutcome, dict[str, Any], Path]:
        """The asset under its final name and its sidecar beside it; neither fsynced in the directory.

        The tree is checked once, for the final name: the sidecar's name differs in its last
        component only (replaced, never followed), and the rename needs no second check.
        """
        final = self.path(pub.key)
        side_key = _sidecar_of(pub.key)
        same_dir = os.path.dirname(side_key) == os.path.dirname(pub.key)
        side = final.parent / os.path.basename(side_key) if same_dir else self.path(side_key)
        outcome = PutOutcome.CREATED
        if self._set_aside_stale(final, side, pub):
            outcome = PutOutcome.ALREADY  # the very same bytes of this unit: keep them, drop the part
            with contextlib.suppress(FileNotFoundError):
                os.unlink(pub.part)
        else:
            replace_part(None, pub.part, pub.bytes, final, sync=False)
        record = dict(pub.sidecar)
        record["path"] = pub.key
        sidecar.write_sidecar(side, record, sync_dir=False)
        return outcome, record, final

    def _set_aside_stale(self, final: Path, side: Path, pub: Publication) -> bool:
        """Whatever is in the way moves aside, never overwritten; ``True``: it is already this asset."""
        if not final.exists():
            return False
        data = sidecar.read_sidecar(side) or {}
        old_key = str(data.get("key", "unknown"))
        if old_key == pub.owner and sidecar.verify_asset(final, {"bytes": pub.bytes, "sha256": pub.sha256}):
            return True
        rel = final.relative_to(self.root).as_posix()
        for key in (rel, _sidecar_of(rel)):
            self._move_aside_blocking(key, ".stale", old_key[:12])
        _log.warning("stale_output_moved", path=str(final), old_key=old_key, to=str(self.root / ".stale"))
        return False

    async def adopt(self, candidates: Sequence[str], sidecar: str, *, owner: str, n: int) -> Adopted | None:
        if not os.path.lexists(self.root / sidecar):  # noqa: ASYNC240 - one lstat: cheaper than a hop
            # The usual case, nothing published before: one lstat on the loop, not a thread hop. (A
            # symlink planted above it is still refused, by the publication's own checks.)
            return None
        return await anyio.to_thread.run_sync(self._adopt_blocking, candidates, sidecar, owner, n)

    def _adopt_blocking(self, candidates: Sequence[str], side_key: str, owner: str, n: int) -> Adopted | None:
        """A file published before a crash but never recorded: verify it, index it once, keep it."""
        side = self.path(side_key)
        if not side.exists():
            return None  # the usual case: nothing was published
        for key in candidates:
            final = self.path(key)
            if not final.exists():
                continue
            data = sidecar.read_sidecar(side)
            if not data or data.get("key") != owner or data.get("n", n) != n:
                continue
            if not sidecar.verify_asset(final, data):
                continue
            indexed = any(
                r.get("path") == key and r.get("sha256") == data["sha256"]
                for r in sidecar.read_index(self.index_path)
            )
            if not indexed:
                sidecar.append_index(self.index_path, data)
            return Adopted(key, int(data["bytes"]), str(data["sha256"]))
        return None

    # -- the general operations (contract, export) --------------------------------------------------

    async def put_file(self, key: str, path: Path, *, sha256: str) -> PutOutcome:
        return await anyio.to_thread.run_sync(self._put_file_blocking, key, path, sha256)

    def _put_file_blocking(self, key: str, path: Path, sha256: str) -> PutOutcome:
        size = os.lstat(path).st_size
        if sidecar.file_sha256(path) != sha256:
            os.unlink(path)
            raise IntegrityError(f"{key}: the bytes do not match sha256 {sha256[:12]}…; nothing was kept")
        final = self.path(key)
        if final.exists():
            os.unlink(path)
            if sidecar.verify_asset(final, {"bytes": size, "sha256": sha256}):
                return PutOutcome.ALREADY
            raise OutputConflictError(f"{self.location}/{key} already holds other bytes; not overwritten")
        replace_part(self.root, path, size, final)
        return PutOutcome.CREATED

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes], *, sha256: str) -> PutOutcome:
        part = self.path(key + ".part")
        await anyio.to_thread.run_sync(lambda: make_dirs_inside(self.root, part.parent))
        fd = await anyio.to_thread.run_sync(
            lambda: os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _FLAGS, 0o666)
        )
        try:
            batch: list[bytes] = []
            async for chunk in chunks:
                batch.append(chunk)
                if sum(map(len, batch)) >= _CHUNK:
                    await anyio.to_thread.run_sync(_write_all, fd, batch)
                    batch = []
            await anyio.to_thread.run_sync(_write_all, fd, batch, True)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part)
            raise
        os.close(fd)
        return await self.put_file(key, part, sha256=sha256)

    async def put_sidecar(self, key: str, data: Mapping[str, Any]) -> None:
        def write() -> None:
            path = self.path(key)
            make_dirs_inside(self.root, path.parent)
            sidecar.write_sidecar(path, data)

        await anyio.to_thread.run_sync(write)

    async def put_bytes(self, key: str, data: bytes, *, content_type: str | None = None) -> None:
        def write() -> None:
            path = self.path(key)
            make_dirs_inside(self.root, path.parent)
            sidecar.write_bytes(path, data)

        await anyio.to_thread.run_sync(write)

    async def stat(self, key: str) -> StoredObject | None:
        try:
            st = await anyio.to_thread.run_sync(os.lstat, self.path(key))
        except FileNotFoundError:
            return None
        return StoredObject(key, st.st_size) if stat.S_ISREG(st.st_mode) else None

    async def verify(self, key: str, size: int, sha256: str) -> bool:
        return await anyio.to_thread.run_sync(
            sidecar.verify_asset, self.path(key), {"bytes": size, "sha256": sha256}
        )

    async def list_objects(self, prefix: str = "") -> list[StoredObject]:
        return await anyio.to_thread.run_sync(self._list_blocking, prefix)

    def _list_blocking(self, prefix: str) -> list[StoredObject]:
        found: list[StoredObject] = []
        for directory, dirs, files in os.walk(self.root):
            here = Path(directory)
            if here == self.root:
                dirs[:] = [d for d in dirs if d not in _HIDDEN_TOP or prefix.startswith(d)]
            for name in files:
                if name.endswith((".part", ".tmp")) or name.startswith("."):
                    continue
                key = (here / name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    with contextlib.suppress(FileNotFoundError):
                        found.append(StoredObject(key, os.lstat(here / name).st_size))
        return sorted(found, key=lambda o: o.key)

    async def read_bytes(self, key: str) -> bytes | None:
        try:
            return await anyio.to_thread.run_sync(self.path(key).read_bytes)
        except FileNotFoundError:
            return None

    async def read_stream(self, key: str) -> AsyncIterator[bytes]:
        fd = await anyio.to_thread.run_sync(lambda: os.open(self.path(key), os.O_RDONLY | _FLAGS))
        try:
            while chunk := await anyio.to_thread.run_sync(os.read, fd, _CHUNK):
                yield chunk
        finally:
            os.close(fd)

    async def move_aside(self, key: str, *, area: str = ".stale", tag: str = "") -> str | None:
        return await anyio.to_thread.run_sync(self._move_aside_blocking, key, area, tag)

    def _move_aside_blocking(self, key: str, area: str, tag: str) -> str | None:
        source = self.path(key)
        if not source.exists():
            return None
        target_key = aside_key(key, area, tag)
        target = self.path(target_key)
        make_dirs_inside(self.root, target.parent)
        os.replace(source, target)
        return target_key

    async def index_records(self) -> list[dict[str, Any]]:
        return await anyio.to_thread.run_sync(sidecar.read_index, self.index_path)


def _sidecar_of(key: str) -> str:
    return key.rsplit(".", 1)[0] + ".json"


def _write_all(fd: int, chunks: list[bytes], sync: bool = False) -> None:
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]
    if sync:
        os.fsync(fd)
