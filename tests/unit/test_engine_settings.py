"""pipelines.settings (the one writer of run-time settings), the network library's refresh, the extras upscaler."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from pipelines.errors import EaselError, RequestTooLargeError
from pipelines.generate import EngineSettings
from pipelines.imaging.upscale import MAX_RESULTS_PIXELS, UpscaleSpec, check_results, upscale
from pipelines.models.checkpoints import HashCache
from pipelines.networks.embeddings import embedding_shape
from pipelines.networks.library import NetworkFolders, NetworkLibrary
from pipelines.runtime.placement import MemorySettings
from pipelines.settings import PREVIEW_EVERY_MAX, RAM_CACHE_MAX, apply_settings, current_settings
from pipelines.upscalers.library import UpscalerFolders, UpscalerLibrary


@pytest.fixture
def engine(tmp_path: Path) -> SimpleNamespace:
    """What the writer touches of an Engine: its settings, the manager's RAM cache, the VAE folder."""
    folders = NetworkFolders.from_models_dir(tmp_path / "models")
    folders.vae.mkdir(parents=True)
    (folders.vae / "sharp.vae.safetensors").write_bytes(b"listed, not loaded")
    networks = NetworkLibrary(folders, HashCache(tmp_path / "hashes.json"))
    upscalers = UpscalerLibrary(UpscalerFolders.from_models_dir(tmp_path / "models"))
    manager = SimpleNamespace(ram_cache_size=None, memory=SimpleNamespace(settings=MemorySettings()))
    return SimpleNamespace(settings=EngineSettings(), manager=manager, networks=networks, upscalers=upscalers)


def test_upscaler_tile_settings_live_on_the_library(engine: SimpleNamespace) -> None:
    assert current_settings(engine)["ESRGAN_tile"] == 192 and current_settings(engine)["ESRGAN_tile_overlap"] == 8
    changed = apply_settings(engine, {"ESRGAN_tile": 256, "ESRGAN_tile_overlap": 16})
    assert changed == ["ESRGAN_tile", "ESRGAN_tile_overlap"]
    assert (engine.upscalers.tile, engine.upscalers.tile_overlap) == (256, 16)
    with pytest.raises(EaselError, match="ESRGAN_tile must be a whole number"):
        apply_settings(engine, {"ESRGAN_tile": -1, "ESRGAN_tile_overlap": 4})
    assert engine.upscalers.tile_overlap == 16  # nothing half applied


def test_folders_follow_the_a1111_layout(tmp_path: Path) -> None:
    folders = NetworkFolders.from_models_dir(tmp_path / "models", tmp_path / "emb")
    assert (folders.lora, folders.vae) == (tmp_path / "models" / "Lora", tmp_path / "models" / "VAE")
    assert (folders.embeddings, folders.styles) == (tmp_path / "emb", tmp_path / "styles.csv")
    beside = NetworkFolders.beside(tmp_path / "models" / "Stable-diffusion")
    assert beside.embeddings == tmp_path / "models" / "embeddings" and beside.vae == folders.vae


def test_changes_are_applied_and_reported(engine: SimpleNamespace) -> None:
    changed = apply_settings(engine, {"preview_every": 4.0, "save_outputs": False, "ram_cache_size": 3, "sd_vae": ""})
    assert changed == ["preview_every", "save_outputs", "ram_cache_size"]  # sd_vae was None already
    now = current_settings(engine)
    assert {k: now[k] for k in ("preview_every", "save_outputs", "sd_vae", "ram_cache_size")} == {
        "preview_every": 4,
        "save_outputs": False,
        "sd_vae": None,
        "ram_cache_size": 3,
    }
    assert apply_settings(engine, {"ram_cache_size": 0, "sd_vae": "SHARP.vae"}) == ["ram_cache_size", "sd_vae"]
    assert (engine.settings.sd_vae, engine.manager.ram_cache_size) == ("sharp.vae.safetensors", None)


@pytest.mark.parametrize("name", ["Automatic", "automatic", "None", "", None])
def test_every_spelling_of_automatic_is_the_checkpoints_own_vae(engine: SimpleNamespace, name: str | None) -> None:
    engine.settings.sd_vae = "sharp.vae.safetensors"
    assert apply_settings(engine, {"sd_vae": name}) == ["sd_vae"] and engine.settings.sd_vae is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"preview_every": -1}, "from 0 to"),
        ({"preview_every": PREVIEW_EVERY_MAX + 1}, "from 0 to"),
        ({"preview_every": 2.5}, "whole number"),
        ({"preview_every": True}, "whole number"),
        ({"preview_every": float("nan")}, "whole number"),
        ({"ram_cache_size": RAM_CACHE_MAX + 1}, "ram_cache_size"),
        ({"save_outputs": "no"}, "true or false"),
        ({"sd_vae": 3}, "VAE file name"),
        ({"sd_vae": "blurry"}, "no VAE named 'blurry'"),
        ({"colour": 1}, "unknown setting"),
    ],
)
def test_a_bad_value_changes_nothing(engine: SimpleNamespace, changes: dict, message: str) -> None:
    before = current_settings(engine)
    with pytest.raises(EaselError, match=message):
        apply_settings(engine, {"save_outputs": False, **changes})
    assert current_settings(engine) == before


