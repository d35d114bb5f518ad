"""img2img, inpaint and outpaint end to end on tiny random-weight models, and one copy of the weights for all."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.errors import EaselError
from pipelines.generate import Engine, EngineSettings
from pipelines.imaging.masks import blur_mask, require_editor_mask
from pipelines.imaging.outpaint import outpaint_generation_size, outpaint_request
from pipelines.imaging.outpaint_canvas import OUTPAINT_SEAM_BAND
from pipelines.metadata.infotext import parse_infotext
from pipelines.models.checkpoints import HashCache
from pipelines.models.manager import PipelineManager
from pipelines.requests import GenerationRequest
from pipelines.runtime.jobs import Job

FAST = {"steps": 3, "width": 64, "height": 64, "cfg_scale": 5.0, "seed": 11, "save": False}
CHECKPOINTS = {"sd1": "tiny-sd1", "sd1_inpaint": "tiny-sd1-inpaint", "sdxl": "tiny-sdxl"}


@pytest.fixture(scope="module")
def engine(tiny, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """An engine over its own folder: an ordinary SD1, a 9-channel SD1 inpainting model and an SDXL."""
    folder = tmp_path_factory.mktemp("modes-models")
    for family, name in CHECKPOINTS.items():
        (folder / f"{name}.safetensors").hardlink_to(tiny.single_file(family))
    outputs = tmp_path_factory.mktemp("modes-outputs")
    manager = PipelineManager(folder, torch.device("cpu"), torch.float32, HashCache(outputs / "h.json"), 3)
    return Engine(manager, outputs, EngineSettings(preview_every=0))


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def rect_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def assert_only_inside(original: Image.Image, result: Image.Image, allowed: np.ndarray) -> None:
    """Pixels outside ``allowed`` are the original's bit for bit; something inside did change."""
    assert result.size == original.size
    changed = (pixels(result) != pixels(original)).any(axis=2)
    assert not changed[~allowed].any(), f"{int(changed[~allowed].sum())} pixels changed outside the mask"
    assert changed[allowed].sum() > 0.3 * allowed.sum()


def inpaint(engine: Engine, checkpoint: str, image: Image.Image, mask: Image.Image, **overrides) -> Image.Image:
    request = GenerationRequest(
        mode="inpaint", checkpoint=checkpoint, init_image=image, mask=mask, **{**FAST, **overrides}
    )
    return engine.generate(request).images[0]


# -- img2img -------------------------------------------------------------------------------------------------


def test_img2img_changes_the_image_and_saves_denoising_strength(engine: Engine) -> None:
    init = random_image(64, 64)
    request = GenerationRequest(
        mode="img2img", checkpoint="tiny-sd1", init_image=init, denoising_strength=0.6, **{**FAST, "save": True}
    )
    result = engine.generate(request)
    assert result.images[0].size == (64, 64)
    assert np.abs(pixels(result.images[0]) - pixels(init)).mean() > 1
    saved = result.paths[0]
    assert saved.parent.parent.name == "img2img-images"
    with Image.open(saved) as image:
        fields = parse_infotext(image.text["parameters"])
    assert fields["Denoising strength"] == "0.6"


def test_denoising_strength_sets_how_much_of_the_init_image_survives(engine: Engine) -> None:
    """At strength 0 (one step, as A1111) the output follows the init image; at 1.0 it barely depends on it."""

    def run(strength: float, init: Image.Image) -> tuple[np.ndarray, int]:
        job = Job()
        request = GenerationRequest(
            mode="img2img", checkpoint="tiny-sd1", init_image=init, denoising_strength=strength, **{**FAST, "steps": 4}
        )
        return pixels(engine.generate(request, job).images[0]).astype(np.float32), job.total_steps

    a, b = random_image(64, 64, 1), Image.new("RGB", (64, 64), (20, 200, 90))
    low_a, low_steps = run(0.0, a)
    low_b, _ = run(0.0, b)
    high_a, high_steps = run(1.0, a)
    high_b, _ = run(1.0, b)
    assert (low_steps, high_steps) == (1, 4)
    assert np.abs(high_a - high_b).mean() < 0.25 * np.abs(low_a - low_b).mean()


