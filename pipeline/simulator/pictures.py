"""Pictures that show their request, so a sandbox gallery can be judged by eye.

Each image is drawn from what was asked: the aspect ratio sets its shape, a hash
of the prompt its background colour, and the prompt (wrapped, cut), the model and
the seed (when sent) are written on it; an upscale is its source drawn larger with
a mark. Nothing random is drawn, so a request always yields the same picture, and
pictures are cached by request because benchmarks fetch thousands of them.
Pillow's built-in font is used: nothing to download, no system fonts.
"""

from __future__ import annotations

import hashlib
import io
import re
import textwrap
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

__all__ = ["LONG_SIDE", "Look", "aspect_of", "picture"]

#: Long side in pixels of a generated image; an upscale doubles it. Small keeps tests and benchmarks fast.
LONG_SIDE = 384
UPSCALE = 2
_MAX_LINES = 7
_RATIO = re.compile(r"\s*(\d{1,4})\s*[:x×]\s*(\d{1,4})\s*")
_SAVE: dict[str, tuple[str, dict[str, int]]] = {
    "jpeg": ("JPEG", {"quality": 75}),
    "png": ("PNG", {"compress_level": 1}),
    "webp": ("WEBP", {"quality": 70, "method": 0}),  # lossy: the simple VP8 layout media.py wraps
}


@dataclass(frozen=True, slots=True)
class Look:
    """What a picture shows: the prompt, model, aspect ratio and seed asked; ``upscaled``: drawn larger."""

    prompt: str
    model: str
    aspect: str = "1:1"
    seed: str = ""
    upscaled: bool = False


def aspect_of(value: object, width: object = None, height: object = None) -> str:
    """``W:H`` from an ``aspectRatio`` string or pixel ``width``/``height``; ``1:1`` when neither reads."""
    if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
        return f"{width}:{height}"
    match = _RATIO.fullmatch(value) if isinstance(value, str) else None
    if match and int(match[1]) > 0 and int(match[2]) > 0:
        return f"{int(match[1])}:{int(match[2])}"
    return "1:1"


def _size(aspect: str, long_side: int) -> tuple[int, int]:
    w, h = (int(part) for part in aspect.split(":"))
    if w >= h:
        return long_side, max(16, round(long_side * h / w))
    return max(16, round(long_side * w / h)), long_side


def _colour(prompt: str) -> tuple[int, int, int]:
    digest = hashlib.sha256(prompt.encode()).digest()
    return digest[0], digest[1], digest[2]


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _line(font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> int:
    return int(font.getbbox("Ag")[3])


@lru_cache(maxsize=16)  # ~0.4 MB each: enough for an upscale soon after its source
def _canvas(prompt: str, model: str, aspect: str, seed: str) -> Image.Image:
    """The picture at its base size (shared by every format and by the upscale; never mutated)."""
    width, height = _size(aspect, LONG_SIDE)
    background = _colour(prompt)
    light = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2] > 140
    ink = (20, 20, 20) if light else (245, 245, 245)
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    scale = (width * height) ** 0.5
    text = _font(max(11, int(scale / 16)))
    small = _font(max(10, int(scale / 24)))
    margin = max(6, width // 24)
    footer = [model or "?", f"{aspect} · {width}x{height}"] + ([f"seed {seed}"] if seed else [])
    room = height - 3 * margin - len(footer) * (_line(small) + 3)
    per_line = max(8, int((width - 2 * margin) / (text.getlength("abcdefghij") / 10)))
    most = max(1, min(_MAX_LINES, room // (_line(text) + 4)))
    lines = textwrap.wrap(prompt or "(no prompt)", per_line, max_lines=most, placeholder=" …")
    draw.multiline_text((margin, margin), "\n".join(lines), fill=ink, font=text, spacing=4)
    draw.multiline_text(
        (margin, height - margin), "\n".join(footer), fill=ink, font=small, spacing=3, anchor="ld"
    )
    return image


def _upscaled(base: Image.Image) -> Image.Image:
    image = base.resize((base.width * UPSCALE, base.height * UPSCALE), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    font = _font(max(14, min(image.size) // 12))
    margin = max(8, image.width // 24)
    draw.text(
        (image.width - margin, image.height - margin),
        f"upscaled x{UPSCALE}",
        fill=(255, 255, 255),
        font=font,
        anchor="rd",
        stroke_width=2,
        stroke_fill=(0, 0, 0),
    )
    return image


@lru_cache(maxsize=256)
def picture(look: Look, fmt: str) -> bytes:
    """``look`` encoded as ``fmt`` (jpeg, png, webp): a real file any decoder reads."""
    image = _canvas(look.prompt, look.model, look.aspect, look.seed)
    if look.upscaled:
        image = _upscaled(image)
    out = io.BytesIO()
    name, params = _SAVE["jpeg" if fmt == "jpg" else fmt]
    image.save(out, name, **params)
    return out.getvalue()
