"""Easel's own loop through the paths users take: ``Engine.generate`` and ``/sdapi/v1/txt2img`` against k-diffusion.

The reference is built here from independent pieces: k-diffusion's ``sampling.py`` and ``CompVisDenoiser`` (the
wheel, test-only) around the checkpoint's UNet, A1111's CFG, A1111's schedules from k-diffusion's functions, and
each image's NV noise stream drawn draw after draw (A1111's ImageRNG). Only the prompt encoder is shared. The final
latents are captured where the engine hands them to the VAE. Threshold and calibration as in
``tests/unit/test_k_sampling.py`` (70 dB; same-math agreement is ~120 dB, wrong variants score 17-67 dB).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import pipelines.generate as generate_module
from pipelines.generate import Engine
from pipelines.imaging.latents import encode_images
from pipelines.metadata.infotext import parse_infotext
from pipelines.requests import GenerationRequest
from pipelines.sampling.k_samplers import resolve_sampler
from pipelines.sampling.loop import img2img_start, resolve_schedule
from pipelines.sampling.rng import SeedNoise
from tests import kdiffusion_reference
from tests.unit.test_k_sampling import (
    K_FUNCTIONS,
    REFERENCE,
    SCHEDULE_SAMPLERS,
    THRESHOLD_DB,
    CompVisAdapter,
    psnr,
)

pytestmark = [
    pytest.mark.skipif(REFERENCE is None, reason="k-diffusion reference not installed"),
    pytest.mark.filterwarnings("ignore:Should have t:UserWarning", "ignore:To copy construct:UserWarning"),
]
PROMPT, NEGATIVE = "a red fox in the snow", "blurry"
SEED, STEPS, CFG, SIZE = 41, 5, 6.0, 64
SEEDS = [SEED, SEED + 1]
SHAPE = (4, SIZE // 8, SIZE // 8)


class Captured:
    """The latents the engine decodes, batch by batch."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.latents: list[torch.Tensor] = []
        real = generate_module.decode_latents

        def spy(vae: Any, latents: torch.Tensor) -> list[Image.Image]:
            self.latents.append(latents.detach().clone())
            return real(vae, latents)

        monkeypatch.setattr(generate_module, "decode_latents", spy)


