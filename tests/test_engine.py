"""The engine end to end on tiny models: determinism, shared weights, scheduler swaps, saving, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.errors import EaselError
from pipelines.metadata.infotext import parse_infotext
from pipelines.requests import GenerationRequest
from pipelines.runtime.jobs import Job

FAST = {"steps": 3, "width": 64, "height": 64, "cfg_scale": 5.0}


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def assert_same_up_to_batching(a: np.ndarray, b: np.ndarray) -> None:
    """Images of one seed made in batches of different sizes: equal but for float rounding.

    A batch of 2 and a single image run different GEMM kernels (oneDNN/MKL choose by shape; AVX-512 machines differ
    from others), so float sums are ordered differently and an 8-bit pixel can land one level off (seen: 1 pixel of
    4096, by 1). A real difference (another seed, noise drawn for the wrong image) changes most pixels by far more.
    """
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.max() <= 2, f"max difference {diff.max()} levels"
    assert (diff == 0).mean() >= 0.999, f"only {(diff == 0).mean():.4%} of pixel values equal"


def test_same_seed_gives_same_pixels_and_batch_uses_seed_plus_i(shared_engine) -> None:
    request = GenerationRequest(prompt="a red fox", seed=1234, batch_size=2, save=False, **FAST)
    first = shared_engine.generate(request)
    again = shared_engine.generate(request)
    assert first.seeds == [1234, 1235]
    for a, b in zip(first.images, again.images, strict=True):
        assert np.array_equal(pixels(a), pixels(b))  # the same request, the same computation: bit for bit
    alone = shared_engine.generate(GenerationRequest(prompt="a red fox", seed=1235, save=False, **FAST))
    assert_same_up_to_batching(pixels(alone.images[0]), pixels(first.images[1]))
    other = shared_engine.generate(GenerationRequest(prompt="a red fox", seed=99, save=False, **FAST))
    assert not np.array_equal(pixels(other.images[0]), pixels(first.images[0]))


@pytest.mark.parametrize("sampler", ["DPM++ SDE", "DPM2 a", "DPM++ 2M SDE", "Euler a"])
def test_stochastic_samplers_are_reproducible_from_the_seed(shared_engine, sampler: str) -> None:
    request = GenerationRequest(prompt="a boat", seed=11, sampler=sampler, save=False, **FAST)
    first, again = shared_engine.generate(request), shared_engine.generate(request)
    assert np.array_equal(pixels(first.images[0]), pixels(again.images[0]))


def test_single_file_and_diffusers_folder_give_identical_pixels(shared_engine) -> None:
    base = {"prompt": "a lighthouse", "seed": 7, "save": False, **FAST}
    single = shared_engine.generate(GenerationRequest(checkpoint="tiny-sd1.safetensors", **base))
    folder = shared_engine.generate(GenerationRequest(checkpoint="tiny-sd1-diffusers", **base))
    assert np.array_equal(pixels(single.images[0]), pixels(folder.images[0]))
    shared_engine.manager.activate("tiny-sd1.safetensors")


def test_scheduler_swaps_touch_no_weights_and_modes_share_tensors(shared_engine) -> None:
    active = shared_engine.manager.activate("tiny-sd1.safetensors")
    before = {k: (v.data_ptr(), v.clone()) for k, v in active.model.unet.state_dict().items()}
    results = {}
    for sampler in ("Euler a", "DPM++ 2M Karras", "DDIM", "UniPC", "LMS", "DPM++ SDE"):
        results[sampler] = shared_engine.generate(
            GenerationRequest(prompt="x", seed=3, sampler=sampler, save=False, **FAST)
        )
    after = active.model.unet.state_dict()
    for key, (ptr, value) in before.items():
        assert after[key].data_ptr() == ptr and np.array_equal(after[key].numpy(), value.numpy()), key
    assert results["DPM++ 2M Karras"].request.schedule_type == "Karras"


def test_images_are_saved_numbered_with_parseable_infotext(make_engine, tmp_path: Path) -> None:
    engine = make_engine(tmp_path)
    request = GenerationRequest(
        prompt="a (cat:1.2)\nsecond line",
        negative_prompt="blurry",
        seed=42,
        batch_count=2,
        sampler="DPM++ 2M",
        schedule_type="Karras",
        checkpoint="tiny-sd1",
        **FAST,
    )
    result = engine.generate(request)
    assert [p.name.split("-", 1)[1] for p in result.paths] == ["42.png", "43.png"]
    assert result.paths[0].parent.parent.name == "txt2img-images"
    numbers = [int(p.name.split("-")[0]) for p in result.paths]
    assert numbers == [0, 1]  # A1111 numbering starts at 00000
    with Image.open(result.paths[1]) as saved:
        text = saved.text["parameters"]
        assert np.array_equal(pixels(saved), pixels(result.images[1]))
    fields = parse_infotext(text)
    assert fields["Prompt"] == "a (cat:1.2)\nsecond line"
    assert fields["Negative prompt"] == "blurry"
    assert fields["Seed"] == "43" and fields["Steps"] == "3" and fields["Sampler"] == "DPM++ 2M"
    assert fields["Schedule type"] == "Karras" and fields["Size"] == "64x64"
    assert fields["Model"] == "tiny-sd1" and fields["Model hash"] == result.model_hash
    again = engine.generate(request)  # never overwrites: numbering continues
    assert [int(p.name.split("-")[0]) for p in again.paths] == [2, 3]


def test_progress_preview_and_interrupt(shared_engine) -> None:
    job = Job()
    result = shared_engine.generate(GenerationRequest(prompt="x", seed=1, save=False, **FAST), job)
    assert job.step == job.total_steps == 3 and job.status == "done"
    assert job.preview is not None and job.preview.size == (64, 64)
    stopped = Job()
    stopped.interrupt()
    result = shared_engine.generate(GenerationRequest(prompt="x", seed=1, batch_count=3, save=False, **FAST), stopped)
    assert result.interrupted and len(result.images) <= 1 and stopped.status == "interrupted"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"steps": 0}, "Steps"),
        ({"cfg_scale": 31}, "CFG scale"),
        ({"width": 65}, "multiple of 8"),
        ({"height": 4096}, "Height"),
        ({"sampler": "Warp drive"}, "Warp drive"),
        ({"checkpoint": "missing-model"}, "no checkpoint named"),
        ({"batch_size": 9}, "Batch size"),
        ({"seed": float("nan")}, "Seed must be a whole number"),
        ({"seed": float("inf")}, "Seed must be a whole number"),
        ({"subseed": float("-inf")}, "Variation seed must be a whole number"),
        ({"cfg_scale": float("nan")}, "CFG scale"),
        ({"steps": float("inf")}, "Steps"),
        ({"seed_resize_from_w": 4096, "seed_resize_from_h": 64}, "Resize seed from width"),
    ],
)
def test_bad_input_gets_a_clear_error(shared_engine, change: dict, message: str) -> None:
    with pytest.raises(EaselError, match=message):
        shared_engine.generate(GenerationRequest(**{"prompt": "x", "save": False, **FAST, **change}))


def test_switching_checkpoints_uses_the_ram_cache(make_engine, tmp_path: Path) -> None:
    engine = make_engine(tmp_path, ram_cache=2)
    manager = engine.manager
    first = manager.activate("tiny-sd1")
    second = manager.activate("tiny-sdxl")
    assert second.family == "sdxl" and manager.cached_names() == ["tiny-sd1.safetensors"]
    back = manager.activate("tiny-sd1")
    assert back is first  # same objects: no reload from disk
    sdxl = engine.generate(GenerationRequest(prompt="x", checkpoint="tiny-sdxl", seed=5, save=False, **FAST))
    assert sdxl.images[0].size == (64, 64)
