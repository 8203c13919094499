"""Crash/resume parity on a shared run: done units whose files are gone are fetched again from their
jobs, never paid again, as a single run on SQLite does (engine/recheck.py, state/pgchecks.py).

Real PostgreSQL (tests/pg.py) and a sandbox process whose ledger counts every job ever created."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pipeline.state.pgreads import open_pg_view
from tests.conftest import CRASH_KEY as KEY
from tests.conftest import sim_request
from tests.pg import PgServer
from tests.seaweed import S3Server, _s3_server  # noqa: F401 - the session fixture


def _manifest(tmp: Path, name: str, items: int) -> Path:
    rows: list[dict[str, Any]] = [
        {"id": f"p{i:02d}", "prompt": f"resume product {i}", **({"upscale": True} if i % 3 == 0 else {})}
        for i in range(items)
    ]
    doc = {
        "version": 1,
        "name": name,
        "defaults": {"image": {"modelID": "gpt-image-2", "options": {"openai": {"outputFormat": "png"}}}},
        "items": rows,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(doc))
    return path


class _Out:
    """The output location: a folder, or a prefix of the test bucket (each worker then runs in a
    folder of its own, as a pod with a fresh volume would)."""

    def __init__(self, tmp: Path, s3: S3Server | None) -> None:
        self.tmp, self.s3 = tmp, s3
        self.prefix = f"resume-{uuid.uuid4().hex[:8]}"
        self.where = f"s3://{s3.bucket}/{self.prefix}" if s3 else str(tmp / "out")

    def worker(self, manifest: Path, origin: str, url: str) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PHOTOGPT_")}
        env.update(PHOTOGPT_API_KEY=KEY, PHOTOGPT_BASE_URL=f"{origin}/api", PHOTOGPT_STATE_URL=url)
        env.update(self.s3.env() if self.s3 else {})
        pod = self.tmp / f"pod-{uuid.uuid4().hex[:6]}"
        pod.mkdir()
        return subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "pipeline", "run", str(manifest), "--out", self.where,
             "--log-format", "json", "--log-level", "warning", "--lease", "5"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=pod,
        )  # fmt: skip

    def read(self, key: str) -> bytes:
        if self.s3 is None:
            return (self.tmp / "out" / key).read_bytes()
        body: bytes = (
            self.s3.client().get_object(Bucket=self.s3.bucket, Key=f"{self.prefix}/{key}")["Body"].read()
        )
        return body

    def write(self, key: str, data: bytes | None) -> None:
        """Replace (``None``: delete) a published object behind the pipeline's back."""
        if self.s3 is not None:
            client, name = self.s3.client(), f"{self.prefix}/{key}"
            if data is None:
                client.delete_object(Bucket=self.s3.bucket, Key=name)
            else:
                client.put_object(Bucket=self.s3.bucket, Key=name, Body=data)
        elif data is None:
            (self.tmp / "out" / key).unlink()
        else:
            (self.tmp / "out" / key).write_bytes(data)


def _finish(*procs: subprocess.Popen[bytes]) -> list[str]:
    """Wait for every worker; each must exit 0. Returns their stderr. On a failure the others are
    killed, so no worker outlives its test (a live one failed the next test with a ResourceWarning)."""
    errs = []
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=180)
            text = err.decode()
            assert proc.returncode == 0, text if len(text) < 6000 else f"{text[:3000]}\n...\n{text[-3000:]}"
            errs.append(text)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return errs


def _jobs(origin: str) -> int:
    return len(sim_request(origin, "GET", "/_sim/ledger"))


@pytest.mark.slow
@pytest.mark.parametrize("where", ["folder", "bucket"])
def test_missing_files_of_done_units_come_back_from_their_jobs(
    where: str, pg_server: PgServer, sim_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Run once; delete two files (one an upscale's source, whose child is done and never claimed
    again) and shorten a third; rerun with 2 workers: all three are back and verified, the
    simulator created no job, and one worker reopened them (the other never checked the same files)."""
    out = _Out(tmp_path, request.getfixturevalue("s3_server") if where == "bucket" else None)
    url = pg_server.create_database(f"resume_{uuid.uuid4().hex[:6]}")
    manifest = _manifest(tmp_path, "resume", 6)  # 6 images + 2 upscales
    _finish(out.worker(manifest, sim_url, url))
    paid = _jobs(sim_url)
    assert paid == 8

    gone, shortened = ["p00/image-1.png", "p01/image-1.png"], "p02/image-1.png"
    for key in gone:
        out.write(key, None)
    out.write(shortened, out.read(shortened)[:1000])

    errs = _finish(out.worker(manifest, sim_url, url), out.worker(manifest, sim_url, url))

    assert _jobs(sim_url) == paid, "a file that went missing was paid for again"
    for key in [*gone, shortened]:
        data, side = out.read(key), json.loads(out.read(key.replace(".png", ".json")))
        assert len(data) == side["bytes"] and hashlib.sha256(data).hexdigest() == side["sha256"]
    with open_pg_view(url, "resume") as view:
        assert {str(k): v for k, v in view.counts().items() if v} == {"done": 8}
    with psycopg.connect(url) as conn:
        reopened = conn.execute(
            "SELECT unit_key, holder FROM photogpt.events WHERE run = 'resume'"
            " AND detail LIKE '%%missing in the output store%%'"
        ).fetchall()
        check = conn.execute(
            "SELECT value_json FROM photogpt.resources WHERE run = 'resume' AND kind = 'output_check'"
        ).fetchone()
    assert len(reopened) == 3 and len({k for k, _ in reopened}) == 3, reopened  # each once
    assert len({h for _, h in reopened}) == 1, "one worker checked and reopened them, not both"
    assert check is not None
    figures = json.loads(check[0])  # a worker that started after the other had finished checks again
    assert figures["checked"] == 8 and figures["reopened"] in (3, 0), figures
    assert sum(e.count('"outputs_missing"') for e in errs) == 1, errs
