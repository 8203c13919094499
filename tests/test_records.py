"""Wire records: tolerant of extra and missing optional fields, strict on required ones."""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.api.records import (
    Image,
    ImagePage,
    Job,
    JobPage,
    JobStatus,
    JobSummary,
    JobTicket,
    Model,
    Output,
    Preset,
    Video,
    VideoDownload,
    VideoPage,
    WireFormatError,
    parse_timestamp,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class TestJobStatus:
    @pytest.mark.parametrize(
        ("raw", "status"),
        [
            ("success", JobStatus.SUCCESS),
            ("SUCCESS", JobStatus.SUCCESS),
            (" Running\n", JobStatus.RUNNING),
            ("Queued", JobStatus.QUEUED),
            ("created", JobStatus.CREATED),
            ("FAILED", JobStatus.FAILED),
            ("completed", JobStatus.UNKNOWN),
            ("error", JobStatus.UNKNOWN),
            ("", JobStatus.UNKNOWN),
        ],
    )
    def test_parse_is_case_insensitive_and_total(self, raw: str, status: JobStatus) -> None:
        """Documented values in any case; anything else is UNKNOWN, never an exception."""
        assert JobStatus.parse(raw) is status

    @given(st.text())
    def test_parse_never_raises(self, raw: str) -> None:
        """Whatever the server sends, parse returns a member."""
        assert isinstance(JobStatus.parse(raw), JobStatus)

    @pytest.mark.parametrize(
        ("status", "terminal"),
        [
            (JobStatus.CREATED, False),
            (JobStatus.QUEUED, False),
            (JobStatus.RUNNING, False),
            (JobStatus.UNKNOWN, False),
            (JobStatus.SUCCESS, True),
            (JobStatus.FAILED, True),
        ],
    )
    def test_only_success_and_failed_end_a_job(self, status: JobStatus, terminal: bool) -> None:
        """UNKNOWN stays active, so a poller waits for its deadline instead of guessing."""
        assert status.is_terminal is terminal
        assert status.is_active is not terminal


class TestTimestamps:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2026-01-01T00:00:00Z", T0),
            ("2026-01-01T00:00:00.5Z", T0 + timedelta(milliseconds=500)),
            ("2026-01-01T00:00:00.123456789Z", T0 + timedelta(microseconds=123456)),
            ("2026-01-01T02:00:00+02:00", T0),
            ("2026-01-01T00:00:00", T0),
        ],
    )
    def test_rfc3339_to_aware_utc(self, text: str, expected: datetime) -> None:
        """Z, offsets and nanosecond fractions all give an aware UTC datetime."""
        parsed = parse_timestamp(text)
        assert parsed == expected
        assert parsed.tzinfo is UTC

    def test_garbage_is_a_value_error(self) -> None:
        """Not a timestamp: ValueError."""
        with pytest.raises(ValueError):
            parse_timestamp("yesterday")


