"""Local files a manifest points at: reference images and training photos, checked and content-hashed.

Paths are relative to the manifest's folder. Each file is read once per load,
however many rows use it; the engine uploads by content hash, so a file that
moves keeps its work keys and is never uploaded twice.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from pipeline.catalog import MAX_UPLOAD_BYTES, MAX_UPLOADS_PER_TYPE, MIN_TRAINING_IMAGES, UPLOAD_FORMATS
from pipeline.manifest.spec import LocalRef

__all__ = ["AssetError", "Assets", "is_image_path", "is_url"]

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


class AssetError(Exception):
    """A local file that cannot be used; the message says why, the caller says where."""


def is_url(text: str) -> bool:
    """Whether ``text`` is a URL (has a scheme) rather than a local path."""
    return bool(_SCHEME.match(text))


def is_image_path(text: str) -> bool:
    """Whether ``text`` ends in an image suffix the upload endpoint accepts."""
    return Path(text).suffix.lower().lstrip(".") in UPLOAD_FORMATS


class Assets:
    """Resolves, checks and hashes local files for one manifest load (a per-load cache)."""

    def __init__(self, base: Path) -> None:
        self._base = base
        self._files: dict[str, tuple[Path, str, int] | str] = {}

    def resolve(self, text: str) -> Path:
        """The absolute path a manifest string names."""
        path = Path(text).expanduser()
        return path if path.is_absolute() else self._base / path

    def image(self, text: str, field: tuple[str | int, ...]) -> LocalRef:
        """Check and hash one local image; raises :class:`AssetError`."""
        cached = self._files.get(text)
        if cached is None:
            cached = self._files[text] = self._hash(self.resolve(text), text)
        if isinstance(cached, str):
            raise AssetError(cached)
        path, digest, size = cached
        return LocalRef(field, path, digest, size)

    def _hash(self, path: Path, text: str) -> tuple[Path, str, int] | str:
        if not is_image_path(text):
            return f"{text!r} is not an image file the API accepts ({', '.join(sorted(UPLOAD_FORMATS))})"
        try:
            if not path.is_file():
                return f"no such image file: {path}"
            size = path.stat().st_size
            if size > MAX_UPLOAD_BYTES:
                return f"{path} is {size:,} bytes; uploads are limited to {MAX_UPLOAD_BYTES:,}"
            with path.open("rb") as handle:
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
        except OSError as exc:
            return f"cannot read {path}: {exc.strerror or exc}"
        return path.resolve(), digest, size

    def photos(self, text: str) -> tuple[LocalRef, ...]:
        """The training photos in a folder: 12–20 images of accepted formats; raises :class:`AssetError`."""
        folder = self.resolve(text)
        try:
            entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
        except OSError as exc:
            raise AssetError(f"cannot list the photos folder {folder}: {exc.strerror or exc}") from exc
        others = [p.name for p in entries if not (p.is_file() and is_image_path(p.name))]
        if others:
            shown = ", ".join(others[:5]) + (", …" if len(others) > 5 else "")
            raise AssetError(
                f"the photos folder {folder} holds files that are not images the API accepts: {shown}"
            )
        count = len(entries)
        if not MIN_TRAINING_IMAGES <= count <= MAX_UPLOADS_PER_TYPE:
            raise AssetError(
                f"the photos folder {folder} holds {count} images; "
                f"training needs {MIN_TRAINING_IMAGES} to {MAX_UPLOADS_PER_TYPE}"
            )
        return tuple(self.image(str(p), ("photos", i)) for i, p in enumerate(entries))
