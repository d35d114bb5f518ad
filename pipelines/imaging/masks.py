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

import math
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter

from pipelines.errors import EaselError
from pipelines.imaging.pixels import Box, ImageLike, alpha_of, check_size, has_alpha, luminance_of, mask_array, to_image
from pipelines.imaging.resize import fit_geometry, resize_image

MASKED_CONTENT: tuple[str, ...] = ("fill", "original", "latent noise", "latent nothing")
"""A1111 ``inpainting_fill`` 0-3, by index."""

# Blur radii (Gaussian sigma, px) and repeat counts for "fill": coarse averages first, refined by
# ever more local ones, so a hole takes the colours of what surrounds it (A1111's schedule shape).
_FILL_SCHEDULE: tuple[tuple[float, int], ...] = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2))


# ---------------------------------------------------------------------------------------------
# Getting a mask
# ---------------------------------------------------------------------------------------------


def _painted_pixels(layer: Image.Image) -> np.ndarray:
    """Where a layer holds paint: alpha > 0, or any non-black pixel for layers without alpha."""
    if has_alpha(layer):
        return alpha_of(layer) > 0
    return np.asarray(layer.convert("L"), dtype=np.uint8) > 0


def is_empty_mask(mask: Image.Image | np.ndarray | None) -> bool:
    """True when nothing is masked: callers use it to tell the user to paint something first."""
    if mask is None:
        return True
    return not np.any(mask_array(mask))


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
    layer_images = [to_image(layer) for layer in layers]
    size = to_image(reference).size if reference is not None else layer_images[0].size

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
    img = to_image(image)
    if has_alpha(img):
        alpha = alpha_of(img)
        level = alpha if alpha.size and alpha.min() < 255 else luminance_of(img.convert("RGB"))
    else:
        level = luminance_of(img)
    mask = Image.fromarray(np.where(level > 127, 255, 0).astype(np.uint8), mode="L")
    if size is not None:
        size = (int(size[0]), int(size[1]))
        check_size(*size)
        if mask.size != size:
            mask = mask.resize(size, Image.Resampling.NEAREST)
    return mask


def blur_mask(mask: Image.Image | np.ndarray, radius_px: float) -> Image.Image:
    """Gaussian-feather the mask edge so the generated area fades into the original."""
    img = Image.fromarray(mask_array(mask), mode="L")
    if radius_px is None or radius_px <= 0:
        return img.copy()
    return img.filter(ImageFilter.GaussianBlur(radius_px))


def invert_mask(mask: Image.Image | np.ndarray) -> Image.Image:
    """A1111 "Inpaint not masked": regenerate everything except the painted part."""
    return Image.fromarray(255 - mask_array(mask), mode="L")


# ---------------------------------------------------------------------------------------------
# "Only masked": crop around the mask, generate at full resolution, paste back
# ---------------------------------------------------------------------------------------------


def mask_bbox(mask: Image.Image | np.ndarray) -> Box | None:
    """The smallest box holding every pixel with mask > 0, or None for an empty mask."""
    arr = mask_array(mask)
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
    check_size(width, height)
    if image.size != mask.size:
        raise ValueError(f"image {image.size} and mask {mask.size} differ in size")
    bbox = mask_bbox(mask)
    if bbox is None:
        raise EaselError("The mask is empty: paint over the part of the picture you want to change.")
    box = expand_crop_region(bbox, padding, image.size, width / height)
    cropped_image = resize_image(image.crop(box), width, height, 2)
    cropped_mask = resize_image(Image.fromarray(mask_array(mask), mode="L").crop(box), width, height, 2)
    return cropped_image, cropped_mask, box


def paste_back(original: Image.Image, generated_crop: Image.Image, box: Box, blurred_mask: Image.Image) -> Image.Image:
    """Scale a generated "only masked" crop back into its box and composite it over the original.

    Undoes crop_for_only_masked's "Resize and fill" exactly (same fit geometry), then composites
    with the blurred mask, so pixels outside the mask stay the original's bit for bit.
    """
    x0, y0, x1, y1 = (int(v) for v in box)
    box_w, box_h = x1 - x0, y1 - y0
    fitted_w, fitted_h, left, top = fit_geometry(box_w, box_h, generated_crop.width, generated_crop.height)
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
    mask = mask_array(blurred_mask)
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


def gaussian_blur_float(arr: np.ndarray, sigma: float) -> np.ndarray:
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
        blurred = gaussian_blur_float(stack, sigma)
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
    weight = mask_array(mask).astype(np.float32) / 255.0
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
    painted = torch.from_numpy((mask_array(mask) > 0).astype(np.float32))[None, None]
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
