"""pipelines.imaging (masks, resize, uploads, outpaint canvas): mask extraction, resize modes, only-masked
geometry, exact paste-back, masked-content fills, latent masks, outpaint canvases and defensive image decoding."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.errors import EaselError
from pipelines.imaging import masks, outpaint_canvas, resize, uploads


def rgba_layer(size: tuple[int, int], box: tuple[int, int, int, int], colour=(255, 0, 0)) -> Image.Image:
    """A transparent layer with one opaque painted rectangle, like an ImageEditor stroke layer."""
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    layer.paste(Image.new("RGBA", (box[2] - box[0], box[3] - box[1]), (*colour, 255)), box[:2])
    return layer


def box_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    arr = np.zeros((size[1], size[0]), dtype=np.uint8)
    arr[box[1] : box[3], box[0] : box[2]] = 255
    return Image.fromarray(arr, mode="L")


def random_image(size: tuple[int, int], seed: int, mode: str = "RGB") -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4}[mode]
    arr = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(arr, mode=mode)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


# --- mask from the editor ---------------------------------------------------------------------


def test_editor_mask_from_pil_layer_is_layer_alpha():
    background = Image.new("RGB", (64, 48), "white")
    value = {"background": background, "layers": [rgba_layer((64, 48), (10, 5, 30, 20))], "composite": background}
    mask = masks.mask_from_editor(value)
    assert mask.mode == "L" and mask.size == (64, 48)
    assert np.array_equal(np.asarray(mask), np.asarray(box_mask((64, 48), (10, 5, 30, 20))))


def test_editor_mask_from_numpy_layers_union():
    background = np.full((40, 50, 3), 200, dtype=np.uint8)
    first = np.zeros((40, 50, 4), dtype=np.uint8)
    first[0:10, 0:10] = (0, 0, 0, 255)  # black paint still counts: alpha decides
    second = np.zeros((40, 50, 4), dtype=np.uint8)
    second[30:40, 40:50] = (255, 255, 255, 128)
    mask = np.asarray(masks.mask_from_editor({"background": background, "layers": [first, second], "composite": None}))
    assert mask.shape == (40, 50)
    assert set(np.unique(mask)) == {0, 255}
    expected = np.zeros((40, 50), dtype=bool)
    expected[0:10, 0:10] = True
    expected[30:40, 40:50] = True
    assert np.array_equal(mask > 0, expected)


def test_editor_erased_pixels_are_not_masked():
    layer = rgba_layer((32, 32), (0, 0, 32, 32), colour=(0, 255, 0))
    arr = np.array(layer)
    arr[:, 16:, 3] = 0  # erased: colour left behind, alpha 0
    mask = np.asarray(masks.mask_from_editor({"background": Image.new("RGB", (32, 32)), "layers": [arr]}))
    assert mask[:, :16].min() == 255
    assert mask[:, 16:].max() == 0


@pytest.mark.parametrize(
    "value",
    [
        None,
        {},
        {"background": Image.new("RGB", (8, 8)), "layers": [], "composite": None},
        {"background": Image.new("RGB", (8, 8)), "layers": [Image.new("RGBA", (8, 8), (255, 0, 0, 0))]},
    ],
)
def test_editor_without_paint_gives_none_and_a_clear_error(value):
    assert masks.mask_from_editor(value) is None
    with pytest.raises(EaselError, match="Paint a mask"):
        masks.require_editor_mask(value)


def test_editor_layers_from_file_paths_and_missing_background(tmp_path):
    path = tmp_path / "layer.png"
    rgba_layer((20, 10), (2, 2, 6, 6)).save(path)
    composite = Image.new("RGB", (20, 10))
    mask = masks.mask_from_editor({"background": None, "layers": [str(path)], "composite": composite})
    assert mask.size == (20, 10)
    assert masks.mask_bbox(mask) == (2, 2, 6, 6)


def test_editor_layer_of_other_size_is_scaled_to_background():
    mask = masks.mask_from_editor(
        {"background": Image.new("RGB", (64, 64)), "layers": [rgba_layer((32, 32), (0, 0, 16, 16))]}
    )
    assert mask.size == (64, 64)
    assert masks.mask_bbox(mask) == (0, 0, 32, 32)


def test_is_empty_mask():
    assert masks.is_empty_mask(None)
    assert masks.is_empty_mask(Image.new("L", (4, 4), 0))
    assert not masks.is_empty_mask(box_mask((4, 4), (1, 1, 2, 2)))
    assert not masks.is_empty_mask(np.eye(3, dtype=bool))


# --- uploaded masks ---------------------------------------------------------------------------


def test_upload_mask_threshold_on_luminance():
    arr = np.array([[0, 127, 128, 255]], dtype=np.uint8)
    mask = np.asarray(masks.mask_from_upload(Image.fromarray(arr, mode="L")))
    assert mask.tolist() == [[0, 0, 255, 255]]
    rgb = Image.fromarray(np.stack([arr] * 3, axis=2), mode="RGB")
    assert np.asarray(masks.mask_from_upload(rgb)).tolist() == [[0, 0, 255, 255]]


def test_upload_mask_uses_alpha_only_when_transparent():
    painted_on_clear = rgba_layer((8, 8), (0, 0, 4, 8), colour=(0, 0, 0))  # black strokes, transparent sheet
    assert masks.mask_bbox(masks.mask_from_upload(painted_on_clear)) == (0, 0, 4, 8)
    opaque = Image.new("RGBA", (8, 8), (0, 0, 0, 255))
    opaque.paste((255, 255, 255, 255), (4, 0, 8, 8))
    assert masks.mask_bbox(masks.mask_from_upload(opaque)) == (4, 0, 8, 8)


def test_upload_mask_resized_nearest_to_image_size():
    small = box_mask((10, 10), (0, 0, 5, 10))
    mask = masks.mask_from_upload(small, (40, 20))
    assert mask.size == (40, 20)
    arr = np.asarray(mask)
    assert set(np.unique(arr)) == {0, 255}
    assert arr[:, :20].min() == 255 and arr[:, 20:].max() == 0


def test_upload_mask_from_numpy_bool_and_16_bit():
    assert masks.mask_bbox(masks.mask_from_upload(np.pad(np.ones((2, 2), bool), 1))) == (1, 1, 3, 3)
    sixteen = Image.fromarray(np.array([[0, 30000, 40000, 65535]], dtype=np.uint16))
    assert np.asarray(masks.mask_from_upload(sixteen)).tolist() == [[0, 0, 255, 255]]


# --- resize modes -----------------------------------------------------------------------------


def halves(size: tuple[int, int]) -> Image.Image:
    """Left half red, right half blue."""
    image = Image.new("RGB", size, (255, 0, 0))
    image.paste((0, 0, 255), (size[0] // 2, 0, size[0], size[1]))
    return image


@pytest.mark.parametrize("mode", [0, 1, 2])
@pytest.mark.parametrize("source", [(200, 100), (100, 200), (64, 64), (33, 77)])
def test_resize_modes_give_the_target_size(mode, source):
    out = resize.resize_image(random_image(source, 1), 96, 64, mode)
    assert out.size == (96, 64) and out.mode == "RGB"


def test_just_resize_stretches_everything_in():
    out = np.asarray(resize.resize_image(halves((200, 100)), 100, 100, 0))
    assert out[50, 10].tolist() == [255, 0, 0] and out[50, 90].tolist() == [0, 0, 255]


def test_crop_and_resize_keeps_the_centre():
    image = Image.new("RGB", (300, 100), (0, 255, 0))  # green borders are cropped away
    image.paste((255, 0, 0), (100, 0, 150, 100))
    image.paste((0, 0, 255), (150, 0, 200, 100))
    out = np.asarray(resize.resize_image(image, 50, 50, 1))
    assert out[25, 5].tolist() == [255, 0, 0]
    assert out[25, 45].tolist() == [0, 0, 255]
    assert not np.any((out[:, :, 1] > 200) & (out[:, :, 0] < 50))


def test_resize_and_fill_fits_and_stretches_edge_rows():
    image = Image.new("RGB", (200, 100), (10, 20, 30))
    image.paste((200, 100, 50), (0, 0, 200, 1))  # distinct top row
    image.paste((50, 100, 200), (0, 99, 200, 100))  # distinct bottom row
    out = np.asarray(resize.resize_image(image, 100, 100, 2)).astype(int)
    # content is 100x50 at rows 25..74; the bars repeat the first / last content row
    assert np.array_equal(out[0], out[24]) and np.array_equal(out[0], out[25])
    assert np.array_equal(out[99], out[75]) and np.array_equal(out[99], out[74])
    assert abs(out[50, 50] - np.array([10, 20, 30])).max() <= 2


def test_resize_and_fill_left_right_bars():
    out = np.asarray(resize.resize_image(halves((100, 200)), 100, 100, 2))
    assert np.array_equal(out[:, 0], out[:, 25])  # left bar repeats the first content column
    assert np.array_equal(out[:, 99], out[:, 74])


@pytest.mark.parametrize("mode", [3, -1, "1", True])
def test_resize_rejects_unknown_modes(mode):
    with pytest.raises(EaselError, match="resize mode"):
        resize.resize_image(Image.new("RGB", (8, 8)), 8, 8, mode)


# --- only masked geometry ---------------------------------------------------------------------


def check_region(region, bbox, padding, image_size, aspect):
    x0, y0, x1, y1 = region
    assert all(isinstance(v, int) for v in region)
    assert 0 <= x0 < x1 <= image_size[0] and 0 <= y0 < y1 <= image_size[1]
    # holds the padded box (clipped to the image)
    assert x0 <= max(0, bbox[0] - padding) and y0 <= max(0, bbox[1] - padding)
    assert x1 >= min(image_size[0], bbox[2] + padding) and y1 >= min(image_size[1], bbox[3] + padding)
    width, height = x1 - x0, y1 - y0
    if width < image_size[0] and height < image_size[1]:
        assert abs(width / height - aspect) <= 1.0 / min(width, height) + 1e-9


@pytest.mark.parametrize(
    "bbox",
    [
        (0, 0, 10, 10),  # top-left corner
        (290, 0, 300, 10),  # top-right
        (0, 190, 10, 200),  # bottom-left
        (290, 190, 300, 200),  # bottom-right
        (140, 0, 160, 5),  # top edge
        (0, 90, 4, 110),  # left edge
        (140, 95, 160, 105),  # centre
    ],
)
@pytest.mark.parametrize("padding", [0, 8, 32])
@pytest.mark.parametrize("aspect", [1.0, 1.5, 0.5])
def test_crop_region_at_edges_and_corners(bbox, padding, aspect):
    region = masks.expand_crop_region(bbox, padding, (300, 200), aspect)
    check_region(region, bbox, padding, (300, 200), aspect)


def test_crop_region_grows_height_for_a_wide_box():
    assert masks.expand_crop_region((100, 100, 200, 110), 0, (400, 400), 1.0) == (100, 55, 200, 155)


def test_crop_region_grows_width_for_a_tall_box():
    assert masks.expand_crop_region((100, 100, 110, 200), 0, (400, 400), 2.0) == (5, 100, 205, 200)


def test_crop_region_padding_and_shift_at_edge():
    # 10x10 box at the top-left, padding 5 -> 15x15 clipped box, grown to 2:1 and kept inside
    assert masks.expand_crop_region((0, 0, 10, 10), 5, (100, 100), 2.0) == (0, 0, 30, 15)


def test_crop_region_shrinks_only_when_the_image_is_too_small():
    region = masks.expand_crop_region((40, 15, 60, 35), 32, (100, 50), 1.0)
    assert region == (8, 0, 92, 50)  # cannot be 84 tall in a 50-pixel picture
    assert masks.expand_crop_region((0, 0, 5, 5), 0, (100, 50), 512 / 32) == (0, 0, 80, 5)
    assert masks.expand_crop_region((0, 0, 10, 10), 0, (100, 50), 512 / 32) == (0, 0, 100, 10)


def test_crop_region_rejects_negative_padding():
    with pytest.raises(EaselError, match="padding"):
        masks.expand_crop_region((0, 0, 5, 5), -1, (10, 10), 1.0)


def test_crop_for_only_masked_outputs():
    image = random_image((120, 90), 3)
    mask = box_mask((120, 90), (50, 40, 60, 50))
    crop, crop_mask, box = masks.crop_for_only_masked(image, mask, 8, 64, 32)
    assert crop.size == (64, 32) and crop_mask.size == (64, 32) and crop_mask.mode == "L"
    check_region(box, (50, 40, 60, 50), 8, (120, 90), 2.0)
    with pytest.raises(EaselError, match="empty"):
        masks.crop_for_only_masked(image, Image.new("L", (120, 90)), 8, 64, 32)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("target", [(64, 64), (96, 48), (40, 80)])
def test_paste_back_is_exact_outside_the_mask(seed, target):
    rng = np.random.default_rng(seed)
    size = (int(rng.integers(60, 140)), int(rng.integers(60, 140)))
    original = random_image(size, seed, mode="RGBA" if seed % 2 else "RGB")
    x0, y0 = int(rng.integers(0, size[0] - 12)), int(rng.integers(0, size[1] - 12))
    mask = box_mask(size, (x0, y0, x0 + int(rng.integers(4, 12)), y0 + int(rng.integers(4, 12))))
    blurred = masks.blur_mask(mask, 4)
    _, _, box = masks.crop_for_only_masked(original, blurred, 16, *target)
    generated = random_image(target, seed + 100)
    result = masks.paste_back(original, generated, box, blurred)
    assert result.size == size and result.mode == "RGB"
    outside = np.asarray(blurred) == 0
    out, orig = np.asarray(result), np.asarray(original.convert("RGB"))
    assert np.array_equal(out[outside], orig[outside])
    assert not np.array_equal(out[~outside], orig[~outside])


def test_paste_back_of_an_unchanged_crop_restores_the_picture():
    original = Image.fromarray(np.tile(np.linspace(0, 255, 100, dtype=np.uint8), (80, 1)), mode="L").convert("RGB")
    mask = box_mask((100, 80), (40, 30, 60, 50))
    crop, _, box = masks.crop_for_only_masked(original, mask, 4, 64, 64)
    result = np.asarray(masks.paste_back(original, crop, box, mask)).astype(int)
    assert np.abs(result - np.asarray(original).astype(int)).max() <= 3


# --- composite and mask helpers ---------------------------------------------------------------


def test_composite_full_and_zero_masks():
    original, generated = random_image((31, 17), 5, "RGBA"), random_image((31, 17), 6)
    zero = masks.composite_masked(original, generated, Image.new("L", (31, 17), 0))
    full = masks.composite_masked(original, generated, Image.new("L", (31, 17), 255))
    assert zero.mode == full.mode == "RGB"
    assert np.array_equal(np.asarray(zero), np.asarray(original.convert("RGB")))
    assert np.array_equal(np.asarray(full), np.asarray(generated))


def test_composite_blends_partial_mask_and_checks_sizes():
    original, generated = Image.new("RGB", (2, 1), (0, 0, 0)), Image.new("RGB", (2, 1), (255, 255, 255))
    mask = Image.fromarray(np.array([[128, 1]], dtype=np.uint8), mode="L")
    out = np.asarray(masks.composite_masked(original, generated, mask))
    assert out[0, 0].tolist() == [128, 128, 128] and out[0, 1].tolist() == [1, 1, 1]
    with pytest.raises(ValueError):
        masks.composite_masked(original, Image.new("RGB", (3, 1)), mask)


def test_blur_and_invert():
    mask = box_mask((32, 32), (12, 12, 20, 20))
    assert np.array_equal(np.asarray(masks.blur_mask(mask, 0)), np.asarray(mask))
    blurred = np.asarray(masks.blur_mask(mask, 3))
    assert 0 < blurred[16, 10] < 255 and blurred[0, 0] == 0
    assert np.array_equal(np.asarray(masks.invert_mask(mask)), 255 - np.asarray(mask))


# --- masked content ---------------------------------------------------------------------------


def test_fill_keeps_unmasked_pixels_and_takes_surrounding_colours():
    image = halves((128, 64))
    noisy = np.array(image)
    noisy[20:44, 20:44] = (0, 255, 0)  # an object in the red half, to be filled away
    image = Image.fromarray(noisy)
    mask = box_mask((128, 64), (16, 16, 48, 48))
    filled = np.asarray(masks.fill_masked_area(image, mask)).astype(int)
    outside = np.asarray(mask) == 0
    assert np.array_equal(filled[outside], np.asarray(image).astype(int)[outside])
    centre = filled[32, 32]
    assert centre[0] > 200 and centre[1] < 30 and centre[2] < 60


def test_fill_with_blurred_mask_and_full_mask():
    image = random_image((50, 40), 9, "RGBA")
    mask = masks.blur_mask(box_mask((50, 40), (10, 10, 30, 30)), 4)
    filled = np.asarray(masks.fill_masked_area(image, mask))
    outside = np.asarray(mask) == 0
    assert np.array_equal(filled[outside], np.asarray(image.convert("RGB"))[outside])
    everything = np.asarray(masks.fill_masked_area(image, Image.new("L", (50, 40), 255)))
    assert np.all(everything == 128)


def test_latent_mask_rounds_up_any_pixel():
    arr = np.zeros((64, 64), dtype=np.uint8)
    arr[17, 9] = 1
    latent = masks.latent_mask_from_pixel_mask(Image.fromarray(arr, mode="L"), 8, 8)
    assert latent.shape == (1, 1, 8, 8) and latent.dtype == torch.float32
    assert latent.sum().item() == 1 and latent[0, 0, 2, 1].item() == 1
    assert masks.latent_mask_from_pixel_mask(np.zeros((64, 64), np.uint8), 8, 8).sum().item() == 0
    odd = masks.latent_mask_from_pixel_mask(box_mask((70, 50), (0, 0, 70, 1)), 6, 9)
    assert odd.shape == (1, 1, 6, 9) and odd[0, 0, 0].min().item() == 1 and odd[0, 0, 1:].max().item() == 0


def test_latent_fill_modes():
    latents = torch.ones(2, 4, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4, :] = 1
    nothing = masks.latent_fill(latents, mask, "latent nothing")
    assert torch.all(nothing[..., :4, :] == 0) and torch.all(nothing[..., 4:, :] == 1)
    first = masks.latent_fill(latents, mask, 2, torch.Generator().manual_seed(7))
    again = masks.latent_fill(latents, mask, "latent noise", torch.Generator().manual_seed(7))
    assert torch.equal(first, again) and torch.all(first[..., 4:, :] == 1)
    assert first[..., :4, :].std().item() > 0.5
    assert masks.latent_fill(latents, mask, "original") is latents
    assert masks.latent_fill(latents, mask, 0) is latents
    with pytest.raises(EaselError, match="masked content"):
        masks.latent_fill(latents, mask, 4)


# --- outpaint ---------------------------------------------------------------------------------


def test_outpaint_canvas_size_placement_and_mask():
    image = random_image((100, 90), 11)
    canvas, mask = outpaint_canvas.outpaint_canvas(image, left=64, right=0, up=8, down=16, seed=1)
    assert canvas.size == mask.size == (164, 114) and canvas.mode == "RGB" and mask.mode == "L"
    c, m = np.asarray(canvas), np.asarray(mask)
    assert np.array_equal(c[8:98, 64:164], np.asarray(image))
    assert m[:8].min() == 255 and m[98:].min() == 255 and m[:, :64].min() == 255
    # the seam band: 255 at the join, fading to 0 inside the picture
    assert m[50, 64] == 255 and 0 < m[50, 64 + 16] < 255 and m[50, 64 + 32] == 0
    # right side not extended: away from the other seams the picture is not masked
    assert m[50, 163] == 0 and m[8:98, 64 + 32 :][32:-32].max() == 0


def test_outpaint_seam_band_width():
    canvas, mask = outpaint_canvas.outpaint_canvas(Image.new("RGB", (100, 100), "gray"), right=8, seam_band=32)
    m = np.asarray(mask)
    row = m[50, :100]
    assert row[100 - 33] == 0 and 0 < row[100 - 32] < 16 and row[99] == 255
    assert np.all(np.diff(row.astype(int)[68:]) > 0)
    assert m[:, 100:].min() == 255 and m[:, :68].max() == 0


def test_outpaint_edge_fill_continues_the_edge_colours():
    image = Image.new("RGB", (32, 32), (200, 40, 40))
    canvas, _ = outpaint_canvas.outpaint_canvas(image, left=64, right=64, up=64, down=64, fill="edge")
    c = np.asarray(canvas).astype(int)
    assert np.abs(c - np.array([200, 40, 40])).max() <= 1  # flat colour extends as itself


def test_outpaint_noise_is_seeded():
    image = random_image((16, 16), 2)
    first, _ = outpaint_canvas.outpaint_canvas(image, down=32, fill="noise", seed=5)
    again, _ = outpaint_canvas.outpaint_canvas(image, down=32, fill="noise", seed=5)
    other, _ = outpaint_canvas.outpaint_canvas(image, down=32, fill="noise", seed=6)
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(other))
    assert np.array_equal(np.asarray(first)[:16], np.asarray(image))


@pytest.mark.parametrize(
    "amounts",
    [
        {"left": 7},
        {"right": 12},
        {"up": 520},
        {"down": -8},
        {"left": 8.5},
        {"left": True},
        {"left": "64"},
        {},
    ],
)
def test_outpaint_rejects_bad_amounts(amounts):
    with pytest.raises(EaselError):
        outpaint_canvas.outpaint_canvas(Image.new("RGB", (16, 16)), **amounts)


def test_outpaint_rejects_unknown_fill():
    with pytest.raises(EaselError, match="fill"):
        outpaint_canvas.outpaint_canvas(Image.new("RGB", (16, 16)), left=8, fill="mirror")


# --- defensive decoding -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_load_common_formats_from_bytes(fmt):
    image = random_image((24, 16), 4)
    loaded = uploads.load_user_image(encode(image, fmt), 10_000)
    assert loaded.size == (24, 16) and loaded.mode == "RGB"
    if fmt == "PNG":
        assert np.array_equal(np.asarray(loaded), np.asarray(image))


def test_load_keeps_transparency():
    loaded = uploads.load_user_image(encode(random_image((8, 8), 1, "RGBA"), "PNG"), 100)
    assert loaded.mode == "RGBA"


@pytest.mark.parametrize("prefix", ["", "data:image/png;base64,", "DATA:image/png;charset=x;base64,"])
def test_load_base64_with_and_without_data_prefix(prefix):
    image = random_image((10, 6), 8)
    text = prefix + base64.b64encode(encode(image, "PNG")).decode()
    assert np.array_equal(np.asarray(uploads.load_user_image(text, 100)), np.asarray(image))


def test_load_urlsafe_base64_and_whitespace():
    text = base64.urlsafe_b64encode(encode(random_image((10, 6), 8), "PNG")).decode().rstrip("=")
    wrapped = "\n".join(text[i : i + 60] for i in range(0, len(text), 60))
    assert uploads.load_user_image(wrapped, 100).size == (10, 6)


def test_load_paths_only_when_allowed(tmp_path):
    path = tmp_path / "picture.png"
    random_image((5, 7), 3).save(path)
    assert uploads.load_user_image(path, 100).size == (5, 7)
    assert uploads.load_user_image(str(path), 100, allow_paths=True).size == (5, 7)
    with pytest.raises(EaselError):
        uploads.load_user_image(str(path), 100)  # a string from the network is never a server path


def test_load_applies_exif_orientation():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(Image.new("RGB", (40, 20), "white"), "JPEG", exif=exif.tobytes())
    assert uploads.load_user_image(data, 10_000).size == (20, 40)


def test_load_refuses_truncated_png():
    data = encode(random_image((64, 64), 12), "PNG")
    with pytest.raises(EaselError, match="damaged|incomplete"):
        uploads.load_user_image(data[: len(data) // 2], 100_000)


def test_load_refuses_truncated_jpeg():
    data = encode(random_image((64, 64), 12), "JPEG", quality=95)
    with pytest.raises(EaselError):
        uploads.load_user_image(data[: len(data) // 2], 100_000)


@pytest.mark.parametrize(
    "data",
    [
        np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        b"",
        b"hello, this is text",
        "not base64 at all!",
        "data:text/plain,hello",
        12345,
    ],
)
def test_load_refuses_things_that_are_not_images(data):
    with pytest.raises(EaselError):
        uploads.load_user_image(data, 100_000)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def test_load_refuses_a_huge_header_without_allocating():
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + png_chunk(b"IEND", b"")
    )
    with pytest.raises(EaselError, match="too large|more than"):
        uploads.load_user_image(bomb, 4096 * 4096)
    with pytest.raises(EaselError, match="too large|more than"):
        uploads.load_user_image(base64.b64encode(bomb).decode(), 4096 * 4096)


def test_load_refuses_images_over_our_own_limit():
    data = encode(Image.new("RGB", (300, 300)), "PNG")
    with pytest.raises(EaselError, match="300x300"):
        uploads.load_user_image(data, 256 * 256)
    with pytest.raises(EaselError, match="300x300"):
        uploads.load_user_image(Image.new("RGB", (300, 300)), 256 * 256)
    assert uploads.load_user_image(data, 300 * 300).size == (300, 300)


def test_load_refuses_formats_outside_the_allow_list():
    with pytest.raises(EaselError, match="not an image"):
        uploads.load_user_image(encode(Image.new("RGB", (4, 4)), "PPM"), 100)
