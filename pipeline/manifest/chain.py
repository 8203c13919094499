"""One expanded item → its chain of units: image → upscale → video, each merged, checked and keyed.

Defaults are merged under each request (only the fields and the options group
that apply to its model), the request is checked against the reference's rules,
local files become content-hash placeholders, ``extra`` is flattened into the
body, and the unit gets its key. Problems go to a ``report`` callback that knows
where in the YAML each field came from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.catalog import find_model
from pipeline.manifest.assets import AssetError, Assets, is_image_path, is_url
from pipeline.manifest.ids import plain_key, unit_key
from pipeline.manifest.schema import (
    EXTRA,
    OPTION_GROUPS,
    TRAINED_SIGIL,
    VIDEO_FIELDS,
    FieldPath,
    Finding,
    check_image,
    check_upscale,
    check_video,
    image_fields_for,
)
from pipeline.manifest.spec import FrozenDict, LocalRef, Step, Unit, freeze
from pipeline.manifest.yamlsource import Node

__all__ = ["ITEM_KEYS", "Chain", "Defaults", "Report", "can_relay", "relay", "relay_keys"]

#: Keys of an item that are not image-request fields.
ITEM_KEYS = frozenset({"id", "upscale", "video", "matrix"})

#: ``report(prefix, finding, step)``: a problem at ``prefix + finding.path`` of the item.
Report = Callable[[FieldPath, Finding, "Step | None"], None]


@dataclass(frozen=True, slots=True)
class Defaults:
    """``defaults.image`` or ``defaults.video``: the plain block and its node (for locations)."""

    block: Mapping[str, Any]
    node: Node | None
    path: str


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        out[key] = _deep_merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    return out


def _flatten(block: Mapping[str, Any]) -> dict[str, Any]:
    """The API body: ``extra`` keys (of the block and of each options group) moved up a level."""
    out = {k: v for k, v in block.items() if k != EXTRA}
    extra = block.get(EXTRA)
    if isinstance(extra, dict):
        out.update(extra)
    options = out.get("options")
    if isinstance(options, dict) and any(isinstance(g, dict) and EXTRA in g for g in options.values()):
        out["options"] = {name: _flatten(g) if isinstance(g, dict) else g for name, g in options.items()}
    return out


class Chain:
    """Builds the units of expanded items for one manifest load (caches defaults per model)."""

    def __init__(
        self, *, defaults: Mapping[Step, Defaults], trained: Mapping[str, str], assets: Assets
    ) -> None:
        self.defaults = defaults
        self.trained = trained
        self.assets = assets
        self._model_defaults: dict[tuple[Step, str | None], dict[str, Any]] = {}

    def default_model(self, step: Step) -> object:
        """The ``modelID`` the defaults give this step, if any."""
        defaults = self.defaults.get(step)
        return defaults.block.get("modelID") if defaults else None

    def model_defaults(self, step: Step, model_id: object) -> dict[str, Any]:
        """The defaults that apply to a request with this model: its fields and its options group only."""
        cache_key = (step, model_id if isinstance(model_id, str) else None)
        cached = self._model_defaults.get(cache_key)
        if cached is not None:
            return cached
        defaults = self.defaults.get(step)
        block = dict(defaults.block) if defaults else {}
        fields = image_fields_for(model_id) if step == Step.IMAGE else VIDEO_FIELDS
        block = {k: v for k, v in block.items() if k in fields or k == EXTRA}
        options = block.get("options")
        if isinstance(options, dict):
            model = find_model(model_id) if isinstance(model_id, str) else None
            group = model.options_group if model else ""
            kept = {
                g: c for g, c in options.items() if g == group or (group is None and g not in OPTION_GROUPS)
            }
            if kept:
                block["options"] = kept
            else:
                del block["options"]
        frozen: dict[str, Any] = freeze(block)
        self._model_defaults[cache_key] = frozen
        return frozen

    def build(
        self, data: Mapping[str, Any], item_id: str, location: str, *, verified: bool, report: Report
    ) -> list[Unit] | None:
        """The units of one expanded item in upstream-first order, or ``None`` after reporting problems.

        ``verified`` skips the rule checks: an item of the same shape already passed them.
        """
        image_block = {k: v for k, v in data.items() if k not in ITEM_KEYS}
        upscale = data.get("upscale", False)
        video = data.get("video")
        if not image_block and video is None and not isinstance(upscale, dict):
            if upscale is True:
                report(
                    (),
                    Finding(
                        ("upscale",),
                        "upscale: true needs an image step (a prompt); "
                        "to upscale an existing image use upscale: {imageID: …}",
                    ),
                    None,
                )
            else:
                report(
                    (),
                    Finding((), "the item does nothing: give it a prompt, a video: or upscale: {imageID: …}"),
                    None,
                )
            return None
        job = _Job(item_id, location, verified, report)
        units: list[Unit] = []
        finals: list[Unit | None] = [None]
        if image_block:
            image = self._image(image_block, job)
            if image is None:
                return None
            units.append(image)
            finals = [image] * image.expected_outputs
        if upscale is not False:
            ups = self._upscale(upscale if isinstance(upscale, dict) else {}, finals, bool(image_block), job)
            if ups is None:
                return None
            units.extend(ups)
            finals = list(ups)
        if isinstance(video, dict):
            videos = self._video(video, finals, job)
            if videos is None:
                return None
            units.extend(videos)
        return units

    def _image(self, block: Mapping[str, Any], job: _Job) -> Unit | None:
        model_id = block.get("modelID", self.default_model(Step.IMAGE))
        defaults = self.model_defaults(Step.IMAGE, model_id)
        request = _deep_merge(defaults, block) if defaults else dict(block)
        if not job.verified and not job.report_all(
            check_image(request, trained=self.trained), (), Step.IMAGE
        ):
            return None
        request, refs = self._local_files(request, (), Step.IMAGE, job)
        if refs is None:
            return None
        request = _flatten(request)
        model_key = None
        if isinstance(model_id, str) and model_id.startswith(TRAINED_SIGIL):
            model_key = self.trained.get(model_id[len(TRAINED_SIGIL) :])
        name = model_id if isinstance(model_id, str) else None
        return _unit(Step.IMAGE, job, 1, request, None, request.get("numImages", 1), name, refs, model_key)

    def _upscale(
        self, block: Mapping[str, Any], sources: list[Unit | None], chained: bool, job: _Job
    ) -> list[Unit] | None:
        if not job.verified and not job.report_all(
            check_upscale(block, chained=chained), ("upscale",), Step.UPSCALE
        ):
            return None
        request = _flatten(block)
        # upscale i takes output i of the image unit
        return [
            _unit(Step.UPSCALE, job, i, request, src.key if src else None, 1, None, (), None)
            for i, src in enumerate(sources, start=1)
        ]

    def _video(self, block: Mapping[str, Any], sources: list[Unit | None], job: _Job) -> list[Unit] | None:
        model_id = block.get("modelID", self.default_model(Step.VIDEO))
        defaults = self.model_defaults(Step.VIDEO, model_id)
        request = _deep_merge(defaults, block) if defaults else dict(block)
        chained = sources[0] is not None
        if not job.verified and not job.report_all(
            check_video(request, chained=chained), ("video",), Step.VIDEO
        ):
            return None
        request, refs = self._local_files(request, ("video",), Step.VIDEO, job)
        if refs is None:
            return None
        request = _flatten(request)
        count = request.get("numVideos", 1)
        name = model_id if isinstance(model_id, str) else None
        # video i consumes output i of the image unit, or the one output of upscale unit i
        return [
            _unit(Step.VIDEO, job, index, request, src.key if src else None, count, name, refs, None)
            for index, src in enumerate(sources, start=1)
        ]

    def _local_files(
        self, request: dict[str, Any], prefix: FieldPath, step: Step, job: _Job
    ) -> tuple[dict[str, Any], tuple[LocalRef, ...] | None]:
        """Replace local reference images by their content-hash placeholder."""
        refs: list[LocalRef] = []
        failed: list[Finding] = []

        def local(text: str, at: FieldPath) -> str:
            try:
                ref = self.assets.image(text, at)
            except AssetError as exc:
                failed.append(Finding(at, str(exc)))
                return text
            refs.append(ref)
            return ref.placeholder

        urls = request.get("referenceImageURLs")
        if isinstance(urls, list | tuple) and not all(is_url(u) for u in urls):
            request = {
                **request,
                "referenceImageURLs": [
                    u if is_url(u) else local(u, ("referenceImageURLs", i)) for i, u in enumerate(urls)
                ],
            }
        image_id = request.get("inputImageId")
        if isinstance(image_id, str) and is_image_path(image_id) and not is_url(image_id):
            request = {**request, "inputImageId": local(image_id, ("inputImageId",))}
        images = request.get("referenceImages")
        if isinstance(images, list | tuple) and not all(is_url(r["url"]) for r in images):
            request = {
                **request,
                "referenceImages": [
                    r if is_url(r["url"]) else {**r, "url": local(r["url"], ("referenceImages", i, "url"))}
                    for i, r in enumerate(images)
                ],
            }
        for finding in failed:
            job.report(prefix, finding, step)
        return request, (None if failed else tuple(refs))


#: Image fields a fast rebuild may lay a row's text over: not the model (it picks the defaults and the
#: key's model part), not local files (uploaded by hash), not ``extra``/``options`` (flattened).
_NOT_LAID = frozenset({"modelID", "referenceImageURLs", "inputImageId", "referenceImages", EXTRA, "options"})


def can_relay(field_name: str) -> bool:
    """Whether a row's text for this top-level item field lands in the image request unchanged."""
    return field_name not in ITEM_KEYS and field_name not in _NOT_LAID


