"""Real A1111 infotexts -> request fields (PNG Info "Send to", ↙ read parameters, the API's ``infotext`` field)."""

from __future__ import annotations

from pipelines.metadata.infotext_request import request_from_infotext
from pipelines.requests import GenerationRequest

A1111_HIRES = (
    "masterpiece, (best quality:1.2), 1girl, <lora:add_detail:0.6>\n"
    "sitting on a bench, 猫耳\n"
    "Negative prompt: (worst quality:1.4), lowres,\n"
    "bad hands\n"
    "Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 3221585637, Size: 512x768, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, VAE hash: 735e4c3a44, VAE: vae-ft-mse-840000.safetensors, "
    "Denoising strength: 0.45, Clip skip: 2, Hires upscale: 1.75, Hires steps: 12, "
    'Hires upscaler: Latent (bicubic antialiased), Lora hashes: "add_detail: 7c6bad76eb54", '
    'Hires prompt: "a, b: c", Version: v1.10.1'
)
A1111_VARIATION = (
    "a castle\n"
    "Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 1, Size: 512x512, "
    "Variation seed: 42, Variation seed strength: 0.3, Seed resize from: 768x512, Version: v1.9.4"
)
COMFY_LIKE = 'a fox\nsteps: many, cfg: 8, sampler: "weird", seed: abc'


def test_a1111_hires_infotext_fills_every_field() -> None:
    parsed = request_from_infotext(A1111_HIRES)
    kw = parsed.kwargs
    assert kw["prompt"] == "masterpiece, (best quality:1.2), 1girl, <lora:add_detail:0.6>\nsitting on a bench, 猫耳"
    assert kw["negative_prompt"] == "(worst quality:1.4), lowres,\nbad hands"
    assert (kw["steps"], kw["sampler"], kw["schedule_type"], kw["cfg_scale"]) == (28, "DPM++ 2M", "Karras", 6.5)
    assert (kw["seed"], kw["width"], kw["height"], kw["clip_skip"]) == (3221585637, 512, 768, 2)
    assert kw["enable_hr"] is True and kw["hr_scale"] == 1.75 and kw["hr_second_pass_steps"] == 12
    assert kw["hr_upscaler"] == "Latent (bicubic antialiased)" and kw["denoising_strength"] == 0.45
    assert kw["hr_prompt"] == "a, b: c" and kw["vae"] == "vae-ft-mse-840000.safetensors"
    assert parsed.model_name == "v1-5-pruned-emaonly" and parsed.model_hash == "6ce0161689"
    assert parsed.skipped == {}
    request = GenerationRequest(**kw).validated()  # everything it read is a valid request
    assert request.hr_scale == 1.75


def test_variation_and_resize_from() -> None:
    kw = request_from_infotext(A1111_VARIATION).kwargs
    assert (kw["subseed"], kw["subseed_strength"]) == (42, 0.3)
    assert (kw["seed_resize_from_w"], kw["seed_resize_from_h"]) == (768, 512)
    assert "enable_hr" not in kw


def test_another_tools_text_is_read_as_far_as_it_goes() -> None:
    parsed = request_from_infotext(COMFY_LIKE)
    assert parsed.kwargs["prompt"].startswith("a fox")
    assert "steps" not in parsed.kwargs
    assert request_from_infotext("").kwargs == {"prompt": "", "negative_prompt": ""}
    bad = request_from_infotext("x\nSteps: twenty, Seed: 1.5, CFG scale: 7, Size: 64x64")
    assert set(bad.skipped) == {"Steps", "Seed"} and bad.kwargs["cfg_scale"] == 7.0


def test_nan_and_infinity_in_an_infotext_are_skipped_not_read() -> None:
    """float("nan") parses: a NaN denoising strength reached requests (and JSON replies) unchecked."""
    parsed = request_from_infotext("x\nSteps: 3, CFG scale: nan, Denoising strength: inf, Seed: 1e400, Size: 64x64")
    assert set(parsed.skipped) == {"CFG scale", "Denoising strength", "Seed"}
    assert "cfg_scale" not in parsed.kwargs and "denoising_strength" not in parsed.kwargs
