"""The request fields of each API call, and the per-model rules checked before any request is sent.

Field names are the API's own (``photogpt-api.md`` sections 6–8) so a user can
copy them from the reference. Checks return :class:`Finding` values (a path
inside the request and a message); the manifest layer turns the path into a
``file:line:column``. Limits the reference tags [I] or leaves open are ours and
say so in their message.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

from pipeline.catalog import (
    IMAGE_MODELS,
    OUTPUT_FORMATS,
    VEO_DURATIONS,
    VIDEO_MODELS,
    VIDEO_ROLES,
    PublicModel,
    find_model,
)
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
    "FieldPath",
    "Finding",
    "check_defaults",
    "check_image",
    "check_upscale",
    "check_video",
    "describe_value",
    "image_fields_for",
    "is_trained_id",
    "suggest",
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
            _fields(item, fields, (*path, i), out, {})
            out.extend(
                Finding((*path, i), f"missing required field {f!r}") for f in ("url", "role") if f not in item
            )

    return check


# -- field tables ---------------------------------------------------------------------------------

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

_HINTS: Mapping[str, str] = {
    "aspectRatio@video": "video aspect ratios go in the options group "
    "(options.veo.aspectRatio, options.seedance.ratio)",
    "duration@video": "durations go in the options group (e.g. options.veo.duration)",
    "numImages@video": "videos are counted by numVideos",
    "imageID@image": "imageID belongs to upscale: {imageID: ...}",
}


def _fields(
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


def _hints(step: str) -> dict[str, str]:
    return {key.split("@")[0]: text for key, text in _HINTS.items() if key.endswith("@" + step)}


def _model(
    request: Mapping[str, Any], step: str, trained: Collection[str], out: list[Finding]
) -> tuple[str, PublicModel | None]:
    """Classify ``modelID``: ``("public", model)``, ``("trained", None)`` or ``("unknown", None)``."""
    own = IMAGE_MODELS if step == "image" else VIDEO_MODELS
    other = VIDEO_MODELS if step == "image" else IMAGE_MODELS
    model_id = request.get("modelID")
    if model_id is None:
        out.append(Finding((), "missing required field 'modelID'"))
        return "unknown", None
    if not isinstance(model_id, str):
        return "unknown", None  # the field check reports the type
    if model_id in own:
        return "public", own[model_id]
    path: FieldPath = ("modelID",)
    if model_id in other:
        where = "under video:" if step == "image" else "for the image step"
        out.append(
            Finding(
                path, f"{model_id!r} is {'a video' if step == 'image' else 'an image'} model; use it {where}"
            )
        )
    elif step == "image" and model_id.startswith(TRAINED_SIGIL):
        name = model_id[len(TRAINED_SIGIL) :]
        if name in trained:
            return "trained", None
        declared = ", ".join(sorted(trained)) or "none"
        out.append(
            Finding(
                path,
                f"no trained model {name!r} under models: (declared: {declared}){suggest(name, trained)}",
            )
        )
    elif step == "image" and _UUID.match(model_id):
        return "trained", None
    else:
        trained_note = ", a trained model's UUID or @name of a models: entry" if step == "image" else ""
        out.append(
            Finding(
                path,
                f"unknown model {model_id!r}{suggest(model_id, own)} "
                f"(expected one of {', '.join(own)}{trained_note})",
            )
        )
    return "unknown", None


def image_fields_for(model_id: object) -> Mapping[str, Check]:
    """The field table that applies to an image request with this ``modelID``."""
    if isinstance(model_id, str) and is_trained_id(model_id):
        return TRAINED_IMAGE_FIELDS
    return IMAGE_FIELDS


def _options(options: object, model: PublicModel | None, out: list[Finding], *, single: bool) -> None:
    path: FieldPath = ("options",)
    if not isinstance(options, dict):
        out.append(Finding(path, f"expected a mapping with one options group, got {describe_value(options)}"))
        return
    wanted = model.options_group if model else None
    for group, content in options.items():
        if group == EXTRA:
            out.append(
                Finding(
                    (*path, group), "extra goes inside an options group (options.<group>.extra)", at_key=True
                )
            )
            continue
        if model is not None and wanted is not None and group != wanted:
            detail = f"{model.model_id} takes options.{wanted}"
            if group not in OPTION_GROUPS:
                detail = f"unknown options group{suggest(group, OPTION_GROUPS)}; " + detail
            out.append(Finding((*path, group), f"options.{group} does not apply: {detail}", at_key=True))
            continue
        if model is None and group not in OPTION_GROUPS and not single:
            out.append(
                Finding(
                    (*path, group),
                    f"unknown options group {group!r}{suggest(group, OPTION_GROUPS)}",
                    at_key=True,
                )
            )
            continue
        keys = OPTION_GROUPS.get(group)
        if not isinstance(content, dict):
            out.append(Finding((*path, group), f"expected a mapping, got {describe_value(content)}"))
        elif keys is not None:
            _fields(content, keys, (*path, group), out, {})
    if single and len(options) > 1:
        out.append(Finding(path, f"holds {len(options)} groups; send only the one for the model's family"))


def check_image(request: Mapping[str, Any], *, trained: Collection[str]) -> list[Finding]:
    """Check a fully merged image-generation request against its model's rules."""
    out: list[Finding] = []
    kind, model = _model(request, "image", trained, out)
    fields = TRAINED_IMAGE_FIELDS if kind == "trained" else IMAGE_FIELDS
    hints = _hints("image")
    if kind == "trained":
        hints.update(
            {
                f: "it does not apply to trained models (reference 6.3)"
                for f in IMAGE_FIELDS
                if f not in fields
            }
        )
    elif kind == "public":
        hints.update(
            {
                f: "it applies to trained models only (reference 6.3)"
                for f in TRAINED_IMAGE_FIELDS
                if f not in fields
            }
        )
    _fields(request, fields, (), out, hints)
    if kind != "trained" and "prompt" not in request:
        out.append(Finding((), "missing required field 'prompt'"))
    if model is not None:
        refs = request.get("referenceImageURLs")
        limit = model.max_reference_images
        if isinstance(refs, list | tuple) and limit is not None and len(refs) > limit:
            out.append(
                Finding(
                    ("referenceImageURLs",),
                    f"{model.model_id} takes at most {limit} reference images, got {len(refs)}",
                )
            )
        if "options" in request:
            _options(request["options"], model, out, single=True)
    return out


