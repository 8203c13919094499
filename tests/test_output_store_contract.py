"""The OutputStore contract, written once and run over every implementation (a folder, an S3 bucket).

Create-only puts (same bytes: already published; other bytes: a conflict, never an overwrite),
checksums verified (wrong bytes leave nothing), the sidecar as the commit marker (an asset
without its sidecar is neither listed as done nor adopted), move aside, list, read back.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pipeline.errors import IntegrityError, OutputConflictError
from pipeline.output.local import LocalOutputStore
from pipeline.output.store import OutputStore, Publication, PutOutcome, sidecar_key
from tests.seaweed import S3Server, _s3_server  # noqa: F401 - the session fixture

JPEG = b"\xff\xd8\xff\xe0" + b"jpeg body " * 1000


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def chunks(data: bytes, size: int = 3000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.fixture(name="output", params=["local", "s3"])
async def _output(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[OutputStore]:
    if request.param == "local":
        store: OutputStore = LocalOutputStore(tmp_path / "out")
    else:
        from pipeline.output.s3 import S3OutputStore

        server: S3Server = request.getfixturevalue("s3_server")
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        prefix = f"{server.new_prefix()}/cat"
        store = S3OutputStore(server.bucket, prefix, staging=tmp_path / "staging", part_size=5 << 20)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def part_file(output: OutputStore, data: bytes, name: str = "a.part") -> Path:
    output.staging.mkdir(parents=True, exist_ok=True)
    path = output.staging / name
    path.write_bytes(data)
    return path


async def test_put_then_read_back_stat_and_list(output: OutputStore) -> None:
    assert await output.put_stream("sku/image-1.jpeg", chunks(JPEG), sha256=sha(JPEG)) is PutOutcome.CREATED
    assert await output.read_bytes("sku/image-1.jpeg") == JPEG
    assert b"".join([c async for c in output.read_stream("sku/image-1.jpeg")]) == JPEG
    found = await output.stat("sku/image-1.jpeg")
    assert found is not None and found.bytes == len(JPEG)
    assert await output.verify("sku/image-1.jpeg", len(JPEG), sha(JPEG))
    assert not await output.verify("sku/image-1.jpeg", len(JPEG), sha(b"other"))
    assert [o.key for o in await output.list_objects()] == ["sku/image-1.jpeg"]
    assert await output.stat("sku/missing.jpeg") is None
    assert await output.read_bytes("sku/missing.jpeg") is None


async def test_same_bytes_again_is_already_published_other_bytes_a_conflict(output: OutputStore) -> None:
    key = "sku/image-1.jpeg"
    await output.put_stream(key, chunks(JPEG), sha256=sha(JPEG))
    assert await output.put_stream(key, chunks(JPEG), sha256=sha(JPEG)) is PutOutcome.ALREADY
    assert await output.put_file(key, part_file(output, JPEG), sha256=sha(JPEG)) is PutOutcome.ALREADY
    other = JPEG + b"!"
    with pytest.raises(OutputConflictError, match="not overwritten"):
        await output.put_stream(key, chunks(other), sha256=sha(other))
    assert await output.read_bytes(key) == JPEG


async def test_bytes_that_do_not_match_their_sha256_leave_nothing(output: OutputStore) -> None:
    with pytest.raises(IntegrityError):
        await output.put_stream("sku/image-1.jpeg", chunks(JPEG), sha256=sha(b"something else"))
    assert await output.stat("sku/image-1.jpeg") is None
    assert await output.list_objects() == []


async def test_large_asset_streams_in_parts_and_verifies(output: OutputStore) -> None:
    """Over the part size (a multipart upload on S3): the same create-only, verified result."""
    big = JPEG + os.urandom(11 << 20)
    key = "sku/video-1.mp4"
    assert await output.put_file(key, part_file(output, big), sha256=sha(big)) is PutOutcome.CREATED
    assert await output.verify(key, len(big), sha(big))
    assert hashlib.sha256(b"".join([c async for c in output.read_stream(key)])).hexdigest() == sha(big)
    wrong = big[:-1] + b"\x00"
    with pytest.raises(OutputConflictError):
        await output.put_file(key, part_file(output, wrong), sha256=sha(wrong))
    with pytest.raises(IntegrityError):
        await output.put_file("sku/video-2.mp4", part_file(output, big), sha256=sha(wrong))
    assert await output.stat("sku/video-2.mp4") is None


async def test_the_sidecar_is_the_commit_marker(output: OutputStore) -> None:
    """Published with its sidecar: listed and adoptable. Without it: neither."""
    record = {"item": "sku", "key": "k1", "n": 1, "bytes": len(JPEG), "sha256": sha(JPEG)}
    pub = Publication(
        key="sku/image-1.jpeg", part=part_file(output, JPEG), bytes=len(JPEG), sha256=sha(JPEG),
        owner="k1", sidecar=record,
    )  # fmt: skip
    assert await output.publish(pub) is PutOutcome.CREATED
    assert not pub.part.exists()
    side = await output.read_bytes("sku/image-1.json")
    assert side is not None and b'"path": "sku/image-1.jpeg"' in side
    assert [r["path"] for r in await output.index_records()] == ["sku/image-1.jpeg"]
    candidates = ["sku/image-1.jpeg", "sku/image-1.png"]
    adopted = await output.adopt(candidates, "sku/image-1.json", owner="k1", n=1)
    assert adopted is not None and (adopted.key, adopted.sha256) == ("sku/image-1.jpeg", sha(JPEG))
    assert await output.adopt(candidates, "sku/image-1.json", owner="other", n=1) is None
    # An asset whose sidecar never arrived (a kill between the two) is not trusted.
    await output.put_stream("sku/image-2.jpeg", chunks(JPEG), sha256=sha(JPEG))
    await output.close()
    await output.open()
    assert await output.adopt(["sku/image-2.jpeg"], "sku/image-2.json", owner="k2", n=1) is None
    assert [r["path"] for r in await output.index_records()] == ["sku/image-1.jpeg"]


async def test_older_work_in_the_way_moves_aside_never_overwritten(output: OutputStore) -> None:
    old, new = JPEG, JPEG + b"new"
    for owner, data in (("old-unit-key", old), ("new-unit-key", new)):
        pub = Publication(
            key="sku/image-1.jpeg", part=part_file(output, data), bytes=len(data), sha256=sha(data),
            owner=owner, sidecar={"key": owner, "n": 1, "bytes": len(data), "sha256": sha(data)},
        )  # fmt: skip
        await output.publish(pub)
    assert await output.read_bytes("sku/image-1.jpeg") == new
    stale = [o.key for o in await output.list_objects(".stale/")]
    assert stale == [".stale/sku/image-1.old-unit-key.jpeg", ".stale/sku/image-1.old-unit-key.json"]
    assert await output.read_bytes(stale[0]) == old
    assert ".stale/sku/image-1.old-unit-key.jpeg" not in [o.key for o in await output.list_objects()]


async def test_an_asset_cut_short_under_its_own_sidecar_is_published_again(output: OutputStore) -> None:
    """A rerun fetches a resized file again (the resume's size check); its sidecar still vouches for
    the right bytes, so the cut object moves aside rather than being trusted or a conflict."""
    record = {"key": "k1", "n": 1, "bytes": len(JPEG), "sha256": sha(JPEG)}

    def pub() -> Publication:
        return Publication(key="sku/image-1.jpeg", part=part_file(output, JPEG), bytes=len(JPEG),
                           sha256=sha(JPEG), owner="k1", sidecar=record)  # fmt: skip

    await output.publish(pub())
    await output.put_bytes("sku/image-1.jpeg", JPEG[:100])  # cut behind the pipeline's back
    await output.close()
    await output.open()
    assert not output.present("sku/image-1.jpeg", len(JPEG))
    await output.publish(pub())
    assert await output.read_bytes("sku/image-1.jpeg") == JPEG
    stale = [o.key for o in await output.list_objects(".stale/") if o.key.endswith(".jpeg")]
    assert len(stale) == 1 and await output.read_bytes(stale[0]) == JPEG[:100]


async def test_move_aside_and_plain_objects(output: OutputStore) -> None:
    await output.put_stream("sku/image-1.jpeg", chunks(JPEG), sha256=sha(JPEG))
    moved = await output.move_aside("sku/image-1.jpeg", area=".rejected", tag="r1")
    assert moved == ".rejected/sku/image-1.r1.jpeg"
    assert await output.stat("sku/image-1.jpeg") is None
    assert await output.read_bytes(moved) == JPEG
    assert await output.move_aside("sku/nothing.jpeg") is None
    await output.put_bytes("runs/1.json", b"{}")
    await output.put_bytes("runs/1.json", b'{"again": 1}')  # not an asset: replaced freely
    assert await output.read_bytes("runs/1.json") == b'{"again": 1}'
    assert sidecar_key("a/b.mp4") == "a/b.json"
