"""The shipped CLIP tokenizer data and the per-family diffusers config folders load offline and say the right things."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import diffusers  # noqa: E402
from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig  # noqa: E402

from pipelines.models.tokenizers import TOKENIZER_DIR, load_clip_tokenizer  # noqa: E402

CONFIGS = TOKENIZER_DIR.parent  # pipelines/models/configs: one folder per family beside the tokenizer

# family -> (pipeline class, unet in_channels, prediction_type, unet cross_attention_dim, text encoders)
CLIP_L = ("CLIPTextModel", 768, 12, "quick_gelu")
OPENCLIP_H = ("CLIPTextModel", 1024, 23, "gelu")
BIGG = ("CLIPTextModelWithProjection", 1280, 32, "gelu")
FAMILIES: dict[str, tuple[str, int, str, int, dict[str, tuple[str, int, int, str]]]] = {
    "sd1": ("StableDiffusionPipeline", 4, "epsilon", 768, {"text_encoder": CLIP_L}),
    "sd1_inpaint": ("StableDiffusionInpaintPipeline", 9, "epsilon", 768, {"text_encoder": CLIP_L}),
    "sd2": ("StableDiffusionPipeline", 4, "epsilon", 1024, {"text_encoder": OPENCLIP_H}),
    "sd2_v": ("StableDiffusionPipeline", 4, "v_prediction", 1024, {"text_encoder": OPENCLIP_H}),
    "sd2_inpaint": ("StableDiffusionInpaintPipeline", 9, "epsilon", 1024, {"text_encoder": OPENCLIP_H}),
    "sdxl": ("StableDiffusionXLPipeline", 4, "epsilon", 2048, {"text_encoder": CLIP_L, "text_encoder_2": BIGG}),
    "sdxl_inpaint": (
        "StableDiffusionXLInpaintPipeline",
        9,
        "epsilon",
        2048,
        {"text_encoder": CLIP_L, "text_encoder_2": BIGG},
    ),
    "sdxl_refiner": ("StableDiffusionXLImg2ImgPipeline", 4, "epsilon", 1280, {"text_encoder_2": BIGG}),
}

PROMPT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]


def test_tokenizer_encodes_like_clip() -> None:
    tokenizer = load_clip_tokenizer()
    assert tokenizer(["a photo of a cat"]).input_ids == [PROMPT_IDS]
    assert len(tokenizer) == 49408
    assert tokenizer.model_max_length == 77
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (49406, 49407)


def test_tokenizer_padding_per_family() -> None:
    default = load_clip_tokenizer()
    openclip = load_clip_tokenizer(pad_token="!")
    assert default is load_clip_tokenizer()  # cached
    assert openclip is not default
    assert openclip.convert_tokens_to_ids("!") == 0
    for tokenizer, pad_id in ((default, 49407), (openclip, 0)):
        ids = tokenizer("a photo of a cat", padding="max_length", max_length=tokenizer.model_max_length).input_ids
        assert len(ids) == 77
        assert ids[: len(PROMPT_IDS)] == PROMPT_IDS
        assert set(ids[len(PROMPT_IDS) :]) == {pad_id}
        assert tokenizer.pad_token_id == pad_id


def test_tokenizer_folder_is_complete() -> None:
    names = {p.name for p in TOKENIZER_DIR.iterdir()}
    assert {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"} <= names
    assert (TOKENIZER_DIR / "merges.txt").read_text(encoding="utf-8").startswith("#version: 0.2\n")
    config = json.loads((TOKENIZER_DIR / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["model_max_length"] == 77


def test_family_folders_are_exactly_the_expected_ones() -> None:
    found = {p.parent.name for p in CONFIGS.glob("*/model_index.json")}
    assert found == set(FAMILIES)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_configs_load_offline(family: str) -> None:
    pipeline_name, in_channels, prediction, cross_dim, encoders = FAMILIES[family]
    folder = CONFIGS / family

    index = diffusers.DiffusionPipeline.load_config(folder)
    assert index["_class_name"] == pipeline_name
    pipeline_cls = getattr(diffusers, pipeline_name)
    expected, optional = pipeline_cls._get_signature_keys(pipeline_cls)
    assert set(expected) <= set(index), f"model_index lacks {set(expected) - set(index)}"
    assert {k for k in index if not k.startswith("_")} <= set(expected) | set(optional)

    unet = UNet2DConditionModel.load_config(folder / "unet")
    assert unet["in_channels"] == in_channels
    assert unet["out_channels"] == 4
    assert unet["cross_attention_dim"] == cross_dim

    vae = AutoencoderKL.load_config(folder / "vae")
    assert vae["latent_channels"] == 4
    assert vae["scaling_factor"] == (0.13025 if family.startswith("sdxl") else 0.18215)

    scheduler_name = index["scheduler"][1]
    scheduler_cls = getattr(diffusers, scheduler_name)
    scheduler = scheduler_cls.from_config(scheduler_cls.load_config(folder / "scheduler"))
    assert scheduler.config.prediction_type == prediction
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert (scheduler.config.beta_start, scheduler.config.beta_end) == (0.00085, 0.012)
    # Easel swaps samplers per request; the shipped config must feed any of them.
    euler = diffusers.EulerDiscreteScheduler.from_config(scheduler.config)
    assert euler.config.prediction_type == prediction

    text_dirs = {p.name for p in folder.iterdir() if p.name.startswith("text_encoder")}
    assert text_dirs == set(encoders)
    for name, (arch, hidden, layers, act) in encoders.items():
        assert index[name] == ["transformers", arch]
        config = CLIPTextConfig.from_pretrained(folder / name, local_files_only=True)
        assert config.architectures == [arch]
        assert (config.hidden_size, config.num_hidden_layers, config.hidden_act) == (hidden, layers, act)
        assert config.hidden_size // config.num_attention_heads == 64
        assert config.vocab_size == 49408
        assert config.eos_token_id == 49407

    context = sum(CLIPTextConfig.from_pretrained(folder / n).hidden_size for n in encoders)
    assert context == cross_dim

    assert not any(folder.rglob("tokenizer*")), "tokenizers live only in configs/clip_tokenizer"
    assert not [p for p in folder.rglob("*") if p.is_file() and p.suffix != ".json"], "config folders hold JSON only"


def test_sdxl_added_conditioning_sizes() -> None:
    base = UNet2DConditionModel.load_config(CONFIGS / "sdxl" / "unet")
    refiner = UNet2DConditionModel.load_config(CONFIGS / "sdxl_refiner" / "unet")
    # pooled text embedding + 256 per time id: 6 ids for the base, 5 (with aesthetic score) for the refiner
    assert base["projection_class_embeddings_input_dim"] == 1280 + 6 * 256
    assert refiner["projection_class_embeddings_input_dim"] == 1280 + 5 * 256
    assert base["transformer_layers_per_block"] == [1, 2, 10]
    assert refiner["block_out_channels"] == [384, 768, 1536, 1536]
    assert diffusers.DiffusionPipeline.load_config(CONFIGS / "sdxl_refiner")["requires_aesthetics_score"] is True
