"""The built-in ControlNet through Engine.generate: tiny random-weight ControlNets (SD1 and SDXL) written in the
original ``control_model.*`` layout and as diffusers files, loaded through the real loader, their residuals
reaching the UNet through the extension's model-call wrapper; weight, guidance window, control modes, stacking."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from pipelines.errors import EaselError
from pipelines.extensions.loader import BUILTIN_DIR, MODULE_PREFIX, LoadedExtensions, load_extensions
from pipelines.extensions.state import ExtensionState
from pipelines.generate import Engine
from pipelines.models.controlnet import load_controlnet
from pipelines.models.tiny_models import build_tiny_controlnet, save_controlnet_file
from pipelines.requests import GenerationRequest
from tests.conftest import TinyModels


def control_picture(size: int = 64) -> Image.Image:
    """A real picture with edges: a dark disc and a bar on a light ground."""
    image = Image.new("RGB", (size, size), (230, 225, 210))
    draw = ImageDraw.Draw(image)
    draw.ellipse((8, 8, size // 2 + 8, size // 2 + 8), fill=(30, 40, 60))
    draw.rectangle((size // 2, size // 2 + 4, size - 6, size - 10), fill=(120, 20, 20))
    return image


@pytest.fixture(scope="module")
def cn_dir(tiny: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ControlNet")
    for family, seed in (("sd1", 3), ("sdxl", 4)):
        unet = tiny.components(family)["unet"]
        model = build_tiny_controlnet(unet, seed=seed)
        save_controlnet_file(model, folder / f"tiny-{family}-ldm.safetensors", "ldm")
        save_controlnet_file(model, folder / f"tiny-{family}-diffusers.safetensors", "diffusers")
        if family == "sd1":
            model.save_pretrained(folder / "tiny-sd1-folder", safe_serialization=True)
    second = build_tiny_controlnet(tiny.components("sd1")["unet"], seed=7)
    save_controlnet_file(second, folder / "sub" / "tiny-sd1-other.safetensors", "ldm")
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


def unit(**values: Any) -> dict[str, Any]:
    base = {"model": "tiny-sd1-ldm", "module": "none", "image": control_picture(), "weight": 1.0}
    return base | values


def request(*units: dict[str, Any], **extra: Any) -> GenerationRequest:
    values: dict[str, Any] = {"prompt": "a red boat", "steps": 3, "width": 64, "height": 64, "seed": 9, "save": False}
    values.update(extra)
    cn = {f"unit_{i}": u for i, u in enumerate(units)}
    return GenerationRequest(**values, extensions={"controlnet": cn} if cn else {})


def pixels(engine: Engine, req: GenerationRequest) -> np.ndarray:
    result = engine.generate(req)
    assert not engine.hooks.failed, engine.hooks.failed
    return np.asarray(result.images[0], dtype=np.int16)


def diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def test_both_layouts_load_to_the_same_weights(tiny: TinyModels, cn_dir: Path, tmp_path: Path) -> None:
    unet = tiny.components("sd1")["unet"]
    model = build_tiny_controlnet(unet, seed=3)
    original = model.state_dict()
    model.save_pretrained(tmp_path / "tiny-sd1-folder", safe_serialization=True)  # a diffusers folder
    paths = [cn_dir / f"{name}.safetensors" for name in ("tiny-sd1-ldm", "tiny-sd1-diffusers")]
    for path in [*paths, tmp_path / "tiny-sd1-folder"]:
        loaded = load_controlnet(path, unet.config).state_dict()
        assert loaded.keys() == original.keys()
        assert all(torch.equal(loaded[k], original[k]) for k in original), path.name


def test_wrong_architecture_is_refused_naming_both(engine: Engine) -> None:
    with pytest.raises(EaselError, match="ControlNet is for SDXL-like .* active checkpoint is SD-like"):
        engine.generate(request(unit(model="tiny-sdxl-ldm")))
    assert not engine.hooks.failed


def test_weight_changes_the_image_and_zero_or_no_window_is_exactly_none(engine: Engine) -> None:
    plain = pixels(engine, request())
    assert np.array_equal(pixels(engine, request(unit(weight=0.0))), plain)
    assert np.array_equal(pixels(engine, request(unit(guidance_end=0.0))), plain)
    assert np.array_equal(pixels(engine, request(unit(enabled=False))), plain)
    half = pixels(engine, request(unit(weight=0.5)))
    full = pixels(engine, request(unit(weight=1.0)))
    assert diff(half, plain) > 1.0 and diff(full, plain) > diff(half, plain)
    diffusers_layout = pixels(engine, request(unit(model="tiny-sd1-diffusers [0badc0de]")))
    assert np.array_equal(diffusers_layout, full)  # the same weights in either layout, a [hash] suffix ignored
    assert np.array_equal(pixels(engine, request(unit(model="tiny-sd1-folder"))), full)  # and as a diffusers folder
    early = pixels(engine, request(unit(guidance_end=0.5)))  # steps 0 and 1 of 3: the last runs without control
    assert diff(early, plain) > 0.5 and 0 < diff(early, full) < diff(early, plain)
    late = pixels(engine, request(unit(guidance_start=0.5)))  # the last step only
    assert 0 < diff(late, plain) < diff(full, plain)


def test_control_modes_differ(engine: Engine) -> None:
    balanced = pixels(engine, request(unit(control_mode="Balanced")))
    prompt = pixels(engine, request(unit(control_mode="My prompt is more important")))
    control = pixels(engine, request(unit(control_mode=2)))
    assert diff(balanced, prompt) > 0.5 and diff(balanced, control) > 0.5 and diff(prompt, control) > 0.5


def test_two_units_stack(engine: Engine) -> None:
    one = pixels(engine, request(unit()))
    other = pixels(engine, request(unit(model="tiny-sd1-other")))
    both = pixels(engine, request(unit(), unit(model="tiny-sd1-other")))
    assert diff(both, one) > 0.5 and diff(both, other) > 0.5


def test_canny_preprocessor_changes_the_control(engine: Engine) -> None:
    raw = pixels(engine, request(unit(weight=2.0)))
    result = engine.generate(request(unit(weight=2.0, module="canny", threshold_a=50, threshold_b=120)))
    edges = np.asarray(result.images[0], dtype=np.int16)
    info = result.infotexts[0]
    assert 'ControlNet 0: "Module: canny, Model: tiny-sd1-ldm [' in info
    assert "Weight: 2, Resize Mode: Crop and Resize" in info and "Threshold A: 50, Threshold B: 120" in info
    assert diff(raw, edges) > 0.1  # the tiny ControlNet's residuals come mostly from the latents, less the hint


def test_sdxl_controlnet_runs_on_sdxl(engine: Engine) -> None:
    engine.manager.activate("sub/tiny-sdxl.safetensors")
    plain = pixels(engine, request())
    controlled = pixels(engine, request(unit(model="tiny-sdxl-ldm")))
    assert diff(plain, controlled) > 0.5


def test_img2img_uses_the_input_image_when_the_unit_has_none(engine: Engine) -> None:
    init = control_picture()
    base = {"mode": "img2img", "init_image": init, "denoising_strength": 0.75}
    plain = pixels(engine, request(**base))
    controlled = pixels(engine, request(unit(image=None), **base))
    assert diff(plain, controlled) > 0.5


def test_bad_units_fail_clearly(engine: Engine) -> None:
    with pytest.raises(EaselError, match="give a control image"):
        engine.generate(request(unit(image=None)))
    with pytest.raises(EaselError, match="not found"):
        engine.generate(request(unit(model="nope")))
    with pytest.raises(EaselError, match="never as a path on the server"):
        engine.generate(request(unit(image="/etc/passwd")))
    with pytest.raises(EaselError, match="ipadapter_input is refused"):
        engine.generate(request(unit(ipadapter_input="gASV")))
    with pytest.raises(EaselError, match="weight must be between 0 and 2"):
        engine.generate(request(unit(weight=3)))
    assert not engine.hooks.failed


def runtime_of(engine: Engine) -> Any:
    """The extension's runtime, as its model-call hook is bound to it."""
    ext = next(e for e in engine.hooks.active() if e.name == "controlnet")
    return ext.model_call[0].__self__


