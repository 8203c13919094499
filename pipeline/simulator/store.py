"""All simulator state in memory: models, assets, jobs, downloads (:mod:`.records`), and the ledger.

Jobs and trainings are advanced lazily from the injected clock (or from the poll
count) whenever someone looks, so the simulator needs no background tasks and a
FakeClock fully controls it. Owners are key fingerprints: the key itself is never stored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import json
import random
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

from pipeline.clock import Clock
from pipeline.simulator.config import SimConfig
from pipeline.simulator.pictures import Look
from pipeline.simulator.records import Asset, Download, Job, Model, rfc3339
from pipeline.simulator.rules import Trigger

__all__ = ["Asset", "Download", "Job", "Model", "Store", "body_hash", "fingerprint", "rfc3339"]

#: Share of a job's drawn duration spent ``created`` (when shown) and ``queued`` before ``running``.
CREATED_SHARE = 0.1
QUEUED_SHARE = 0.3


def fingerprint(key: str) -> str:
    """A short, non-reversible name for an API key, safe to log and to use as owner."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def body_hash(body: Any) -> str:
    """sha256 of the canonical JSON of a request body: equal requests hash equal."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


class Store:
    """The in-memory world of one simulator run; replaced wholesale on reset."""

    def __init__(self, config: SimConfig, clock: Clock) -> None:
        self.config = config
        self.url_generation = 0
        self.clock = clock
        self.rng = random.Random(f"{config.seed}:jobs")
        self.credits = config.credits
        self.models: dict[str, Model] = {}
        self.assets: dict[str, Asset] = {}
        self.jobs: dict[str, Job] = {}
        self.downloads: dict[str, Download] = {}
        self.requests: Counter[str] = Counter()
        self.by_body: Counter[str] = Counter()
        self.peak_active: dict[str, int] = {}
        self.counts: Counter[str] = Counter()
        self.active_jobs: Counter[str] = Counter()
        #: Every POST to ``/api`` as it arrived: route and wall time (epoch seconds), in order.
        self.posts: list[tuple[str, float]] = []
        #: Jobs whose creating POST was answered 502 on purpose (``lost_reply_rate``, ``next_n_lost``).
        self.lost_replies: list[str] = []
        self._due: list[tuple[float, int, str]] = []  # (finish time, seq, job id), time mode

    def new_id(self) -> str:
        """A UUIDv7-shaped id: clock milliseconds then seeded random bits, so ids sort by time."""
        ms = int(self.clock.now().timestamp() * 1000) & (2**48 - 1)
        bits = (ms << 80) | (0x7 << 76) | (self.rng.getrandbits(12) << 64) | (0b10 << 62)
        return str(uuid.UUID(int=bits | self.rng.getrandbits(62)))

    # Jobs ---------------------------------------------------------------------------------

    def create_job(
        self, kind: str, owner: str, body: Any, trigger: Trigger, credits: int, source_id: str = ""
    ) -> Job:
        """Register a job, drawing its duration, ``created`` display and fate from the seeded RNG."""
        cfg = self.config
        span = {"image": cfg.image_s, "upscale": cfg.upscale_s, "video": cfg.video_s}[kind]
        failure = None
        if cfg.failure_marker in trigger.prompt:
            failure = "generation failed: the prompt was rejected by the content policy (simulated)"
        elif cfg.failed_job_rate > 0 and self.rng.random() < cfg.failed_job_rate:
            failure = "generation failed: internal error (simulated)"
        now = self.clock.monotonic()
        job = Job(
            id=self.new_id(),
            kind=kind,
            owner=owner,
            body_hash=body_hash(body),
            model_id=trigger.model_id or None,
            count=trigger.count,
            fmt=trigger.fmt,
            created=now,
            created_at=self.clock.now(),
            duration=self.rng.uniform(*span),
            shows_created=self.rng.random() < cfg.created_probability,
            failure=failure,
            credits=credits,
            seq=len(self.jobs),
            source_id=source_id or None,
            look=self._look(kind, trigger, source_id),
            updated=now,
        )
        if self.credits is not None:
            self.credits -= credits
        self.jobs[job.id] = job
        self.active_jobs[owner] += 1
        heapq.heappush(self._due, (now + job.duration, job.seq, job.id))
        self.by_body[job.body_hash] += 1
        self.peak_active[owner] = max(self.peak_active.get(owner, 0), self.active(owner))
        return job

    def _look(self, kind: str, trigger: Trigger, source_id: str) -> Look | None:
        """What the outputs show: the request, or for an upscale its source drawn larger."""
        if kind == "image":
            return Look(trigger.prompt, trigger.model_id, trigger.aspect, trigger.seed)
        source = self.assets.get(source_id)
        if kind != "upscale" or source is None:
            return None
        base = source.look or Look(f"uploaded image {source.id}", source.model_id or "upload")
        return dataclasses.replace(base, upscaled=True)

    def active(self, owner: str) -> int:
        """Non-terminal jobs of ``owner`` right now."""
        self._expire()
        return self.active_jobs[owner]

    def _expire(self) -> None:
        """Finish every job whose time is up (time mode), cheapest first, without scanning all jobs."""
        now = self.clock.monotonic()
        while self.config.progress == "time" and self._due and self._due[0][0] <= now:
            self.advance(self.jobs[heapq.heappop(self._due)[2]])

    def advance(self, job: Job, *, poll: bool = False) -> None:
        """Bring ``job`` up to date with the clock (time mode) or its poll count (poll mode)."""
        if job.terminal:
            return
        now, d = self.clock.monotonic(), job.duration
        if self.config.progress == "time":
            elapsed = now - job.created
            if elapsed >= d:
                self._finish(job, job.created + d, job.created + QUEUED_SHARE * d)
            elif elapsed >= QUEUED_SHARE * d:
                self._move(job, "running", job.created + QUEUED_SHARE * d)
                job.started = job.created + QUEUED_SHARE * d
            elif job.shows_created and elapsed < CREATED_SHARE * d:
                self._move(job, "created", job.created)
            else:
                self._move(job, "queued", job.created + (CREATED_SHARE * d if job.shows_created else 0.0))
        elif poll:
            if job.polls >= self.config.polls_to_finish:
                self._finish(job, now, job.started if job.started is not None else now)
            elif job.polls == 1:
                self._move(job, "created" if job.shows_created else "queued", now)
            else:
                self._move(job, "running", now)
                job.started = now if job.started is None else job.started

    def _move(self, job: Job, status: str, at: float) -> None:
        if job.status != status:
            job.status, job.updated = status, at

    def _finish(self, job: Job, at: float, started: float) -> None:
        job.started = started if job.started is None else job.started
        job.finished = at
        self.active_jobs[job.owner] -= 1
        if job.failure:
            self._move(job, "failed", at)
            if self.credits is not None:
                self.credits += job.credits
            job.credits = 0
            return
        self._move(job, "success", at)
        source = self.assets.get(job.source_id or "")
        for _ in range(job.count):
            asset = Asset(
                id=self.new_id(),
                owner=job.owner,
                kind="video" if job.kind == "video" else "image",
                fmt=job.fmt,
                type="output",
                model_id=source.model_id if source else job.model_id,
                created_at=job.wall(at),
                job_id=job.id,
                hls=job.kind == "video" and self.config.video_hls,
                look=job.look,
            )
            self.assets[asset.id] = asset
            job.outputs.append(asset.id)
        if source is not None:
            source.upscaled_id = job.outputs[0]
            source.upscaled_path = self.assets[job.outputs[0]].path()

    def url_query(self) -> str:
        """The signature asset URLs carry when ``signed_urls`` is on; it changes on ``expire_urls``."""
        return f"?sig=g{self.url_generation}" if self.config.signed_urls else ""

    def url_valid(self, sig: str | None) -> bool:
        return not self.config.signed_urls or sig == f"g{self.url_generation}"

    def job_record(self, job: Job, origin: str) -> dict[str, Any]:
        out: dict[str, Any] = {"jobId": job.id, "status": job.status, "createdAt": rfc3339(job.created_at)}
        if job.model_id and job.kind != "upscale":
            out["modelId"] = job.model_id
        if job.status == "success":
            key = "videos" if job.kind == "video" else "images"
            out[key] = [
                {"id": a.id, "url": origin + a.path() + self.url_query()}
                for a in map(self.assets.get, job.outputs)
                if a
            ]
        if job.status == "failed":
            out["error"] = job.failure
        return out

    def job_item(self, job: Job) -> dict[str, Any]:
        """The shape ``GET /jobs`` lists: ``errorMessage`` instead of ``error``, plus ``credits``."""
        item: dict[str, Any] = {
            "jobId": job.id,
            "status": job.status,
            "createdAt": rfc3339(job.created_at),
            "updatedAt": rfc3339(job.wall(job.updated)),
            "credits": job.credits,
        }
        if job.status == "failed":
            item["errorMessage"] = job.failure
        return item

    # Models -------------------------------------------------------------------------------

    def refresh_model(self, model: Model) -> None:
        """Finish a training whose time is up."""
        if model.status == "training" and model.training_ends is not None:
            now = self.clock.monotonic()
            if now >= model.training_ends:
                model.status = "failed" if self.config.training_fails else "ready"
                model.updated_at = self.clock.now() - timedelta(seconds=now - model.training_ends)

    def trainings(self, owner: str) -> int:
        """Trainings of ``owner`` still running."""
        running = 0
        for model in self.models.values():
            self.refresh_model(model)
            running += model.owner == owner and model.status == "training"
        return running

    # Ledger -------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        self._expire()
        return {
            "requests": dict(sorted(self.requests.items())),
            "jobs_created": len(self.jobs),
            "jobs_by_body": dict(self.by_body),
            "polls": sum(job.polls for job in self.jobs.values()),
            "polls_by_job": {job.id: job.polls for job in self.jobs.values()},
            "sent_429": self.counts["429"],
            "sent_5xx": self.counts["5xx"],
            "bytes_served": self.counts["bytes"],
            "truncated_downloads": self.counts["truncated"],
            "active_jobs": {k: v for k, v in self.active_jobs.items() if v},
            "peak_active_jobs": dict(self.peak_active),
            "credits": self.credits,
            "post_arrivals": [{"route": r, "at": at} for r, at in self.posts],
            "lost_replies": list(self.lost_replies),
        }

    def ledger(self) -> list[dict[str, Any]]:
        for job in self.jobs.values():
            self.advance(job)
        return [
            {
                "jobId": j.id,
                "kind": j.kind,
                "key": j.owner,
                "bodyHash": j.body_hash,
                "created": j.created,
                "started": j.started,
                "finished": j.finished,
                "duration": j.duration,
                "polls": j.polls,
                "status": j.status,
            }
            for j in self.jobs.values()
        ]
