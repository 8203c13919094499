"""The per-model rules checked before any request is sent, over the field tables of :mod:`.fields`.

Field names are the API's own (``photogpt-api.md`` sections 6–8) so a user can
copy them from the reference. Checks return :class:`Finding` values (a path
inside the request and a message); the manifest layer turns the path into a
``file:line:column``. Limits the reference tags [I] or leaves open are ours and
say so in their message.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from pipeline.catalog import IMAGE_MODELS, VIDEO_MODELS, PublicModel, find_model
from pipeline.manifest.fields import (
    EXTRA,
    FIELD_TYPES,
    FREE_TEXT_FIELDS,
    IMAGE_FIELDS,
    MAX_COUNT,
    OPTION_GROUPS,
    TRAINED_IMAGE_FIELDS,
    TRAINED_SIGIL,
    UPSCALE_FIELDS,
    VIDEO_FIELDS,
    check_fields,
    image_fields_for,
    is_trained_id,
)
from pipeline.manifest.values import FieldPath, Finding, describe_value, suggest

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

_HINTS: Mapping[str, str] = {
    "aspectRatio@video": "video aspect ratios go in the options group "
    "(options.veo.aspectRatio, options.seedance.ratio)",
    "duration@video": "durations go in the options group (e.g. options.veo.duration)",
    "numImages@video": "videos are counted by numVideos",
    "imageID@image": "imageID belongs to upscale: {imageID: ...}",
}


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
    elif step == "image" and is_trained_id(model_id):  # a UUID: the sigil was the branch above
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
            check_fields(content, keys, (*path, group), out, {})
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
    check_fields(request, fields, (), out, hints)
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
    check_fields(request, VIDEO_FIELDS, (), out, _hints("video"))
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
    check_fields(request, UPSCALE_FIELDS, (), out, {})
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
    check_fields(block, fields, (), out, _hints(step))
    model_id = block.get("modelID")
    if isinstance(model_id, str):
        _model(block, step, trained, out)
    if "options" in block:
        model = find_model(model_id) if isinstance(model_id, str) else None
        seedream = model is not None and model.options_group is None
        _options(block["options"], None if not seedream else model, out, single=False)
    return out
