"""A bare diffusers pipeline around an Easel model's modules: the baseline the benchmarks measure Easel against."""

from __future__ import annotations

from typing import Any

from diffusers import (
    EulerDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)

_SD = {
    "txt2img": StableDiffusionPipeline,
    "img2img": StableDiffusionImg2ImgPipeline,
    "inpaint": StableDiffusionInpaintPipeline,
}
_SDXL = {
    "txt2img": StableDiffusionXLPipeline,
    "img2img": StableDiffusionXLImg2ImgPipeline,
    "inpaint": StableDiffusionXLInpaintPipeline,
}


def euler_scheduler(active: Any) -> Any:
    """Euler over the model's own scheduler config, with A1111's uniform ("linspace") spacing, as Easel's Euler."""
    return EulerDiscreteScheduler.from_config({**active.model.scheduler_config, "timestep_spacing": "linspace"})


def diffusers_pipeline(active: Any, mode: str = "txt2img", scheduler: Any = None) -> Any:
    """The diffusers pipeline class for ``mode`` over ``active.model``'s modules (no copies of the weights)."""
    m = active.model
    scheduler = euler_scheduler(active) if scheduler is None else scheduler
    if m.is_sdxl:
        return _SDXL[mode](
            vae=m.vae,
            text_encoder=m.text_encoders[0],
            text_encoder_2=m.text_encoders[1],
            tokenizer=m.tokenizers[0],
            tokenizer_2=m.tokenizers[1],
            unet=m.unet,
            scheduler=scheduler,
            force_zeros_for_empty_prompt=False,
            add_watermarker=False,  # the invisible watermark is post-processing Easel does not do
        )
    return _SD[mode](
        vae=m.vae,
        text_encoder=m.text_encoders[0],
        tokenizer=m.tokenizers[0],
        unet=m.unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
