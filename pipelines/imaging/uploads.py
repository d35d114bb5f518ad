"""Decoding what users send (uploads, base64 payloads) defensively: formats, size from the header, truncation.

A plain string from the network is base64, never a path on the server.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import os
import re
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pipelines.errors import EaselError
from pipelines.imaging.pixels import has_alpha, luminance_of

DEFAULT_MAX_UPLOAD_PIXELS = 4096 * 4096
"""A generous ceiling for user images: 16.7 M pixels is 64 MiB as RGBA, far beyond what SD can use."""

# Formats a user may upload. Deliberately short: other Pillow plugins (EPS calls Ghostscript, for
# one) widen the attack surface for no artistic benefit. MPO is what many phone cameras write.
ALLOWED_UPLOAD_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "MPO", "WEBP", "BMP", "GIF", "TIFF", "AVIF")


_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+/-]*)?(?P<params>(;[^,;]*)*?),", re.IGNORECASE)

# What Pillow raises for undecodable data, truncated files and broken chunks.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    TypeError,
    KeyError,
    struct.error,
    zlib.error,
)

ImageLike = Image.Image | np.ndarray | str | os.PathLike

# ---------------------------------------------------------------------------------------------
# Small conversions
# ---------------------------------------------------------------------------------------------


def _decode_base64(text: str) -> bytes:
    text = text.strip()
    match = _DATA_URL.match(text)
    if match:
        if ";base64" not in (match.group("params") or "").lower():
            raise EaselError("The image data URL is not base64-encoded.")
        text = text[match.end() :]
    text = re.sub(r"\s+", "", text)
    text += "=" * (-len(text) % 4)
    altchars = b"-_" if ("-" in text or "_" in text) else None  # URL-safe alphabet
    try:
        return base64.b64decode(text, altchars=altchars, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EaselError("The image is not valid base64 data.") from exc


def _open_checked(data: bytes, max_pixels: int, formats: Sequence[str]) -> Image.Image:
    """Open, check the pixel count before decoding anything, then verify and fully decode."""
    try:
        with Image.open(io.BytesIO(data), formats=list(formats)) as probe:
            width, height = probe.size
            if width * height > max_pixels:
                raise _too_many_pixels(width, height, max_pixels)
            probe.verify()  # catches bad checksums and truncation without decoding pixels
        image = Image.open(io.BytesIO(data), formats=list(formats))
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise EaselError(
            f"The image is too large to open safely (limit {max_pixels:,} pixels). Please use a smaller picture."
        ) from exc
    except Image.UnidentifiedImageError as exc:
        allowed = ", ".join(formats)
        raise EaselError(f"That file is not an image Easel can read ({allowed}).") from exc
    except _DECODE_ERRORS as exc:
        raise EaselError(f"The image file is damaged or incomplete and could not be read ({exc}).") from exc
    return image


def _upload_formats() -> list[str]:
    Image.init()
    return [name for name in ALLOWED_UPLOAD_FORMATS if name in Image.OPEN]


def _too_many_pixels(width: int, height: int, max_pixels: int) -> EaselError:
    return EaselError(
        f"The image is {width}x{height} pixels, more than the {max_pixels:,} allowed. Please use a smaller picture."
    )


def user_image_size(data: bytes | bytearray | str, max_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS) -> tuple[int, int]:
    """``(width, height)`` from the image's header alone, decoding no pixel; refused as ``load_user_image`` would.

    What lets a caller add up several images (a batch, an init image and its mask) and refuse a request whose
    images are small on the wire but huge once decoded, before decoding the first of them. Raises EaselError for
    data that is not an image ``load_user_image`` would read, or one over ``max_pixels``.
    """
    raw = _decode_base64(data) if isinstance(data, str) else bytes(data)
    if not raw:
        raise EaselError("The image is empty (0 bytes).")
    formats = _upload_formats()
    try:
        with Image.open(io.BytesIO(raw), formats=formats) as probe:
            width, height = probe.size
    except Image.DecompressionBombError as exc:
        raise EaselError(
            f"The image is too large to open safely (limit {max_pixels:,} pixels). Please use a smaller picture."
        ) from exc
    except Image.UnidentifiedImageError as exc:
        raise EaselError(f"That file is not an image Easel can read ({', '.join(formats)}).") from exc
    except _DECODE_ERRORS as exc:
        raise EaselError(f"The image file is damaged or incomplete and could not be read ({exc}).") from exc
    if width * height > max_pixels:
        raise _too_many_pixels(width, height, max_pixels)
    return width, height


def _normalise_mode(image: Image.Image) -> Image.Image:
    """RGBA when the picture has transparency, else RGB; 16-bit greys scaled rather than clipped."""
    if has_alpha(image):
        return image.convert("RGBA")
    if image.mode.startswith("I") or image.mode == "F":
        return Image.fromarray(luminance_of(image), mode="L").convert("RGB")
    return image.convert("RGB")


def load_user_image(
    data: bytes | bytearray | str | os.PathLike | Image.Image,
    max_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS,
    *,
    allow_paths: bool = False,
) -> Image.Image:
    """Decode an image a user sent, refusing anything dangerous or broken with a clear EaselError.

    Accepts raw bytes, base64 text (with or without a ``data:image/...;base64,`` prefix), a
    ``pathlib.Path``, or a PIL image. A plain string is read as base64 unless ``allow_paths`` is
    set: a string from the network must never name a file on the server. The pixel count is checked
    from the header before any pixel is decoded (decompression bombs), truncated files are refused
    (LOAD_TRUNCATED_IMAGES stays off), EXIF orientation is applied. Returns RGB, or RGBA when the
    image has transparency. Pillow's own bomb ceiling (2 x Image.MAX_IMAGE_PIXELS) still applies.
    """
    if max_pixels < 1:
        raise ValueError("max_pixels must be positive")
    formats = _upload_formats()

    if isinstance(data, Image.Image):
        if data.width * data.height > max_pixels:
            raise _too_many_pixels(data.width, data.height, max_pixels)
        image = data
    else:
        if isinstance(data, os.PathLike) or (allow_paths and isinstance(data, str) and os.path.isfile(data)):
            try:
                raw = Path(data).read_bytes()
            except OSError as exc:
                raise EaselError(f"Could not read the image file {os.fspath(data)!r}.") from exc
        elif isinstance(data, bytes | bytearray | memoryview):
            raw = bytes(data)
        elif isinstance(data, str):
            raw = _decode_base64(data)
        else:
            raise EaselError(f"Expected an image, got {type(data).__name__}.")
        if not raw:
            raise EaselError("The image is empty (0 bytes).")
        image = _open_checked(raw, max_pixels, formats)

    # A broken EXIF block should not cost the user their picture: keep it unrotated then.
    with contextlib.suppress(*_DECODE_ERRORS):
        image = ImageOps.exif_transpose(image)
    return _normalise_mode(image)