@pytest.mark.parametrize("resize_mode", [0, 1, 2])
def test_every_resize_mode_gives_the_requested_size(engine: Engine, resize_mode: int) -> None:
    request = GenerationRequest(
        mode="img2img",
        checkpoint="tiny-sd1",
        init_image=random_image(120, 50),
        resize_mode=resize_mode,
        **{**FAST, "width": 64, "height": 96},
    )
    result = engine.generate(request)
    assert result.images[0].size == (64, 96)
    assert ("Resize mode" in result.infotexts[0]) == (resize_mode != 0)


# -- inpaint -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["sd1", "sd1_inpaint", "sdxl"])
def test_inpaint_changes_only_the_blurred_mask(engine: Engine, family: str) -> None:
    image = random_image(96, 80, 2)
    mask = rect_mask(image.size, (30, 20, 62, 50))
    result = inpaint(engine, CHECKPOINTS[family], image, mask, mask_blur=4)
    assert_only_inside(image, result, np.asarray(blur_mask(mask, 4)) > 0)
    in_channels = engine.manager.active.model.unet.config.in_channels
    assert in_channels == (9 if family == "sd1_inpaint" else 4)  # native 9-channel vs latent masking


def test_only_masked_keeps_the_original_size_and_pixels(engine: Engine) -> None:
    image = random_image(136, 88, 3)
    mask = rect_mask(image.size, (90, 10, 110, 30))
    result = inpaint(engine, "tiny-sd1", image, mask, inpaint_full_res=True, inpaint_full_res_padding=8, mask_blur=2)
    assert_only_inside(image, result, np.asarray(blur_mask(mask, 2)) > 0)


@pytest.mark.parametrize("fill", [0, 1, 2, 3])
def test_every_masked_content_mode_runs_and_keeps_the_outside(engine: Engine, fill: int) -> None:
    image = random_image(64, 64, 4)
    mask = rect_mask(image.size, (16, 16, 48, 40))
    result = inpaint(engine, "tiny-sd1", image, mask, inpainting_fill=fill, denoising_strength=0.7, mask_blur=0)
    assert_only_inside(image, result, np.asarray(mask) > 0)


def test_inpaint_not_masked_inverts(engine: Engine) -> None:
    image = random_image(64, 64, 5)
    mask = rect_mask(image.size, (0, 0, 64, 32))
    result = inpaint(engine, "tiny-sd1", image, mask, inpainting_mask_invert=True, mask_blur=0)
    assert_only_inside(image, result, np.asarray(mask) == 0)


def test_a_mask_of_another_size_is_resized(engine: Engine) -> None:
    image = random_image(96, 64, 6)
    small = rect_mask((48, 32), (0, 0, 24, 32))  # the left half, at half the size
    result = inpaint(engine, "tiny-sd1", image, small, mask_blur=0)
    allowed = np.zeros((64, 96), dtype=bool)
    allowed[:, :48] = True
    assert_only_inside(image, result, allowed)


def test_an_empty_mask_says_paint_a_mask_first(engine: Engine) -> None:
    image = random_image(64, 64)
    with pytest.raises(EaselError, match="(?i)paint a mask first"):
        inpaint(engine, "tiny-sd1", image, Image.new("L", image.size, 0))
    with pytest.raises(EaselError, match="(?i)paint a mask first"):
        engine.generate(GenerationRequest(mode="inpaint", init_image=image, **FAST))
    editor_value = {"background": image, "layers": [Image.new("RGBA", image.size, (0, 0, 0, 0))], "composite": image}
    with pytest.raises(EaselError, match="(?i)paint a mask first"):
        require_editor_mask(editor_value)
    with pytest.raises(EaselError, match="no image"):
        engine.generate(GenerationRequest(mode="img2img", **FAST))


