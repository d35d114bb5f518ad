"""A1111's script surface over Easel's extensions, at the API edge only.

A1111 clients select a script with ``script_name`` (its lower-cased title) + positional ``script_args``, and pass
always-on extensions' values as ``alwayson_scripts: {name: {"args": [...]}}``; ``/scripts`` and ``/script-info``
list what is installed. Easel's extensions declare scripts (``pipelines.hooks.Script``) and fields instead; this
module translates between the two shapes and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipelines.errors import EaselError
from pipelines.fields import CORE, FIELDS, RequestField, Widget
from pipelines.hooks import EngineHooks

ENDPOINT_MODES = {"txt2img": ("txt2img",), "img2img": ("img2img", "inpaint")}


def _owners() -> dict[str, list[RequestField]]:
    """Each loaded extension with request fields (A1111's always-on scripts), its fields in declaration order."""
    owners: dict[str, list[RequestField]] = {}
    for item in FIELDS:
        if item.owner != CORE:
            owners.setdefault(item.owner, []).append(item)
    return owners


def _match(name: str, candidates: list[str]) -> str | None:
    wanted = name.strip().lower().replace(" ", "_").replace("-", "_")
    return next((c for c in candidates if c.lower() == wanted), None)


def alwayson_values(scripts: Mapping[str, Any] | None, mode: str) -> dict[str, dict[str, Any]]:
    """``alwayson_scripts`` -> ``GenerationRequest.extensions``; ``args`` a list (field order) or an object.

    An unknown name is an error, as in A1111 (a client relying on an extension that is not there should know).
    """
    owners = _owners()
    values: dict[str, dict[str, Any]] = {}
    for name, body in (scripts or {}).items():
        owner = _match(str(name), list(owners))
        if owner is None:
            known = ", ".join(owners) or "none installed"
            raise EaselError(f"always-on script '{name}' not found (extensions with args: {known})")
        fields = [f for f in owners[owner] if mode in f.modes]
        args = body.get("args", []) if isinstance(body, Mapping) else body
        if isinstance(args, Mapping):
            values[owner] = dict(args)
        elif isinstance(args, list | tuple):
            if len(args) > len(fields):
                raise EaselError(f"always-on script '{name}' takes {len(fields)} args, got {len(args)}")
            values[owner] = {f.name.split(".", 1)[1]: value for f, value in zip(fields, args, strict=False)}
        else:
            raise EaselError(f"alwayson_scripts.{name}.args must be a list or an object")
    return values


def script_lists(hooks: EngineHooks) -> dict[str, list[str]]:
    """``/sdapi/v1/scripts``: lower-cased names per endpoint, selectable scripts and always-on ones alike."""
    owners = _owners()
    lists: dict[str, list[str]] = {}
    for endpoint, modes in ENDPOINT_MODES.items():
        names = [s.key for s in hooks.scripts() if s.modes & set(modes)]
        names += [o for o, fields in owners.items() if any(f.modes & set(modes) for f in fields)]
        lists[endpoint] = names
    return lists


def _arg_info(label: str, value: Any, widget: Widget | None) -> dict[str, Any]:
    choices = list(widget.choices()) if widget is not None and widget.choices else None
    return {
        "label": label,
        "value": value,
        "minimum": widget.minimum if widget else None,
        "maximum": widget.maximum if widget else None,
        "step": widget.step if widget else None,
        "choices": choices,
    }


def script_info(hooks: EngineHooks) -> list[dict[str, Any]]:
    """``/sdapi/v1/script-info``: one entry per script and endpoint, with its args as A1111 describes them."""
    info: list[dict[str, Any]] = []
    for endpoint, modes in ENDPOINT_MODES.items():
        img2img = endpoint == "img2img"
        for script in hooks.scripts():
            if script.modes & set(modes):
                args = [_arg_info(a.widget.label, a.default, a.widget) for a in script.args]
                info.append({"name": script.key, "is_alwayson": False, "is_img2img": img2img, "args": args})
        for owner, fields in _owners().items():
            shown = [f for f in fields if f.modes & set(modes)]
            if shown:
                args = [_arg_info(f.title, f.default, f.widget) for f in shown]
                info.append({"name": owner, "is_alwayson": True, "is_img2img": img2img, "args": args})
    return info
