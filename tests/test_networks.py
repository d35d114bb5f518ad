"""LoRA, embeddings, VAE, styles, prompt editing, hires fix and variation seeds through the engine (tiny models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from pipelines.conditioning.scheduled import encode_conditioning
from pipelines.conditioning.styles import PromptStyle, StyleLibrary, apply_styles, merge_style
from pipelines.errors import EaselError
from pipelines.generate import Engine, EngineSettings
from pipelines.metadata.infotext import parse_infotext, read_image_parameters
from pipelines.metadata.infotext_request import request_from_infotext, resolve_checkpoint
from pipelines.models.checkpoints import HashCache
from pipelines.models.ldm_layout import vae_to_ldm
from pipelines.models.manager import PipelineManager
from pipelines.models.tiny_models import build_tiny_components
from pipelines.networks.embeddings import EmbeddingLibrary
from pipelines.networks.lora import LoraTargets, applied_loras, lora_delta, parse_lora_state_dict
from pipelines.requests import GenerationRequest
from pipelines.sampling.rng import ImageRNG, paste_centred

FAST = {"steps": 3, "width": 64, "height": 64, "cfg_scale": 5.0, "save": False}


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def _factors(weight: torch.Tensor, rank: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    if weight.dim() == 2:
        down = torch.randn(rank, weight.shape[1], generator=generator) * 0.1
        up = torch.randn(weight.shape[0], rank, generator=generator) * 0.1
    else:
        down = torch.randn(rank, *weight.shape[1:], generator=generator) * 0.1
        up = torch.randn(weight.shape[0], rank, 1, 1, generator=generator) * 0.1
    return down, up


def kohya_lora(components: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every Linear/Conv2d of the tiny SD1 UNet and text encoder, kohya-named, rank 2, alpha 1."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    parts = [("lora_unet_", "", components["unet"]), ("lora_te_", "text_model.", components["text_encoder"])]
    for prefix, inner, model in parts:
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
                key = prefix + (inner + name).replace(".", "_")
                down, up = _factors(module.weight, 2, generator)
                state.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up})
                state[f"{key}.alpha"] = torch.tensor(1.0)
    return state


def diffusers_lora(components: dict, seed: int = 1) -> dict[str, torch.Tensor]:
    """PEFT layout: the attention projections of the UNet and text encoder."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    parts = [("unet.", "", components["unet"]), ("text_encoder.", "text_model.", components["text_encoder"])]
    for prefix, inner, model in parts:
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in ("to_q", "to_v", "q_proj", "v_proj"):
                down, up = _factors(module.weight, 4, generator)
                state[f"{prefix}{inner}{name}.lora_A.weight"] = down
                state[f"{prefix}{inner}{name}.lora_B.weight"] = up
    return state


