"""Image and mask math for img2img, inpaint and outpaint.

Pure functions on PIL images / numpy arrays (plus two small torch helpers for latent-space masking).
The rule every function here serves (DESIGN.md section 7): pixels the user did not mask come back
bit for bit identical, so the final step of every masked generation is a pixel-space composite that
selects the original wherever the blurred mask is 0.

Conventions:
- A mask is a PIL "L" image, 0 = keep, 255 = regenerate; values in between blend (blurred edges).
- Boxes are PIL boxes ``(left, top, right, bottom)`` with exclusive right/bottom, in integers.
- Sizes are ``(width, height)``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import math
import os
import re
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps

from pipelines.errors import EaselError

# ---------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------

RESIZE_MODES: tuple[str, ...] = ("Just resize", "Crop and resize", "Resize and fill")
"""A1111 ``resize_mode`` 0-2, by index."""

MASKED_CONTENT: tuple[str, ...] = ("fill", "original", "latent noise", "latent nothing")
"""A1111 ``inpainting_fill`` 0-3, by index."""

OUTPAINT_FILLS: tuple[str, ...] = ("edge", "noise")

OUTPAINT_STEP = 8
OUTPAINT_MAX = 512

OUTPAINT_SEAM_BAND = 32
"""Pixels of the original, next to each extended side, that the outpaint mask also covers (ramping
from 255 at the seam to 0 inside) so the model repaints the join instead of leaving a hard edge."""

DEFAULT_MAX_UPLOAD_PIXELS = 4096 * 4096
"""A generous ceiling for user images: 16.7 M pixels is 64 MiB as RGBA, far beyond what SD can use."""

# Formats a user may upload. Deliberately short: other Pillow plugins (EPS calls Ghostscript, for
# one) widen the attack surface for no artistic benefit. MPO is what many phone cameras write.
ALLOWED_UPLOAD_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "MPO", "WEBP", "BMP", "GIF", "TIFF", "AVIF")

# Blur radii (Gaussian sigma, px) and repeat counts for "fill": coarse averages first, refined by
# ever more local ones, so a hole takes the colours of what surrounds it (A1111's schedule shape).
_FILL_SCHEDULE: tuple[tuple[float, int], ...] = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2))

# Blur levels (sigma, px) for the outpaint edge fill: farther from the picture, blurrier.
_OUTPAINT_BLUR_LEVELS: tuple[float, ...] = (0.0, 4.0, 16.0, 64.0, 256.0)
_OUTPAINT_NOISE_STD = 48.0

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+/-]*)?(?P<params>(;[^,;]*)*?),", re.IGNORECASE)

# What Pillow raises for undecodable data, truncated files and broken chunks.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    TypeError,
    KeyError,
    struct.error,
    zlib.error,
)

ImageLike = Image.Image | np.ndarray | str | os.PathLike
Box = tuple[int, int, int, int]


# ---------------------------------------------------------------------------------------------
# Small conversions
# ---------------------------------------------------------------------------------------------


def _array_to_image(array: np.ndarray) -> Image.Image:
    """Numpy -> PIL, accepting what Gradio and callers hand over (uint8, bool, 0..1 floats)."""
    arr = np.asarray(array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        arr = arr.astype(np.float64)
        if arr.size and np.nanmax(arr) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        return Image.fromarray(arr, mode="L")
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return Image.fromarray(arr, mode="RGB" if arr.shape[2] == 3 else "RGBA")
    raise ValueError(f"cannot read an image from an array of shape {arr.shape}")


def _to_image(value: Any) -> Image.Image:
    """Anything Gradio may put in an image slot -> PIL. Paths here come from the server, not users."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, np.ndarray):
        return _array_to_image(value)
    if isinstance(value, dict) and value.get("path"):
        value = value["path"]
    if isinstance(value, str | os.PathLike):
        with Image.open(value) as im:
            im.load()
            return im.copy()
    raise TypeError(f"not an image: {type(value).__name__}")


def _mask_array(mask: Image.Image | np.ndarray) -> np.ndarray:
    """A mask as a 2-D uint8 array (0 keep .. 255 regenerate)."""
    if isinstance(mask, Image.Image):
        if mask.mode != "L":
            mask = mask.convert("L")
        return np.asarray(mask, dtype=np.uint8)
    arr = np.asarray(mask)
    if arr.ndim == 3:
        arr = arr[:, :, 0] if arr.shape[2] == 1 else np.asarray(_array_to_image(arr).convert("L"))
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float64)
        if arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        arr = np.clip(arr, 0, 255).round().astype(np.uint8)
    return arr


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info)


