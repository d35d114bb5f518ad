"""A1111 "parameters" text: the one metadata format every SD tool reads and writes.

Layout: the prompt (any number of lines), an optional `Negative prompt: ...` (which may span lines), then
one line of `Key: value` pairs. Reading follows A1111's `parse_generation_parameters`, so an image made
here and opened in A1111/Forge/ComfyUI readers (and vice versa) round-trips.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Mapping

from PIL import Image

from pipelines.errors import EaselError
from pipelines.sampling.samplers import split_sampler_name

# A1111's order; keys not listed follow in insertion order, and "Version" always closes the line.
KEY_ORDER: tuple[str, ...] = (
    "Steps",
    "Sampler",
    "Schedule type",
    "CFG scale",
    "Seed",
    "Size",
    "Model hash",
    "Model",
    "VAE hash",
    "VAE",
    "Variation seed",
    "Variation seed strength",
    "Denoising strength",
    "Clip skip",
)

# A key, then either a JSON string (commas allowed inside) or anything up to the next comma.
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_IMAGE_SIZE = re.compile(r"^(\d+)x(\d+)$")
_NEGATIVE = "Negative prompt:"

_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286


def _format_float(value: float) -> str:
    """7.0 -> '7', 0.75 -> '0.75': A1111 prints Python floats, and float noise would not round-trip nicely."""
    if not math.isfinite(value):
        return str(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    text = repr(float(f"{value:.6g}"))
    return text[:-2] if text.endswith(".0") else text


def _format_value(value: object) -> str:
    if isinstance(value, bool):
        text = str(value)
    elif isinstance(value, numbers.Integral):
        text = str(int(value))
    elif isinstance(value, numbers.Real):
        text = _format_float(float(value))
    else:
        text = str(value)
    return quote(text)


def quote(text: str) -> str:
    """JSON-quote a value that would otherwise break the `Key: value, ...` line."""
    if any(c in text for c in ',:\n"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def unquote(text: str) -> str:
    """Undo `quote`; a value that merely looks quoted but is not valid JSON is kept as written."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str) else text


def _clip_skip_is_default(value: object) -> bool:
    try:
        return float(str(value)) <= 1
    except ValueError:
        return False


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """The text stored in an image's `parameters` chunk and shown under the gallery."""
    ordered = [key for key in KEY_ORDER if key in params]
    ordered += [key for key in params if key not in KEY_ORDER and key != "Version"]
    if "Version" in params:
        ordered.append("Version")
    pairs = []
    for key in ordered:
        value = params[key]
        if value is None or (key == "Clip skip" and _clip_skip_is_default(value)):
            continue
        pairs.append(f"{key}: {_format_value(value)}")
    negative = f"\n{_NEGATIVE} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{', '.join(pairs)}".strip()


def parse_infotext(text: str) -> dict[str, str]:
    """Prompt, negative prompt and every parameter as strings; never raises, whatever tool wrote the text.

    As in A1111, a size-like value ("Size: 512x768") is also split into "Size-1"/"Size-2", and an old
    combined sampler name ("DPM++ 2M Karras") is split into Sampler and Schedule type. Unlike A1111, the
    original "Size" key is kept too.
    """
    *lines, last_line = text.replace("\r\n", "\n").replace("\r", "\n").strip().split("\n")
    if len(_PARAM.findall(last_line)) < 3:
        lines.append(last_line)
        last_line = ""

    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    for raw_line in lines:
        line = raw_line.strip()
        if not negative_lines and line.startswith(_NEGATIVE):
            negative_lines.append(line[len(_NEGATIVE) :].strip())
        elif negative_lines:
            negative_lines.append(line)
        else:
            prompt_lines.append(line)

    result: dict[str, str] = {"Prompt": "\n".join(prompt_lines), "Negative prompt": "\n".join(negative_lines)}
    for key, raw_value in _PARAM.findall(last_line):
        value = unquote(raw_value.strip())
        result[key] = value
        size = _IMAGE_SIZE.match(value)
        if size is not None:
            result[f"{key}-1"], result[f"{key}-2"] = size.group(1), size.group(2)

    if "Sampler" in result and "Schedule type" not in result:
        try:
            sampler, schedule = split_sampler_name(result["Sampler"])
        except EaselError:
            schedule = None  # a sampler we do not know is still worth showing as written
        if schedule is not None:
            result["Sampler"], result["Schedule type"] = sampler, schedule
    return result


def _decode_user_comment(raw: bytes | str) -> str:
    """EXIF UserComment: an 8-byte character-code header, then the text in that encoding."""
    if isinstance(raw, str):
        return raw.rstrip("\0")
    header, body = raw[:8], raw[8:]
    if header == b"UNICODE\0":
        # The spec leaves the byte order open; A1111 (piexif) writes big-endian. ASCII-heavy text shows its
        # zero bytes at even offsets in big-endian and at odd ones in little-endian.
        little = body[1::2].count(0) > body[0::2].count(0)
        text = body.decode("utf-16-le" if little else "utf-16-be", errors="replace")
    elif header in (b"ASCII\0\0\0", b"\0" * 8):
        text = body.decode("utf-8", errors="replace")
    else:
        text = raw.decode("utf-8", errors="replace")
    return text.rstrip("\0")


def read_image_parameters(image: Image.Image) -> str | None:
    """The infotext an image carries: PNG `parameters` text chunk, else the EXIF UserComment (JPEG, WebP)."""
    parameters = image.info.get("parameters")
    if isinstance(parameters, str):
        return parameters
    try:
        comment = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    except Exception:  # a broken EXIF block just means "no parameters", never a crash
        return None
    if not comment:
        return None
    text = _decode_user_comment(comment)
    return text or None
