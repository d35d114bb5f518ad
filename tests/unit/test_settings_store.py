"""config.json: A1111's keys, atomic writes with a backup, corrupt files kept aside, bad values skipped loudly."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from pipelines.generate import Engine
from pipelines.settings import apply_settings
from pipelines.settings_store import SettingsStore


@pytest.fixture
def engine(make_engine: Callable[[Path], Engine], tmp_path: Path) -> Engine:
    return make_engine(tmp_path / "outputs")


def test_settings_round_trip_with_a1111_keys_and_unknown_keys_kept(engine: Engine, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"sd_vae_as_default": True, "img2img_color_correction": 1}))
    store = SettingsStore.open(tmp_path)
    changes = {"samples_format": "webp", "jpeg_quality": 91, "randn_source": "CPU", "eta_ancestral": 0.5}
    apply_settings(engine, {**changes, "clip_skip": 2, "preview_every": 3, "ram_cache_size": 4})
    store.record(engine, {"some_extension_key": [1, 2]})
    saved = json.loads((tmp_path / "config.json").read_text())
    assert {k: saved[k] for k in changes} == changes
    assert saved["CLIP_stop_at_last_layers"] == 2 and saved["show_progress_every_n_steps"] == 3
    assert saved["sd_checkpoint_cache"] == 4 and saved["sd_vae"] == "Automatic"
    assert saved["sd_vae_as_default"] is True and saved["some_extension_key"] == [1, 2]  # kept, as A1111 keeps them

    fresh = make_fresh(engine, tmp_path)
    assert fresh.settings.samples_format == "webp" and fresh.settings.jpeg_quality == 91
    assert fresh.settings.randn_source == "CPU" and fresh.settings.eta_ancestral == 0.5
    assert fresh.settings.clip_skip == 2 and fresh.settings.preview_every == 3 and fresh.manager.ram_cache_size == 4


def make_fresh(engine: Engine, folder: Path) -> Engine:
    """A second engine over the same models, as after a restart, restored from ``folder``'s config.json."""
    fresh = Engine(engine.manager, engine.outputs_dir)  # a new EngineSettings, all defaults
    fresh.manager.ram_cache_size = None
    assert fresh.settings.samples_format == "png"
    assert SettingsStore.open(folder).restore(fresh) == []
    return fresh


def test_each_write_keeps_the_previous_file_as_bak(engine: Engine, tmp_path: Path) -> None:
    store = SettingsStore.open(tmp_path)
    apply_settings(engine, {"jpeg_quality": 60})
    store.record(engine)
    apply_settings(engine, {"jpeg_quality": 70})
    store.record(engine)
    assert json.loads((tmp_path / "config.json").read_text())["jpeg_quality"] == 70
    assert json.loads((tmp_path / "config.json.bak").read_text())["jpeg_quality"] == 60
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left behind


def test_a_corrupt_file_is_moved_aside_reported_and_never_overwritten(engine: Engine, tmp_path: Path) -> None:
    broken = '{"samples_format": "jpg", "jpeg_quality": 9'  # cut off mid-write by some other program
    (tmp_path / "config.json").write_text(broken)
    store = SettingsStore.open(tmp_path)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("config.json.corrupt-")]
    assert len(aside) == 1 and aside[0].read_text() == broken
    assert len(store.warnings) == 1 and "not valid JSON" in store.warnings[0] and str(aside[0]) in store.warnings[0]
    assert store.values == {}
    store.record(engine)  # saving afterwards writes a new file; the broken one stays where it was put
    assert aside[0].read_text() == broken and json.loads((tmp_path / "config.json").read_text())["samples_format"]


def test_a_json_array_is_corrupt_too(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("[1, 2]")
    store = SettingsStore.open(tmp_path)
    assert "JSON list" in store.warnings[0]


def test_an_unreadable_file_is_left_alone_and_not_written(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.mkdir()  # reading fails for every user, root included (chmod 0 would not stop root)
    (path / "inside").write_text("someone's")
    store = SettingsStore.open(tmp_path)
    assert "could not be read" in store.warnings[0] and "will not be saved" in store.warnings[0]
    store.record(engine)
    assert path.is_dir() and (path / "inside").read_text() == "someone's"


def test_bad_values_in_the_file_are_skipped_with_a_warning(engine: Engine, tmp_path: Path) -> None:
    values = {"jpeg_quality": 500, "samples_format": "jpg", "sd_vae": "gone.safetensors", "s_noise": "loud"}
    (tmp_path / "config.json").write_text(json.dumps(values))
    store = SettingsStore.open(tmp_path)
    problems = store.restore(engine)
    assert engine.settings.samples_format == "jpg" and engine.settings.jpeg_quality == 80  # good one in, bad out
    assert len(problems) == 3 and any("jpeg_quality" in p for p in problems) and any("sd_vae" in p for p in problems)
    assert problems == store.warnings
    assert store.values["jpeg_quality"] == 80 and store.values["s_noise"] == 1.0  # what requests fall back on


def test_the_checkpoint_is_recorded_in_a1111_title_form(engine: Engine, tmp_path: Path) -> None:
    engine.manager.activate("tiny-sd1.safetensors")
    store = SettingsStore.open(tmp_path)
    store.record(engine)
    title = json.loads((tmp_path / "config.json").read_text())["sd_model_checkpoint"]
    assert title == f"tiny-sd1.safetensors [{engine.manager.active.hash}]"
    assert SettingsStore.open(tmp_path).checkpoint == title
    assert engine.manager.find(title).name == "tiny-sd1.safetensors"


def test_an_in_memory_store_writes_nothing(engine: Engine, tmp_path: Path) -> None:
    store = SettingsStore.open(None)
    store.record(engine)
    assert store.path is None and store.values["samples_format"] == "png"
