"""The review loop on a shared PostgreSQL state, through the command line: the demo manifest runs
into a database (``--state postgresql://…``) against a sandbox process; ``review`` rejects one file
and approves another; ``status``, ``report`` and ``plan`` read the decisions; ``export --only
approved`` copies the approved file only; ``run --regenerate-rejected`` pays for the rejected image
and the upscale made from it, nothing else (the simulator's ledger proves it); a plain rerun pays
nothing. The database password shows in no output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CRASH_KEY as KEY
from tests.conftest import sim_request
from tests.pg import PASSWORD, PgServer

DEMO = Path(__file__).resolve().parent.parent / "manifests" / "demo.yaml"

pytestmark = pytest.mark.slow


def _cli(origin: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHOTOGPT_")}
    env.update(PHOTOGPT_API_KEY=KEY, PHOTOGPT_BASE_URL=f"{origin}/api")
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "pipeline", *args], env=env, capture_output=True, text=True, timeout=180,
        check=False,
    )  # fmt: skip
    assert PASSWORD not in done.stdout + done.stderr, "the database password was shown"
    return done


def _ledger(origin: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = sim_request(origin, "GET", "/_sim/ledger")
    return entries


def _gallery_decisions(page: str) -> dict[str, Any]:
    data = page.split('id="gallery-data"', 1)[1].split(">", 1)[1].split("</script>", 1)[0]
    decisions: dict[str, Any] = json.loads(data)["decisions"]
    return decisions


def test_review_export_report_and_regenerate_on_a_shared_database(
    pg_server: PgServer, sim_url: str, tmp_path: Path
) -> None:
    url = pg_server.create_database(f"review_{uuid.uuid4().hex[:6]}")
    out, dest = tmp_path / "demo", tmp_path / "shop"
    state = ("--out", str(out), "--state", url)
    early = _cli(sim_url, "review", str(DEMO), *state, "--json")  # nothing has run: no folder yet
    assert early.returncode == 2 and "nothing to review yet" in early.stderr, early.stderr
    fresh_plan = _cli(sim_url, "plan", str(DEMO), "--state", url)  # a database with no tables yet
    assert fresh_plan.returncode == 0 and "(7 still to send)" in fresh_plan.stdout, fresh_plan.stderr
    first = _cli(sim_url, "run", str(DEMO), *state, "--no-progress")
    assert first.returncode == 0, first.stderr[-3000:]
    assert not (out / ".state").exists()  # the state is the database's

    decided = _cli(sim_url, "review", str(DEMO), *state, "--reject", "perfume/image-1", "--note",
                   "off brand", "--approve", "mug/image-1")  # fmt: skip
    assert decided.returncode == 0, decided.stderr
    assert "2 decision(s) recorded in postgresql://photogpt:***@" in decided.stdout
    listed = json.loads(_cli(sim_url, "review", str(DEMO), *state, "--json").stdout)
    verdicts = {d["path"]: (d["verdict"], d["note"]) for d in listed["decisions"]}
    assert verdicts == {
        "perfume/image-1.jpeg": ("reject", "off brand"),
        "mug/image-1.jpeg": ("approve", None),
    }
    assert listed["review"] == {"approved": 1, "rejected": 1, "regenerated": 0}
    status = json.loads(_cli(sim_url, "status", str(DEMO), "--state", url, "--json").stdout)
    assert status["review"] == listed["review"]

    exported = _cli(sim_url, "export", str(DEMO), *state, "--to", str(dest), "--only", "approved")
    assert exported.returncode == 0, exported.stderr
    copied = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert copied == ["mug/image-1.jpeg", "mug/image-1.json"]

    reported = _cli(sim_url, "report", str(DEMO), *state)
    assert reported.returncode == 0, reported.stderr
    shown = _gallery_decisions((out / "report.html").read_text())
    rejected_sha = json.loads((out / "perfume" / "image-1.json").read_text())["sha256"]
    assert {d["verdict"] for d in shown.values()} == {"approve", "reject"} and rejected_sha in shown

    before = len(_ledger(sim_url))
    regen = _cli(sim_url, "run", str(DEMO), *state, "--regenerate-rejected", "--no-progress")
    assert regen.returncode == 0, regen.stderr[-3000:]
    assert "regenerating 2 unit(s): 1 rejected + 1 chain child(ren)" in regen.stderr
    new = _ledger(sim_url)[before:]
    assert sorted(j["kind"] for j in new) == ["image", "upscale"], new  # perfume and its upscale only
    kept = sorted(p.relative_to(out).as_posix() for p in (out / ".rejected").rglob("*.jpeg"))
    assert [p.rsplit(".", 2)[0] for p in kept] == [".rejected/perfume/image-1", ".rejected/perfume/upscale-1"]
    assert json.loads((out / "perfume" / "image-1.json").read_text())["sha256"] != rejected_sha

    again = _cli(sim_url, "run", str(DEMO), *state, "--regenerate-rejected", "--no-progress")
    assert again.returncode == 0 and "regenerating 0 unit(s)" in again.stderr
    assert len(_ledger(sim_url)) == before + 2  # a rerun pays nothing more
    record = json.loads(sorted((out / "runs").glob("*.json"))[-1].read_text())
    assert record["review"] == {"approved": 1, "rejected": 0, "regenerated": 2}
    planned = _cli(sim_url, "plan", str(DEMO), "--state", url)
    assert planned.returncode == 0 and "7 paid requests (0 still to send)" in planned.stdout, planned.stdout