@pytest.fixture(scope="session")
def net_models(tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An A1111 layout with LoRAs, VAEs, embeddings and a styles file around the tiny SD1 checkpoint."""
    root = tmp_path_factory.mktemp("netroot")
    models = root / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    (models / "Stable-diffusion" / "tiny-sd1.safetensors").hardlink_to(tiny.single_file("sd1"))
    (models / "Stable-diffusion" / "tiny-sdxl.safetensors").hardlink_to(tiny.single_file("sdxl"))
    lora = models / "Lora"
    (lora / "sub").mkdir(parents=True)
    components = tiny.components("sd1")
    save_file(kohya_lora(components), str(lora / "kohya.safetensors"))
    save_file(diffusers_lora(components), str(lora / "sub" / "peft.safetensors"))
    (lora / "corrupt.safetensors").write_bytes(b"\x00this is not a safetensors file")
    save_file({"something.else": torch.zeros(3)}, str(lora / "foreign.safetensors"))
    vae = models / "VAE"
    vae.mkdir()
    other = build_tiny_components("sd1", seed=7)["vae"].state_dict()
    state = {k.removeprefix("first_stage_model."): v.contiguous() for k, v in vae_to_ldm(other).items()}
    save_file(state, str(vae / "other.vae.safetensors"))
    emb = models / "embeddings"
    emb.mkdir()
    vectors = torch.randn(2, 64, generator=torch.Generator().manual_seed(3))
    save_file({"emb_params": vectors}, str(emb / "tinyemb.safetensors"))
    save_file({"emb_params": torch.randn(1, 32)}, str(emb / "narrow.safetensors"))
    torch.save({"string_to_param": {"*": torch.randn(1, 64)}, "name": "old"}, emb / "old.pt")
    (root / "styles.csv").write_text(
        'name,prompt,negative_prompt\nfancy,"masterpiece, {prompt}, detailed",lowres\nplain,"oil painting",\n'
    )
    return models


@pytest.fixture(scope="session")
def net_engine(net_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    outputs = tmp_path_factory.mktemp("net-outputs")
    manager = PipelineManager(
        net_models / "Stable-diffusion", torch.device("cpu"), torch.float32, HashCache(outputs / "hashes.json"), 2
    )
    engine = Engine(manager, outputs, EngineSettings(preview_every=0))
    engine.manager.activate("tiny-sd1")
    return engine


def _weights(engine: Engine) -> dict[str, torch.Tensor]:
    model = engine.manager.activate("tiny-sd1").model
    state = {f"unet.{k}": v.clone() for k, v in model.unet.state_dict().items()}
    state.update({f"te.{k}": v.clone() for k, v in model.text_encoders[0].state_dict().items()})
    return state


def _same_weights(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> bool:
    return before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


# -- LoRA ---------------------------------------------------------------------------------------------------------
def test_kohya_lora_changes_the_image_and_the_weights_come_back_bit_identical(net_engine: Engine) -> None:
    before = _weights(net_engine)
    base = net_engine.generate(GenerationRequest(prompt="a cat", seed=5, **FAST))
    worn = net_engine.generate(GenerationRequest(prompt="a cat <lora:kohya:0.8>", seed=5, **FAST))
    assert _same_weights(before, _weights(net_engine))
    assert not np.array_equal(pixels(base.images[0]), pixels(worn.images[0]))
    assert worn.warnings == []
    fields = parse_infotext(worn.infotexts[0])
    assert fields["Prompt"] == "a cat <lora:kohya:0.8>"
    name, digest = fields["Lora hashes"].split(": ")
    assert name == "kohya" and len(digest) == 12 and int(digest, 16) >= 0
    zero = net_engine.generate(GenerationRequest(prompt="a cat <lora:kohya:0>", seed=5, **FAST))
    assert np.array_equal(pixels(base.images[0]), pixels(zero.images[0]))
    after = net_engine.generate(GenerationRequest(prompt="a cat", seed=5, **FAST))  # the next request: base model
    assert np.array_equal(pixels(base.images[0]), pixels(after.images[0]))


def test_text_encoder_and_unet_weights_of_a_tag_apply_separately(net_engine: Engine) -> None:
    base = net_engine.generate(GenerationRequest(prompt="a cat", seed=5, **FAST))
    te_only = net_engine.generate(GenerationRequest(prompt="a cat <lora:kohya:1:0>", seed=5, **FAST))
    unet_only = net_engine.generate(GenerationRequest(prompt="a cat <lora:kohya:0:1>", seed=5, **FAST))
    both = net_engine.generate(GenerationRequest(prompt="a cat <lora:kohya:1>", seed=5, **FAST))
    images = [pixels(r.images[0]) for r in (base, te_only, unet_only, both)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.array_equal(images[i], images[j]), (i, j)


def test_diffusers_lora_in_a_subfolder_applies_and_restores(net_engine: Engine) -> None:
    before = _weights(net_engine)
    base = net_engine.generate(GenerationRequest(prompt="a cat", seed=6, **FAST))
    worn = net_engine.generate(GenerationRequest(prompt="a cat <lora:peft:1>", seed=6, **FAST))
    assert worn.warnings == []
    assert not np.array_equal(pixels(base.images[0]), pixels(worn.images[0]))
    assert _same_weights(before, _weights(net_engine))


def test_lora_delta_is_up_times_down_scaled_by_alpha_over_rank() -> None:
    components = build_tiny_components("sd1", seed=1)
    unet, te = components["unet"], components["text_encoder"]
    down, up = torch.randn(4, 64), torch.randn(64, 4)
    conv_down, conv_up = torch.randn(2, 32, 3, 3), torch.randn(32, 2, 1, 1)
    state = {
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": down,
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": up,
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha": torch.tensor(2.0),
        "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": conv_down,
        "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight": conv_up,
        "lora_unet_down_blocks_0_resnets_0_conv1.hada_w1_a": torch.zeros(1),
    }
    lora = parse_lora_state_dict("t", Path("t.safetensors"), state)
    assert lora.unsupported == ["lora_unet_down_blocks_0_resnets_0_conv1.hada_w1_a"]
    q = te.encoder.layers[0].self_attn.q_proj.weight
    conv = unet.down_blocks[0].resnets[0].conv1.weight
    q0, conv0 = q.clone(), conv.clone()
    warnings: list[str] = []
    from pipelines.networks.lora import LoraUse

    with applied_loras([LoraUse(lora, 0.5, 2.0)], LoraTargets(unet, [te]), warnings):
        torch.testing.assert_close(q, q0 + 0.5 * (up @ down) * (2.0 / 4))
        expected_conv = (conv_up.flatten(1) @ conv_down.flatten(1)).reshape(conv.shape)
        torch.testing.assert_close(conv, conv0 + 2.0 * expected_conv)
    assert torch.equal(q, q0) and torch.equal(conv, conv0)
    assert len(warnings) == 1 and "hada_w1_a" in warnings[0]
    with pytest.raises(ValueError, match="does not fit"):
        lora_delta(lora.layers["lora_te_text_model_encoder_layers_0_self_attn_q_proj"], torch.Size([3, 3]))


def test_sdxl_kohya_names_in_the_original_layout_reach_the_right_modules() -> None:
    components = build_tiny_components("sdxl", seed=1)
    targets = LoraTargets(components["unet"], [components["text_encoder"], components["text_encoder_2"]])
    ldm_names = [name for name in targets.modules if name.startswith("lora_unet_input_blocks_")]
    assert ldm_names
    kind, module = targets.find("lora_unet_input_blocks_0_0")
    assert kind == "unet" and module is components["unet"].conv_in
    _, te2_q = targets.find("lora_te2_text_model_encoder_layers_0_self_attn_q_proj")
    assert te2_q is components["text_encoder_2"].text_model.encoder.layers[0].self_attn.q_proj
    _, te1_q = targets.find("lora_te1_text_model_encoder_layers_0_self_attn_q_proj")
    assert te1_q is components["text_encoder"].encoder.layers[0].self_attn.q_proj


@pytest.mark.parametrize(
    ("tag", "message"),
    [
        ("<lora:nobody:1>", "LoRA 'nobody' not found"),
        ("<lora:corrupt:1>", "corrupt"),
        ("<lora:foreign:1>", "no LoRA layers"),
        ("<hypernet:thing:1>", "not supported"),
    ],
)
def test_missing_corrupt_and_foreign_loras_warn_and_generate_anyway(net_engine: Engine, tag: str, message: str) -> None:
    base = net_engine.generate(GenerationRequest(prompt="a cat", seed=8, **FAST))
    result = net_engine.generate(GenerationRequest(prompt=f"a cat {tag}", seed=8, **FAST))
    assert len(result.warnings) == 1 and message in result.warnings[0]
    assert np.array_equal(pixels(base.images[0]), pixels(result.images[0]))


def test_a_lora_for_another_family_is_skipped_with_a_warning(net_engine: Engine) -> None:
    try:
        result = net_engine.generate(
            GenerationRequest(prompt="a cat <lora:kohya:1>", checkpoint="tiny-sdxl", seed=2, **FAST)
        )
    finally:
        net_engine.manager.activate("tiny-sd1")
    assert any("does not fit this model" in w for w in result.warnings)


def test_bad_lora_weight_is_a_clear_error(net_engine: Engine) -> None:
    with pytest.raises(EaselError, match="not a number"):
        net_engine.generate(GenerationRequest(prompt="a cat <lora:kohya:lots>", seed=8, **FAST))


# -- embeddings ---------------------------------------------------------------------------------------------------
def test_embedding_is_used_by_file_stem_and_recorded(net_engine: Engine) -> None:
    plain = net_engine.generate(GenerationRequest(prompt="a cat", seed=4, **FAST))
    with_embedding = net_engine.generate(GenerationRequest(prompt="a tinyemb cat", seed=4, **FAST))
    word = net_engine.generate(GenerationRequest(prompt="a tinyembx cat", seed=4, **FAST))
    assert not np.array_equal(pixels(plain.images[0]), pixels(with_embedding.images[0]))
    assert not np.array_equal(pixels(word.images[0]), pixels(with_embedding.images[0]))
    assert with_embedding.warnings == []
    assert parse_infotext(with_embedding.infotexts[0])["TI hashes"].startswith("tinyemb: ")
    encoder = net_engine.prompt_encoder(net_engine.manager.active)
    assert "tinyemb" in encoder.embedding_names
    assert encoder.count_tokens("a tinyemb cat")[0] == 4  # the embedding counts its 2 vectors


def test_incompatible_and_pickle_embeddings_are_listed_not_fatal(net_engine: Engine, net_models: Path) -> None:
    result = net_engine.generate(GenerationRequest(prompt="narrow old cat", seed=4, **FAST))
    assert len(result.images) == 1
    joined = " | ".join(result.warnings)
    assert "embedding 'narrow' was not used" in joined and "widths" in joined
    assert "embedding 'old' was not used" in joined and "--allow-pickle" in joined
    allowed = EmbeddingLibrary(net_models / "embeddings", allow_pickle=True).current()
    assert set(allowed.vectors) == {"tinyemb", "narrow", "old"} and allowed.vectors["old"].shape == (1, 64)


# -- prompt editing -----------------------------------------------------------------------------------------------
def test_prompt_editing_and_alternation_switch_conditioning_per_step(
    net_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compared on the final latents: on the tiny model a prompt change in the last, low-noise steps moves them by
    ~1e-4, below one grey level, and the same request twice gives the same latents exactly (so any difference is
    the conditioning)."""
    import pipelines.generate as generate_module

    captured: list[torch.Tensor] = []
    real = generate_module.decode_latents
    monkeypatch.setattr(generate_module, "decode_latents", lambda vae, x: captured.append(x.clone()) or real(vae, x))

    def image(prompt: str, **extra) -> np.ndarray:
        net_engine.generate(GenerationRequest(prompt=prompt, seed=3, **{**FAST, **extra}))
        return captured[-1].numpy()

    cat, dog = image("a cat"), image("a dog")
    edited = image("a [cat:dog:1]")
    assert not np.array_equal(edited, cat) and not np.array_equal(edited, dog)
    assert np.array_equal(image("a [cat:dog:5]"), cat)  # switches after the last step: never
    assert np.array_equal(image("a [cat:dog:0]"), dog)  # switches before the first step
    alternating = image("a [cat|dog]")
    assert not np.array_equal(alternating, cat) and not np.array_equal(alternating, dog)
    assert not np.array_equal(image("a cat", negative_prompt="[ugly:blurry:1]"), image("a cat", negative_prompt="ugly"))
    # no CFG (scale 1): only the positive embeddings are swapped
    assert not np.array_equal(image("a [cat:dog:1]", cfg_scale=1.0), image("a cat", cfg_scale=1.0))


def test_conditioning_swaps_only_where_the_text_changes(net_engine: Engine) -> None:
    encoder = net_engine.prompt_encoder(net_engine.manager.active)
    cond = encode_conditioning(encoder, "a [cat:dog:2]", "", 4, 1, torch.device("cpu"), torch.float32, False)
    assert cond.cond_at == [0, 0, 0, 1] and not cond.is_static

    at = cond.conditioning_at(batch=2)
    assert at(0) is at(1) is at(2)  # the same object while the text stays: the loop batches it once
    assert at(3) is not at(2) and at(3) is at(9)  # past the schedule's end (DPM adaptive): the last
    assert at(0).cond.shape[0] == 2 and at(0).uncond is not None
    torch.testing.assert_close(at(3).cond[1], cond.cond[1].embeds[0])
    assert cond.conditioning_at(batch=1, guided=False)(0).uncond is None  # CFG 1: no negative half
    static = encode_conditioning(encoder, "a cat", "x", 4, 1, torch.device("cpu"), torch.float32, False)
    assert static.is_static


# -- hires fix ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("hires", "size"),
    [
        ({"hr_scale": 2.0}, (128, 128)),
        ({"hr_scale": 1.5, "hr_upscaler": "Latent (bicubic antialiased)"}, (96, 96)),
        ({"hr_resize_x": 96, "hr_resize_y": 160, "hr_upscaler": "Lanczos"}, (96, 160)),
        ({"hr_resize_x": 128, "hr_upscaler": "Latent (nearest-exact)"}, (128, 128)),
    ],
)
def test_hires_fix_output_size_and_infotext(net_engine: Engine, hires: dict, size: tuple[int, int]) -> None:
    request = GenerationRequest(prompt="a cat", seed=2, enable_hr=True, denoising_strength=0.6, **{**FAST, **hires})
    result = net_engine.generate(request)
    assert result.images[0].size == size
    fields = parse_infotext(result.infotexts[0])
    assert fields["Size"] == "64x64" and fields["Denoising strength"] == "0.6"
    assert fields["Hires upscaler"] == hires.get("hr_upscaler", "Latent")
    assert ("Hires upscale" in fields) != ("Hires resize" in fields)


