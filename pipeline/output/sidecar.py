"""Per-asset JSON sidecars and the append-only ``index.jsonl``, written so a crash never leaves half a file.

A sidecar is replaced atomically (temp in the same directory, fsync, ``os.replace``,
fsync of the directory: the pip/Mercurial recipe). The index is appended with
``O_APPEND`` and fsynced; a crash can tear only its last line, which readers skip.
The state database stays the source of truth; these files are for people and
for reconciling a tree against it. The helpers block: call them through
``anyio.to_thread.run_sync`` from async code.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from pipeline.output.layout import fsync_dir

__all__ = [
    "append_index",
    "append_index_records",
    "atomic_write",
    "file_sha256",
    "read_index",
    "read_sidecar",
    "strip_query",
    "verify_asset",
    "write_bytes",
    "write_sidecar",
]

_FLAGS = os.O_CLOEXEC | os.O_NOFOLLOW


def strip_query(url: str) -> str:
    """``url`` without query, fragment or userinfo: signed URLs carry their credentials there."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split("?", 1)[0].split("#", 1)[0].rpartition("@")[2]
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


_PRETTY = json.JSONEncoder(sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
_LINE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
#: In orjson's output, a number token with a fraction or an exponent: a float, which orjson may
#: spell differently from ``repr`` (``0.00001`` vs ``1e-05``). Matches inside strings too (harmless).
_FLOATISH = re.compile(rb"[:,\[]\s*-?[0-9]+[.eE]")


def _encode(data: Mapping[str, Any], stdlib: json.JSONEncoder, option: int) -> bytes:
    """``stdlib``'s bytes, from orjson where it writes the very same (20x faster with an indent).

    Text, integers and booleans come out alike; a float, a ``null`` (orjson writes NaN as null, the
    stdlib refuses it) or what orjson refuses (big integers, non-text keys) go through the stdlib.
    """
    try:
        text = orjson.dumps(data, option=option)
    except orjson.JSONEncodeError:
        return stdlib.encode(data).encode()
    if b"null" in text or _FLOATISH.search(text):
        return stdlib.encode(data).encode()
    return text


def write_sidecar(path: Path, data: Mapping[str, Any], *, sync_dir: bool = True) -> None:
    """Replace ``path`` with ``data`` as JSON (sorted keys, indent 2), all or nothing.

    ``sync_dir=False`` leaves the directory fsync to the caller, who must make one before relying
    on the new name (e.g. after renaming the asset into the same directory: one fsync for both).
    """
    atomic_write(
        path, _encode(data, _PRETTY, orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n", sync_dir=sync_dir
    )


def write_bytes(path: Path, payload: bytes) -> None:
    """Replace ``path`` with ``payload``, all or nothing (run records, a report uploaded elsewhere)."""
    atomic_write(path, payload)


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """The sidecar at ``path``, or ``None`` when it is missing or not a JSON object."""
    try:
        fd = os.open(path, os.O_RDONLY | _FLAGS)
    except OSError:  # missing, or a symlink (O_NOFOLLOW)
        return None
    with os.fdopen(fd, "rb") as f:
        try:
            data = json.loads(f.read())
        except ValueError:
            return None
    return data if isinstance(data, dict) else None


def append_index(index_path: Path, record: Mapping[str, Any]) -> None:
    """Append ``record`` as one JSON line and fsync it (see :func:`append_index_records`)."""
    append_index_records(index_path, [record])


def append_index_records(index_path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    """Append ``records``, one JSON line each, in one write and one fsync.

    If the file does not end in a newline (a crash tore the last append), a
    newline goes first so the torn line stays alone and the new ones parse.
    """
    payload = b"".join(_encode(r, _LINE, orjson.OPT_SORT_KEYS) + b"\n" for r in records)
    fd = os.open(index_path, os.O_RDWR | os.O_APPEND | os.O_CREAT | _FLAGS, 0o666)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            payload = b"\n" + payload
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    if size == 0:
        fsync_dir(index_path.parent)  # a new file's directory entry must survive too


def read_index(index_path: Path) -> list[dict[str, Any]]:
    """Every record of ``index.jsonl`` in order; torn lines are skipped, a missing file is empty."""
    records: list[dict[str, Any]] = []
    try:
        fd = os.open(index_path, os.O_RDONLY | _FLAGS)
    except FileNotFoundError:
        return records
    with os.fdopen(fd, "rb") as f:
        for raw in f:  # binary iteration splits on b"\n" only, as the writer does
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except ValueError:  # a crash mid-append; UnicodeDecodeError is a ValueError too
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def file_sha256(path: Path) -> str:
    """The sha256 of ``path`` in hex, streamed (memory stays flat for any size)."""
    fd = os.open(path, os.O_RDONLY | _FLAGS)
    with os.fdopen(fd, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify_asset(asset_path: Path, sidecar: Mapping[str, Any]) -> bool:
    """Whether ``asset_path`` is a regular file matching the sidecar's ``bytes`` and ``sha256``."""
    try:
        size = int(sidecar["bytes"])
        digest = str(sidecar["sha256"]).lower()
    except (KeyError, TypeError, ValueError):
        return False
    try:
        st = os.lstat(asset_path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size != size:
        return False
    return file_sha256(asset_path) == digest


_FOREIGN_TEMP_AGE_S = 60.0


def atomic_write(path: Path, payload: bytes, *, sync_dir: bool = True, exclusive: bool = True) -> None:
    """Write ``payload`` to a fresh temp beside ``path``, fsync, rename over ``path``, fsync the directory.

    ``exclusive``: one writer per target (a unit's sidecar, under its claim), so any temp of the
    target is a dead writer's and is removed. Otherwise (the gallery, which every worker sharing a
    folder may write at once) only temps older than a minute are: a younger one may be another
    writer's, between its create and its rename."""
    directory = path.parent
    stem = f".{path.name[:200]}."
    # A scan with two string tests, not glob(): each target's pattern is new, and compiling it
    # cost ~150 µs of CPU per sidecar, more than the scan.
    with os.scandir(directory) as entries:
        stale = [e.name for e in entries if e.name.startswith(stem) and e.name.endswith(".tmp")]
    cutoff = None if exclusive else time.time() - _FOREIGN_TEMP_AGE_S
    for name in stale:
        if len(name) >= len(stem) + 4:
            with contextlib.suppress(FileNotFoundError):
                if cutoff is None or os.stat(directory / name).st_mtime < cutoff:
                    os.unlink(directory / name)
    temp = directory / f"{stem}{secrets.token_hex(4)}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _FLAGS, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    if sync_dir:
        fsync_dir(directory)
