"""The A1111 request and response models: field names, types and defaults exactly as A1111's API has them.

Unknown fields and nulls are accepted (``extra="allow"``, every field optional) so existing clients work
unchanged; NaN, Infinity and deep nesting are refused before any field is read. The response models document
``/docs``; the handlers return plain dicts of the same shape.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from pipelines.fields import FIELDS
from webui.api.checks import unusable_json


# -- request models (A1111 names and defaults) ---------------------------------------------------------------
class A1111Model(BaseModel):
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _usable_json(cls, data: Any) -> Any:
        """Refuse NaN, Infinity and deep nesting in any field, declared or extra, before fields are read."""
        problem = unusable_json(data)
        if problem:
            raise ValueError(problem)
        return data


class GenerationFields(A1111Model):
    """A1111 payload fields Easel accepts whatever their registry status: options, scripts, features it lacks."""

    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool | None = False
    do_not_save_grid: bool | None = False
    s_min_uncond: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool | None = True
    disable_extra_networks: bool | None = False
    comments: dict[str, Any] | None = None
    sampler_index: str | None = Field(default="Euler", description="deprecated: use sampler_name")
    script_name: str | None = None
    script_args: list[Any] | None = Field(default_factory=list)
    send_images: bool | None = True
    save_images: bool | None = False
    alwayson_scripts: dict[str, Any] | None = Field(default_factory=dict)
    infotext: str | None = None


def registry_fields(endpoint: str) -> dict[str, Any]:
    """The request fields of ``/sdapi/v1/<endpoint>`` from the field registry: A1111's name, type and default."""
    return {
        field.api: ((field.api_kind or field.kind) | None, field.payload_default_for(endpoint))
        for field in FIELDS.api_fields(endpoint)
        if field.api
    }


Txt2ImgRequest = create_model(
    "Txt2ImgRequest",
    __base__=GenerationFields,
    **registry_fields("txt2img"),
    firstphase_width=(int | None, 0),
    firstphase_height=(int | None, 0),
    hr_checkpoint_name=(str | None, None),
    force_task_id=(str | None, None),
)
Img2ImgRequest = create_model(
    "Img2ImgRequest",
    __base__=GenerationFields,
    **registry_fields("img2img"),
    init_images=(list[str] | None, None),
    image_cfg_scale=(float | None, None),
    mask=(str | None, None),
    mask_blur_x=(int | None, 4),
    mask_blur_y=(int | None, 4),
    mask_round=(bool | None, True),
    initial_noise_multiplier=(float | None, None),
    latent_mask=(str | None, None),
    include_init_images=(bool | None, False),
    force_task_id=(str | None, None),
)


class PngInfoRequest(A1111Model):
    image: str | None = ""


class ExtrasBase(A1111Model):
    resize_mode: int | None = 0
    show_extras_results: bool | None = True
    gfpgan_visibility: float | None = 0
    codeformer_visibility: float | None = 0
    codeformer_weight: float | None = 0
    upscaling_resize: float | None = 2
    upscaling_resize_w: int | None = 512
    upscaling_resize_h: int | None = 512
    upscaling_crop: bool | None = True
    upscaler_1: str | None = "None"
    upscaler_2: str | None = "None"
    extras_upscaler_2_visibility: float | None = 0
    upscale_first: bool | None = False


class ExtrasSingleImageRequest(ExtrasBase):
    image: str | None = ""


class FileData(A1111Model):
    data: str
    name: str | None = ""


class ExtrasBatchImagesRequest(ExtrasBase):
    imageList: list[FileData] | None = None  # noqa: N815 (A1111's name)


# -- response models (for /docs; handlers return plain dicts of the same shape) -----------------------------
class GenerationResponse(BaseModel):
    images: list[str] | None = None
    parameters: dict[str, Any]
    info: str


class ProgressState(A1111Model):
    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: ProgressState
    current_image: str | None = None
    textinfo: str | None = None


class PngInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


class ExtrasSingleImageResponse(BaseModel):
    html_info: str
    image: str | None = None


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]


class SDModelItem(BaseModel):
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, str]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float | None = None
    need_inner_model: bool | None = None


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class LoraItem(BaseModel):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any]


class VaeItem(BaseModel):
    model_name: str
    filename: str


class EmbeddingsResponse(BaseModel):
    loaded: dict[str, dict[str, Any]]
    skipped: dict[str, dict[str, Any]]


class ScriptsList(BaseModel):
    txt2img: list[str]
    img2img: list[str]
