"""A1111's "Extras" resize: by a factor or to a size (cropped to fit), with up to two upscalers blended.

The result size is known from the source size alone, so a caller can refuse a request from the images' headers
before decoding a pixel. Field names follow A1111's extras API, which the error messages quote.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from pipelines.errors import EaselError, RequestTooLargeError

UPSCALERS = ("None", "Lanczos", "Nearest")
_RESAMPLE = {"Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}
MAX_UPSCALE_FACTOR = 8
MAX_RESULT_PIXELS = 4096 * 4096
"""Pixels one upscaled result may have."""
MAX_RESULTS_PIXELS = 4 * MAX_RESULT_PIXELS
"""Pixels all the results of one request may add up to: they are all held until the reply is sent."""
SCALE_BY, SCALE_TO = 0, 1


@dataclass(frozen=True)
class UpscaleSpec:
    """How to resize: ``resize_mode`` 0 scales by ``upscaling_resize``, 1 scales to ``upscaling_resize_w/h``."""

    resize_mode: int = SCALE_BY
    upscaling_resize: float = 2
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0

    def upscalers(self) -> tuple[str, str]:
        """Both upscaler names, checked against the ones Easel has."""
        names = (self.upscaler_1 or "None", self.upscaler_2 or "None")
        for name in names:
            if name not in UPSCALERS:
                raise EaselError(f"unknown upscaler '{name}'; available: {', '.join(UPSCALERS)}")
        return names

    def result_size(self, width: int, height: int) -> tuple[int, int]:
        """The size a ``width`` x ``height`` image becomes (checked against MAX_RESULT_PIXELS)."""
        if self.resize_mode == SCALE_BY:
            factor = float(self.upscaling_resize)
            if not 0 < factor <= MAX_UPSCALE_FACTOR:
                raise EaselError(f"upscaling_resize must be between 0 and {MAX_UPSCALE_FACTOR} (got {factor:g})")
            new_width, new_height = round(width * factor), round(height * factor)
        elif self.resize_mode == SCALE_TO:
            new_width, new_height = int(self.upscaling_resize_w), int(self.upscaling_resize_h)
        else:
            raise EaselError(f"resize_mode must be 0 (scale by) or 1 (scale to), got {self.resize_mode}")
        if new_width < 1 or new_height < 1 or new_width * new_height > MAX_RESULT_PIXELS:
            raise EaselError(
                f"the result would be {new_width}x{new_height} pixels; at most {MAX_RESULT_PIXELS:,} are allowed"
            )
        return new_width, new_height


def check_results(spec: UpscaleSpec, sources: Sequence[tuple[str, tuple[int, int]]]) -> None:
    """Refuse a request whose ``(name, (width, height))`` sources would upscale past MAX_RESULTS_PIXELS in all."""
    spec.upscalers()
    total = 0
    for what, (width, height) in sources:
        new_width, new_height = spec.result_size(width, height)
        total += new_width * new_height
        if total > MAX_RESULTS_PIXELS:
            raise RequestTooLargeError(
                f"{what} brings this request's results to {total:,} pixels; at most {MAX_RESULTS_PIXELS:,} "
                "are allowed per request. Upscale fewer images at a time."
            )


def _resized(image: Image.Image, size: tuple[int, int], upscaler: str, crop: bool) -> Image.Image:
    """``image`` at ``size`` by one upscaler; with ``crop``, scaled to cover and centre-cropped (no distortion)."""
    resample = _RESAMPLE.get(upscaler, Image.Resampling.LANCZOS)
    width, height = size
    if not crop:
        return image.resize(size, resample)
    scale = max(width / image.width, height / image.height)
    big = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))), resample)
    left, top = (big.width - width) // 2, (big.height - height) // 2
    return big.crop((left, top, left + width, top + height))


def upscale(image: Image.Image, spec: UpscaleSpec) -> Image.Image:
    """``image`` resized as ``spec`` says; a second upscaler is blended in at its visibility (A1111's rule)."""
    first_name, second_name = spec.upscalers()
    size = spec.result_size(image.width, image.height)
    crop = spec.resize_mode == SCALE_TO and bool(spec.upscaling_crop)
    first = _resized(image, size, first_name, crop)
    visibility = float(spec.extras_upscaler_2_visibility)
    if second_name != "None" and visibility > 0:
        second = _resized(image, size, second_name, crop)
        first = Image.blend(first.convert("RGB"), second.convert("RGB"), min(1.0, visibility))
    return first