def engine_run(engine: Engine, monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    captured = Captured(monkeypatch)
    base: dict[str, Any] = {
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "seed": SEED,
        "steps": STEPS,
        "cfg_scale": CFG,
        "width": SIZE,
        "height": SIZE,
        "batch_size": 2,
        "save": False,
        "checkpoint": "tiny-sd1.safetensors",
    }
    result = engine.generate(GenerationRequest(**{**base, **kwargs}))
    return captured.latents[-1], result


class Reference:
    """A1111's KDiffusionSampler over k-diffusion's functions, for the engine's loaded tiny SD1."""

    def __init__(self, engine: Engine, prompt: str = PROMPT) -> None:
        active = engine.manager.activate("tiny-sd1.safetensors")
        encoder = engine.prompt_encoder(active)
        with torch.no_grad():
            self.conds = [encoder.encode(text, clip_skip=1).embeds for text in prompt.split("|")]
            self.uncond = encoder.encode(NEGATIVE, clip_skip=1).embeds
        self.unet = active.model.unet
        self.vae = active.model.vae
        self.model = REFERENCE.external.CompVisDenoiser(CompVisAdapter(self.unet))
        self.switch_at: int | None = None  # model call at which conds[1] takes over (prompt editing)

    def sigmas(self, schedule: str, n: int) -> torch.Tensor:
        ks = REFERENCE.sampling
        lo, hi = self.model.sigmas[0].item(), self.model.sigmas[-1].item()
        if schedule == "uniform":
            return self.model.get_sigmas(n)
        if schedule == "karras":
            return ks.get_sigmas_karras(n, lo, hi)
        if schedule == "polyexponential":
            return ks.get_sigmas_polyexponential(n, lo, hi)
        assert schedule == "exponential", schedule
        return ks.get_sigmas_exponential(n, lo, hi)

    def cfg(self) -> Callable[..., torch.Tensor]:
        calls = [0]
        batch = len(SEEDS)

        def denoise(x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
            index = 1 if self.switch_at is not None and calls[0] >= self.switch_at else 0
            calls[0] += 1
            cond = self.conds[index].repeat(batch, 1, 1)
            both = torch.cat([cond, self.uncond.repeat(batch, 1, 1)])
            out = self.model(
                torch.cat([x, x]), torch.cat([sigma.expand(batch), sigma.expand(batch)]), cond={"c_crossattn": both}
            )
            c, u = out.chunk(2)
            return u + (c - u) * CFG

        return denoise

    def run(self, label: str, schedule: str, init: torch.Tensor | None = None, strength: float = 1.0) -> torch.Tensor:
        ks = REFERENCE.sampling
        spec = resolve_sampler(label)
        name = resolve_schedule(spec, schedule).name
        total, start = img2img_start(STEPS, strength) if init is not None else (STEPS, 0)
        sigmas = self.sigmas(name, total + (1 if spec.discard_next_to_last_sigma else 0))
        if spec.discard_next_to_last_sigma:
            sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
        full, walked = sigmas, sigmas[start:]
        streams = [SeedNoise(seed, "NV") for seed in SEEDS]

        def draw() -> torch.Tensor:
            return torch.stack([s.randn(SHAPE) for s in streams])

        noise = draw()
        x = noise * walked[0] if init is None else init + noise * walked[0]
        kdiffusion_reference.with_noise(ks, lambda *_: draw())
        function = getattr(ks, K_FUNCTIONS[label])
        parameters = inspect.signature(function).parameters
        kwargs: dict[str, Any] = {"sigmas": walked}
        if "eta" in parameters:
            kwargs["eta"] = 1.0
        if spec.brownian:
            kwargs["noise_sampler"] = ks.BrownianTreeNoiseSampler(x, full[full > 0].min(), full.max(), seed=SEEDS)
        if label == "DPM++ 2M SDE Heun":
            kwargs["solver_type"] = "heun"
        with torch.no_grad():
            return function(self.cfg(), x, disable=True, **kwargs)


@pytest.fixture(scope="module")
def engine(make_engine: Callable[[Path], Engine], tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return make_engine(tmp_path_factory.mktemp("own-loop"))


@pytest.mark.parametrize("schedule", ["Automatic", "Karras", "Exponential", "Uniform"])
@pytest.mark.parametrize("sampler", SCHEDULE_SAMPLERS)
def test_engine_txt2img_matches_k_diffusion(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, sampler: str, schedule: str
) -> None:
    latents, result = engine_run(engine, monkeypatch, sampler=sampler, schedule_type=schedule)
    reference = Reference(engine).run(sampler, schedule)
    assert psnr(latents, reference) >= THRESHOLD_DB
    assert parse_infotext(result.infotexts[0])["RNG"] == "NV"


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M", "DPM++ 2M SDE", "Heun"])
def test_engine_img2img_walks_the_schedules_tail_like_a1111(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, sampler: str
) -> None:
    picture = Image.linear_gradient("L").resize((SIZE, SIZE)).convert("RGB")
    latents, result = engine_run(
        engine, monkeypatch, mode="img2img", init_image=picture, denoising_strength=0.6, sampler=sampler
    )
    reference = Reference(engine)
    init = encode_images(reference.vae, [picture]).repeat(2, 1, 1, 1)
    assert psnr(latents, reference.run(sampler, "Automatic", init=init, strength=0.6)) >= THRESHOLD_DB
    assert result.images[0].size == (SIZE, SIZE)


def test_prompt_editing_counts_model_calls_like_a1111(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Heun calls the model twice a step, so A1111 schedules ``[a:b:0.5]`` over 10 calls: b from call 5."""
    latents, _ = engine_run(engine, monkeypatch, prompt="[a red fox:a grey wolf:0.5]", sampler="Heun")
    reference = Reference(engine, "a red fox|a grey wolf")
    reference.switch_at = STEPS  # 0.5 of 2 * STEPS calls
    assert psnr(latents, reference.run("Heun", "Automatic")) >= THRESHOLD_DB
    reference.switch_at = STEPS // 2  # the switch counted in steps instead: measurably another picture
    assert psnr(latents, reference.run("Heun", "Automatic")) < THRESHOLD_DB


def test_a_wrong_schedule_or_noise_fails_the_engine_comparison(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    latents, _ = engine_run(engine, monkeypatch, sampler="Euler a")
    assert psnr(latents, Reference(engine).run("Euler a", "Karras")) < THRESHOLD_DB
    other, _ = engine_run(engine, monkeypatch, sampler="Euler a", rng_source="CPU")
    assert psnr(other, Reference(engine).run("Euler a", "Automatic")) < THRESHOLD_DB


def test_default_euler_a_starts_at_the_top_of_the_model_schedule(engine: Engine) -> None:
    """The old diffusers path started SD1 at t=876 ("leading" spacing); A1111 starts at sigma_max (t=999)."""
    active = engine.manager.activate("tiny-sd1.safetensors")
    model = engine._denoiser(active).sigmas
    from pipelines.sampling.loop import plan

    walked = plan(resolve_sampler("Euler a"), "Automatic", 20, model).sigmas
    assert float(walked[0]) == pytest.approx(float(model.sigma_max))
    assert float(model.sigma_to_t(walked[:1])[0]) == pytest.approx(999.0, abs=1e-3)


@pytest.mark.parametrize("source", ["CPU", "NV", "GPU"])
def test_rng_source_is_honoured_and_written_as_a1111_writes_it(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    latents, result = engine_run(engine, monkeypatch, sampler="Euler", rng_source=source)
    fields = parse_infotext(result.infotexts[0])
    assert fields.get("RNG") == ("NV" if source == "NV" else "CPU")  # GPU on a CPU box is the CPU generator
    first = torch.stack([SeedNoise(s, source).randn(SHAPE) for s in SEEDS])
    assert not torch.equal(
        first, torch.stack([SeedNoise(s, "NV" if source != "NV" else "CPU").randn(SHAPE) for s in SEEDS])
    )
    again, _ = engine_run(engine, monkeypatch, sampler="Euler", rng_source=source)
    assert torch.equal(latents, again)  # same computation twice: exactly the same


def test_batch_images_match_the_same_seed_alone(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each image owns its noise stream (and its Brownian tree): image 2 of a batch is the seed's own picture."""
    for sampler in ("Euler a", "DPM++ SDE"):
        batch, _ = engine_run(engine, monkeypatch, sampler=sampler)
        alone, _ = engine_run(engine, monkeypatch, sampler=sampler, seed=SEED + 1, batch_size=1)
        assert psnr(batch[1:], alone) >= THRESHOLD_DB  # batched vs single UNet calls differ in the last bits


def test_every_sampler_and_every_schedule_run_through_the_engine(engine: Engine) -> None:
    """Each sampler with a schedule taken in turn, so every schedule is walked by several samplers (the full
    sampler x schedule matrix is checked against k-diffusion in tests/unit/test_k_sampling.py)."""
    from pipelines.sampling.samplers import SAMPLERS, SCHEDULE_TYPES

    for index, sampler in enumerate(SAMPLERS):
        schedule = SCHEDULE_TYPES[index % len(SCHEDULE_TYPES)]
        result = engine.generate(
            GenerationRequest(
                prompt="x", seed=1, steps=3, width=SIZE, height=SIZE, save=False, sampler=sampler,
                schedule_type=schedule, checkpoint="tiny-sd1.safetensors",
            )
        )  # fmt: skip
        assert result.images and result.images[0].size == (SIZE, SIZE), (sampler, schedule)
        assert np.asarray(result.images[0]).std() > 0, (sampler, schedule)  # a picture, not a flat fill


def test_refiner_takes_over_where_a1111_switches(tiny: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SDXL base -> SDXL refiner at 0.5: the refiner's UNet serves every call from the first whose noise level's
    timestep is at most 499, with its own (aesthetic-score) conditioning; the base serves the calls before."""
    from pipelines.generate import EngineSettings
    from pipelines.models.checkpoints import HashCache
    from pipelines.models.manager import PipelineManager

    ckpts = tmp_path / "Stable-diffusion"
    ckpts.mkdir()
    for family in ("sdxl", "sdxl_refiner"):
        (ckpts / f"tiny-{family}.safetensors").hardlink_to(tiny.single_file(family))
    manager = PipelineManager(ckpts, torch.device("cpu"), torch.float32, HashCache(tmp_path / "hashes.json"))
    engine = Engine(manager, tmp_path / "outputs", EngineSettings(preview_every=0))
    calls: list[tuple[str, float]] = []
    base = engine.manager.activate("tiny-sdxl")
    refiner = engine.manager.prepare("tiny-sdxl_refiner")
    for name, active in (("base", base), ("refiner", refiner)):
        unet = active.model.unet
        original = unet.forward

        def spy(sample: torch.Tensor, timestep: torch.Tensor, *args: Any, _o=original, _n=name, **kw: Any) -> Any:
            calls.append((_n, float(timestep.reshape(-1)[0])))
            return _o(sample, timestep, *args, **kw)

        monkeypatch.setattr(unet, "forward", spy)
    result = engine.generate(
        GenerationRequest(
            prompt="a castle", seed=2, steps=6, width=SIZE, height=SIZE, save=False, sampler="Euler",
            checkpoint="tiny-sdxl", refiner_checkpoint="tiny-sdxl_refiner", refiner_switch_at=0.5,
        )
    )  # fmt: skip
    names = [name for name, _ in calls]
    assert names[0] == "base" and names[-1] == "refiner"
    first_refiner = names.index("refiner")
    assert all(n == "base" for n in names[:first_refiner]) and all(n == "refiner" for n in names[first_refiner:])
    assert all(t > 499.5 for _, t in calls[:first_refiner]) and calls[first_refiner][1] <= 500.5
    fields = parse_infotext(result.infotexts[0])
    assert fields["Refiner"].startswith("tiny-sdxl_refiner [") and fields["Refiner switch at"] == "0.5"
    assert engine.manager.active is base  # the refiner was borrowed for the job, not made the active model


def test_sdxl_v_prediction_marker_keys_are_read(tiny: Any, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from pipelines.models.loader import load_single_file

    state = load_file(tiny.single_file("sdxl"))
    state["v_pred"], state["ztsnr"] = torch.tensor([]), torch.tensor([])
    marked = tmp_path / "vpred-xl.safetensors"
    save_file(state, marked)
    model = load_single_file(marked)
    assert model.scheduler_config["prediction_type"] == "v_prediction"
    assert model.scheduler_config["rescale_betas_zero_snr"] is True
    from pipelines.sampling.schedules import ModelSigmas

    sigmas = ModelSigmas.from_scheduler_config(model.scheduler_config, is_sdxl=True)
    assert 4000 < sigmas.sigma_max < 5000  # A1111/Forge's finite stand-in for infinite terminal noise
    plain = load_single_file(tiny.single_file("sdxl"))
    assert plain.scheduler_config.get("prediction_type", "epsilon") == "epsilon"