def test_one_copy_of_a_model_across_units_and_modes(engine: Engine) -> None:
    runtime = runtime_of(engine)
    pixels(engine, request(unit(), unit(control_mode=2), unit(control_mode=1, model="tiny-sd1-ldm [abc]")))
    loaded = runtime.cache.loaded()
    assert len(loaded) == 1
    pointer = next(loaded[0].parameters()).data_ptr()
    pixels(engine, request(unit(control_mode=1)))
    assert len(runtime.cache.loaded()) == 1
    assert next(runtime.cache.loaded()[0].parameters()).data_ptr() == pointer


def test_each_preprocessor_gives_a_map_of_the_expected_size_and_range() -> None:
    pre = sys.modules.get(MODULE_PREFIX + "controlnet.preprocessors")
    if pre is None:
        extensions = load_extensions(None, BUILTIN_DIR, ExtensionState(Path("/nonexistent/state.json")))
        pre = sys.modules[MODULE_PREFIX + "controlnet.preprocessors"]
        extensions.unload()
    picture = control_picture(128)
    for name, item in pre.PREPROCESSORS.items():
        out = np.asarray(pre.run(name, picture, 256, -1, -1))
        side = 256 if item.resolution else 128
        channels = 4 if item.uses_mask else 3  # the inpaint hints carry their mask as alpha
        assert out.shape == (side, side, channels) and out.dtype == np.uint8, name
    edges = np.asarray(pre.run("canny", picture, 128, 100, 200))[..., 0]
    assert set(np.unique(edges)) == {0, 255} and 0.005 < (edges > 0).mean() < 0.1  # thin edges, not regions
    assert edges[:, :4].max() == 0  # the flat margin has none
    ring = edges[8:41, 8:41]
    assert ring[16, :].max() == 255 and ring[16, 12:20].max() == 0  # the disc's rim, not its inside
    inverted = np.asarray(pre.run("invert", picture, 128, -1, -1))
    assert np.array_equal(inverted, 255 - np.asarray(picture))
    binary = np.asarray(pre.run("threshold", picture, 128, 127, -1))
    assert set(np.unique(binary)) == {0, 255}
    with pytest.raises(EaselError, match="not available"):
        pre.find("openpose")