def test_hires_second_pass_with_its_own_sampler_steps_and_prompt(net_engine: Engine) -> None:
    common = {"prompt": "a cat", "seed": 2, "enable_hr": True, "denoising_strength": 0.6, **FAST}
    plain = net_engine.generate(GenerationRequest(**common))
    own = net_engine.generate(
        GenerationRequest(**common, hr_sampler_name="DPM++ 2M Karras", hr_second_pass_steps=4, hr_prompt="a dog")
    )
    assert not np.array_equal(pixels(plain.images[0]), pixels(own.images[0]))
    fields = parse_infotext(own.infotexts[0])
    assert fields["Hires sampler"] == "DPM++ 2M" and fields["Hires schedule type"] == "Karras"
    assert fields["Hires steps"] == "4" and fields["Hires prompt"] == "a dog"


def test_hires_bad_input_is_a_clear_error(net_engine: Engine) -> None:
    with pytest.raises(EaselError, match="hires upscaler"):
        net_engine.generate(GenerationRequest(prompt="x", enable_hr=True, hr_upscaler="R-ESRGAN 9x", **FAST))
    with pytest.raises(EaselError, match="Hires upscale"):
        net_engine.generate(GenerationRequest(prompt="x", enable_hr=True, hr_scale=20, **FAST))


