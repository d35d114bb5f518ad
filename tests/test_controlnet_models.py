"""ControlNet-Union (SDXL) and T2I-Adapters (SD1, SDXL) through Engine.generate: tiny random-weight models written
as real files in their released layouts, loaded by the real loader from the ControlNet folder; weight 0 or a window
outside the run gives exactly the image without them, weight > 0 changes it, the union's control type matters, a
model for another architecture is refused naming both, and the route lists them with the other models."""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import ControlNetUnionModel, T2IAdapter
from fastapi.testclient import TestClient

from pipelines.errors import EaselError
from pipelines.extensions.loader import MODULE_PREFIX, LoadedExtensions
from pipelines.generate import Engine
from pipelines.models.controlnet import load_controlnet
from pipelines.models.controlnet_union import derive_union_config
from pipelines.models.t2i_adapter import (
    adapter_to_original,
    check_fits,
    derive_adapter_config,
    original_to_diffusers,
)
from pipelines.models.tiny_adapters import build_tiny_t2i_adapter, build_tiny_union, save_adapter_file, save_tensors
from pipelines.requests import GenerationRequest
from pipelines.sampling.denoiser import ModelInputs, UNetDenoiser, with_intrablock_residuals
from pipelines.sampling.schedules import ModelSigmas
from tests.conftest import TinyModels
from tests.test_controlnet import control_picture, diff

SDXL = "sub/tiny-sdxl.safetensors"
CONFIGS = Path(__file__).resolve().parent.parent / "pipelines" / "models" / "configs"


