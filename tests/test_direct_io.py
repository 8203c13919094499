"""The part writer: whatever the pieces, the file holds exactly the bytes, direct I/O or not."""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.output import direct
from pipeline.output.direct import ALIGN, PartWriter

BUFFER = 4 * ALIGN


def pieces(data: bytes, rng: random.Random) -> Iterator[list[bytes]]:
    """``data`` as batches of randomly sized pieces, as sockets deliver them."""
    at = 0
    while at < len(data):
        batch = []
        for _ in range(rng.randint(1, 4)):
            size = rng.choice([1, 7, ALIGN - 1, ALIGN, ALIGN + 3, BUFFER, 3 * BUFFER + 5])
            batch.append(data[at : at + size])
            at += size
        yield [b for b in batch if b]


def o_direct_on(fd: int) -> bool:
    with open(f"/proc/self/fdinfo/{fd}") as info:
        flags = next(int(line.split()[1], 8) for line in info if line.startswith("flags:"))
    return bool(flags & os.O_DIRECT)


def write_file(path: Path, data: bytes, seed: int, *, prefix: bytes = b"") -> tuple[bool, bool]:
    """Write ``prefix`` plainly, then ``data`` through a PartWriter; (direct at start, direct at end)."""
    path.write_bytes(prefix)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.lseek(fd, len(prefix), os.SEEK_SET)
        writer = PartWriter(fd, len(prefix), BUFFER)
        started = writer.direct and o_direct_on(fd)
        for batch in pieces(data, random.Random(seed)):
            writer.write(batch)
        writer.flush()
        ended = writer.direct
        writer.close()
    finally:
        os.close(fd)
    return started, ended


@pytest.fixture(name="direct_ok")
def _direct_ok(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "probe", os.O_WRONLY | os.O_CREAT)
    try:
        if not direct._set_direct(fd, True):
            pytest.skip(f"{tmp_path}: the file system refuses O_DIRECT")
    finally:
        os.close(fd)


@pytest.mark.parametrize("size", [0, 1, ALIGN - 1, ALIGN, ALIGN + 1, BUFFER, BUFFER + 1, 5 * BUFFER + 123])
def test_exact_bytes_whatever_the_size(tmp_path: Path, direct_ok: None, size: int) -> None:
    """Whole blocks go direct; an unaligned tail ends direct I/O; the file is byte-exact."""
    data = random.Random(size).randbytes(size)
    started, ended = write_file(tmp_path / "f.part", data, seed=size)
    assert (tmp_path / "f.part").read_bytes() == data
    assert started
    assert ended == (size % ALIGN == 0)


@pytest.mark.parametrize("prefix", [ALIGN, 1000])
def test_resume_from_aligned_or_unaligned_offset(tmp_path: Path, direct_ok: None, prefix: int) -> None:
    """A resume at a block boundary goes direct; anywhere else it is buffered; both byte-exact."""
    kept, rest = b"k" * prefix, random.Random(1).randbytes(3 * BUFFER + 17)
    started, _ = write_file(tmp_path / "f.part", rest, seed=2, prefix=kept)
    assert (tmp_path / "f.part").read_bytes() == kept + rest
    assert started == (prefix % ALIGN == 0)


def test_refused_direct_write_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system that takes the flag but refuses the write (EINVAL): the bytes go buffered."""
    real_write = os.write

    def picky(fd: int, data: bytes | memoryview) -> int:
        if o_direct_on(fd):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", picky)
    data = random.Random(3).randbytes(3 * BUFFER + 5)
    _, ended = write_file(tmp_path / "f.part", data, seed=3)
    assert (tmp_path / "f.part").read_bytes() == data
    assert not ended


def test_short_direct_write_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A short write that leaves the offset unaligned: the rest goes buffered, nothing lost or doubled."""
    real_write = os.write
    short = [True]

    def stingy(fd: int, data: bytes | memoryview) -> int:
        if not (short[0] and o_direct_on(fd)):
            return real_write(fd, data)
        short[0] = False
        direct._set_direct(fd, False)  # (the kernel itself would not take a part block direct)
        written = real_write(fd, memoryview(data)[: ALIGN + 100])
        direct._set_direct(fd, True)
        return written

    monkeypatch.setattr(os, "write", stingy)
    data = random.Random(4).randbytes(2 * BUFFER + ALIGN)
    _, ended = write_file(tmp_path / "f.part", data, seed=4)
    assert (tmp_path / "f.part").read_bytes() == data
    assert not ended


def test_no_o_direct_means_buffered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tmpfs on older kernels, some network file systems: F_SETFL O_DIRECT fails, writes are plain."""
    monkeypatch.setattr(direct, "_set_direct", lambda fd, on: False)
    data = random.Random(5).randbytes(BUFFER + 9)
    started, _ = write_file(tmp_path / "f.part", data, seed=5)
    assert (tmp_path / "f.part").read_bytes() == data
    assert not started


def test_close_without_flush_leaves_a_prefix(tmp_path: Path, direct_ok: None) -> None:
    """A cancelled download: what was written is a prefix of the body (a resume extends it)."""
    data = random.Random(6).randbytes(3 * BUFFER + 77)
    fd = os.open(tmp_path / "f.part", os.O_WRONLY | os.O_CREAT)
    writer = PartWriter(fd, 0, BUFFER)
    writer.write([data])
    writer.close()
    os.close(fd)
    kept = (tmp_path / "f.part").read_bytes()
    assert kept == data[: len(kept)]
    assert len(kept) == 3 * BUFFER