# -- variation seeds ----------------------------------------------------------------------------------------------
def test_variation_seed_blends_two_noises(net_engine: Engine) -> None:
    def image(**extra) -> np.ndarray:
        return pixels(net_engine.generate(GenerationRequest(prompt="a cat", **{**FAST, **extra})).images[0])

    base, other = image(seed=10), image(seed=11)
    assert np.array_equal(image(seed=10, subseed=11, subseed_strength=0.0), base)
    blended = image(seed=10, subseed=11, subseed_strength=0.5)
    assert not np.array_equal(blended, base) and not np.array_equal(blended, other)
    # strength 1 is the variation seed's noise (with a sampler that draws no more noise from the main seed)
    full = image(seed=10, subseed=11, subseed_strength=1.0, sampler="Euler")
    assert np.abs(full.astype(int) - image(seed=11, sampler="Euler").astype(int)).max() <= 2
    result = net_engine.generate(
        GenerationRequest(prompt="a cat", seed=10, subseed=11, subseed_strength=0.5, batch_size=2, **FAST)
    )
    variation = [parse_infotext(t)["Variation seed"] for t in result.infotexts]
    assert variation == ["11", "12"]


def test_resize_seed_from_pastes_the_old_noise_centred() -> None:
    def noise(shape: tuple[int, int, int], resize_from: tuple[int, int] | None = None) -> torch.Tensor:
        return ImageRNG(shape, [3], source="CPU", resize_from=resize_from).first()[0]

    small = noise((4, 6, 6))
    big = noise((4, 10, 8), resize_from=(48, 48))
    torch.testing.assert_close(big[:, 2:8, 1:7], small)
    assert torch.equal(noise((4, 6, 6), resize_from=(48, 48)), noise((4, 6, 6)))
    cropped = paste_centred(torch.arange(16.0).reshape(1, 4, 4), torch.zeros(1, 2, 2))
    assert cropped.flatten().tolist() == [5.0, 6.0, 9.0, 10.0]