@pytest.fixture(scope="module")
def cn_dir(tiny: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ControlNet")
    sd1, sdxl = tiny.components("sd1")["unet"], tiny.components("sdxl")["unet"]
    union = build_tiny_union(sdxl, seed=4)
    save_tensors(dict(union.state_dict()), folder / "tiny-union-promax.safetensors")
    save_tensors(dict(build_tiny_union(sdxl, seed=5, control_types=6).state_dict()), folder / "tiny-union.safetensors")
    union.save_pretrained(folder / "tiny-union-folder", safe_serialization=True)
    adapter = build_tiny_t2i_adapter(sd1, seed=2)
    save_adapter_file(adapter, folder / "t2i-tiny-sd1.safetensors")
    save_adapter_file(adapter, folder / "t2iadapter-tiny-sd1-original.pth", "original")
    save_adapter_file(build_tiny_t2i_adapter(sd1, seed=3, in_channels=1), folder / "t2i-tiny-sd1-sketch.safetensors")
    build_tiny_t2i_adapter(sdxl, seed=6).save_pretrained(folder / "t2i-tiny-sdxl", safe_serialization=True)
    return folder


@pytest.fixture
def builtins(builtins: LoadedExtensions, cn_dir: Path) -> LoadedExtensions:
    """conftest's built-in extensions, ControlNet's folder bound to this module's models."""
    record = builtins.get("controlnet")
    assert record is not None and record.active, record and record.error
    builtins.catalog.bind_model_folders(controlnet=[cn_dir])
    return builtins


@pytest.fixture
def engine(make_engine: Callable[[Path], Engine], tmp_path: Path, builtins: LoadedExtensions) -> Engine:
    engine = make_engine(tmp_path / "outputs")
    engine.hooks = builtins.hooks
    engine.manager.activate("tiny-sd1.safetensors")
    return engine


def unit(model: str, **values: Any) -> dict[str, Any]:
    return {"model": model, "module": "none", "image": control_picture(), "weight": 1.0} | values


def request(*units: dict[str, Any], **extra: Any) -> GenerationRequest:
    values: dict[str, Any] = {"prompt": "a red boat", "steps": 3, "width": 64, "height": 64, "seed": 9, "save": False}
    values.update(extra)
    cn = {f"unit_{i}": u for i, u in enumerate(units)}
    return GenerationRequest(**values, extensions={"controlnet": cn} if cn else {})


def pixels(engine: Engine, req: GenerationRequest) -> np.ndarray:
    result = engine.generate(req)
    assert not engine.hooks.failed, engine.hooks.failed
    return np.asarray(result.images[0], dtype=np.int16)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- ControlNet-Union ------------------------------------------------------------------------------------------


def test_union_files_and_folders_load_with_their_shapes(tiny: TinyModels, cn_dir: Path) -> None:
    sdxl = tiny.components("sdxl")["unet"]
    original = build_tiny_union(sdxl, seed=4)
    for path in (cn_dir / "tiny-union-promax.safetensors", cn_dir / "tiny-union-folder"):
        model = load_controlnet(path, sdxl.config)
        assert isinstance(model, ControlNetUnionModel) and same_weights(model, original), path.name
        assert model.config.num_control_type == 8 and model.config.num_trans_channel == 64
    assert load_controlnet(cn_dir / "tiny-union.safetensors", sdxl.config).config.num_control_type == 6


def test_union_on_an_sd1_checkpoint_is_refused_naming_both(engine: Engine) -> None:
    with pytest.raises(EaselError, match="ControlNet is for SDXL-like .* active checkpoint is SD-like"):
        engine.generate(request(unit("tiny-union-promax", union_control_type="Depth")))
    assert not engine.hooks.failed


def test_union_weight_window_and_control_type(engine: Engine) -> None:
    engine.manager.activate(SDXL)
    plain = pixels(engine, request())
    depth = pixels(engine, request(unit("tiny-union-promax", union_control_type="Depth")))
    assert diff(depth, plain) > 0.5
    assert np.array_equal(
        pixels(engine, request(unit("tiny-union-promax", union_control_type="Depth", weight=0))), plain
    )
    assert np.array_equal(
        pixels(engine, request(unit("tiny-union-promax", union_control_type="Depth", guidance_start=1.0))), plain
    )
    canny = pixels(engine, request(unit("tiny-union-promax", union_control_type="Canny")))
    tile = pixels(engine, request(unit("tiny-union-promax", union_control_type=6)))  # by index, as xinsir numbers
    assert diff(canny, depth) > 0.2 and diff(tile, depth) > 0.2 and diff(tile, canny) > 0.2
    # "Unknown": the type comes from the preprocessor, as sd-webui-controlnet groups them (tile_resample -> Tile)
    assert np.array_equal(pixels(engine, request(unit("tiny-union-promax", module="tile_resample"))), tile)
    # and a diffusers folder runs as the single file
    folder = pixels(engine, request(unit("tiny-union-folder", union_control_type="depth")))
    assert np.array_equal(folder, depth)


def test_union_control_type_refusals(engine: Engine) -> None:
    engine.manager.activate(SDXL)
    with pytest.raises(EaselError, match="ControlNet unit 0: .*ControlNet-Union .* set union_control_type"):
        engine.generate(request(unit("tiny-union-promax")))  # a ready-made map with "none": which kind is it?
    with pytest.raises(EaselError, match="knows 6 control types .* Tile needs another model"):
        engine.generate(request(unit("tiny-union", union_control_type="Tile")))
    with pytest.raises(EaselError, match="unknown ControlNet-Union control type 'Sparkles'"):
        engine.generate(request(unit("tiny-union", union_control_type="Sparkles")))
    assert not engine.hooks.failed


def test_union_types_by_preprocessor_and_adapter_scales_as_sd_webui_controlnet(builtins: LoadedExtensions) -> None:
    adapters = sys.modules[MODULE_PREFIX + "controlnet.adapters"]
    model = SimpleNamespace(config=SimpleNamespace(num_control_type=8))
    by_module = {
        "openpose_full": 0,
        "depth_midas": 1,
        "softedge_hed": 2,
        "scribble_threshold": 2,
        "canny": 3,
        "lineart_standard": 3,
        "invert": 3,
        "normal_bae": 4,
        "seg_ofade20k": 5,
        "tile_resample": 6,
        "blur_gaussian": 6,
        "inpaint_only": 7,
    }
    for module, index in by_module.items():
        unit = SimpleNamespace(index=0, module=module, model="u", union_control_type="Unknown")
        assert adapters.union_type(unit, model) == index, module
    named = SimpleNamespace(index=0, module="canny", model="u", union_control_type="segment")  # xinsir's name wins
    assert adapters.union_type(named, model) == 5
    assert adapters.level_scales(4, 2.0, 1) == [0.5, 1.24, 1.65, 2.0]
    assert adapters.level_scales(2, 1.0, 2) == [0.25, 0.62] and adapters.level_scales(3, 0.5, 0) == [0.5] * 3


# -- T2I-Adapters ----------------------------------------------------------------------------------------------


def test_adapter_layouts_load_to_the_same_weights(tiny: TinyModels, cn_dir: Path) -> None:
    sd1, sdxl = tiny.components("sd1")["unet"], tiny.components("sdxl")["unet"]
    original = build_tiny_t2i_adapter(sd1, seed=2)
    model = load_controlnet(cn_dir / "t2i-tiny-sd1.safetensors", sd1.config)
    assert isinstance(model, T2IAdapter) and same_weights(model, original)
    assert model.config.adapter_type == "full_adapter" and model.config.downscale_factor == 8
    with pytest.raises(EaselError, match="pickle file"):
        load_controlnet(cn_dir / "t2iadapter-tiny-sd1-original.pth", sd1.config)
    assert same_weights(
        load_controlnet(cn_dir / "t2iadapter-tiny-sd1-original.pth", sd1.config, allow_pickle=True), original
    )
    sketch = load_controlnet(cn_dir / "t2i-tiny-sd1-sketch.safetensors", sd1.config)
    assert sketch.config.in_channels == 1
    xl = load_controlnet(cn_dir / "t2i-tiny-sdxl", sdxl.config)
    assert xl.config.adapter_type == "full_adapter_xl" and same_weights(xl, build_tiny_t2i_adapter(sdxl, seed=6))


def test_light_adapter_config_from_shapes_in_both_layouts() -> None:
    light = T2IAdapter(channels=[32, 64], num_res_blocks=2, downscale_factor=8, adapter_type="light_adapter")
    state = dict(light.state_dict())
    wanted = {k: light.config[k] for k in ("in_channels", "channels", "num_res_blocks", "downscale_factor")}
    for layout in (state, original_to_diffusers(adapter_to_original(light))):
        config = derive_adapter_config(layout)
        assert config == wanted | {"adapter_type": "light_adapter"}
        assert layout.keys() == state.keys() and all(torch.equal(layout[k], state[k]) for k in state)


def test_odd_adapter_files_are_refused_clearly(tiny: TinyModels, tmp_path: Path) -> None:
    sd1 = tiny.components("sd1")["unet"]
    state = dict(build_tiny_t2i_adapter(sd1, seed=2).state_dict())
    cases = {
        "style": ({"style_embedding": torch.zeros(1, 8, 16)}, "style adapter"),
        "skip": (adapter_to_original_with("body.0.skep.weight"), "skip or strided convolutions"),
        "shape": (state | {"adapter.body.0.resnets.0.block2.weight": torch.zeros(32, 32, 3, 3)}, "do not match"),
        "hint": (state | {"adapter.conv_in.weight": torch.zeros(32, 100, 3, 3)}, "not an RGB or gray hint"),
        "missing": ({k: v for k, v in state.items() if ".body.1.resnets.0." not in k}, "has no adapter.body.1.resnets"),
    }
    for name, (tensors, message) in cases.items():
        path = save_tensors(tensors, tmp_path / f"{name}.safetensors")
        with pytest.raises(EaselError, match=message):
            load_controlnet(path, sd1.config)


def adapter_to_original_with(extra: str) -> dict[str, torch.Tensor]:
    """An original-layout SD1 adapter with one more tensor named ``extra``."""
    model = T2IAdapter(channels=[32, 64], num_res_blocks=2, downscale_factor=8)
    return adapter_to_original(model) | {extra: torch.zeros(32, 32, 1, 1)}


def test_adapter_weight_window_and_modes_on_sd1(engine: Engine) -> None:
    plain = pixels(engine, request())
    full = pixels(engine, request(unit("t2i-tiny-sd1")))
    half = pixels(engine, request(unit("t2i-tiny-sd1", weight=0.5)))
    assert diff(half, plain) > 0.5 and diff(full, plain) > diff(half, plain)
    assert np.array_equal(pixels(engine, request(unit("t2i-tiny-sd1", weight=0))), plain)
    assert np.array_equal(pixels(engine, request(unit("t2i-tiny-sd1", guidance_end=0.0))), plain)
    assert np.array_equal(pixels(engine, request(unit("t2i-tiny-sd1", guidance_start=1.0))), plain)
    early = pixels(engine, request(unit("t2i-tiny-sd1", guidance_end=0.3)))  # step 0 of 3 only
    assert diff(early, plain) > 0.5 and 0.05 < diff(early, full) < diff(early, plain)
    prompt = pixels(engine, request(unit("t2i-tiny-sd1", control_mode=1)))
    control = pixels(engine, request(unit("t2i-tiny-sd1", control_mode=2)))
    assert diff(prompt, full) > 0.2 and diff(control, full) > 0.2 and diff(prompt, control) > 0.2
    sketch = pixels(engine, request(unit("t2i-tiny-sd1-sketch", module="canny")))
    assert diff(sketch, plain) > 0.5
    # a ControlNet-Union / T2I-Adapter / ControlNet mix stacks; the adapter's features add to a ControlNet's path
    both = pixels(engine, request(unit("t2i-tiny-sd1"), unit("t2i-tiny-sd1-sketch", module="canny")))
    assert diff(both, full) > 0.2 and diff(both, sketch) > 0.2


def test_adapter_features_are_computed_once_per_request_and_hint_size(engine: Engine) -> None:
    calls: list[tuple[int, ...]] = []  # the hint shape of each adapter run
    original_forward = T2IAdapter.forward

    def counting_forward(self: T2IAdapter, x: torch.Tensor) -> list[torch.Tensor]:
        calls.append(tuple(x.shape))
        return original_forward(self, x)

    hires = {"enable_hr": True, "hr_scale": 2.0, "hr_upscaler": "Latent", "denoising_strength": 0.6}
    T2IAdapter.forward = counting_forward  # type: ignore[method-assign]
    try:
        pixels(engine, request(unit("t2i-tiny-sd1"), steps=4, sampler="Heun"))  # 2 model calls a step
        assert calls == [(1, 3, 64, 64)]
        pixels(engine, request(unit("t2i-tiny-sd1"), **hires))  # and once more for the hires pass's size
    finally:
        T2IAdapter.forward = original_forward  # type: ignore[method-assign]
    assert calls[1:] == [(1, 3, 64, 64), (1, 3, 128, 128)]


def test_adapter_on_sdxl_and_architecture_mismatch(engine: Engine) -> None:
    with pytest.raises(EaselError, match="T2I-Adapter is for SDXL but the active checkpoint is SD-like"):
        engine.generate(request(unit("t2i-tiny-sdxl")))
    engine.manager.activate(SDXL)
    with pytest.raises(EaselError, match="T2I-Adapter is for SD 1.x but the active checkpoint is SDXL-like"):
        engine.generate(request(unit("t2i-tiny-sd1")))
    plain = pixels(engine, request())
    adapted = pixels(engine, request(unit("t2i-tiny-sdxl")))
    assert diff(adapted, plain) > 0.5
    assert np.array_equal(pixels(engine, request(unit("t2i-tiny-sdxl", weight=0))), plain)
    assert np.array_equal(pixels(engine, request(unit("t2i-tiny-sdxl", guidance_end=0))), plain)
    # an image side that 16 does not divide (72 px: 9 latents) still fits the XL adapter's unshuffle
    odd = pixels(engine, request(unit("t2i-tiny-sdxl"), width=72))
    assert odd.shape[1] == 72 and diff(odd, pixels(engine, request(width=72))) > 0.5
    assert not engine.hooks.failed


def test_intrablock_residuals_sum_and_reach_the_unet_whole_each_call() -> None:
    seen: list[int] = []

    class PoppingUNet:  # diffusers' UNet pops the features off the list it is given
        dtype = torch.float32

        def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor]:
            features = kwargs["down_intrablock_additional_residuals"]
            seen.append(len(features))
            total = sum(float(features.pop(0).sum()) for _ in range(len(features)))
            return (sample + total,)

    denoiser = UNetDenoiser(PoppingUNet(), ModelSigmas(torch.linspace(0.999, 0.01, 1000)))
    base = ModelInputs(sample=torch.zeros(1, 4, 2, 2), timestep=torch.zeros(1), encoder_hidden_states=torch.zeros(1))
    one = [torch.ones(1, 1, 2, 2), torch.full((1, 1, 1, 1), 2.0)]
    inputs = with_intrablock_residuals(with_intrablock_residuals(base, one), one)
    assert [float(f.sum()) for f in inputs.down_intrablock_additional_residuals] == [8.0, 4.0]
    first = denoiser.unet_call(inputs)
    second = denoiser.unet_call(inputs)
    assert seen == [2, 2] and torch.equal(first, second) and float(first[0, 0, 0, 0]) == 12.0
    with pytest.raises(ValueError, match="cannot join"):
        with_intrablock_residuals(inputs, one[:1])


