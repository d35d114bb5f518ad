# ruff: noqa: F811  (the fixtures imported from tests.test_controlnet are parameters here)
"""ControlNet units read back from the infotext (the text sd-webui-controlnet writes, parsed robustly) and its
settings: the unit count from config.json, clamped, saved by the Settings tab and read on the next start."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pipelines.errors import EaselError
from pipelines.extensions.loader import BUILTIN_DIR, MODULE_PREFIX, LoadedExtensions, load_extensions
from pipelines.extensions.state import ExtensionState
from pipelines.generate import Engine
from pipelines.metadata.infotext import format_infotext, parse_infotext, read_image_parameters
from pipelines.settings_store import SettingsStore
from tests.test_controlnet import builtins, cn_dir, engine, request, unit  # noqa: F401 (fixtures)


def cn_module(name: str) -> Any:
    return sys.modules[f"{MODULE_PREFIX}controlnet.{name}"]


def test_pairs_split_only_at_keys_and_inner_quotes_come_off(builtins: LoadedExtensions) -> None:
    split = cn_module("infotext").split_pairs
    text = 'Module: canny, Model: my, odd: name [abcdef12], Weight: 0.5, Control Mode: "My prompt is more important"'
    assert split(text) == {
        "Module": "canny",
        "Model": "my, odd: name [abcdef12]",  # ", odd: " is no title-case key: it stays in the model's name
        "Weight": "0.5",
        "Control Mode": "My prompt is more important",
    }
    assert split("") == {}


def test_a_unit_reads_back_with_its_model_matched(builtins: LoadedExtensions, cn_dir: Path) -> None:
    infotext = cn_module("infotext")
    models = cn_module("control").list_models([cn_dir])
    other = next(m for m in models if m.name == "tiny-sd1-other")
    text = (
        "Module: Canny, Model: TINY-sd1-ldm [00000000], Weight: 0.35, Resize Mode: Inner Fit (Scale to Fit), "
        "Processor Res: -1, Threshold A: 80, Threshold B: -1, Guidance Start: 0.2, Guidance End: 0.9, "
        "Pixel Perfect: True, Control Mode: 2, Hr Option: Low res only, Save Detected Map: True, Low Vram: False"
    )
    values, warnings = infotext.read_unit(1, text, models)
    assert values == {
        "enabled": True,
        "module": "canny",
        "model": "tiny-sd1-ldm",  # by name, whatever the case; the hash does not have to agree
        "weight": 0.35,
        "resize_mode": "Crop and Resize",  # sd-webui-controlnet's old name for it
        "threshold_a": 80.0,  # -1 ("no such slider") values are left alone
        "guidance_start": 0.2,
        "guidance_end": 0.9,
        "pixel_perfect": True,
        "control_mode": "ControlNet is more important",
        "hr_option": "Low res only",
    }
    assert warnings == []
    renamed, _ = infotext.read_unit(0, f"Model: old-name [{other.short_hash}]", models)
    assert renamed["model"] == "tiny-sd1-other"  # a renamed file found by its hash
    missing, warnings = infotext.read_unit(0, "Module: depth_zoe, Model: control_v11 [d14c016b], Weight: x", models)
    assert missing == {"enabled": True, "module": "depth_zoe", "model": "control_v11"}
    assert warnings == [
        "ControlNet 0: the preprocessor 'depth_zoe' is not available here; kept its name",
        "ControlNet 0: the model 'control_v11 [d14c016b]' is not installed; kept its name",
        "ControlNet 0: 'Weight: x' was not read",
    ]


def test_generated_png_parses_back_to_the_same_unit(engine: Engine) -> None:
    sent = unit(
        module="canny",
        weight=0.65,
        resize_mode="Resize and Fill",
        processor_res=256,
        threshold_a=60,
        threshold_b=150,
        guidance_start=0.1,
        guidance_end=0.85,
        pixel_perfect=True,
        control_mode="My prompt is more important",
        hr_option="High res only",
    )
    result = engine.generate(request(unit(weight=0.0), sent, save=True))
    assert not engine.hooks.failed and result.paths
    with Image.open(result.paths[0]) as png:
        text = read_image_parameters(png)
    assert text is not None and 'ControlNet 1: "Module: canny, Model: tiny-sd1-ldm [' in text
    read = engine.hooks.read_infotext(parse_infotext(text))
    assert read.warnings == ()
    unit_1 = {k.removeprefix("ControlNet 1 "): v for k, v in read.values.items() if k.startswith("ControlNet 1 ")}
    expected = {k: v for k, v in sent.items() if k != "image"} | {"enabled": True}
    assert unit_1 == expected
    assert read.values["ControlNet 0 weight"] == 0.0 and read.values["ControlNet 0 model"] == "tiny-sd1-ldm"
    # and what was read generates the same image again (the control image is not in the text: given again)
    again = engine.generate(request(unit(weight=0.0), {**unit_1, "image": sent["image"]}))
    assert again.infotexts[0] == result.infotexts[0]


def test_an_infotext_without_units_reads_nothing(engine: Engine) -> None:
    text = format_infotext("a boat", "", {"Steps": 3, "Seed": 1, "Size": "64x64"})
    assert engine.hooks.read_infotext(parse_infotext(text)).values == {}


def _loaded(tmp_path: Path, config: dict[str, Any]) -> tuple[LoadedExtensions, int]:
    extensions = load_extensions(None, BUILTIN_DIR, ExtensionState(tmp_path / "state.json"), config=config)
    record = extensions.get("controlnet")
    assert record is not None and record.active and record.contributions is not None
    count = sum(1 for f in record.contributions.fields if f.name.startswith("controlnet.unit_"))
    return extensions, count


@pytest.mark.parametrize(("saved", "count"), [(5, 5), (12, 8), (0, 1), (-3, 1), ("four", 3), (2.0, 2), (True, 3)])
def test_unit_count_from_config_json_is_clamped(tmp_path: Path, saved: Any, count: int) -> None:
    extensions, found = _loaded(tmp_path, {"control_net_unit_count": saved})
    try:
        assert found == count
    finally:
        extensions.unload()


def test_settings_tab_saves_the_count_for_the_next_start(
    engine: Engine,
    builtins: LoadedExtensions,
    tmp_path: Path,
) -> None:
    from webui.context import AppContext
    from webui.tabs.settings import apply_changes, shown_values

    store = SettingsStore.open(tmp_path / "data")
    ctx = AppContext(engine, settings=store, extensions=builtins)
    assert shown_values(ctx)["control_net_unit_count"] == 3
    report = apply_changes(ctx, ["control_net_unit_count"], {"control_net_unit_count": 3}, [6.0])  # a slider's float
    assert "Needs a restart" in report and "`control_net_unit_count` → 6" in report
    assert json.loads((tmp_path / "data" / "config.json").read_text())["control_net_unit_count"] == 6
    assert shown_values(ctx)["control_net_unit_count"] == 6  # what the next start reads, shown after Apply
    apply_changes(ctx, ["control_net_unit_count"], {"control_net_unit_count": 6}, [20])
    assert SettingsStore.open(tmp_path / "data").values["control_net_unit_count"] == 8  # clamped as it is saved
    with pytest.raises(EaselError, match="control_net_unit_count"):
        apply_changes(ctx, ["control_net_unit_count"], {"control_net_unit_count": 8}, ["many"])
    builtins.unload()  # "restart": the extension set up again from the saved file
    restarted, count = _loaded(tmp_path, SettingsStore.open(tmp_path / "data").values)
    try:
        assert count == 8
    finally:
        restarted.unload()