def test_modes_scale_and_place_residuals_as_sd_webui_controlnet(tiny: TinyModels) -> None:
    """Balanced: weight on every residual, both CFG halves; My prompt: soft injection (0.825 ** (12 - i) of 13);
    ControlNet is more important: soft injection on the conditional half, zeros on the unconditional one."""
    extensions = load_extensions(None, BUILTIN_DIR, ExtensionState(Path("/nonexistent/state.json")))
    try:
        control = sys.modules[MODULE_PREFIX + "controlnet.control"]
        units = sys.modules[MODULE_PREFIX + "controlnet.units"]
        from pipelines.sampling.denoiser import Conditioning, ModelInputs, SamplingState

        unet = tiny.components("sd1")["unet"]
        model = build_tiny_controlnet(unet, seed=3)
        batch, tokens = 1, 77
        cond = torch.randn(batch, tokens, unet.config.cross_attention_dim)
        state = SamplingState(
            torch.zeros(batch, 4, 8, 8), torch.tensor([14.6, 3.0, 0.5, 0.0]), Conditioning(cond, cond), 3
        )
        inputs = ModelInputs(
            sample=torch.randn(2 * batch, 4, 8, 8),
            timestep=torch.tensor([900.0, 900.0]),
            encoder_hidden_states=torch.cat([cond, cond]),
            sigma=torch.tensor([3.0, 3.0]),
            state=state,
        )
        assert control.step_fraction(state.sigmas, inputs.sigma) == pytest.approx(1 / 3)
        assert control.soft_scales(13, 1.0)[0] == pytest.approx(0.825**12) and control.soft_scales(13, 1.0)[-1] == 1

        def run(mode: int, weight: float = 0.5) -> tuple[list[torch.Tensor], torch.Tensor]:
            unit = units.parse_unit(
                {"model": "m", "image": control_picture(), "control_mode": mode, "weight": weight}, 0
            )
            prepared = control.Prepared(unit, model, control_picture())
            result = control.residuals(prepared, inputs)
            assert result is not None
            return result

        balanced_down, balanced_mid = run(0, weight=1.0)
        half_down, _ = run(0, weight=0.5)
        deepest = len(balanced_down)  # 12 for SD 1.x (13 residuals); the tiny UNet's two levels give 6 (7)
        assert deepest == 6 and torch.allclose(half_down[3], balanced_down[3] * 0.5, atol=1e-6)
        soft_down, soft_mid = run(1, weight=1.0)
        for i, (soft, plain) in enumerate(zip(soft_down, balanced_down, strict=True)):
            assert torch.allclose(soft, plain * 0.825 ** (deepest - i), atol=1e-6)
        assert torch.allclose(soft_mid, balanced_mid, atol=1e-6)
        cn_down, cn_mid = run(2, weight=1.0)
        assert torch.allclose(cn_down[0][:batch], soft_down[0][:batch], atol=1e-5)
        assert not cn_down[0][batch:].any() and not cn_mid[batch:].any()  # the unconditional pass runs without it
        early = units.parse_unit({"model": "m", "image": control_picture(), "guidance_end": 0.3}, 0)
        assert control.active(early, 0.0) and not control.active(early, 1 / 3)
    finally:
        extensions.unload()


