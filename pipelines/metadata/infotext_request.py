"""Infotext -> ``GenerationRequest`` fields: PNG Info's "Send to", the prompt box's "read parameters" button, and
the API's A1111 ``infotext`` request field all use ``request_from_infotext``.

Only fields the text really carries are returned, so a caller can fill just what its request left unset. Values
that do not parse (another tool's conventions, a hand-edited text) are skipped and listed, never raised.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipelines.fields import CORE, FIELDS, HIRES_INFOTEXT_KEYS, RequestField
from pipelines.metadata.infotext import parse_infotext


def _read(field: RequestField, raw: str) -> Any:
    """One infotext value as the field's type; ValueError (with the reason) when it does not parse."""
    assert field.infotext is not None and field.infotext.read is not None
    value = field.infotext.read(raw)
    if isinstance(value, float) and not math.isfinite(value):  # float() reads "nan" and "inf"
        raise ValueError(f"{raw} is not a finite number")
    return value


@dataclass
class InfotextFields:
    """Request keyword arguments read from an infotext, and what could not be read."""

    kwargs: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # infotext key -> why
    model_name: str | None = None
    model_hash: str | None = None
    extensions: dict[str, dict[str, Any]] = field(default_factory=dict)  # extension fields: {owner: {field: value}}


def request_from_infotext(source: str | Mapping[str, str]) -> InfotextFields:
    """Every ``GenerationRequest`` field an infotext (text, or ``parse_infotext``'s dict) determines."""
    fields = parse_infotext(source) if isinstance(source, str) else dict(source)
    out = InfotextFields()
    kwargs = out.kwargs
    for item in FIELDS.infotext_readers():
        key = item.infotext.read_key if item.infotext else ""
        if key not in fields:
            continue
        raw = fields[key] if item.kind is str else fields[key].strip()
        try:
            value = _read(item, raw)
        except ValueError as exc:
            numeric = item.kind in (int, float)
            out.skipped[key] = f"'{raw}' is not a number" if numeric else str(exc)
            continue
        if item.owner == CORE:
            kwargs[item.name] = value
        else:  # a request has no attribute of an extension's: its values travel in ``extensions``
            out.extensions.setdefault(item.owner, {})[item.name.split(".", 1)[1]] = value
    if any(key in fields for key in HIRES_INFOTEXT_KEYS):
        kwargs["enable_hr"] = True
    if "Seed" in out.skipped or "Variation seed" in out.skipped:
        kwargs.pop("subseed_strength", None)
    out.model_name = fields.get("Model") or None
    out.model_hash = fields.get("Model hash") or None
    return out


def resolve_checkpoint(find: Callable[[str], Any], model_name: str | None, model_hash: str | None) -> str | None:
    """The checkpoint an infotext names, as A1111 picks it: by hash first, then by name; None if neither is here.

    ``find`` is ``PipelineManager.find`` (raises EaselError when nothing matches); it returns a CheckpointInfo.
    """
    from pipelines.errors import EaselError

    for query in (model_hash, model_name):
        if not query:
            continue
        try:
            return find(query).name
        except EaselError:
            continue
    return None