# -- listing ---------------------------------------------------------------------------------------------------


def test_model_list_shows_union_and_adapters_with_the_others(builtins: LoadedExtensions) -> None:
    from fastapi import FastAPI

    record = builtins.get("controlnet")
    assert record is not None and record.contributions is not None
    app = FastAPI()
    app.include_router(record.contributions.routes[0](), prefix="/controlnet")
    names = [label.rsplit(" [", 1)[0] for label in TestClient(app).get("/controlnet/model_list").json()["model_list"]]
    assert names == [
        "t2i-tiny-sd1",
        "t2i-tiny-sd1-sketch",
        "t2i-tiny-sdxl",
        "t2iadapter-tiny-sd1-original",
        "tiny-union",
        "tiny-union-folder",
        "tiny-union-promax",
    ]


# -- real-size shapes (meta tensors: no weights, no memory) ----------------------------------------------------


def real_unet_config(family: str) -> dict[str, Any]:
    return json.loads((CONFIGS / family / "unet" / "config.json").read_text())


def test_real_size_union_and_adapters_derive_their_released_configs() -> None:
    """xinsir's promax union and TencentARC's SD1 / SDXL adapters, at full size: config from shapes, fit checked."""
    sd1, sdxl = real_unet_config("sd1"), real_unet_config("sdxl")
    accepted = set(inspect.signature(ControlNetUnionModel.__init__).parameters)
    union_config = {k: v for k, v in sdxl.items() if k in accepted and not k.startswith("_")}
    union_config |= {"conditioning_embedding_out_channels": (16, 32, 96, 256), "num_control_type": 8}
    with torch.device("meta"):
        union = ControlNetUnionModel(**union_config)
    derived = derive_union_config(union.state_dict(), sdxl)
    for key in ("num_control_type", "num_trans_channel", "num_trans_layer", "num_proj_channel", "block_out_channels"):
        assert list(np.atleast_1d(derived[key])) == list(np.atleast_1d(union.config[key])), key
    assert derived["addition_time_embed_dim"] == 256 and derived["transformer_layers_per_block"] == [1, 2, 10]
    released = {
        "full_adapter": ({"channels": [320, 640, 1280, 1280], "downscale_factor": 8}, sd1, sdxl),
        "light_adapter": ({"channels": [320, 640, 1280], "num_res_blocks": 4, "downscale_factor": 8}, sd1, sdxl),
        "full_adapter_xl": ({"channels": [320, 640, 1280, 1280], "downscale_factor": 16}, sdxl, sd1),
    }
    for kind, (config, fits, other) in released.items():
        for channels in (3, 1):
            with torch.device("meta"):
                adapter = T2IAdapter(in_channels=channels, adapter_type=kind, **config)
            state = dict(adapter.state_dict())
            if kind != "full_adapter_xl":  # and the original layout TencentARC released them in
                assert original_to_diffusers(adapter_to_original(adapter)).keys() == state.keys()
            derived = derive_adapter_config(state)
            assert derived == {k: adapter.config[k] for k in derived}, kind
            check_fits(derived, fits)
            with pytest.raises(EaselError, match="T2I-Adapter is for .* but the active checkpoint is"):
                check_fits(derived, other)
