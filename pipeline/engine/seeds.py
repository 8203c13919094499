"""Where a request carries a seed, and setting it: the one piece of ``--regenerate-rejected`` every
submission needs, kept apart so a run's start-up does not import the regeneration (and its review
state) that only that flag uses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.catalog import find_model
from pipeline.manifest.schema import is_trained_id

__all__ = ["seed_path", "with_seed"]


def seed_path(step: str, request: Mapping[str, Any]) -> tuple[str, ...] | None:
    """Where a request carries a seed: trained image models take ``seed``, Veo ``options.veo.seed``;
    other public models take none (the same request is sent again)."""
    model = request.get("modelID")
    if not isinstance(model, str):
        return None
    if step == "image" and is_trained_id(model):
        return ("seed",)
    public = find_model(model)
    if step == "video" and public is not None and public.family == "veo":
        return ("options", "veo", "seed")
    return None


def with_seed(body: dict[str, Any], step: str, seed: int | None) -> dict[str, Any]:
    """``body`` with ``seed`` set where its model takes one (in place; returned for chaining)."""
    where = seed_path(step, body)
    if seed is None or where is None:
        return body
    node = body
    for name in where[:-1]:
        child = node.get(name)
        node[name] = child = dict(child) if isinstance(child, Mapping) else {}
        node = child
    node[where[-1]] = seed
    return body