def _alpha_of(image: Image.Image) -> np.ndarray:
    """Alpha channel of an image that has one, as uint8."""
    if image.mode not in ("RGBA", "LA"):
        image = image.convert("RGBA")
    return np.asarray(image.getchannel("A"), dtype=np.uint8)


def _luminance_of(image: Image.Image) -> np.ndarray:
    """Grey level 0..255, treating 16-bit and float images by their own range."""
    if image.mode.startswith("I") or image.mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        peak = arr.max() if arr.size else 0.0
        if image.mode == "F" and peak <= 1.0:
            arr = arr * 255.0
        elif peak > 255:
            arr = arr / 257.0
        return np.clip(arr, 0, 255).round().astype(np.uint8)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def _check_size(width: int, height: int) -> None:
    if int(width) < 1 or int(height) < 1:
        raise EaselError(f"Width and height must be at least 1 pixel (got {width}x{height}).")


# ---------------------------------------------------------------------------------------------
# Getting a mask
# ---------------------------------------------------------------------------------------------


def _painted_pixels(layer: Image.Image) -> np.ndarray:
    """Where a layer holds paint: alpha > 0, or any non-black pixel for layers without alpha."""
    if _has_alpha(layer):
        return _alpha_of(layer) > 0
    return np.asarray(layer.convert("L"), dtype=np.uint8) > 0


def is_empty_mask(mask: Image.Image | np.ndarray | None) -> bool:
    """True when nothing is masked: callers use it to tell the user to paint something first."""
    if mask is None:
        return True
    return not np.any(_mask_array(mask))


def mask_from_editor(value: dict[str, Any] | None) -> Image.Image | None:
    """The painted strokes of a Gradio ImageEditor value as an "L" mask (0/255), background-sized.

    A stroke is a layer pixel with alpha > 0 (an erased stroke is alpha 0 again), so the mask is the
    union of all layers' alphas. Returns None when there is nothing painted. Layers without an alpha
    channel count any non-black pixel as painted.
    """
    if not value:
        return None
    layers = [layer for layer in (value.get("layers") or []) if layer is not None]
    if not layers:
        return None
    background = value.get("background")
    reference = background if background is not None else value.get("composite")
    layer_images = [_to_image(layer) for layer in layers]
    size = _to_image(reference).size if reference is not None else layer_images[0].size

    union = np.zeros((size[1], size[0]), dtype=bool)
    for layer in layer_images:
        painted = _painted_pixels(layer)
        if painted.shape != union.shape:
            resized = Image.fromarray(painted.astype(np.uint8) * 255, mode="L").resize(size, Image.Resampling.NEAREST)
            painted = np.asarray(resized) > 0
        union |= painted
    if not union.any():
        return None
    return Image.fromarray(union.astype(np.uint8) * 255, mode="L")


def require_editor_mask(value: dict[str, Any] | None) -> Image.Image:
    """Like mask_from_editor, but a missing mask is the user's to fix, so it says so."""
    mask = mask_from_editor(value)
    if mask is None:
        raise EaselError("Paint a mask first: brush over the part of the picture you want to change.")
    return mask


def mask_from_upload(image: ImageLike, size: tuple[int, int] | None = None) -> Image.Image:
    """A user's black-and-white mask file as an "L" mask (0/255), resized (nearest) to ``size``.

    Uses alpha when the file has real transparency (strokes on a transparent sheet), otherwise the
    grey level; above half (> 127) means masked, as A1111 reads uploaded masks.
    """
    img = _to_image(image)
    if _has_alpha(img):
        alpha = _alpha_of(img)
        level = alpha if alpha.size and alpha.min() < 255 else _luminance_of(img.convert("RGB"))
    else:
        level = _luminance_of(img)
    mask = Image.fromarray(np.where(level > 127, 255, 0).astype(np.uint8), mode="L")
    if size is not None:
        size = (int(size[0]), int(size[1]))
        _check_size(*size)
        if mask.size != size:
            mask = mask.resize(size, Image.Resampling.NEAREST)
    return mask


