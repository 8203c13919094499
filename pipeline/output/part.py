"""The ``.part`` file of a download: how much of a kept one can be resumed, and the sink that grows it.

Everything here blocks, so callers run it in a worker thread. A part is only built
on when it is a regular file (never through a symlink), inside the cap, and starts
with the magic bytes of an asset; a resumed part is re-hashed so the final sha256
covers the whole file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from pathlib import Path

from pipeline.crashpoints import crash_point
from pipeline.errors import DownloadError, IntegrityError, UnsafeAssetError
from pipeline.output.direct import PartWriter
from pipeline.output.layout import check_inside, make_dirs_inside
from pipeline.output.magic import HEAD, Kind, sniff

__all__ = ["PartSink", "discard", "resumable"]


def discard(part: Path) -> None:
    """Remove ``part`` if it is there."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(part)


def resumable(part: Path, root: Path | None, max_bytes: int) -> tuple[int, Kind | None]:
    """Make the part's directory; return how many bytes of it can be resumed, and their type.

    Raises:
        UnsafeAssetError: the part is a symlink or not a regular file, or outside ``root``.
        DownloadError: the directory or the part cannot be read or made.
    """
    try:
        if root is not None:
            check_inside(root, part)
            make_dirs_inside(root, part.parent)
        else:
            part.parent.mkdir(parents=True, exist_ok=True)
        try:
            st = os.lstat(part)
        except FileNotFoundError:
            return 0, None
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeAssetError(f"{part} exists and is not a regular file (symlink?)")
        if st.st_size < HEAD or st.st_size > max_bytes:
            return 0, None  # too small to be worth a Range request, or already over the cap
        fd = os.open(part, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            kind = sniff(f.read(HEAD))
    except OSError as exc:
        raise DownloadError(f"{part}: cannot prepare the part file: {exc.strerror}") from exc
    if kind is None:
        discard(part)  # never build on a part that is not an asset
        return 0, None
    return st.st_size, kind


class PartSink:
    """The ``.part`` file and the sha256 of everything in it; blocking, so call it in a worker thread.

    Hashing and writing a batch in the same thread hop keeps both off the event loop, and
    hashlib and ``os.write`` release the GIL on large buffers, so eight downloads hash in
    parallel with the loop that reads their sockets. The file is opened by the first batch
    (one hop fewer per file): truncated for a fresh download, or re-hashed for a resume.
    """

    __slots__ = ("_chunk", "_direct", "_fd", "_hasher", "_part", "_resume_from", "_writer")

    def __init__(self, part: Path, resume_from: int, chunk_bytes: int, *, direct: bool = True) -> None:
        self._part, self._resume_from, self._chunk = part, resume_from, chunk_bytes
        self._direct = direct
        self._fd: int | None = None
        self._writer: PartWriter | None = None
        self._hasher = hashlib.sha256()

    def absorb(self, chunks: list[bytes], sync: bool = False) -> None:
        """Hash and append ``chunks``; with ``sync``, fsync too (the bytes a resume or a record trusts).

        Up to one buffer of bytes may be held back for direct I/O (see :mod:`pipeline.output.direct`)
        until a ``sync``: the part is always a prefix of the body, never a torn one.
        """
        writer = self._writer or self._open()
        for chunk in chunks:
            self._hasher.update(chunk)
        writer.write(chunks)
        self._written(writer, sync)

    def absorb_block(self, block: memoryview, sync: bool = False) -> None:
        """:meth:`absorb` for one block that starts at a page boundary (a buffer of
        :func:`pipeline.output.direct.take`): hashed and written from where it is, no copy."""
        writer = self._writer or self._open()
        self._hasher.update(block)
        writer.write_aligned(block)
        self._written(writer, sync)

    @staticmethod
    def _written(writer: PartWriter, sync: bool) -> None:
        crash_point("mid_download")  # bytes in the part, the download not finished (nor fsynced)
        if sync:
            writer.flush()
            os.fsync(writer.fd)

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> PartWriter:
        """Open the part (a symlink fails with ELOOP); a kept part is hashed and must be as long as it was."""
        flags = os.O_RDWR if self._resume_from else os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        self._fd = fd = os.open(self._part, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        if self._resume_from:
            seen = 0
            while chunk := os.read(fd, self._chunk):
                self._hasher.update(chunk)
                seen += len(chunk)
            if seen != self._resume_from:
                raise IntegrityError(f"{self._part}: the part changed size while resuming")
        self._writer = PartWriter(fd, self._resume_from, self._chunk, direct=self._direct)
        return self._writer
