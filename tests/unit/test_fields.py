"""The field registry: one declaration per field, from which the infotext writer and reader are derived."""

from __future__ import annotations

from dataclasses import replace

import pytest
from PIL import Image

from pipelines.errors import EaselError
from pipelines.fields import FIELDS, FieldRegistry, Infotext, RequestField, Widget
from pipelines.metadata.infotext import format_infotext
from pipelines.metadata.infotext_request import request_from_infotext
from pipelines.requests import GenerationRequest

PICTURE = Image.new("RGB", (64, 64))
# a value other than the default for every field that writes an infotext key, per mode
TXT2IMG = GenerationRequest(
    prompt="a lighthouse, (storm:1.2)",
    negative_prompt="blurry",
    sampler="DPM++ 2M",
    schedule_type="Karras",
    steps=31,
    cfg_scale=5.5,
    width=640,
    height=448,
    seed=1234,
    clip_skip=2,
    subseed=77,
    subseed_strength=0.25,
    seed_resize_from_w=512,
    seed_resize_from_h=384,
    enable_hr=True,
    hr_scale=1.5,
    hr_second_pass_steps=12,
    hr_upscaler="Lanczos",
    hr_sampler_name="Euler",
    hr_scheduler="Exponential",
    hr_prompt="a lighthouse at night",
    hr_negative_prompt="noise",
    denoising_strength=0.45,
)
INPAINT = GenerationRequest(
    mode="inpaint",
    prompt="a red door",
    init_image=PICTURE,
    mask=PICTURE.convert("L"),
    seed=9,
    denoising_strength=0.6,
    mask_blur=9,
    inpaint_full_res=True,
    inpaint_full_res_padding=48,
    inpainting_fill=2,
    inpainting_mask_invert=True,
)
IMG2IMG = GenerationRequest(mode="img2img", prompt="oil", init_image=PICTURE, seed=3, resize_mode=2)


def infotext_of(request: GenerationRequest) -> str:
    checked = request.validated()
    return format_infotext(checked.prompt, checked.negative_prompt, FIELDS.infotext_params(checked, checked.seed))


@pytest.mark.parametrize("request_", [TXT2IMG, INPAINT, IMG2IMG], ids=["txt2img", "inpaint", "img2img"])
def test_every_written_field_reads_back_as_it_was(request_: GenerationRequest) -> None:
    checked = request_.validated()
    parsed = request_from_infotext(infotext_of(request_))
    assert parsed.skipped == {}
    written = {f.name for f in FIELDS if f.infotext and parsed.kwargs.get(f.name) is not None}
    assert len(written) >= 8
    for name in written - {"enable_hr"}:
        assert parsed.kwargs[name] == getattr(checked, name), name


def test_resize_with_hires_resize_to_writes_the_size_and_not_the_scale() -> None:
    text = infotext_of(replace(TXT2IMG, hr_resize_x=1024, hr_resize_y=768))
    assert "Hires resize: 1024x768" in text and "Hires upscale:" not in text
    parsed = request_from_infotext(text)
    assert (parsed.kwargs["hr_resize_x"], parsed.kwargs["hr_resize_y"], parsed.kwargs["enable_hr"]) == (1024, 768, True)


def test_defaults_write_nothing_a1111_leaves_out() -> None:
    text = infotext_of(GenerationRequest(prompt="x", seed=1))
    for key in ("Schedule type", "Clip skip", "Denoising strength", "Hires", "Variation seed", "Mask blur", "Resize"):
        assert key not in text, key
    assert "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512" in text


def test_mode_specific_keys_stay_in_their_mode() -> None:
    inpaint_text = infotext_of(replace(INPAINT, resize_mode=1))
    assert "Resize mode" not in inpaint_text and "Masked content: latent noise" in inpaint_text
    assert "Mask mode: Inpaint not masked" in inpaint_text and "Masked area padding: 48" in inpaint_text
    assert "Resize mode: Resize and fill" in infotext_of(IMG2IMG)
    assert "Mask blur" not in infotext_of(IMG2IMG)


def test_bounds_come_from_the_declarations() -> None:
    with pytest.raises(EaselError, match="Steps must be between 1 and 150"):
        GenerationRequest(steps=151).validated()
    with pytest.raises(EaselError, match="Width must be a multiple of 8"):
        GenerationRequest(width=100).validated()
    with pytest.raises(EaselError, match="Only masked padding must be between 0 and 256"):
        replace(INPAINT, inpaint_full_res_padding=300).validated()


def test_coercion_refuses_what_is_not_a_finite_number() -> None:
    assert FIELDS.from_values(("steps", "seed", "cfg_scale"), (12.0, None, "6.5")) == {
        "steps": 12,
        "seed": -1,
        "cfg_scale": 6.5,
    }
    with pytest.raises(EaselError, match="finite number"):
        FIELDS["cfg_scale"].coerce(float("inf"))
    with pytest.raises(EaselError, match="finite number"):
        FIELDS["steps"].coerce("many")


def test_extension_fields_are_namespaced_and_never_shadow() -> None:
    registry = FieldRegistry(list(FIELDS))
    weight = registry.register(
        RequestField(
            "mytool.weight",
            float,
            1.0,
            owner="mytool",
            api="mytool_weight",
            bounds=(0, 2),
            infotext=Infotext("MyTool weight", lambda r, _s: None, float),
            widget=Widget("slider", "MyTool weight", "mytool_weight", 0, 2, 0.05),
        )
    )
    assert registry.owned_by("mytool") == [weight] and "mytool.weight" in registry
    with pytest.raises(EaselError, match="must be named 'other.<name>'"):
        registry.register(RequestField("weight", float, 1.0, owner="other"))
    with pytest.raises(EaselError, match="declared twice"):
        registry.register(RequestField("steps", int, 1))
    with pytest.raises(EaselError, match="already 'steps'"):
        registry.register(RequestField("x.steps", int, 1, owner="x", api="steps"))
    assert "mytool.weight" not in FIELDS  # the shared registry is untouched


def test_widget_ids_and_api_names_are_unique() -> None:
    elems = [f.widget.elem for f in FIELDS if f.widget]
    assert len(elems) == len(set(elems))
    apis = [f.api for f in FIELDS if f.api]
    assert len(apis) == len(set(apis))
    request_fields = set(GenerationRequest.__dataclass_fields__)
    assert {f.name for f in FIELDS} <= request_fields  # every core field is a request attribute