def blur_mask(mask: Image.Image | np.ndarray, radius_px: float) -> Image.Image:
    """Gaussian-feather the mask edge so the generated area fades into the original."""
    img = Image.fromarray(_mask_array(mask), mode="L")
    if radius_px is None or radius_px <= 0:
        return img.copy()
    return img.filter(ImageFilter.GaussianBlur(radius_px))


def invert_mask(mask: Image.Image | np.ndarray) -> Image.Image:
    """A1111 "Inpaint not masked": regenerate everything except the painted part."""
    return Image.fromarray(255 - _mask_array(mask), mode="L")


# ---------------------------------------------------------------------------------------------
# Resizing (A1111 resize modes)
# ---------------------------------------------------------------------------------------------


def _fit_geometry(src_w: int, src_h: int, width: int, height: int) -> tuple[int, int, int, int]:
    """Where a src_w x src_h picture lands when scaled to fit inside width x height, centred.

    Returns (fitted_w, fitted_h, left, top). Shared by "Resize and fill" and paste_back so the way
    back is the exact inverse of the way there.
    """
    scale = min(width / src_w, height / src_h)
    fitted_w = min(width, max(1, round(src_w * scale)))
    fitted_h = min(height, max(1, round(src_h * scale)))
    return fitted_w, fitted_h, (width - fitted_w) // 2, (height - fitted_h) // 2


def _cover_box(src_w: int, src_h: int, width: int, height: int) -> tuple[float, float, float, float]:
    """The centred part of the source with the target's aspect ratio (what "Crop and resize" keeps)."""
    if src_w * height > width * src_h:  # source is wider than the target
        crop_w = src_h * width / height
        left = (src_w - crop_w) / 2
        return (left, 0.0, left + crop_w, float(src_h))
    crop_h = src_w * height / width
    top = (src_h - crop_h) / 2
    return (0.0, top, float(src_w), top + crop_h)


def resize_image(image: Image.Image, width: int, height: int, mode: int = 0) -> Image.Image:
    """Bring an init image to the generation size the way A1111's resize modes do (Lanczos).

    0 "Just resize": stretch. 1 "Crop and resize": scale to cover, crop the centre.
    2 "Resize and fill": scale to fit, centre, and fill the bars by stretching the edge pixels.
    """
    _check_size(width, height)
    width, height = int(width), int(height)
    if isinstance(mode, bool) or mode not in (0, 1, 2):
        names = ", ".join(f"{i} {name!r}" for i, name in enumerate(RESIZE_MODES))
        raise EaselError(f"Unknown resize mode {mode!r}; use one of {names}.")
    lanczos = Image.Resampling.LANCZOS
    if mode == 0:
        return image.resize((width, height), lanczos)
    if mode == 1:
        return image.resize((width, height), lanczos, box=_cover_box(image.width, image.height, width, height))

    fitted_w, fitted_h, left, top = _fit_geometry(image.width, image.height, width, height)
    fitted = image.resize((fitted_w, fitted_h), lanczos)
    if (fitted_w, fitted_h) == (width, height):
        return fitted
    arr = np.asarray(fitted)
    pad = ((top, height - fitted_h - top), (left, width - fitted_w - left)) + ((0, 0),) * (arr.ndim - 2)
    return Image.fromarray(np.pad(arr, pad, mode="edge"), mode=fitted.mode)


# ---------------------------------------------------------------------------------------------
# "Only masked": crop around the mask, generate at full resolution, paste back
# ---------------------------------------------------------------------------------------------