def test_inpaint_output_is_saved_with_the_a1111_inpaint_fields(engine: Engine) -> None:
    image = random_image(64, 64, 7)
    request = GenerationRequest(
        mode="inpaint",
        checkpoint="tiny-sd1",
        init_image=image,
        mask=rect_mask(image.size, (8, 8, 40, 40)),
        mask_blur=3,
        inpaint_full_res=True,
        inpaint_full_res_padding=12,
        inpainting_fill=2,
        **{**FAST, "save": True},
    )
    saved = engine.generate(request).paths[0]
    assert saved.parent.parent.name == "inpaint-images"
    with Image.open(saved) as file:
        fields = parse_infotext(file.text["parameters"])
    assert fields["Mask blur"] == "3"
    assert fields["Inpaint area"] == "Only masked"
    assert fields["Masked area padding"] == "12"
    assert fields["Masked content"] == "latent noise"
    assert "Denoising strength" in fields


# -- outpaint ------------------------------------------------------------------------------------------------


def test_outpaint_grows_the_canvas_and_keeps_the_original_away_from_the_seam(engine: Engine) -> None:
    image = random_image(64, 64, 8)
    base = GenerationRequest(checkpoint="tiny-sd1", init_image=image, mask_blur=4, denoising_strength=0.9, **FAST)
    request = outpaint_request(base, right=32, down=16, fill="edge")
    assert request.init_image.size == (96, 80)
    assert request.width % 8 == 0 and request.height % 8 == 0
    result = engine.generate(request).images[0]
    assert result.size == (96, 80)
    out = pixels(result)
    margin = OUTPAINT_SEAM_BAND + 3 * 4  # the feathered band plus the mask blur's reach
    inner = pixels(image)[: 64 - margin, : 64 - margin]
    assert np.array_equal(out[: 64 - margin, : 64 - margin], inner)
    allowed = np.asarray(blur_mask(request.mask, 4)) > 0
    assert_only_inside(request.init_image, result, allowed)
    again = outpaint_request(
        GenerationRequest(checkpoint="tiny-sd1", init_image=result, **FAST), left=8, up=8, fill="noise"
    )
    assert engine.generate(again).images[0].size == (104, 88)


def test_outpaint_generation_size_keeps_the_aspect_and_the_bounds() -> None:
    assert outpaint_generation_size((192, 128), 128 * 128) == (160, 104)
    assert outpaint_generation_size((96, 64), 64 * 64) == (80, 64)  # never below 64
    assert outpaint_generation_size((512, 512), 512 * 512) == (512, 512)
    width, height = outpaint_generation_size((4000, 1000), 1024 * 1024)
    assert width <= 2048 and height >= 64 and width % 8 == 0 and height % 8 == 0
    with pytest.raises(EaselError, match="at least one side"):
        outpaint_request(GenerationRequest(init_image=random_image(64, 64), **FAST))
    with pytest.raises(EaselError, match="no image"):
        outpaint_request(GenerationRequest(**FAST), right=8)


# -- one copy of the weights ---------------------------------------------------------------------------------


def test_all_three_modes_share_one_copy_of_the_weights(engine: Engine) -> None:
    active = engine.manager.activate("tiny-sd1")
    before = {name: p.data_ptr() for name, p in active.model.unet.named_parameters()}
    image = random_image(64, 64, 9)
    engine.generate(GenerationRequest(checkpoint="tiny-sd1", **FAST))
    engine.generate(GenerationRequest(mode="img2img", checkpoint="tiny-sd1", init_image=image, **FAST))
    inpaint(engine, "tiny-sd1", image, rect_mask(image.size, (0, 0, 32, 32)))
    assert engine.manager.active is active
    assert {name: p.data_ptr() for name, p in active.model.unet.named_parameters()} == before
