"""The asset type by its magic bytes, never by the server's name or Content-Type.

Kept apart from the downloader because both the resume check of a kept ``.part``
(:mod:`pipeline.output.part`) and the streaming copy decide on the same few bytes.
"""

from __future__ import annotations

from typing import Final, Literal

from pipeline.errors import UnsafeAssetError

__all__ = ["HEAD", "Kind", "require_kind", "sniff"]

Kind = Literal["jpeg", "png", "webp", "mp4"]

#: Bytes needed to tell the four formats apart.
HEAD: Final = 12
# ISO-BMFF brands of HEIF/AVIF stills: an 'ftyp' box that is not a video we keep.
_HEIF_BRANDS = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis"}
)


def sniff(head: bytes) -> Kind | None:
    """The asset type from the first bytes of a file, or ``None`` when it is not one we keep."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp" and len(head) >= HEAD and head[8:12] not in _HEIF_BRANDS:
        return "mp4"
    return None


def require_kind(head: bytes, where: str) -> Kind:
    """:func:`sniff`, or :class:`~pipeline.errors.UnsafeAssetError` naming ``where``."""
    kind = sniff(head)
    if kind is None:
        raise UnsafeAssetError(f"{where}: not an image or video: starts with {head[:16]!r}")
    return kind