def check_video(request: Mapping[str, Any], *, chained: bool) -> list[Finding]:
    """Check a fully merged video request; ``chained`` means the engine adds the first frame."""
    out: list[Finding] = []
    _, model = _model(request, "video", (), out)
    _fields(request, VIDEO_FIELDS, (), out, _hints("video"))
    if "prompt" not in request:
        out.append(Finding((), "missing required field 'prompt'"))
    refs = request.get("referenceImages")
    roles = [r.get("role") for r in refs if isinstance(r, dict)] if isinstance(refs, list | tuple) else []
    if chained and "first_frame" in roles:
        out.append(
            Finding(
                ("referenceImages", roles.index("first_frame")),
                "the first frame is the upstream image in a chain; remove this entry",
            )
        )
    if model is None:
        return out
    if "options" in request:
        _options(request["options"], model, out, single=True)
    if model.family == "veo":
        if "referenceVideos" in request:
            out.append(Finding(("referenceVideos",), "Veo models take no referenceVideos", at_key=True))
        options = request.get("options")
        group = options.get("veo") if isinstance(options, dict) else None
        duration = group.get("duration", 8) if isinstance(group, dict) else 8
        if "reference_image" in roles and duration != 8:
            where: FieldPath = (
                ("options", "veo", "duration") if isinstance(group, dict) and "duration" in group else ()
            )
            out.append(Finding(where, f"Veo needs duration 8 with a reference_image, got {duration}"))
    return out


def check_upscale(request: Mapping[str, Any], *, chained: bool) -> list[Finding]:
    """Check an upscale request: ``imageID`` is required alone and filled by the engine in a chain."""
    out: list[Finding] = []
    _fields(request, UPSCALE_FIELDS, (), out, {})
    if chained and "imageID" in request:
        out.append(
            Finding(("imageID",), "imageID comes from the image step in a chain; remove it", at_key=True)
        )
    elif not chained and "imageID" not in request:
        out.append(
            Finding((), "missing required field 'imageID' (or add a prompt to generate the image first)")
        )
    return out


def check_defaults(step: str, block: Mapping[str, Any], *, trained: Collection[str]) -> list[Finding]:
    """Check a ``defaults.image`` / ``defaults.video`` block: known fields and types, nothing required.

    Defaults may hold options groups for several families; each request keeps only
    the group of its own model.
    """
    out: list[Finding] = []
    fields = dict(VIDEO_FIELDS) if step == "video" else {**IMAGE_FIELDS, **TRAINED_IMAGE_FIELDS}
    _fields(block, fields, (), out, _hints(step))
    model_id = block.get("modelID")
    if isinstance(model_id, str):
        _model(block, step, trained, out)
    if "options" in block:
        model = find_model(model_id) if isinstance(model_id, str) else None
        seedream = model is not None and model.options_group is None
        _options(block["options"], None if not seedream else model, out, single=False)
    return out