class TestJob:
    def test_documented_video_job(self) -> None:
        """The reference's example, plus unknown extra fields, parses fully."""
        job = Job.from_wire(
            {
                "jobId": "job_123",
                "status": "success",
                "createdAt": "2026-01-01T00:00:00Z",
                "videos": [{"id": "video_123", "url": "https://cdn.example/v.m3u8", "extra": 1}],
                "modelId": "m-1",
                "somethingNew": {"nested": True},
            }
        )
        assert job.job_id == "job_123" and job.status is JobStatus.SUCCESS and job.status_raw == "success"
        assert job.created_at == T0
        assert job.videos == (Output(id="video_123", url="https://cdn.example/v.m3u8"),)
        assert job.images == () and job.error is None and job.model_id == "m-1"
        assert job.is_terminal and not job.is_active

    def test_minimal_job_tolerates_missing_and_null_optionals(self) -> None:
        """Only jobId and status are required; null lists are empty, "" is None."""
        job = Job.from_wire(
            {"jobId": "j", "status": "QUEUED", "images": None, "error": "", "createdAt": None}
        )
        assert job.status is JobStatus.QUEUED and job.status_raw == "QUEUED"
        assert (job.created_at, job.images, job.videos, job.error, job.model_id) == (None, (), (), None, None)
        assert job.is_active

    def test_unknown_status_keeps_the_raw_text(self) -> None:
        """An undocumented status is UNKNOWN, still active, and its text is kept for logs."""
        job = Job.from_wire({"jobId": "j", "status": "Completed"})
        assert job.status is JobStatus.UNKNOWN and job.status_raw == "Completed"
        assert job.is_active and not job.is_terminal

    @pytest.mark.parametrize(
        ("error", "text"),
        [("boom", "boom"), ({"message": "nsfw"}, "nsfw"), ({"code": 7}, '{"code": 7}'), (42, "42")],
    )
    def test_failure_reason_is_kept_whatever_its_type(self, error: Any, text: str) -> None:
        """The reason a paid job failed is never dropped, even if it is not a string."""
        job = Job.from_wire({"jobId": "j", "status": "failed", "error": error})
        assert job.status is JobStatus.FAILED and job.error == text

    @pytest.mark.parametrize(
        "data",
        [
            {"status": "queued"},
            {"jobId": "", "status": "queued"},
            {"jobId": 12, "status": "queued"},
            {"jobId": "j"},
            {"jobId": "j", "status": 3},
            {"jobId": "j", "status": "success", "images": {"id": "a"}},
            {"jobId": "j", "status": "success", "images": ["https://x/1.jpg"]},
            {"jobId": "j", "status": "success", "images": [{"id": "a"}]},
            {"jobId": "j", "status": "success", "createdAt": "not a time"},
            {"jobId": "j", "status": "success", "createdAt": 1767225600},
            {"jobId": "j", "status": "success", "modelId": 5},
        ],
    )
    def test_missing_or_mistyped_fields_are_wire_format_errors(self, data: dict[str, Any]) -> None:
        """A required field missing, or any field of the wrong type, raises WireFormatError."""
        with pytest.raises(WireFormatError):
            Job.from_wire(data)

    def test_records_are_frozen(self) -> None:
        """Records are values."""
        job = Job.from_wire({"jobId": "j", "status": "queued"})
        with pytest.raises(FrozenInstanceError):
            job.status = JobStatus.SUCCESS  # type: ignore[misc]


class TestListsAndTickets:
    def test_ticket(self) -> None:
        """Trigger endpoints give a job id; a missing status is taken as queued."""
        assert JobTicket.from_wire({"jobId": "j1", "status": "queued"}) == JobTicket(
            job_id="j1", status=JobStatus.QUEUED
        )
        assert JobTicket.from_wire({"jobId": "j1"}).status is JobStatus.QUEUED
        with pytest.raises(WireFormatError):
            JobTicket.from_wire({"status": "queued"})

    @pytest.mark.parametrize("token", [None, "", "absent"])
    def test_job_page_without_next_token(self, token: str | None) -> None:
        """Absent, null and "" all mean the last page."""
        data: dict[str, Any] = {
            "jobs": [{"jobId": "a", "status": "success", "credits": 2, "errorMessage": ""}]
        }
        if token != "absent":
            data["nextPageToken"] = token
        page = JobPage.from_wire(data)
        assert page.next_page_token is None
        assert page.jobs == (
            JobSummary(job_id="a", status=JobStatus.SUCCESS, credits=2.0, error_message=None),
        )

    def test_job_summary_fields(self) -> None:
        """List items carry credits, errorMessage and both timestamps."""
        item = JobSummary.from_wire(
            {
                "jobId": "a",
                "status": "Failed",
                "createdAt": "2026-01-01T00:00:00Z",
                "updatedAt": "2026-01-01T00:01:00Z",
                "credits": 0.5,
                "errorMessage": "policy",
            }
        )
        assert item.status is JobStatus.FAILED and item.credits == 0.5 and item.error_message == "policy"
        assert item.updated_at == T0 + timedelta(minutes=1)
        with pytest.raises(WireFormatError):
            JobSummary.from_wire({"jobId": "a", "status": "success", "credits": "2"})

    def test_job_page_with_token_and_null_jobs(self) -> None:
        """A Go-style null list is an empty page."""
        page = JobPage.from_wire({"jobs": None, "nextPageToken": "t2"})
        assert page.jobs == () and page.next_page_token == "t2"


