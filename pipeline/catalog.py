"""What the PhotoGPT API reference says about its public models, as data.

Both the simulator (to reject bad requests like the real API) and the manifest
validator (to reject them before a paid request leaves) read these tables, so a
rule lives in exactly one place. Facts tagged [I] in ``photogpt-api.md`` are
marked ``inferred`` here; callers make them configurable rather than hard.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "IMAGE_MODELS",
    "JOB_STATUSES_ACTIVE",
    "JOB_STATUSES_TERMINAL",
    "MAX_UPLOADS_PER_TYPE",
    "MAX_UPLOAD_BYTES",
    "MIN_TRAINING_IMAGES",
    "OUTPUT_FORMATS",
    "UPLOAD_FORMATS",
    "UPLOAD_TYPES",
    "VEO_DURATIONS",
    "VIDEO_MODELS",
    "VIDEO_ROLES",
    "ModelKind",
    "PublicModel",
    "find_model",
]


class ModelKind(StrEnum):
    """Whether a public model makes images or videos."""

    IMAGE = "image"
    VIDEO = "video"


@dataclass(frozen=True, slots=True)
class PublicModel:
    """One public model: its id, family, the single ``options`` group it accepts and its limits.

    ``options_group`` is ``None`` where the reference could not see the group name
    (Seedream): any single group is then tolerated.
    """

    model_id: str
    kind: ModelKind
    family: str
    options_group: str | None
    max_reference_images: int | None = None


IMAGE_MODELS: dict[str, PublicModel] = {
    m.model_id: m
    for m in (
        PublicModel("nanobanana", ModelKind.IMAGE, "nanobanana", "gemini", 3),
        PublicModel("nanobanana-pro", ModelKind.IMAGE, "nanobanana", "gemini", 14),
        PublicModel("nanobanana-2", ModelKind.IMAGE, "nanobanana", "gemini", 14),
        PublicModel("seedream", ModelKind.IMAGE, "seedream", None, 10),
        PublicModel("seedream-4_5", ModelKind.IMAGE, "seedream", None, 10),
        PublicModel("seedream-5-lite", ModelKind.IMAGE, "seedream", None, 10),
        PublicModel("gpt-image-2", ModelKind.IMAGE, "openai", "openai", 10),
    )
}

VIDEO_MODELS: dict[str, PublicModel] = {
    m.model_id: m
    for m in (
        PublicModel("veo-3.1", ModelKind.VIDEO, "veo", "veo"),
        PublicModel("veo-3.1-fast", ModelKind.VIDEO, "veo", "veo"),
        PublicModel("seedance-1.5-pro", ModelKind.VIDEO, "seedance", "seedance"),
        PublicModel("seedance-2.0", ModelKind.VIDEO, "seedance", "seedance"),
        PublicModel("kling-video-standard", ModelKind.VIDEO, "kling", "kling"),
        PublicModel("kling-video-pro", ModelKind.VIDEO, "kling", "kling"),
        PublicModel("kling-motion-standard", ModelKind.VIDEO, "kling", "kling"),
        PublicModel("kling-motion-pro", ModelKind.VIDEO, "kling", "kling"),
        PublicModel("grok-imagine-1.5", ModelKind.VIDEO, "grok", "grok"),
    )
}

#: Veo ``options.veo.duration`` values (seconds); it must be 8 with a ``reference_image``.
VEO_DURATIONS: frozenset[int] = frozenset({4, 6, 8})

#: ``referenceImages[].role`` spellings. ``last_frame`` is inferred [I].
VIDEO_ROLES: frozenset[str] = frozenset({"first_frame", "last_frame", "reference_image"})

#: ``outputFormat`` values the image option groups accept [I, by analogy with GPT-Image].
OUTPUT_FORMATS: frozenset[str] = frozenset({"jpeg", "png", "webp"})

#: ``/images/upload`` limits [D /docs/images].
UPLOAD_TYPES: frozenset[str] = frozenset({"modelInput", "auxiliaryType"})
UPLOAD_FORMATS: frozenset[str] = frozenset({"jpg", "jpeg", "webp", "png", "heic"})
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_UPLOADS_PER_TYPE = 20
MIN_TRAINING_IMAGES = 12

#: Job statuses [D /docs/jobs]: keep polling while active; success and failed end a job.
JOB_STATUSES_ACTIVE: frozenset[str] = frozenset({"created", "queued", "running"})
JOB_STATUSES_TERMINAL: frozenset[str] = frozenset({"success", "failed"})


def find_model(model_id: str) -> PublicModel | None:
    """Return the public model with this id, or ``None`` (a trained model's UUID, or a typo)."""
    return IMAGE_MODELS.get(model_id) or VIDEO_MODELS.get(model_id)