# -- VAE ----------------------------------------------------------------------------------------------------------
def test_vae_selection_changes_the_decode_and_is_recorded(net_engine: Engine) -> None:
    active = net_engine.manager.activate("tiny-sd1")
    own = active.model.vae
    base = net_engine.generate(GenerationRequest(prompt="a cat", seed=1, **FAST))
    auto = net_engine.generate(GenerationRequest(prompt="a cat", seed=1, vae="Automatic", **FAST))
    other = net_engine.generate(GenerationRequest(prompt="a cat", seed=1, vae="other.vae.safetensors", **FAST))
    assert active.model.vae is own
    assert np.array_equal(pixels(base.images[0]), pixels(auto.images[0]))
    assert not np.array_equal(pixels(base.images[0]), pixels(other.images[0]))
    fields = parse_infotext(other.infotexts[0])
    assert fields["VAE"] == "other.vae.safetensors" and len(fields["VAE hash"]) == 10
    with pytest.raises(EaselError, match="no VAE named 'missing'"):
        net_engine.generate(GenerationRequest(prompt="a cat", seed=1, vae="missing", **FAST))
    assert active.model.vae is own


# -- styles -------------------------------------------------------------------------------------------------------
def test_style_merging_follows_a1111() -> None:
    assert merge_style("masterpiece, {prompt}, detailed", "a cat") == "masterpiece, a cat, detailed"
    assert merge_style("oil painting", "a cat") == "a cat, oil painting"
    assert merge_style("oil painting", "") == "oil painting"
    assert merge_style("", "a cat") == "a cat"
    styles = [PromptStyle("a", "{prompt}, A", "na"), PromptStyle("b", "B", "")]
    assert apply_styles("cat", "ugly", styles) == ("cat, A, B", "ugly, na")


