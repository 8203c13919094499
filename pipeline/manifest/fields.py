"""The request fields of each API call: one table per endpoint, a check per field.

Field names are the API's own (``photogpt-api.md`` sections 6–8) so a user can copy them from the
reference. :func:`check_fields` checks a block against a table; the per-model rules on top of the
tables are in :mod:`pipeline.manifest.schema`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

from pipeline.catalog import OUTPUT_FORMATS, VEO_DURATIONS, VIDEO_ROLES
from pipeline.manifest.values import (
    Check,
    FieldPath,
    Finding,
    check_aspect,
    check_bool,
    check_number,
    check_text,
    check_text_list,
    check_url,
    check_url_list,
    choice,
    describe_value,
    integer,
    suggest,
)

__all__ = [
    "EXTRA",
    "FIELD_TYPES",
    "FREE_TEXT_FIELDS",
    "IMAGE_FIELDS",
    "MAX_COUNT",
    "OPTION_GROUPS",
    "TRAINED_IMAGE_FIELDS",
    "TRAINED_SIGIL",
    "UPSCALE_FIELDS",
    "VIDEO_FIELDS",
    "check_fields",
    "image_fields_for",
    "is_trained_id",
]

#: The escape hatch: an ``extra:`` mapping in a request block or options group goes to the API unchecked.
EXTRA = "extra"
#: ``modelID: "@ava"`` names the trained model declared as ``models: {ava: ...}``.
TRAINED_SIGIL = "@"
#: numImages / numVideos upper bound: a client says 1–4 for images [C]; we apply it to videos too.
MAX_COUNT = 4
#: Fields whose value only has to be non-empty text: a new value never needs new checks.
FREE_TEXT_FIELDS = frozenset({"prompt", "preset", "negativePrompt"})

#: Fields that take a number or boolean: a whole ``"{column}"`` placeholder there is converted from text.
FIELD_TYPES: Mapping[str, type] = {
    **dict.fromkeys(("numImages", "numVideos", "width", "height", "steps", "seed", "duration"), int),
    "styleStrength": float,
    **dict.fromkeys(("enhanceFace", "enhancePrompt", "generateAudio"), bool),
}

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")


def is_trained_id(model_id: str) -> bool:
    """A trained model: ``@name`` of a ``models:`` entry, or an existing model's UUID."""
    return model_id.startswith(TRAINED_SIGIL) or bool(_UUID.match(model_id))


def _role_list(roles: frozenset[str]) -> Check:
    fields: dict[str, Check] = {"url": check_url, "role": choice(roles)}

    def check(value: object, path: FieldPath, out: list[Finding]) -> None:
        if not isinstance(value, list | tuple):
            out.append(
                Finding(path, f"expected a list of {{url, role}} mappings, got {describe_value(value)}")
            )
            return
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                out.append(
                    Finding((*path, i), f"expected a {{url, role}} mapping, got {describe_value(item)}")
                )
                continue
            check_fields(item, fields, (*path, i), out, {})
            out.extend(
                Finding((*path, i), f"missing required field {f!r}") for f in ("url", "role") if f not in item
            )

    return check


_COUNT = integer(1, MAX_COUNT, " (our limit; the reference gives none)")

#: POST /images/generation with a public model (reference 6.2); ``options`` is checked per family.
IMAGE_FIELDS: Mapping[str, Check] = {
    "modelID": check_text,
    "prompt": check_text,
    "aspectRatio": check_aspect,
    "numImages": _COUNT,
    "preset": check_text,
    "referenceImageURLs": check_url_list,
    "options": lambda value, path, out: None,
}

#: POST /images/generation with a trained model (reference 6.3).
TRAINED_IMAGE_FIELDS: Mapping[str, Check] = {
    "modelID": check_text,
    "prompt": check_text,
    "preset": check_text,
    "inputImageId": check_text,
    "width": integer(64, 8192, " pixels (our limit)"),
    "height": integer(64, 8192, " pixels (our limit)"),
    "numImages": _COUNT,
    "steps": integer(1, 500, " (our limit)"),
    "seed": integer(0, None),
    "runType": check_text,
    "enhanceFace": check_bool,
    "styleStrength": check_number,
}

#: POST /videos/generation (reference 8.1).
VIDEO_FIELDS: Mapping[str, Check] = {
    "modelID": check_text,
    "prompt": check_text,
    "numVideos": _COUNT,
    "referenceImages": _role_list(VIDEO_ROLES),
    "referenceVideos": _role_list(frozenset({"reference_video"})),
    "elementIDs": check_text_list,
    "options": lambda value, path, out: None,
}

#: POST /images/upscaling (reference 7).
UPSCALE_FIELDS: Mapping[str, Check] = {"imageID": check_text}

#: ``options.<group>`` keys per family (reference 6.2, 8.4); ``None`` = keys not documented, not checked.
OPTION_GROUPS: Mapping[str, Mapping[str, Check] | None] = {
    "openai": {"imageSize": check_text, "outputFormat": choice(OUTPUT_FORMATS), "quality": check_text},
    "gemini": {"imageSize": check_text, "safetyFilterLevel": check_text, "sequentialMode": check_text},
    "veo": {
        "aspectRatio": choice(frozenset({"16:9", "9:16"})),
        "duration": choice(VEO_DURATIONS, " seconds"),
        "resolution": choice(frozenset({"720p", "1080p"})),
        "enhancePrompt": check_bool,
        "generateAudio": check_bool,
        "negativePrompt": check_text,
        "seed": integer(0, None),
    },
    "seedance": {
        "duration": integer(1, 60),
        "ratio": check_text,
        "resolution": check_text,
        "generateAudio": check_bool,
    },
    "grok": {"aspectRatio": check_text, "duration": integer(1, 60), "resolution": check_text},
    "kling": None,
}


def image_fields_for(model_id: object) -> Mapping[str, Check]:
    """The field table that applies to an image request with this ``modelID``."""
    if isinstance(model_id, str) and is_trained_id(model_id):
        return TRAINED_IMAGE_FIELDS
    return IMAGE_FIELDS


def check_fields(
    block: Mapping[str, Any],
    fields: Mapping[str, Check],
    path: FieldPath,
    out: list[Finding],
    hints: Mapping[str, str],
) -> None:
    """Check every key of ``block`` against ``fields``; ``extra`` is the unchecked escape hatch."""
    for key, value in block.items():
        check = fields.get(key)
        if check is not None:
            check(value, (*path, key), out)
        elif key == EXTRA:
            _extra(block, fields, path, out)
        else:
            hint = hints.get(key)
            detail = f"; {hint}" if hint else suggest(key, fields) + " (unlisted API fields go under extra:)"
            out.append(Finding((*path, key), f"unknown field {key!r}{detail}", at_key=True))


def _extra(block: Mapping[str, Any], fields: Collection[str], path: FieldPath, out: list[Finding]) -> None:
    extra = block[EXTRA]
    if not isinstance(extra, dict):
        out.append(
            Finding((*path, EXTRA), f"expected a mapping of unlisted fields, got {describe_value(extra)}")
        )
        return
    for key in extra:
        if key in fields or key in block:
            out.append(
                Finding(
                    (*path, EXTRA, key),
                    f"{key!r} is a known field: set it directly, not under extra",
                    at_key=True,
                )
            )