def relay(
    template: Sequence[Unit], item_id: str, changes: Mapping[str, str], *, plain: bool = False
) -> list[Unit]:
    """The units of another item shaped like ``template`` (same variant, already checked): its image
    request with ``changes`` laid over, every key derived again from the new id and upstream keys.

    Merging, flattening and local files gave ``template`` its requests; they are the same for
    every row of a variant when only these text fields differ, so they are not redone. The caller
    proves that on the template itself (``relay(template, its id, its values) == template``).
    ``plain``: the template's requests hold no float and no integer beyond 64 bits (:func:`is_plain`)
    and ``changes`` only text, so each key is hashed from orjson's bytes as they are."""
    return [
        Unit(
            key=key,
            item_id=item_id,
            step=t.step,
            index=t.index,
            request=request,
            upstream=upstream,
            expected_outputs=t.expected_outputs,
            location=t.location,
            model_id=t.model_id,
            local_files=t.local_files,
        )
        for t, request, upstream, key in relay_keys(template, item_id, changes, plain=plain)
    ]


def relay_keys(
    template: Sequence[Unit], item_id: str, changes: Mapping[str, str], *, plain: bool = False
) -> Iterator[tuple[Unit, Mapping[str, Any], str | None, str]]:
    """What :func:`relay` makes of each template unit, without making the unit: ``(template unit,
    request, upstream key, key)`` (``plan`` against a state file needs a million keys, no units)."""
    make_key = plain_key if plain else unit_key
    keys: dict[str, str] = {}
    for t in template:
        request = t.request
        if t.step is Step.IMAGE and changes:
            request = FrozenDict({**request, **changes})
        upstream = keys[t.upstream] if t.upstream is not None else None
        payload = {
            "step": t.step.value,
            "item": item_id,
            "index": t.index,
            "request": request,
            "upstream": upstream,
            "model": None,
        }
        key = keys[t.key] = make_key(payload)
        yield t, request, upstream, key


@dataclass(frozen=True, slots=True)
class _Job:
    """The item a chain is being built for, and where its problems go."""

    item_id: str
    location: str
    verified: bool
    report: Report

    def report_all(self, findings: list[Finding], prefix: FieldPath, step: Step) -> bool:
        """Report every finding; true when there were none (callers skip the checks when ``verified``)."""
        for finding in findings:
            self.report(prefix, finding, step)
        return not findings


def _unit(
    step: Step,
    job: _Job,
    index: int,
    request: Mapping[str, Any],
    upstream: str | None,
    outputs: int,
    model_id: str | None,
    refs: tuple[LocalRef, ...],
    model_key: str | None,
) -> Unit:
    frozen = freeze(request)
    payload = {
        "step": step.value,
        "item": job.item_id,
        "index": index,
        "request": frozen,
        "upstream": upstream,
        "model": model_key,
    }
    return Unit(
        key=unit_key(payload),
        item_id=job.item_id,
        step=step,
        index=index,
        request=frozen,
        upstream=upstream,
        expected_outputs=outputs,
        location=job.location,
        model_id=model_id,
        local_files=refs,
    )