def test_hires_fix_pass_gets_the_control_at_its_own_size_by_hr_option(engine: Engine) -> None:
    hires = {"enable_hr": True, "hr_scale": 2.0, "hr_upscaler": "Latent", "denoising_strength": 0.6}
    both = engine.generate(request(unit(), **hires))
    assert both.images[0].size == (128, 128) and not engine.hooks.failed
    low = pixels(engine, request(unit(hr_option="Low res only"), **hires))
    high = pixels(engine, request(unit(hr_option="High res only"), **hires))
    plain = pixels(engine, request(**hires))
    both_pixels = np.asarray(both.images[0], dtype=np.int16)
    assert min(diff(both_pixels, low), diff(both_pixels, high), diff(low, high)) > 0.1
    assert diff(high, plain) > 0.1 and diff(low, plain) > 0.1


def test_pickled_controlnets_load_only_when_allowed_and_weights_only(tiny: TinyModels, tmp_path: Path) -> None:
    from pipelines.models.controlnet import controlnet_to_ldm

    unet = tiny.components("sd1")["unet"]
    model = build_tiny_controlnet(unet, seed=3)
    path = tmp_path / "control_tiny.pth"
    torch.save({"state_dict": controlnet_to_ldm(model)}, path)
    with pytest.raises(EaselError, match="pickle file"):
        load_controlnet(path, unet.config)
    loaded = load_controlnet(path, unet.config, allow_pickle=True).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


def test_inpaint_with_a_unit(engine: Engine) -> None:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    base = {"mode": "inpaint", "init_image": control_picture(), "mask": mask, "denoising_strength": 0.9}
    plain = pixels(engine, request(**base))
    controlled = pixels(engine, request(unit(module="invert"), **base))
    assert diff(plain, controlled) > 0.1
    assert np.array_equal(plain[:8, :8], controlled[:8, :8])  # outside the mask the picture stays as it was
