"""A1111's "Extras" resize: by a factor or to a size (cropped to fit), with up to two upscalers blended.

The result size is known from the source size alone, so a caller can refuse a request from the images' headers
before decoding a pixel. Field names follow A1111's extras API, which the error messages quote. PIL does None,
Lanczos and Nearest; a ``Resize`` function (``pipelines.upscalers``) does the model upscalers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
Resize = Callable[[Image.Image, tuple[int, int], str], Image.Image]
"""``(image, exact size, upscaler name) -> image`` for the upscalers PIL does not have."""


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

    def upscalers(self, available: Sequence[str] = UPSCALERS) -> tuple[str, str]:
        """Both upscaler names, checked against ``available`` (``UpscalerLibrary.names()``: with the models)."""
        names = (self.upscaler_1 or "None", self.upscaler_2 or "None")
        for name in names:
            if name not in available:
                raise EaselError(f"unknown upscaler '{name}'; available: {', '.join(available)}")
        return names

    @property
    def blends_second(self) -> bool:
        """Whether upscaler 2 takes part (A1111 ignores it at visibility 0)."""
        return (self.upscaler_2 or "None") != "None" and float(self.extras_upscaler_2_visibility) > 0

    def parameters(self, width: int, height: int) -> dict[str, object]:
        """What A1111 records of an extras upscale (its "Postprocess ..." keys) for a ``width`` x ``height`` source."""
        params: dict[str, object] = {}
        if self.resize_mode == SCALE_TO:
            params["Postprocess upscale to"] = f"{int(self.upscaling_resize_w)}x{int(self.upscaling_resize_h)}"
            params["Postprocess crop to fit"] = bool(self.upscaling_crop)
        else:
            params["Postprocess upscale by"] = f"{float(self.upscaling_resize):g}"
        params["Postprocess upscaler"] = self.upscaler_1 or "None"
        if self.blends_second:
            params["Postprocess upscaler 2"] = self.upscaler_2
            params["Postprocess upscaler 2 visibility"] = f"{float(self.extras_upscaler_2_visibility):g}"
        new_width, new_height = self.result_size(width, height)
        params["Postprocess size"] = f"{new_width}x{new_height}"
        return params

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


def check_results(
    spec: UpscaleSpec, sources: Sequence[tuple[str, tuple[int, int]]], available: Sequence[str] = UPSCALERS
) -> None:
    """Refuse a request whose ``(name, (width, height))`` sources would upscale past MAX_RESULTS_PIXELS in all."""
    spec.upscalers(available)
    total = 0
    for what, (width, height) in sources:
        new_width, new_height = spec.result_size(width, height)
        total += new_width * new_height
        if total > MAX_RESULTS_PIXELS:
            raise RequestTooLargeError(
                f"{what} brings this request's results to {total:,} pixels; at most {MAX_RESULTS_PIXELS:,} "
                "are allowed per request. Upscale fewer images at a time."
            )


def _pil_resize(image: Image.Image, size: tuple[int, int], upscaler: str) -> Image.Image:
    return image.resize(size, _RESAMPLE.get(upscaler, Image.Resampling.LANCZOS))


def cover_size(source: tuple[int, int], size: tuple[int, int], crop: bool) -> tuple[int, int]:
    """What ``source`` is resized to before the centre crop to ``size`` (with ``crop``: the smallest cover)."""
    if not crop:
        return size
    width, height = size
    scale = max(width / source[0], height / source[1])
    return max(width, round(source[0] * scale)), max(height, round(source[1] * scale))


def _resized(
    image: Image.Image, size: tuple[int, int], upscaler: str, crop: bool, resize: Resize | None
) -> Image.Image:
    """``image`` at ``size`` by one upscaler; with ``crop``, scaled to cover and centre-cropped (no distortion)."""
    run = _pil_resize if upscaler in UPSCALERS or resize is None else resize
    width, height = size
    if not crop:
        return run(image, size, upscaler)
    big = run(image, cover_size(image.size, size, crop), upscaler)
    left, top = (big.width - width) // 2, (big.height - height) // 2
    return big.crop((left, top, left + width, top + height))


def upscale(
    image: Image.Image, spec: UpscaleSpec, resize: Resize | None = None, available: Sequence[str] = UPSCALERS
) -> Image.Image:
    """``image`` resized as ``spec`` says; a second upscaler is blended in at its visibility (A1111's rule)."""
    first_name, second_name = spec.upscalers(available)
    size = spec.result_size(image.width, image.height)
    crop = spec.resize_mode == SCALE_TO and bool(spec.upscaling_crop)
    first = _resized(image, size, first_name, crop, resize)
    visibility = float(spec.extras_upscaler_2_visibility)
    if spec.blends_second:
        second = _resized(image, size, second_name, crop, resize)
        first = Image.blend(first.convert("RGB"), second.convert("RGB"), min(1.0, visibility))
    return first