class TestAssets:
    def test_model_status_is_lowercased(self) -> None:
        """Model status is normalised; optional fields may be missing."""
        model = Model.from_wire({"id": "m1", "status": "Ready", "modelType": "flux", "name": "Ava"})
        assert (model.id, model.status, model.model_type, model.name) == ("m1", "ready", "flux", "Ava")
        assert Model.from_wire({"id": "m2"}).status == "unknown"
        with pytest.raises(WireFormatError):
            Model.from_wire({"status": "new"})

    def test_image_record(self) -> None:
        """The documented image record, with the API's capitalised ID/URL spellings."""
        image = Image.from_wire(
            {
                "id": "i1",
                "url": "https://cdn.example/i1.jpg",
                "modelID": "m1",
                "type": "modelInput",
                "createdAt": "2026-01-01T00:00:00Z",
                "updatedAt": "",
                "folderID": "f",
                "liked": True,
                "upscaledImageID": "i2",
                "upscaledImageURL": "https://cdn.example/i2.jpg",
                "publicMediaID": "p1",
                "data": {},
            }
        )
        assert image.model_id == "m1" and image.type == "modelInput" and image.created_at == T0
        assert image.updated_at is None
        assert (image.upscaled_image_id, image.upscaled_image_url) == ("i2", "https://cdn.example/i2.jpg")
        assert image.public_media_id == "p1"
        assert Image.from_wire({"id": "i3"}) == Image(id="i3")

    def test_image_page_reads_the_envelope(self) -> None:
        """page and pageSize sit beside result."""
        page = ImagePage.from_wire({"page": 2, "pageSize": 5, "result": [{"id": "a"}], "status": "OK"})
        assert (page.page, page.page_size, [i.id for i in page.images]) == (2, 5, ["a"])
        with pytest.raises(WireFormatError):
            ImagePage.from_wire({"page": "2", "pageSize": 5, "result": []})

    def test_video_record_and_page(self) -> None:
        """Videos carry the job id that made them."""
        video = Video.from_wire({"id": "v1", "url": "https://x/v1.mp4", "jobId": "j1", "modelID": "veo-3.1"})
        assert (video.job_id, video.model_id) == ("j1", "veo-3.1")
        page = VideoPage.from_wire({"page": 1, "pageSize": 20, "result": None})
        assert page.videos == ()

    @pytest.mark.parametrize(
        ("data", "ready"),
        [
            ({"percentComplete": 100, "status": "ready", "url": "https://x/v.mp4"}, True),
            ({"percentComplete": 100, "status": "Processing", "url": "https://x/v.mp4"}, True),
            ({"percentComplete": 40, "status": "READY", "url": "https://x/v.mp4"}, True),
            ({"percentComplete": 40, "status": "processing", "url": ""}, False),
            ({"percentComplete": 100, "status": "ready", "url": ""}, False),
            ({"status": "processing"}, False),
        ],
    )
    def test_video_download_readiness_needs_a_url(self, data: dict[str, Any], ready: bool) -> None:
        """Ready means "ready" or 100 %, and a URL to fetch."""
        assert VideoDownload.from_wire(data).is_ready is ready

    def test_video_download_requires_a_status(self) -> None:
        """A progress record without a status is malformed."""
        with pytest.raises(WireFormatError):
            VideoDownload.from_wire({"percentComplete": 10})

    def test_preset(self) -> None:
        """Presets need a tag; name and description are optional."""
        assert Preset.from_wire({"tag": "editorial", "name": "Editorial"}) == Preset(
            tag="editorial", name="Editorial"
        )
        with pytest.raises(WireFormatError):
            Preset.from_wire({"name": "Editorial"})


def test_offset_timestamps_compare_equal_across_zones() -> None:
    """A +05:30 timestamp is stored as the same instant in UTC."""
    parsed = parse_timestamp("2026-01-01T05:30:00+05:30")
    assert parsed == T0.astimezone(timezone(timedelta(hours=5, minutes=30)))
    assert parsed.utcoffset() == timedelta(0)


def test_a_listed_item_seen_before_is_still_refused_when_a_field_turns_bad() -> None:
    """Items are parsed once per distinct content: a later listing whose credits became ``true``
    (equal to 1 in Python) or a field became a list is refused, not served from the cache."""
    item: dict[str, Any] = {
        "jobId": "j1",
        "status": "running",
        "createdAt": "2026-01-01T00:00:00Z",
        "credits": 1,
    }
    first = JobSummary.from_wire(item)
    assert JobSummary.from_wire(dict(item)) == first
    assert JobSummary.from_wire({**item, "status": "success"}).status is JobStatus.SUCCESS
    with pytest.raises(WireFormatError, match="credits"):
        JobSummary.from_wire({**item, "credits": True})
    with pytest.raises(WireFormatError, match="errorMessage"):
        JobSummary.from_wire({**item, "errorMessage": ["x"]})
