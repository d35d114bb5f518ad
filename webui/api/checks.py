"""What a request body must pass before anything is decoded or run: usable JSON, pixel budgets, bounded options.

Each limit is checked from what is cheap to read (the parsed JSON, image headers) so an oversized or hostile
request costs almost nothing. Too large is a 413 (RequestTooLargeError), unusable a 422 (EaselError).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from PIL import Image

from pipelines.errors import EaselError, RequestTooLargeError
from pipelines.imaging.uploads import DEFAULT_MAX_UPLOAD_PIXELS, load_user_image, user_image_size
from pipelines.imaging.upscale import UPSCALERS, UpscaleSpec, check_results

MAX_REQUEST_PIXELS = 2 * DEFAULT_MAX_UPLOAD_PIXELS
"""Decoded pixels all the images of one request may add up to (an init image and its mask at the largest size):
twenty solid 4096x4096 PNGs are 1.6 MB on the wire and 1.3 GB decoded. Counted from the headers, before decoding."""
MAX_JSON_DEPTH = 32
"""Deepest nesting of lists and objects a request body may have; A1111 payloads need a handful of levels."""
MAX_OPTION_KEYS = 1000  # A1111 itself has about 600 settings
MAX_OPTION_KEY_LENGTH = 128
MAX_OPTION_VALUE_BYTES = 64 * 1024
MAX_OPTIONS_BYTES = 1024 * 1024
"""POST /options keeps what it is sent, in memory, for the life of the server: bounded in count and size."""


def _json_number_name(value: float) -> str:
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def unusable_json(value: Any, where: str = "") -> str | None:
    """Why a parsed JSON value cannot be used, or None: NaN/Infinity anywhere, or nesting deeper than MAX_JSON_DEPTH.

    Python's json accepts the NaN and Infinity literals; past validation they crashed ``int()`` or the JSON reply
    (a 500), and deep nesting overflowed the recursive encoders. Walked with an explicit stack, never recursion.
    """
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            name = _json_number_name(item)
            return f"{path or 'the body'} is {name}: NaN and Infinity are not numbers Easel can use"
        if isinstance(item, dict | list):
            if depth >= MAX_JSON_DEPTH:
                return f"{path or 'the body'} is nested more than {MAX_JSON_DEPTH} levels deep"
            children = item.items() if isinstance(item, dict) else enumerate(item)
            stack.extend((child, f"{path}.{key}" if path else str(key), depth + 1) for key, child in children)
    return None


def decode_image(data: str, what: str, max_pixels: int) -> Image.Image:
    """A base64 image, the error naming the field it came in (``init_images[0]: ...``)."""
    try:
        return load_user_image(data, max_pixels)
    except EaselError as exc:
        raise EaselError(f"{what}: {exc}") from exc


def _header_size(data: str, what: str, max_pixels: int) -> tuple[int, int]:
    try:
        return user_image_size(data, max_pixels)
    except EaselError as exc:
        raise EaselError(f"{what}: {exc}") from exc


def check_pixel_budget(images: Sequence[tuple[str, str]], limit: int, max_pixels: int) -> list[tuple[int, int]]:
    """Each ``(name, base64)`` image's size, from its header; RequestTooLargeError once they add up past ``limit``.

    Called before any of them is decoded, so a request of many small files that decode huge costs nothing. Each
    image alone is held to ``max_pixels`` first (EaselError, as when it is decoded).
    """
    sizes: list[tuple[int, int]] = []
    total = 0
    for what, data in images:
        width, height = _header_size(data, what, max_pixels)
        total += width * height
        if total > limit:
            raise RequestTooLargeError(
                f"{what} ({width}x{height}) brings this request to {total:,} decoded pixels; at most {limit:,} are "
                "allowed per request. Send fewer or smaller images, in several requests."
            )
        sizes.append((width, height))
    return sizes


def check_extras_request(
    images: Sequence[tuple[str, str]], spec: UpscaleSpec, max_pixels: int, upscalers: Sequence[str] = UPSCALERS
) -> None:
    """Every image's size and its result's, from the headers: refused before any pixel is decoded."""
    spec.upscalers(upscalers)
    sizes = check_pixel_budget(images, MAX_REQUEST_PIXELS, max_pixels)
    check_results(spec, [(what, size) for (what, _), size in zip(images, sizes, strict=True)], upscalers)


def check_options(options: dict[str, Any], stored: dict[str, Any]) -> None:
    """Refuse POST /options bodies that are unusable (NaN, deep nesting) or would grow the kept options unboundedly."""
    problem = unusable_json(options)
    if problem:
        raise EaselError(problem)
    for key, value in options.items():
        if len(key) > MAX_OPTION_KEY_LENGTH:
            raise EaselError(f"the setting name {key[:40]!r}... is longer than {MAX_OPTION_KEY_LENGTH} characters")
        size = len(json.dumps(value))
        if size > MAX_OPTION_VALUE_BYTES:
            raise RequestTooLargeError(
                f"the value of {key!r} is {size:,} bytes as JSON; at most {MAX_OPTION_VALUE_BYTES // 1024} KiB are kept"
            )
    merged = {**stored, **options}
    merged.pop("sd_model_checkpoint", None)  # switches the model; not kept
    if len(merged) > MAX_OPTION_KEYS:
        raise RequestTooLargeError(f"this would keep {len(merged):,} settings; at most {MAX_OPTION_KEYS:,} are kept")
    total = len(json.dumps(merged))
    if total > MAX_OPTIONS_BYTES:
        raise RequestTooLargeError(
            f"the settings would take {total:,} bytes as JSON; at most {MAX_OPTIONS_BYTES // 1024} KiB are kept"
        )
