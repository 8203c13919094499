"""Real, valid file bytes for every asset, unique per asset id, optionally padded.

Downloaders must be tested against files a decoder accepts, so each format gets
its id (and any padding) in a place the format reserves for comments: a JPEG COM
segment, a PNG tEXt chunk, a WebP unknown chunk after a VP8X header, an MP4
``free`` box. Images are drawn from their request by :mod:`pictures`; videos start
from tiny samples in ``assets/``, made once with ffmpeg.
"""

from __future__ import annotations

import struct
import zlib
from functools import cache, lru_cache
from importlib import resources

from pipeline.simulator.pictures import Look, picture

__all__ = ["CONTENT_TYPES", "hls_playlist", "render"]

CONTENT_TYPES: dict[str, str] = {
    "jpeg": "image/jpeg",
    "jpg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "heic": "image/heic",
    "mp4": "video/mp4",
    "m3u8": "application/vnd.apple.mpegurl",
    "ts": "video/mp2t",
}

_TAG = b"photogpt-sim-asset:"


@cache
def _sample(name: str) -> bytes:
    return resources.files(__package__).joinpath("assets", name).read_bytes()


def render(fmt: str, asset_id: str, pad_to: int = 0, look: Look | None = None) -> bytes:
    """Asset ``asset_id`` as ``fmt`` (jpeg, png, webp, mp4, ts) bytes, at least ``pad_to`` long.

    An image shows ``look`` (its request); without one it shows its own id.
    """
    note = _TAG + asset_id.encode()
    if fmt in ("mp4", "ts"):
        return (_mp4 if fmt == "mp4" else _ts)(note, pad_to)
    base = picture(look or Look(prompt=asset_id, model="photogpt-sim"), fmt)
    build = {"jpeg": _jpeg, "jpg": _jpeg, "png": _png, "webp": _webp}[fmt]
    return build(base, note, pad_to)


def hls_playlist(asset_id: str) -> bytes:
    """A one-segment HLS playlist whose segment is served beside it as ``<id>.ts``."""
    return (
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:0\n"
        f"#EXTINF:1.0,\n{asset_id}.ts\n#EXT-X-ENDLIST\n"
    ).encode()


def _jpeg(base: bytes, note: bytes, pad_to: int) -> bytes:
    at = 2
    if base[2:4] == b"\xff\xe0":  # keep the JFIF APP0 segment right after SOI
        at = 4 + int.from_bytes(base[4:6], "big")
    room = pad_to - len(base)
    spaces = max(0, room - 4 * -(-room // 65537) - len(note))  # 4 header bytes per segment
    first = min(spaces, 65533 - len(note))  # the note's segment; the blank ones after it are shared
    segments = _com_segments(note + b" " * first) + _blank_segments(spaces - first)
    return b"".join((base[:at], segments, base[at:]))


def _com_segments(payload: bytes) -> bytes:
    """``payload`` as JPEG COM segments of at most 65533 bytes each."""
    chunks = [payload[i : i + 65533] for i in range(0, len(payload), 65533)]
    return b"".join(b"\xff\xfe" + (len(c) + 2).to_bytes(2, "big") + c for c in chunks)


@lru_cache(maxsize=4)
def _blank_segments(spaces: int) -> bytes:
    """COM segments of ``spaces`` blanks: the same for every asset of a size, so built once.

    A 5 MB file took ~20 ms of simulator CPU to pad (five copies of it per request); the
    downloads benchmark shares two cores between the simulator and the client it measures.
    """
    return _com_segments(b" " * spaces) if spaces else b""


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(base: bytes, note: bytes, pad_to: int) -> bytes:
    at = 8 + 25  # signature, then the IHDR chunk (13 data bytes + length, type and CRC)
    text = b"Comment\x00" + note
    text += b" " * max(0, pad_to - len(base) - len(text) - 12)
    return base[:at] + _png_chunk(b"tEXt", text) + base[at:]


def _riff_chunk(kind: bytes, data: bytes) -> bytes:
    return kind + struct.pack("<I", len(data)) + data + (b"\x00" if len(data) % 2 else b"")


def _webp(base: bytes, note: bytes, pad_to: int) -> bytes:
    vp8 = base[12:]  # the simple-format file's VP8 chunk, header included
    if vp8[:4] != b"VP8 ":
        raise ValueError("expected a simple lossy WebP (a VP8 chunk right after the header)")
    width = int.from_bytes(vp8[14:16], "little") & 0x3FFF
    height = int.from_bytes(vp8[16:18], "little") & 0x3FFF
    header = _riff_chunk(
        b"VP8X", b"\x00" * 4 + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    )
    extra = note + b" " * max(0, pad_to - 12 - len(header) - len(vp8) - len(note) - 8)
    body = b"WEBP" + header + vp8 + _riff_chunk(b"SIMI", extra)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _mp4(note: bytes, pad_to: int) -> bytes:
    base = _sample("sample.mp4")  # faststart: ftyp, moov, mdat; a trailing box moves no offsets
    data = note + b" " * max(0, pad_to - len(base) - len(note) - 8)
    return base + struct.pack(">I", len(data) + 8) + b"free" + data


def _ts(note: bytes, pad_to: int) -> bytes:
    del note, pad_to  # segments are shared; uniqueness lives in the playlist and MP4
    return _sample("sample.ts")
