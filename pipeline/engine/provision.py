"""What a request needs before it can be sent: uploaded reference files and trained models.

Local reference images are uploaded once (``auxiliaryType``) and remembered in
the state by content hash, so a rerun, another item or another manifest using
the same bytes reuses the asset. A model declared under ``models:`` is created,
given its photos, trained and polled every few minutes (the reference's advice)
until ``ready``; its id and progress are in the state, so a rerun never creates
or trains it twice.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import anyio
import structlog

from pipeline.api.client import ApiClient
from pipeline.clock import Clock
from pipeline.engine.retry import RetryPolicy, is_transient, outcome_is_known, retrying
from pipeline.errors import (
    ApiError,
    ConfigError,
    NotFoundError,
    PipelineError,
    RateLimitedError,
    UploadUncertainError,
)
from pipeline.manifest.spec import LOCAL_PREFIX, LocalRef, ModelSpec, thaw
from pipeline.state.store import StateStore

__all__ = ["ModelNotReadyError", "Provisioner"]

_log = structlog.get_logger("pipeline.engine.provision")


class ModelNotReadyError(PipelineError):
    """A declared model failed training, or was not ready before its deadline."""


def _safe_to_resend(exc: BaseException) -> bool:
    """Retry an upload only when the failure proves nothing arrived (429, 409, refused, connect timeout)."""
    return is_transient(exc) and outcome_is_known(exc)


class Provisioner:
    """Uploads and trained models, each done once per content hash or model key."""

    def __init__(
        self,
        api: ApiClient,
        store: StateStore,
        clock: Clock,
        *,
        models: Mapping[str, ModelSpec],
        retry: RetryPolicy,
        model_poll_s: float = 300.0,
        model_deadline_s: float = 3 * 3600.0,
        seed: int | None = None,
    ) -> None:
        self._api, self._store, self._clock = api, store, clock
        self._models = models
        self._retry = retry
        self._poll_s = model_poll_s
        self._deadline_s = model_deadline_s
        self._rng = random.Random(seed)
        self._locks: defaultdict[tuple[str, str], anyio.Lock] = defaultdict(anyio.Lock)
        self._ready: dict[str, str] = {}

    def ready_model(self, name: str) -> str | None:
        """The id of declared model ``name`` once it is ready in this run, else ``None``."""
        return self._ready.get(name)

    async def fill(self, body: dict[str, Any], local_files: tuple[LocalRef, ...]) -> dict[str, Any]:
        """Replace local-file placeholders by uploaded assets and ``@name`` by the trained model's id."""
        for ref in local_files:
            image_id, url = await self.upload(ref)
            _set(body, ref.field, image_id if ref.field[-1] == "inputImageId" else url)
        model = body.get("modelID")
        if isinstance(model, str) and model.startswith("@"):
            model_id = self._ready.get(model[1:])
            if model_id is None:
                raise ModelNotReadyError(f"model {model} is not ready")
            body["modelID"] = model_id
        return body

    async def upload(
        self, ref: LocalRef, *, model_id: str | None = None, kind: str = "auxiliaryType"
    ) -> tuple[str, str]:
        """Upload ``ref`` once (per content hash and model); return the asset's id and URL."""
        cache_key = ref.sha256 if model_id is None else f"{model_id}:{ref.sha256}"
        async with self._locks["upload", cache_key]:
            known = self._store.resource("upload", cache_key)
            if known:
                return str(known["imageId"]), str(known["url"])
            import aiofiles  # only manifests with local input files upload: off every run's start-up

            async with aiofiles.open(ref.path, "rb") as f:  # one read, off the event loop
                data = await f.read()
            if hashlib.sha256(data).hexdigest() != ref.sha256:
                raise ConfigError(f"{ref.path}: the file changed after the manifest was read; run again")

            async def send() -> Any:
                return await self._api.upload_image(
                    model_id=model_id, image_type=kind, data=data, filename=ref.path.name
                )

            # At most once: an upload that may have arrived (5xx, timeout, reset) is not sent again,
            # as a duplicate training photo counts against the model's limit; it is reported instead.
            try:
                image = await retrying(
                    send, policy=self._retry, clock=self._clock, rng=self._rng, is_retryable=_safe_to_resend
                )
            except ApiError as exc:
                if outcome_is_known(exc):
                    raise
                raise UploadUncertainError(
                    f"{ref.path}: the upload may or may not have arrived ({exc}); check the account's "
                    "images and rerun with --retry-failed"
                ) from exc
            await self._store.put_resource("upload", cache_key, {"imageId": image.id, "url": image.url})
            _log.info("file_uploaded", path=str(ref.path), image_id=image.id)
            return image.id, image.url

    async def ensure_model(self, name: str) -> str:
        """Create, train and wait for declared model ``name``; return its id once ``ready``."""
        spec = self._models.get(name)
        if spec is None:
            raise ConfigError(f"model @{name} is not declared under models:")
        async with self._locks["model", spec.key]:
            if name in self._ready:
                return self._ready[name]
            record = self._store.resource("model", spec.key) or {}
            model_id = record.get("modelId")
            status = ""
            if model_id:
                try:
                    status = (await self._get(str(model_id))).status
                except NotFoundError:
                    model_id, record = None, {}
            if not model_id:
                fields = {k: v for k, v in thaw(spec.request).items() if k != "photos"}
                model = await self._api.save_model(**fields)
                model_id, status = model.id, model.status
                record = {"modelId": model_id, "name": name, "trained": False}
                await self._store.put_resource("model", spec.key, record)
                _log.info("model_created", model=name, model_id=model_id)
            if status != "ready" and not record.get("trained"):
                for photo in spec.photos:
                    await self.upload(photo, model_id=str(model_id), kind="modelInput")
                await self._train(str(model_id))
                record = {**record, "trained": True}
                await self._store.put_resource("model", spec.key, record)
            model_id = str(model_id)
            await self._wait_ready(name, model_id, status)
            self._ready[name] = model_id
            return model_id

    async def _get(self, model_id: str) -> Any:
        return await retrying(
            lambda: self._api.get_model(model_id), policy=self._retry, clock=self._clock, rng=self._rng
        )

    async def _train(self, model_id: str) -> None:
        """Start training; 429 means too many trainings are running: wait a poll interval and ask again."""
        started = self._clock.monotonic()
        while True:
            try:
                await self._api.train_model(model_id)
                _log.info("model_training", model_id=model_id)
                return
            except RateLimitedError as exc:
                if self._clock.monotonic() - started > self._deadline_s:
                    raise ModelNotReadyError(f"model {model_id}: training never started: {exc}") from exc
                await self._clock.sleep(exc.retry_after_s or self._poll_s)

    async def _wait_ready(self, name: str, model_id: str, status: str) -> None:
        started = self._clock.monotonic()
        while status != "ready":
            if status in ("failed", "deleted"):
                raise ModelNotReadyError(f"model @{name} ({model_id}) is {status}: fix its photos and rerun")
            if self._clock.monotonic() - started > self._deadline_s:
                raise ModelNotReadyError(f"model @{name} ({model_id}) was not ready in time; rerun later")
            await self._clock.sleep(self._poll_s)
            status = (await self._get(model_id)).status


def _set(body: Any, field: tuple[str | int, ...], value: str) -> None:
    """Put ``value`` at ``field`` (a path of keys and list indexes) where the placeholder was."""
    target = body
    for step in field[:-1]:
        target = target[step]
    last = field[-1]
    current = target[last]
    if not (isinstance(current, str) and current.startswith(LOCAL_PREFIX)):
        raise ConfigError(f"no local-file placeholder at {'.'.join(map(str, field))}")
    target[last] = value
