"""Request rules of the three trigger endpoints, as the reference states them.

Pure functions over the parsed JSON body: they either return what the job needs
or raise a 400 :class:`ApiFailure` whose message names the offending field, so
clients can show the server's reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.catalog import (
    IMAGE_MODELS,
    OUTPUT_FORMATS,
    VEO_DURATIONS,
    VIDEO_MODELS,
    VIDEO_ROLES,
    PublicModel,
)
from pipeline.simulator.envelope import ApiFailure
from pipeline.simulator.pictures import aspect_of

__all__ = ["PRESETS", "Trigger", "check_image", "check_upscale", "check_video"]

MAX_OUTPUTS = 4

#: What ``GET /presets`` lists; ``preset`` in image generation must be one of these tags.
PRESETS: tuple[dict[str, str], ...] = (
    {"tag": "editorial", "name": "Editorial", "description": "Magazine lighting and composition."},
    {"tag": "cinematic", "name": "Cinematic", "description": "Film grading, shallow depth of field."},
    {"tag": "studio", "name": "Studio", "description": "Clean backdrop, softbox lighting."},
    {"tag": "lifestyle", "name": "Lifestyle", "description": "Natural light, candid setting."},
)


@dataclass(frozen=True, slots=True)
class Trigger:
    """What a valid trigger asks for: the model, how many outputs, their file format and what they show."""

    model_id: str
    prompt: str
    count: int
    fmt: str
    trained: bool = False
    aspect: str = "1:1"
    seed: str = ""


def _bad(message: str, err: str = "validation_error") -> ApiFailure:
    return ApiFailure(400, message, err)


def _text(body: dict[str, Any], name: str, *, required: bool = True) -> str:
    value = body.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise _bad(f"{name} is required and must be a non-empty string")
    return value


def _count(body: dict[str, Any], name: str) -> int:
    value = body.get(name, 1)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_OUTPUTS:
        raise _bad(f"{name} must be an integer from 1 to {MAX_OUTPUTS}")
    return value


def _group(body: dict[str, Any], model: PublicModel | None) -> dict[str, Any]:
    """The single options group (empty when none); it must be the family's own group."""
    options = body.get("options")
    if options is None:
        return {}
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise _bad("options must be an object holding one option group object")
    if not options:
        return {}
    if len(options) > 1:
        raise _bad(f"options must hold exactly one group, got {', '.join(sorted(options))}")
    ((name, group),) = options.items()
    if model is not None and model.options_group is not None and name != model.options_group:
        raise _bad(f"options.{name} does not apply to {model.model_id}; use options.{model.options_group}")
    return dict(group)


def _list(body: dict[str, Any], name: str) -> list[Any]:
    value = body.get(name, [])
    if not isinstance(value, list):
        raise _bad(f"{name} must be an array")
    return value


def check_image(body: dict[str, Any], is_trained: Callable[[str], bool]) -> Trigger:
    """POST /images/generation: a public image model, or one of the caller's trained models."""
    model_id = _text(body, "modelID")
    model = IMAGE_MODELS.get(model_id)
    trained = model is None and is_trained(model_id)
    if model is None and not trained:
        hint = "; it is a video model" if model_id in VIDEO_MODELS else ""
        raise _bad(f"unknown modelID {model_id}{hint}", "unknown_model")
    prompt = _text(body, "prompt", required=not trained)
    count = _count(body, "numImages")
    group = _group(body, model)
    refs = _list(body, "referenceImageURLs")
    if not all(isinstance(u, str) and u for u in refs):
        raise _bad("referenceImageURLs must be an array of URL strings")
    limit = model.max_reference_images if model else None
    if limit is not None and len(refs) > limit:
        raise _bad(f"{model_id} accepts at most {limit} referenceImageURLs, got {len(refs)}")
    fmt = group.get("outputFormat", body.get("outputFormat", "jpeg"))
    if fmt not in OUTPUT_FORMATS:
        raise _bad(f"outputFormat must be one of {', '.join(sorted(OUTPUT_FORMATS))}")
    aspect = aspect_of(body.get("aspectRatio"), body.get("width"), body.get("height"))
    seed = body.get("seed", group.get("seed"))
    shown = "" if seed is None or isinstance(seed, bool | dict | list) else str(seed)[:24]
    return Trigger(model_id, prompt, count, str(fmt), trained, aspect, shown)


def check_video(body: dict[str, Any]) -> Trigger:
    """POST /videos/generation: a public video model with its family's options and roles."""
    model_id = _text(body, "modelID")
    model = VIDEO_MODELS.get(model_id)
    if model is None:
        hint = "; it is an image model" if model_id in IMAGE_MODELS else ""
        raise _bad(f"unknown video modelID {model_id}{hint}", "unknown_model")
    prompt = _text(body, "prompt")
    count = _count(body, "numVideos")
    group = _group(body, model)
    roles = []
    for i, item in enumerate(_list(body, "referenceImages")):
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            raise _bad(f"referenceImages[{i}] must be an object with url and role")
        if item.get("role") not in VIDEO_ROLES:
            raise _bad(f"referenceImages[{i}].role must be one of {', '.join(sorted(VIDEO_ROLES))}")
        roles.append(item["role"])
    videos = _list(body, "referenceVideos")
    if videos and model.family == "veo":
        raise _bad(f"{model_id} does not accept referenceVideos")
    for i, item in enumerate(videos):
        if not isinstance(item, dict) or item.get("role", "reference_video") != "reference_video":
            raise _bad(f"referenceVideos[{i}].role must be reference_video")
    if model.family == "veo":
        duration = group.get("duration", 8)
        if isinstance(duration, bool) or duration not in VEO_DURATIONS:
            raise _bad(f"options.veo.duration must be one of {', '.join(map(str, sorted(VEO_DURATIONS)))}")
        if "reference_image" in roles and duration != 8:
            raise _bad("options.veo.duration must be 8 when a reference_image is used")
    return Trigger(model_id, prompt, count, "mp4")


def check_upscale(body: dict[str, Any]) -> str:
    """POST /images/upscaling: the image id to upscale (existence is the store's 404)."""
    return _text(body, "imageID")