def test_errors_use_the_callers_names(engine: SimpleNamespace) -> None:
    with pytest.raises(EaselError, match="show_progress_every_n_steps must be"):
        apply_settings(engine, {"preview_every": -1}, {"preview_every": "show_progress_every_n_steps"})


def test_refresh_rereads_embeddings_rewritten_in_place(tmp_path: Path) -> None:
    folders = NetworkFolders.from_models_dir(tmp_path / "models", tmp_path / "embeddings")
    folders.embeddings.mkdir()
    library = NetworkLibrary(folders, HashCache(tmp_path / "hashes.json"))
    path = folders.embeddings / "tok.safetensors"
    save_file({"emb_params": torch.zeros(2, 8)}, str(path))
    stamp = path.stat()
    assert float(library.embeddings.current().vectors["tok"].sum()) == 0
    save_file({"emb_params": torch.ones(2, 8)}, str(path))  # same size; then the same time too
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert float(library.embeddings.current().vectors["tok"].sum()) == 0  # the cache cannot tell
    library.refresh_embeddings()
    assert float(library.embeddings.current().vectors["tok"].sum()) == 16
    assert embedding_shape(path) == (2, 8)
    (folders.embeddings / "broken.safetensors").write_bytes(b"\x00 not a header")
    assert embedding_shape(folders.embeddings / "broken.safetensors") is None


def test_upscale_by_factor_to_size_cropped_and_blended() -> None:
    image = Image.new("RGB", (20, 10), (200, 10, 10))
    assert upscale(image, UpscaleSpec(upscaling_resize=2, upscaler_1="Lanczos")).size == (40, 20)
    to_size = UpscaleSpec(resize_mode=1, upscaling_resize_w=30, upscaling_resize_h=30, upscaler_1="Nearest")
    assert upscale(image, to_size).size == (30, 30)
    blend = UpscaleSpec(upscaler_1="Nearest", upscaler_2="Lanczos", extras_upscaler_2_visibility=0.5)
    assert upscale(image, blend).size == (40, 20)
    with pytest.raises(EaselError, match="unknown upscaler 'ESRGAN'"):
        upscale(image, UpscaleSpec(upscaler_1="ESRGAN"))
    with pytest.raises(EaselError, match="upscaling_resize must be between 0 and 8"):
        UpscaleSpec(upscaling_resize=9).result_size(10, 10)
    with pytest.raises(RequestTooLargeError, match="b brings this request's results"):
        check_results(UpscaleSpec(upscaling_resize=8), [("a", (512, 512))] * 4 + [("b", (512, 512))])
    assert MAX_RESULTS_PIXELS == 4 * (512 * 8) ** 2  # four results at the largest size, and no more


def test_sampling_settings_are_checked_and_applied(engine: SimpleNamespace) -> None:
    changed = apply_settings(engine, {"randn_source": "cpu", "eta_ancestral": 0.5, "eta_noise_seed_delta": 31337})
    assert engine.settings.randn_source == "CPU" and engine.settings.eta_ancestral == 0.5
    assert set(changed) == {"randn_source", "eta_ancestral", "eta_noise_seed_delta"}
    for bad in (
        {"randn_source": "quantum"},
        {"s_noise": 2.0},
        {"eta_ddim": float("nan")},
        {"eta_noise_seed_delta": -1},
    ):
        with pytest.raises(EaselError):
            apply_settings(engine, bad)
    assert engine.settings.randn_source == "CPU"  # a refused change leaves the value alone


def test_memory_mode_and_vae_tiling_are_settings(engine: SimpleNamespace) -> None:
    changed = apply_settings(engine, {"memory_mode": "medium", "vae_tiling": "on"})
    assert set(changed) == {"memory_mode", "vae_tiling"}
    assert engine.manager.memory.settings.memory == "medium" and engine.manager.memory.settings.vae_tiling == "on"
    with pytest.raises(EaselError, match="memory_mode must be one of auto, high, medium, low"):
        apply_settings(engine, {"memory_mode": "huge"})
    assert current_settings(engine)["memory_mode"] == "medium"
