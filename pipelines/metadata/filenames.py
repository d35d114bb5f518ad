"""A1111's file naming: ``samples_filename_pattern`` / ``directories_filename_pattern`` tags, and output formats.

Patterns come from the settings (a user's text), so every expansion is sanitized here: no path separators, no
``..``, no control characters, each part and the whole name capped in length. An expanded pattern is only ever
one file name or one folder name below the mode folder, never a path of its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pipelines.errors import EaselError

FORMATS = {"png": "png", "jpg": "jpg", "jpeg": "jpg", "webp": "webp"}
"""What ``samples_format`` accepts -> the extension written (A1111 writes ``jpg``)."""
DEFAULT_FILENAME_PATTERN = "[seed]"
DEFAULT_DIRECTORY_PATTERN = "[date]"
PATTERN_MAX = 200
"""Longest pattern text accepted (a setting, typed by a user)."""
PART_MAX = 128
"""Longest expansion of one tag (A1111 cuts prompts at the same length)."""
NAME_MAX_BYTES = 200
"""Longest file or folder name written, in UTF-8 bytes: under every common file system's 255, with room for the
number, the extension and a collision suffix."""
_INVALID = set('#<>:"/\\|?*\0') | {chr(c) for c in range(32)} | {"\x7f"}
_TAG = re.compile(r"\[([a-z_]+)(?:<([^>\]]*)>)?\]")
TAGS = (
    "seed",
    "prompt",
    "prompt_spaces",
    "prompt_words",
    "negative_prompt",
    "model_name",
    "model_hash",
    "sampler",
    "scheduler",
    "steps",
    "cfg",
    "width",
    "height",
    "clip_skip",
    "denoising",
    "vae_filename",
    "datetime",
    "date",
    "job_timestamp",
)
"""Tags a pattern may hold (A1111's names); ``[datetime<%Y-%m>]`` takes an strftime format as A1111 does."""


@dataclass(frozen=True)
class SaveOptions:
    """How an image is written: format, quality and names (A1111's config.json keys, as ``EngineSettings`` has)."""

    samples_format: str = "png"
    jpeg_quality: int = 80
    webp_lossless: bool = False
    samples_filename_pattern: str = ""
    save_to_dirs: bool = True
    directories_filename_pattern: str = DEFAULT_DIRECTORY_PATTERN

    @property
    def extension(self) -> str:
        return FORMATS[self.samples_format]

    @classmethod
    def from_settings(cls, settings: Any) -> SaveOptions:
        """From ``EngineSettings`` (or anything with the same attributes)."""
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})


def check_pattern(label: str, value: object) -> str:
    """A pattern setting, checked: text of at most ``PATTERN_MAX`` characters whose tags are all known."""
    if not isinstance(value, str):
        raise EaselError(f"{label} must be text (got {value!r})")
    if len(value) > PATTERN_MAX:
        raise EaselError(f"{label} is longer than {PATTERN_MAX} characters")
    unknown = sorted({m.group(1) for m in _TAG.finditer(value)} - set(TAGS))
    if unknown:
        raise EaselError(f"{label}: unknown tag(s) {', '.join(f'[{t}]' for t in unknown)}; known: {', '.join(TAGS)}")
    for match in _TAG.finditer(value):
        if match.group(2) is not None and match.group(1) not in ("datetime", "date"):
            raise EaselError(f"{label}: only [datetime<...>] takes a format")
    return value


def check_format(label: str, value: object) -> str:
    key = str(value).strip().lower().lstrip(".") if isinstance(value, str) else None
    if key not in FORMATS:
        raise EaselError(f"{label} must be one of png, jpg, webp (got {value!r})")
    return "jpg" if key == "jpeg" else key


def sanitize_part(text: str, replace_spaces: bool = True, limit: int = PART_MAX) -> str:
    """One piece of a name: separators and characters file systems refuse become ``_``; no leading dots."""
    if replace_spaces:
        text = text.replace(" ", "_")
    text = "".join("_" if ch in _INVALID else ch for ch in text)
    return text[:limit].strip(" ").lstrip(".").rstrip(" .")


def _cap_bytes(text: str, limit: int) -> str:
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode("utf-8", errors="ignore").rstrip(" .")


def filename_tags(request: Any, seed: int, model_name: str, model_hash: str | None, vae: str | None) -> dict[str, str]:
    """The values of the tags for one image of ``request`` (a ``GenerationRequest``)."""
    words = re.findall(r"[\w]+", request.prompt or "")
    return {
        "seed": str(seed),
        "prompt": request.prompt or "",
        "prompt_spaces": request.prompt or "",
        "prompt_words": " ".join(words),
        "negative_prompt": request.negative_prompt or "",
        "model_name": model_name,
        "model_hash": model_hash or "",
        "sampler": request.sampler,
        "scheduler": request.schedule_type,
        "steps": str(request.steps),
        "cfg": f"{request.cfg_scale:g}",
        "width": str(request.width),
        "height": str(request.height),
        "clip_skip": str(request.clip_skip),
        "denoising": f"{request.denoising_strength:g}" if request.mode != "txt2img" else "",
        "vae_filename": vae or "",
    }


def expand_pattern(pattern: str, tags: Mapping[str, str], when: datetime) -> str:
    """``pattern`` with its tags replaced, as one sanitized name (may be empty: the caller falls back)."""

    def value(match: re.Match[str]) -> str:
        tag, fmt = match.group(1), match.group(2)
        if tag in ("datetime", "date", "job_timestamp"):
            default = {"datetime": "%Y%m%d%H%M%S", "date": "%Y-%m-%d", "job_timestamp": "%Y%m%d%H%M%S"}[tag]
            try:
                text = when.strftime(fmt or default)
            except ValueError:
                text = when.strftime(default)
            return sanitize_part(text)
        if tag not in tags:
            return match.group(0)
        return sanitize_part(str(tags[tag]), replace_spaces=tag not in ("prompt_spaces", "prompt_words"))

    expanded = _TAG.sub(value, pattern)
    return _cap_bytes(sanitize_part(expanded, replace_spaces=False, limit=10 * PART_MAX), NAME_MAX_BYTES)


def image_stem(options: SaveOptions, tags: Mapping[str, str], when: datetime, number: int) -> str:
    """``NNNNN-<pattern>`` (the number first, as A1111 numbers files, so the next save counts on from it)."""
    pattern = options.samples_filename_pattern or DEFAULT_FILENAME_PATTERN
    body = expand_pattern(pattern, tags, when) or expand_pattern(DEFAULT_FILENAME_PATTERN, tags, when)
    return _cap_bytes(f"{number:05d}-{body}" if body else f"{number:05d}", NAME_MAX_BYTES)


def subfolder(options: SaveOptions, tags: Mapping[str, str], when: datetime) -> str | None:
    """The one folder below the mode folder images go to, or None when ``save_to_dirs`` is off."""
    if not options.save_to_dirs:
        return None
    pattern = options.directories_filename_pattern or DEFAULT_DIRECTORY_PATTERN
    name = expand_pattern(pattern, tags, when) or when.strftime("%Y-%m-%d")
    return name if name not in (".", "..") else when.strftime("%Y-%m-%d")
