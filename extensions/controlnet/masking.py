"""Masks in ControlNet units: the inpaint hint's -1 pixels, and inpaint_only's "keep the rest of the picture".

The inpaint ControlNets (lllyasviel's ``control_v11p_sd15_inpaint``) were trained on the picture with the pixels to
repaint set to -1 (the rest in 0..1). The ``inpaint`` / ``inpaint_only`` preprocessors carry the mask in their map's
alpha channel (``image_maps.inpaint_hint``); ``hint_array`` makes the hint from it at each size.

``inpaint_only`` also keeps the picture outside the mask. In the inpaint tab the tab does that already (its mask,
its composite), so the unit only gives the hint. Elsewhere (txt2img, img2img) the unit's own mask decides, as
sd-webui-controlnet does it: at every model call the prediction of the clean image (``denoised``) outside the
mask, slightly grown, is replaced by the control picture's latents, blended by the unit's weight (0..1); the
finished picture is then composited over the control picture with the mask grown and feathered (7 px).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from pipelines.imaging.latents import encode_images
from pipelines.imaging.masks import invert_mask, mask_from_upload

from .units import Unit, fit

FEATHER_PX = 7  # sd-webui-controlnet's default "inpaint blur sigma": the grow and box-blur size of the composite


def fit_mask(mask: Image.Image, width: int, height: int, resize_mode: int) -> np.ndarray:
    """A 0/255 mask brought to ``width`` x ``height`` as the control picture is (so they stay aligned), as 0/1."""
    fitted = fit(mask.convert("L").convert("RGB"), width, height, resize_mode)
    return (np.asarray(fitted)[..., 0] > 127).astype(np.float32)


def hint_array(detected: Image.Image, width: int, height: int, resize_mode: int) -> np.ndarray:
    """The hint ``[H, W, 3]`` float32 in 0..1 at this size; a map with a mask in alpha gets -1 where it is set."""
    if detected.mode != "RGBA":
        return np.asarray(fit(detected, width, height, resize_mode), dtype=np.float32) / 255.0
    rgb = np.asarray(fit(detected.convert("RGB"), width, height, resize_mode), dtype=np.float32) / 255.0
    masked = fit_mask(detected.getchannel("A"), width, height, resize_mode)[..., None]
    return rgb * (1.0 - masked) - masked


def preview(detected: Image.Image) -> Image.Image:
    """What the UI shows of a map: an inpaint hint's masked (-1) pixels black, the rest as they are."""
    if detected.mode != "RGBA":
        return detected
    array = np.asarray(detected)
    return Image.fromarray(np.where(array[..., 3:] > 127, 0, array[..., :3]).astype(np.uint8), "RGB")


def unit_mask(unit: Unit, request: Any) -> Image.Image | None:
    """The mask an inpaint hint uses: the unit's own, else (inpaint tab) the tab's, inverted as the tab inverts it."""
    if unit.mask is not None:
        return unit.mask
    if request.mode != "inpaint" or request.mask is None or request.init_image is None:
        return None
    mask = mask_from_upload(request.mask, request.init_image.size)
    return invert_mask(mask) if request.inpainting_mask_invert else mask


@dataclass
class KeepOutside:
    """inpaint_only outside the inpaint tab: the picture outside ``mask`` is the control picture's."""

    picture: Image.Image  # the control picture, as given (fitted to each size when used)
    mask: Image.Image  # "L", 255 = the area to change
    resize_mode: int
    weight: float
    vae: Any
    _latents: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def _at(self, height: int, width: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The control picture's latents and the latent mask (max-pooled, so it reaches a little past the edge)."""
        key = (height, width)
        if key not in self._latents:
            latents = encode_images(self.vae, [fit(self.picture, width, height, self.resize_mode)])
            pixels = torch.from_numpy(fit_mask(self.mask, width, height, self.resize_mode))[None, None]
            grown = torch.nn.functional.max_pool2d(pixels, (10, 10), stride=(8, 8), padding=1)
            self._latents[key] = (latents, grown)
        latents, grown = self._latents[key]
        return latents.to(like.device, like.dtype), grown.to(like.device, like.dtype)

    def blend(self, denoised: torch.Tensor) -> torch.Tensor:
        """The clean-image prediction with the unmasked area the control picture's (blended by the weight)."""
        height, width = denoised.shape[-2] * 8, denoised.shape[-1] * 8
        latents, mask = self._at(height, width, denoised)
        if latents.shape[-2:] != denoised.shape[-2:]:  # a VAE that is not 8x: nothing sensible to keep
            return denoised
        kept = denoised * mask + latents * (1.0 - mask)
        strength = min(max(self.weight, 0.0), 1.0)
        return denoised * (1.0 - strength) + kept * strength

    def composite(self, image: Image.Image) -> Image.Image:
        """The finished picture over the control picture, through the grown and feathered mask."""
        width, height = image.size
        hard = fit_mask(self.mask, width, height, self.resize_mode)
        grown = ndimage.maximum_filter(hard, size=FEATHER_PX)
        alpha = np.clip(ndimage.uniform_filter(grown, size=FEATHER_PX), 0.0, 1.0)[..., None]
        original = np.asarray(fit(self.picture, width, height, self.resize_mode), dtype=np.float32)
        generated = np.asarray(image.convert("RGB"), dtype=np.float32)
        mixed = generated * alpha + original * (1.0 - alpha)
        return Image.fromarray(np.clip(np.rint(mixed), 0, 255).astype(np.uint8), "RGB")


def keep_outside(unit: Unit, picture: Image.Image, mask: Image.Image | None, request: Any, vae: Any) -> Any:
    """The unit's KeepOutside when it is inpaint_only with a mask outside the inpaint tab, else None."""
    if unit.module != "inpaint_only" or mask is None or request.mode == "inpaint" or unit.weight == 0:
        return None
    return KeepOutside(picture.convert("RGB"), mask, unit.resize_mode, unit.weight, vae)


def after_guidance(prepared: list[Any], denoised: torch.Tensor) -> torch.Tensor:
    for unit in prepared:
        if unit.keep is not None:
            denoised = unit.keep.blend(denoised)
    return denoised


def after_image(prepared: list[Any], image: Image.Image) -> Image.Image | None:
    kept = [unit.keep for unit in prepared if unit.keep is not None]
    for keep in kept:
        image = keep.composite(image)
    return image if kept else None
