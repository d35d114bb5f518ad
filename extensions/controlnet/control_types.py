"""sd-webui-controlnet's "Control Type" groups: which preprocessors and models go together, for the API and the UI.

``/controlnet/control_types`` serves them to clients; the unit's "Control Type" radio uses the same table to narrow
its preprocessor and model lists, and (for ControlNet-Union models) to say which control type a map is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import annotators, preprocessors

ALL = "All"
# the groups Easel's weight-free preprocessors serve: (title, default preprocessor, others)
WEIGHT_FREE_TYPES = (
    ("Canny", "canny", ()),
    ("Scribble", "scribble_threshold", ()),
    ("Tile", "tile_resample", ("blur_gaussian",)),
    ("Lineart", "lineart_standard", ("invert",)),
    ("Shuffle", "shuffle", ()),
    ("Inpaint", "inpaint_only", ("inpaint",)),
)
REFERENCE_MODULES = ("reference_only", "reference_adain", "reference_adain+attn")
# control type -> ControlNet-Union's type (adapters.py); the others leave it to the preprocessor ("Unknown")
UNION_TYPES = {
    "Canny": "Canny",
    "Lineart": "Canny",
    "Scribble": "Soft Edge",
    "Tile": "Tile",
    "Inpaint": "Inpaint",
    "Depth": "Depth",
    "NormalMap": "Normal Map",
    "Segmentation": "Segmentation",
    "OpenPose": "OpenPose",
}


def _group(modules: Sequence[str], models: Sequence[str], default: str) -> dict[str, Any]:
    return {
        "module_list": list(modules),
        "model_list": list(models),
        "default_option": default,
        "default_model": models[1] if len(models) > 1 else "None",
    }


def control_types(models: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Every group with its preprocessors and the installed ``models`` (names or labels) whose name says the type.

    Groups of annotators appear only while their weights are present; "All" lists everything.
    """
    models = list(models)
    modules = [*preprocessors.PREPROCESSORS, *annotators.LIBRARY.available()]
    types: dict[str, dict[str, Any]] = {ALL: {**_group(modules, ["None", *models], "none"), "default_model": "None"}}
    for title, module, extra in WEIGHT_FREE_TYPES:
        matching = ["None", *(m for m in models if title.lower() in m.lower())]
        types[title] = _group(["none", module, *extra], matching, module)
    types |= annotators.control_types(models)
    types["Reference"] = _group(REFERENCE_MODULES, ["None"], REFERENCE_MODULES[0])
    return types


def union_type(control_type: str | None) -> str:
    """The ControlNet-Union control type a unit's "Control Type" implies ("Unknown": by its preprocessor)."""
    return UNION_TYPES.get(str(control_type or ""), "Unknown")