def mask_bbox(mask: Image.Image | np.ndarray) -> Box | None:
    """The smallest box holding every pixel with mask > 0, or None for an empty mask."""
    arr = _mask_array(mask)
    rows = np.flatnonzero(arr.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(arr.any(axis=0))
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def _place_span(start: int, length: int, limit: int) -> tuple[int, int]:
    """Slide a span of ``length`` (<= limit) so it lies inside [0, limit)."""
    start = max(0, min(start, limit - length))
    return start, start + length


def expand_crop_region(bbox: Box, padding: int, image_size: tuple[int, int], target_aspect: float) -> Box:
    """A1111 "only masked" region: the mask box plus padding, grown to the target aspect ratio.

    Growth is centred on the box; a region that would leave the image slides back inside; it is
    only cut short when the image itself is too small, so the aspect is kept whenever possible.
    ``target_aspect`` is width / height of the generation size.
    """
    if padding < 0:
        raise EaselError(f"Only-masked padding must be 0 or more pixels (got {padding}).")
    if not target_aspect or target_aspect <= 0 or not math.isfinite(target_aspect):
        raise ValueError(f"target_aspect must be a positive number, got {target_aspect!r}")
    img_w, img_h = int(image_size[0]), int(image_size[1])
    x0, y0, x1, y1 = (int(v) for v in bbox)
    x0, y0 = max(0, x0 - padding), max(0, y0 - padding)
    x1, y1 = min(img_w, x1 + padding), min(img_h, y1 + padding)
    box_w, box_h = max(1, x1 - x0), max(1, y1 - y0)

    if box_w / box_h > target_aspect:
        new_w, new_h = box_w, max(box_h, round(box_w / target_aspect))
    else:
        new_w, new_h = max(box_w, round(box_h * target_aspect)), box_h
    new_w, new_h = min(new_w, img_w), min(new_h, img_h)

    x0, x1 = _place_span(x0 - (new_w - box_w) // 2, new_w, img_w)
    y0, y1 = _place_span(y0 - (new_h - box_h) // 2, new_h, img_h)
    return (x0, y0, x1, y1)


def crop_for_only_masked(
    image: Image.Image, mask: Image.Image, padding: int, width: int, height: int
) -> tuple[Image.Image, Image.Image, Box]:
    """Cut the masked region (plus padding, at the target aspect) out and scale it to width x height.

    Pass the blurred mask: its box then covers every pixel the composite may change. The region is
    scaled with "Resize and fill" so a region cut short by a small image keeps its proportions.
    """
    _check_size(width, height)
    if image.size != mask.size:
        raise ValueError(f"image {image.size} and mask {mask.size} differ in size")
    bbox = mask_bbox(mask)
    if bbox is None:
        raise EaselError("The mask is empty: paint over the part of the picture you want to change.")
    box = expand_crop_region(bbox, padding, image.size, width / height)
    cropped_image = resize_image(image.crop(box), width, height, 2)
    cropped_mask = resize_image(Image.fromarray(_mask_array(mask), mode="L").crop(box), width, height, 2)
    return cropped_image, cropped_mask, box


def paste_back(original: Image.Image, generated_crop: Image.Image, box: Box, blurred_mask: Image.Image) -> Image.Image:
    """Scale a generated "only masked" crop back into its box and composite it over the original.

    Undoes crop_for_only_masked's "Resize and fill" exactly (same fit geometry), then composites
    with the blurred mask, so pixels outside the mask stay the original's bit for bit.
    """
    x0, y0, x1, y1 = (int(v) for v in box)
    box_w, box_h = x1 - x0, y1 - y0
    fitted_w, fitted_h, left, top = _fit_geometry(box_w, box_h, generated_crop.width, generated_crop.height)
    region = generated_crop.convert("RGB").resize(
        (box_w, box_h), Image.Resampling.LANCZOS, box=(left, top, left + fitted_w, top + fitted_h)
    )
    full = original.convert("RGB")
    full.paste(region, (x0, y0))
    return composite_masked(original, full, blurred_mask)


def composite_masked(
    original: Image.Image, generated: Image.Image, blurred_mask: Image.Image | np.ndarray
) -> Image.Image:
    """Blend generated over original by the mask, in pixel space; mask 0 keeps the original exactly.

    Integer math with an explicit select at 0 and 255, so no rounding can touch unmasked pixels.
    Output is RGB (an RGBA original's alpha is dropped; its colour channels are kept as they are).
    """
    mask = _mask_array(blurred_mask)
    orig = np.asarray(original.convert("RGB"), dtype=np.uint8)
    gen = np.asarray(generated.convert("RGB"), dtype=np.uint8)
    if orig.shape != gen.shape or orig.shape[:2] != mask.shape:
        raise ValueError(
            f"composite needs equal sizes: original {original.size}, generated {generated.size}, "
            f"mask {mask.shape[1]}x{mask.shape[0]}"
        )
    weight = mask.astype(np.uint32)[:, :, None]
    blended = (orig.astype(np.uint32) * (255 - weight) + gen.astype(np.uint32) * weight + 127) // 255
    out = blended.astype(np.uint8)
    out = np.where(weight == 0, orig, out)
    out = np.where(weight == 255, gen, out)
    return Image.fromarray(out, mode="RGB")


# ---------------------------------------------------------------------------------------------
# Masked content
# ---------------------------------------------------------------------------------------------


def _blur_axis(arr: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    radius = max(1, math.ceil(3 * sigma))
    taps = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel = (kernel / kernel.sum()).astype(np.float32)
    pad = [(0, 0)] * arr.ndim
    pad[axis] = (radius, radius)
    padded = np.pad(arr, pad, mode="edge")
    n = arr.shape[axis]
    lead = (slice(None),) * axis
    out = np.zeros_like(arr)
    for k, weight in enumerate(kernel):
        out += weight * padded[lead + (slice(k, k + n),)]
    return out


def _gaussian_blur_float(arr: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of an H x W x C float32 array at any sigma, in float (no 8-bit banding).

    Large sigmas run on a downscaled copy (area-averaged), then scale back up bilinearly: a blur
    that wide has no detail to lose, and it keeps a 256 px blur of a big canvas fast.
    """
    if sigma <= 0:
        return arr.astype(np.float32, copy=True)
    height, width = arr.shape[:2]
    factor = max(1, int(sigma // 2))
    small_w, small_h = max(1, round(width / factor)), max(1, round(height / factor))
    work = arr.astype(np.float32)
    if (small_w, small_h) != (width, height):
        work = np.stack(
            [
                np.asarray(Image.fromarray(work[:, :, c], mode="F").resize((small_w, small_h), Image.Resampling.BOX))
                for c in range(arr.shape[2])
            ],
            axis=2,
        )
    work = _blur_axis(work, sigma * small_h / height, 0)
    work = _blur_axis(work, sigma * small_w / width, 1)
    if (small_w, small_h) != (width, height):
        work = np.stack(
            [
                np.asarray(Image.fromarray(work[:, :, c], mode="F").resize((width, height), Image.Resampling.BILINEAR))
                for c in range(arr.shape[2])
            ],
            axis=2,
        )
    return work


def _smear_known_colours(rgb: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Colours for unknown pixels from the known ones around them, coarse to fine.

    Normalised convolution (blur of colour*weight divided by blur of weight) at each radius of
    _FILL_SCHEDULE; each finer layer is laid over the coarser by how much known colour reached it.
    ``known`` is a 0..1 weight per pixel. Returns float32 H x W x 3.
    """
    stack = np.concatenate([rgb * known[:, :, None], known[:, :, None]], axis=2).astype(np.float32)
    total = float(known.sum())
    mean = (rgb * known[:, :, None]).reshape(-1, 3).sum(axis=0) / total if total > 0 else np.full(3, 128.0)
    result = np.broadcast_to(mean.astype(np.float32), rgb.shape).copy()
    for index, (sigma, repeats) in enumerate(_FILL_SCHEDULE):
        blurred = _gaussian_blur_float(stack, sigma)
        coverage = blurred[:, :, 3]
        reached = coverage > 1e-6
        colour = blurred[:, :, :3] / np.where(reached, coverage, 1.0)[:, :, None]
        if index == 0:
            opacity = reached.astype(np.float32)  # the coarsest average is the base coat
        else:
            opacity = 1.0 - (1.0 - np.clip(coverage, 0.0, 1.0)) ** repeats
            opacity = np.where(reached, opacity, 0.0)
        result = result * (1.0 - opacity[:, :, None]) + colour * opacity[:, :, None]
    return result


def fill_masked_area(image: Image.Image, mask: Image.Image | np.ndarray) -> Image.Image:
    """A1111 masked content "fill": paint the masked area with the blurred colours around it.

    Gives img2img a neutral start that keeps the picture's palette but none of the masked object.
    Partly masked pixels blend; pixels with mask 0 come back identical. A fully masked picture has
    nothing to borrow from and becomes mid-grey.
    """
    weight = _mask_array(mask).astype(np.float32) / 255.0
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if weight.shape != rgb.shape[:2]:
        raise ValueError(f"image {image.size} and mask {weight.shape[::-1]} differ in size")
    smeared = _smear_known_colours(rgb.astype(np.float32), 1.0 - weight)
    out = rgb.astype(np.float32) * (1.0 - weight[:, :, None]) + smeared * weight[:, :, None]
    out = np.clip(out, 0, 255).round().astype(np.uint8)
    out = np.where((weight == 0)[:, :, None], rgb, out)
    return Image.fromarray(out, mode="RGB")


def masked_content_index(mode: int | str) -> int:
    """A1111 inpainting_fill as an index 0-3, from the index or its name."""
    if isinstance(mode, str):
        key = mode.strip().lower()
        if key in MASKED_CONTENT:
            return MASKED_CONTENT.index(key)
        if key.isdigit():
            mode = int(key)
    if isinstance(mode, int) and not isinstance(mode, bool) and 0 <= mode < len(MASKED_CONTENT):
        return mode
    names = ", ".join(f"{i} {name!r}" for i, name in enumerate(MASKED_CONTENT))
    raise EaselError(f"Unknown masked content {mode!r}; use one of {names}.")


def latent_mask_from_pixel_mask(mask: Image.Image | np.ndarray, latent_h: int, latent_w: int) -> torch.Tensor:
    """A pixel mask at latent resolution, float32 0/1 of shape [1, 1, latent_h, latent_w].

    A latent cell is masked when any pixel it covers is > 0 (rounding up, like A1111), so a thin
    stroke never vanishes from the latent mask.
    """
    painted = torch.from_numpy((_mask_array(mask) > 0).astype(np.float32))[None, None]
    return torch.nn.functional.adaptive_max_pool2d(painted, (int(latent_h), int(latent_w)))


def latent_fill(
    latents: torch.Tensor,
    latent_mask: torch.Tensor,
    mode: int | str,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A1111 masked content in latent space: "latent noise" puts unit normal noise and "latent
    nothing" zeros where the mask is, blending by the mask value; "fill"/"original" work in pixel
    space and leave the latents as they are.
    """
    index = masked_content_index(mode)
    if index < 2:
        return latents
    mask = latent_mask.to(device=latents.device, dtype=latents.dtype)
    while mask.ndim < 4:
        mask = mask[None]
    if mask.shape[-2:] != latents.shape[-2:]:
        raise ValueError(f"latent mask {tuple(mask.shape)} does not match latents {tuple(latents.shape)}")
    if index == 2:
        device = generator.device if generator is not None else latents.device
        replacement = torch.randn(latents.shape, generator=generator, device=device, dtype=torch.float32)
        replacement = replacement.to(device=latents.device, dtype=latents.dtype)
    else:
        replacement = torch.zeros_like(latents)
    return latents * (1 - mask) + replacement * mask


# ---------------------------------------------------------------------------------------------
# Outpaint
# ---------------------------------------------------------------------------------------------


def _outpaint_amount(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise EaselError(f"Outpaint {name} must be a whole number of pixels (got {value!r}).")
    amount = int(value)
    if amount != 0 and not (OUTPAINT_STEP <= amount <= OUTPAINT_MAX and amount % OUTPAINT_STEP == 0):
        raise EaselError(
            f"Outpaint {name} must be 0 or a multiple of {OUTPAINT_STEP} from {OUTPAINT_STEP} to "
            f"{OUTPAINT_MAX} pixels (got {amount})."
        )
    return amount


def _edge_extend_fill(padded: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Blend blur levels of an edge-extended canvas: sharp near the picture, soft far from it."""
    levels = [_gaussian_blur_float(padded, sigma) for sigma in _OUTPAINT_BLUR_LEVELS]
    sigmas = np.asarray(_OUTPAINT_BLUR_LEVELS, dtype=np.float32)
    wanted = np.clip(distance * 0.5, 0.0, sigmas[-1])  # blur grows with distance from the seam
    upper = np.clip(np.searchsorted(sigmas, wanted, side="left"), 1, len(sigmas) - 1)
    lower = upper - 1
    t = (wanted - sigmas[lower]) / (sigmas[upper] - sigmas[lower])
    out = np.zeros_like(padded)
    for index, level in enumerate(levels):
        weight = np.where(lower == index, 1.0 - t, 0.0) + np.where(upper == index, t, 0.0)
        out += level * weight[:, :, None].astype(np.float32)
    return out


def outpaint_canvas(
    image: Image.Image,
    left: int = 0,
    right: int = 0,
    up: int = 0,
    down: int = 0,
    fill: str = "edge",
    seed: int = 0,
    seam_band: int = OUTPAINT_SEAM_BAND,
) -> tuple[Image.Image, Image.Image]:
    """Grow the canvas for outpainting; returns (canvas RGB, mask L).

    The original sits at (left, up) unchanged. The new area is pre-filled so the model has colours
    to continue: "edge" extends the border pixels outwards and blurs them more the farther they go;
    "noise" adds seeded Gaussian noise on top of that (more freedom, same palette). The mask is 255
    on the new area plus a band of ``seam_band`` px into the original along each extended side,
    ramping down to 0, so the join itself is repainted.
    """
    left, right = _outpaint_amount("left", left), _outpaint_amount("right", right)
    up, down = _outpaint_amount("up", up), _outpaint_amount("down", down)
    if left == right == up == down == 0:
        raise EaselError("Choose at least one side to extend for outpainting.")
    if fill not in OUTPAINT_FILLS:
        raise EaselError(f"Unknown outpaint fill {fill!r}; use one of {', '.join(OUTPAINT_FILLS)}.")
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    height, width = rgb.shape[:2]
    canvas_h, canvas_w = height + up + down, width + left + right

    ys = np.arange(canvas_h, dtype=np.float32)[:, None]
    xs = np.arange(canvas_w, dtype=np.float32)[None, :]
    dx = np.maximum(np.maximum(left - xs, xs - (left + width - 1)), 0.0)
    dy = np.maximum(np.maximum(up - ys, ys - (up + height - 1)), 0.0)
    distance = np.sqrt(dx**2 + dy**2)
    outside = distance > 0

    padded = np.pad(rgb, ((up, down), (left, right), (0, 0)), mode="edge").astype(np.float32)
    filled = _edge_extend_fill(padded, distance)
    if fill == "noise":
        rng = np.random.default_rng(int(seed))
        filled = filled + rng.normal(0.0, _OUTPAINT_NOISE_STD, size=filled.shape).astype(np.float32)
    canvas = np.clip(filled, 0, 255).round().astype(np.uint8)
    canvas[up : up + height, left : left + width] = rgb

    band = max(0, int(seam_band))
    ramp = np.zeros((canvas_h, canvas_w), dtype=np.float32)
    if band:
        inside_x = xs - left  # 0 on the first original column
        inside_y = ys - up
        sides = []
        if left:
            sides.append(np.broadcast_to(inside_x, ramp.shape))
        if right:
            sides.append(np.broadcast_to(left + width - 1 - xs, ramp.shape))
        if up:
            sides.append(np.broadcast_to(inside_y, ramp.shape))
        if down:
            sides.append(np.broadcast_to(up + height - 1 - ys, ramp.shape))
        for depth in sides:
            ramp = np.maximum(ramp, np.clip((band - depth) / band, 0.0, 1.0))
    mask = np.where(outside, 255, np.round(ramp * 255)).astype(np.uint8)
    return Image.fromarray(canvas, mode="RGB"), Image.fromarray(mask, mode="L")


# ---------------------------------------------------------------------------------------------
# Decoding what users send
# ---------------------------------------------------------------------------------------------


def _decode_base64(text: str) -> bytes:
    text = text.strip()
    match = _DATA_URL.match(text)
    if match:
        if ";base64" not in (match.group("params") or "").lower():
            raise EaselError("The image data URL is not base64-encoded.")
        text = text[match.end() :]
    text = re.sub(r"\s+", "", text)
    text += "=" * (-len(text) % 4)
    altchars = b"-_" if ("-" in text or "_" in text) else None  # URL-safe alphabet
    try:
        return base64.b64decode(text, altchars=altchars, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EaselError("The image is not valid base64 data.") from exc


def _open_checked(data: bytes, max_pixels: int, formats: Sequence[str]) -> Image.Image:
    """Open, check the pixel count before decoding anything, then verify and fully decode."""
    try:
        with Image.open(io.BytesIO(data), formats=list(formats)) as probe:
            width, height = probe.size
            if width * height > max_pixels:
                raise _too_many_pixels(width, height, max_pixels)
            probe.verify()  # catches bad checksums and truncation without decoding pixels
        image = Image.open(io.BytesIO(data), formats=list(formats))
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise EaselError(
            f"The image is too large to open safely (limit {max_pixels:,} pixels). Please use a smaller picture."
        ) from exc
    except Image.UnidentifiedImageError as exc:
        allowed = ", ".join(formats)
        raise EaselError(f"That file is not an image Easel can read ({allowed}).") from exc
    except _DECODE_ERRORS as exc:
        raise EaselError(f"The image file is damaged or incomplete and could not be read ({exc}).") from exc
    return image


def _upload_formats() -> list[str]:
    Image.init()
    return [name for name in ALLOWED_UPLOAD_FORMATS if name in Image.OPEN]


def _too_many_pixels(width: int, height: int, max_pixels: int) -> EaselError:
    return EaselError(
        f"The image is {width}x{height} pixels, more than the {max_pixels:,} allowed. Please use a smaller picture."
    )


def user_image_size(data: bytes | bytearray | str, max_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS) -> tuple[int, int]:
    """``(width, height)`` from the image's header alone, decoding no pixel; refused as ``load_user_image`` would.

    What lets a caller add up several images (a batch, an init image and its mask) and refuse a request whose
    images are small on the wire but huge once decoded, before decoding the first of them. Raises EaselError for
    data that is not an image ``load_user_image`` would read, or one over ``max_pixels``.
    """
    raw = _decode_base64(data) if isinstance(data, str) else bytes(data)
    if not raw:
        raise EaselError("The image is empty (0 bytes).")
    formats = _upload_formats()
    try:
        with Image.open(io.BytesIO(raw), formats=formats) as probe:
            width, height = probe.size
    except Image.DecompressionBombError as exc:
        raise EaselError(
            f"The image is too large to open safely (limit {max_pixels:,} pixels). Please use a smaller picture."
        ) from exc
    except Image.UnidentifiedImageError as exc:
        raise EaselError(f"That file is not an image Easel can read ({', '.join(formats)}).") from exc
    except _DECODE_ERRORS as exc:
        raise EaselError(f"The image file is damaged or incomplete and could not be read ({exc}).") from exc
    if width * height > max_pixels:
        raise _too_many_pixels(width, height, max_pixels)
    return width, height


def _normalise_mode(image: Image.Image) -> Image.Image:
    """RGBA when the picture has transparency, else RGB; 16-bit greys scaled rather than clipped."""
    if _has_alpha(image):
        return image.convert("RGBA")
    if image.mode.startswith("I") or image.mode == "F":
        return Image.fromarray(_luminance_of(image), mode="L").convert("RGB")
    return image.convert("RGB")


def load_user_image(
    data: bytes | bytearray | str | os.PathLike | Image.Image,
    max_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS,
    *,
    allow_paths: bool = False,
) -> Image.Image:
    """Decode an image a user sent, refusing anything dangerous or broken with a clear EaselError.

    Accepts raw bytes, base64 text (with or without a ``data:image/...;base64,`` prefix), a
    ``pathlib.Path``, or a PIL image. A plain string is read as base64 unless ``allow_paths`` is
    set: a string from the network must never name a file on the server. The pixel count is checked
    from the header before any pixel is decoded (decompression bombs), truncated files are refused
    (LOAD_TRUNCATED_IMAGES stays off), EXIF orientation is applied. Returns RGB, or RGBA when the
    image has transparency. Pillow's own bomb ceiling (2 x Image.MAX_IMAGE_PIXELS) still applies.
    """
    if max_pixels < 1:
        raise ValueError("max_pixels must be positive")
    formats = _upload_formats()

    if isinstance(data, Image.Image):
        if data.width * data.height > max_pixels:
            raise _too_many_pixels(data.width, data.height, max_pixels)
        image = data
    else:
        if isinstance(data, os.PathLike) or (allow_paths and isinstance(data, str) and os.path.isfile(data)):
            try:
                raw = Path(data).read_bytes()
            except OSError as exc:
                raise EaselError(f"Could not read the image file {os.fspath(data)!r}.") from exc
        elif isinstance(data, bytes | bytearray | memoryview):
            raw = bytes(data)
        elif isinstance(data, str):
            raw = _decode_base64(data)
        else:
            raise EaselError(f"Expected an image, got {type(data).__name__}.")
        if not raw:
            raise EaselError("The image is empty (0 bytes).")
        image = _open_checked(raw, max_pixels, formats)

    # A broken EXIF block should not cost the user their picture: keep it unrotated then.
    with contextlib.suppress(*_DECODE_ERRORS):
        image = ImageOps.exif_transpose(image)
    return _normalise_mode(image)