def test_styles_file_round_trips_and_applies_in_the_engine(net_engine: Engine, tmp_path: Path) -> None:
    library = StyleLibrary(tmp_path / "styles.csv")
    library.save(PromptStyle("quoted", 'a "quoted", {prompt}\nwith newline', "bad, worse"))
    library.save(PromptStyle("ünïcode", "猫", ""))
    assert library.styles() == [
        PromptStyle("quoted", 'a "quoted", {prompt}\nwith newline', "bad, worse"),
        PromptStyle("ünïcode", "猫", ""),
    ]
    result = net_engine.generate(GenerationRequest(prompt="a cat", seed=1, styles=("fancy", "plain"), **FAST))
    fields = parse_infotext(result.infotexts[0])
    assert fields["Prompt"] == "masterpiece, a cat, detailed, oil painting" and fields["Negative prompt"] == "lowres"
    with pytest.raises(EaselError, match="no style named 'nope'"):
        net_engine.generate(GenerationRequest(prompt="a cat", styles=("nope",), **FAST))


def test_a_broken_styles_file_warns_and_generates_without_styles(
    net_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stray quote in styles.csv made every request that used styles fail with csv.Error (a 500 from the API)."""
    broken = tmp_path / "styles.csv"
    text = 'name,prompt,negative_prompt\nfancy,masterpiece {prompt},\nbroken,"oil {prompt},\nplain,x,\n'
    broken.write_text(text)
    monkeypatch.setattr(net_engine, "styles", StyleLibrary(broken))
    result = net_engine.generate(GenerationRequest(prompt="a cat", seed=1, styles=("fancy",), **FAST))
    assert len(result.images) == 1 and parse_infotext(result.infotexts[0])["Prompt"] == "a cat"
    assert any("styles.csv, line 3" in w and "without the styles 'fancy'" in w for w in result.warnings)
    assert broken.read_text() == text


# -- round trips --------------------------------------------------------------------------------------------------
LONG = ", ".join(f"word{i} detail" for i in range(60))


@pytest.mark.parametrize(
    "request_kwargs",
    [
        {"prompt": "a (red:1.3) fox, [blurry], ((sharp))", "negative_prompt": "ugly\nsecond line"},
        {"prompt": 'a castle BREAK a moat, "quoted", 猫', "negative_prompt": "text: watermark"},
        {"prompt": LONG, "sampler": "DPM++ 2M", "schedule_type": "Karras", "clip_skip": 2},
        {"prompt": "a fox <lora:kohya:0.7> <lora:peft:0.5:0.3> tinyemb"},
        {"prompt": "a [fox:wolf:0.5] in [snow|rain]", "subseed": 77, "subseed_strength": 0.25},
        {
            "prompt": "a fox",
            "enable_hr": True,
            "hr_resize_x": 96,
            "hr_upscaler": "Latent (bicubic)",
            "denoising_strength": 0.55,
            "hr_second_pass_steps": 2,
            "vae": "other.vae.safetensors",
        },
        {"prompt": "a fox", "seed_resize_from_w": 48, "seed_resize_from_h": 80, "width": 72},
    ],
    ids=["emphasis", "break-unicode", "long-clipskip", "lora-embedding", "editing-variation", "hires-vae", "resize"],
)
def test_round_trip_from_the_saved_png_gives_identical_pixels(
    net_engine: Engine, request_kwargs: dict, tmp_path: Path
) -> None:
    kwargs: dict = {**FAST, "seed": 123, "save": True, **request_kwargs}
    first = net_engine.generate(GenerationRequest(**kwargs))
    assert first.warnings == []
    for path, image in zip(first.paths, first.images, strict=True):
        with Image.open(path) as saved:
            text = read_image_parameters(saved)
            assert np.array_equal(pixels(saved), pixels(image))
        assert text is not None
        parsed = request_from_infotext(text)
        assert parsed.skipped == {}
        checkpoint = resolve_checkpoint(net_engine.manager.find, parsed.model_name, parsed.model_hash)
        assert checkpoint == "tiny-sd1.safetensors"
        again = net_engine.generate(GenerationRequest(**parsed.kwargs, checkpoint=checkpoint, save=False))
        assert np.array_equal(pixels(again.images[0]), pixels(image))
        assert again.infotexts[0] == text
