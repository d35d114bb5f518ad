"""``Engine.generate``: the one path every mode, the UI and the API take to make images."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipelines.conditioning.encoder import PromptEncoder
from pipelines.conditioning.scheduled import ScheduledConditioning, encode_conditioning
from pipelines.conditioning.styles import StyleLibrary, StylesFileError
from pipelines.errors import EaselError
from pipelines.fields import FIELDS
from pipelines.imaging.inpaint import (
    InpaintPlan,
    finish_inpaint,
    prepare_img2img,
    prepare_inpaint,
)
from pipelines.imaging.latents import decode_latents
from pipelines.imaging.masks import latent_fill, latent_mask_from_pixel_mask
from pipelines.metadata.infotext import format_infotext
from pipelines.metadata.outputs import save_image
from pipelines.models.manager import ActiveModel, PipelineManager
from pipelines.networks.library import NetworkFolders, NetworkLibrary, NetworkUse
from pipelines.requests import MODE_FOLDERS, GenerationRequest, GenerationResult
from pipelines.runtime.jobs import Job
from pipelines.runtime.queue import GenerationQueue
from pipelines.sampling.hires import hires_sampled_steps, hires_steps, second_pass_inputs
from pipelines.sampling.samplers import build_scheduler
from pipelines.sampling.strength import effective_strength, img2img_steps
from pipelines.sampling.variations import image_subseeds, variation_noise

log = logging.getLogger(__name__)
VERSION = "easel-0.1"


@dataclass
class EngineSettings:
    """Knobs the settings tab and command line change at run time."""

    preview_every: int = 1  # live preview every N steps; 0 disables
    save_outputs: bool = True
    sd_vae: str | None = None  # A1111's global sd_vae: used when a request names no VAE (None: Automatic)
    # Sampling, as A1111's settings of the same names (config.json keys); requests override them per image.
    randn_source: str = "NV"  # "GPU" / "CPU" / "NV": NV gives on any device the numbers A1111 gets on NVIDIA GPUs
    eta_ancestral: float = 1.0
    eta_ddim: float = 0.0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = 0.0  # 0 means no upper bound, as in A1111
    s_noise: float = 1.0
    eta_noise_seed_delta: int = 0
    beta_dist_alpha: float = 0.6
    beta_dist_beta: float = 0.6


def encoder_kind(family: str) -> str:
    if family == "sdxl_refiner":
        return "sdxl_refiner"
    return "sdxl" if family.startswith("sdxl") else family[:3]


def _ignored_fields(request: GenerationRequest) -> list[str]:
    """Say so when a request carries a setting its mode does not use, rather than dropping it silently."""
    if request.mode != "txt2img" and request.subseed_strength > 0:
        return ["Variation seeds apply to txt2img only; this image used its seed alone."]
    return []


def _strength(request: GenerationRequest) -> float:
    """Denoising strength, raised so that at least one step runs (A1111 runs one step at strength 0 too)."""
    return effective_strength(request.steps, request.denoising_strength)


class Engine:
    """Owns the pipeline manager; turns validated requests into saved images."""

    def __init__(
        self,
        manager: PipelineManager,
        outputs_dir: Path,
        settings: EngineSettings | None = None,
        queue: GenerationQueue | None = None,
        networks: NetworkLibrary | None = None,
    ) -> None:
        # ``is None``, never ``or``: an empty GenerationQueue has length 0 and is falsy, and ``queue or ...`` once
        # replaced the caller's (--queue-size) queue with a default one.
        self.manager = manager
        self.outputs_dir = outputs_dir
        self.settings = EngineSettings() if settings is None else settings
        if networks is None:
            folders = NetworkFolders.beside(manager.checkpoints_dir)
            networks = NetworkLibrary(folders, manager.hashes, manager.allow_pickle)
        self.networks = networks
        self.styles = StyleLibrary(self.networks.folders.styles)
        self.queue = GenerationQueue() if queue is None else queue  # shared by the UI and the API: one line per device

    # -- helpers -----------------------------------------------------------------------------------------
    def _target_checkpoint(self, request: GenerationRequest) -> str:
        if request.checkpoint:
            return request.checkpoint
        if self.manager.active is not None:
            return self.manager.active.info.name
        if self.manager.checkpoints:
            return self.manager.checkpoints[0].name
        raise EaselError(
            f"no checkpoint found in {self.manager.checkpoints_dir}: copy a Stable Diffusion .safetensors file "
            "there and press the refresh button"
        )

    def prompt_encoder(self, active: ActiveModel) -> PromptEncoder:
        """One encoder per loaded model and state of the embeddings folder, kept with the model."""
        embeddings = self.networks.embeddings.current()
        if active.prompt_encoder is None or active.prompt_encoder_embeddings is not embeddings:
            m = active.model
            pairs = list(zip(m.tokenizers, m.text_encoders, strict=True))
            active.prompt_encoder = PromptEncoder(pairs, encoder_kind(m.family), embeddings.vectors)
            active.prompt_encoder_embeddings = embeddings
        return active.prompt_encoder

    def _embeddings(
        self, active: ActiveModel, request: GenerationRequest, hires: bool = False
    ) -> ScheduledConditioning:
        """Both prompts encoded per step of their [from:to:when] / [a|b] schedules (the hires pass: its own)."""
        prompt, negative, steps = request.prompt, request.negative_prompt, request.steps
        if hires:
            prompt, negative = request.hr_prompt or prompt, request.hr_negative_prompt or negative
            steps = hires_steps(request)
        return encode_conditioning(
            self.prompt_encoder(active),
            prompt,
            negative,
            steps,
            request.clip_skip,
            self.manager.device,
            self.manager.dtype,
            active.model.is_sdxl,
        )

    def infotext(
        self, request: GenerationRequest, active: ActiveModel, seed: int, extra: dict[str, object] | None = None
    ) -> str:
        """A1111's parameters text for one image: every registered field's key, the model, what networks add."""
        params = FIELDS.infotext_params(request, seed)
        params.update({"Model hash": active.hash, "Model": active.info.model_name})
        params.update(extra or {})
        params.update(request.extra_params)
        params["Version"] = VERSION
        return format_infotext(request.prompt, request.negative_prompt, params)

    # -- the one path ------------------------------------------------------------------------------------
    def generate(self, request: GenerationRequest, job: Job | None = None) -> GenerationResult:
        """Validate, switch model if asked, run every batch, save. Raises EaselError for bad input."""
        request = request.validated()
        if request.vae is None and self.settings.sd_vae:
            request = replace(request, vae=self.settings.sd_vae)
        request, styles, notes = self._styled(request)
        job = Job() if job is None else job
        job.plan(request.batch_count)
        with self.queue.place(job) as place:  # EaselError when the line is full
            if request.checkpoint:
                self.manager.prepare(request.checkpoint)  # load from disk while waiting in line
            if not self.queue.wait_turn(place):  # interrupted before its turn came
                job.set_status("interrupted")
                return GenerationResult(
                    [], [], [], [], request, "", None, warnings=notes, interrupted=True, styles=styles
                )
            result = self._generate_now(request, job)
        result.warnings[:0] = notes
        result.styles = styles
        return result

    def _styled(self, request: GenerationRequest) -> tuple[GenerationRequest, tuple[str, ...], list[str]]:
        """Styles applied once, here: the styled request, the names applied (for the result), what the user must know.

        A styles file that cannot be read is the server's problem, not this request's: the image is made without the
        styles and a warning says why, as for a missing LoRA. A style name the file lacks is still an error.
        """
        if not request.styles:
            return request, (), []
        try:
            prompt, negative = self.styles.apply(request.prompt, request.negative_prompt, request.styles)
        except StylesFileError as exc:
            names = ", ".join(repr(name) for name in request.styles)
            return replace(request, styles=()), (), [f"{exc} Generated without the styles {names}."]
        return replace(request, prompt=prompt, negative_prompt=negative, styles=()), request.styles, []

    def switch_checkpoint(self, name: str) -> ActiveModel:
        """Make a checkpoint the active one, taking a turn in the queue like a generation (never mid-job)."""
        self.manager.prepare(name)  # read from disk without holding anyone up
        with self.queue.place(Job(), owner="model switch") as place:
            self.queue.wait_turn(place)
            return self.manager.activate(name)

    def _generate_now(self, request: GenerationRequest, job: Job) -> GenerationResult:
        """The job's turn on the device: with no checkpoint named, whatever is active now (as A1111)."""
        target = self._target_checkpoint(request)
        self.manager.prepare(target)  # slow disk load happens outside the device lock
        with self.manager.device_lock:
            job.set_status("running")
            previous = self.manager.active.info.name if self.manager.active else None
            try:
                active = self.manager.activate(target)
                # the memory policy places the model for this request's size; on out of memory it retries lower
                result = self.manager.memory.run(request, active, lambda plan: self._run_placed(request, active, job))
            except BaseException:
                job.set_status("failed")
                raise
            finally:
                if request.restore_checkpoint and previous not in (None, target):
                    self.manager.activate(previous)  # still under the lock: no other job sees the override
            job.set_status("interrupted" if result.interrupted else "done")
            return result

    def _run_placed(self, request: GenerationRequest, active: ActiveModel, job: Job) -> GenerationResult:
        """One attempt at the job with its networks worn; the memory policy calls it again after running out."""
        device, dtype = self.manager.device, self.manager.dtype
        with self.networks.applied(active, request, device, dtype) as worn:
            self.manager.memory.adopt_vae(active)  # a VAE the request swapped in is placed and tiled like its own
            worn.infotext.update(self.manager.memory.infotext(active))
            return self._run(request, active, job, worn)

    def _run(
        self, request: GenerationRequest, active: ActiveModel, job: Job, worn: NetworkUse | None = None
    ) -> GenerationResult:
        worn = NetworkUse() if worn is None else worn
        embeds = self._embeddings(active, request)
        self.networks.embedding_notes(self.prompt_encoder(active), request, worn)
        plan = prepare_inpaint(request) if request.mode == "inpaint" else None
        init = prepare_img2img(request) if request.mode == "img2img" else None
        extra = worn.infotext
        images: list[Image.Image] = []
        seeds: list[int] = []
        infotexts: list[str] = []
        paths: list[Path] = []
        when = datetime.now()
        steps_per_batch = self._sampled_steps(request)
        job.plan(request.batch_count, steps_per_batch * request.batch_count)
        for batch in range(request.batch_count):
            if job.interrupted:
                break
            job.start_batch(batch, batch * steps_per_batch)
            batch_seeds = [request.seed + batch * request.batch_size + i for i in range(request.batch_size)]
            inputs = self._mode_inputs(request, active, batch_seeds, plan, init)
            batch_images = self._sample(request, active, embeds, batch_seeds, job, dict(inputs))
            if plan is not None:
                batch_images = [finish_inpaint(plan, image) for image in batch_images]
            for image, seed in zip(batch_images, batch_seeds, strict=True):
                text = self.infotext(request, active, seed, extra)
                if request.save and self.settings.save_outputs:
                    paths.append(save_image(image, self.outputs_dir, MODE_FOLDERS[request.mode], seed, text, when))
                images.append(image)
                seeds.append(seed)
                infotexts.append(text)
        if not job.interrupted:
            job.finish_steps()
        return GenerationResult(
            images,
            seeds,
            infotexts,
            paths,
            request,
            active.info.model_name,
            active.hash,
            warnings=[*worn.warnings, *_ignored_fields(request)],
            interrupted=job.interrupted,
            subseeds=image_subseeds(request.seed, request.subseed, seeds),
            prompts=[request.prompt] * len(images),
            negative_prompts=[request.negative_prompt] * len(images),
            vae_name=worn.vae,
            vae_hash=worn.vae_hash,
        )

    @staticmethod
    def _sampled_steps(request: GenerationRequest) -> int:
        """Steps the sampler really runs: img2img and inpaint run ``steps * denoising strength`` like A1111."""
        if request.mode == "txt2img":
            return request.steps + (hires_sampled_steps(request) if request.enable_hr else 0)
        return img2img_steps(request.steps, request.denoising_strength)

    def _mode_inputs(
        self,
        request: GenerationRequest,
        active: ActiveModel,
        seeds: list[int],
        plan: InpaintPlan | None,
        init: Image.Image | None,
    ) -> dict[str, Any]:
        """The pipeline arguments that differ between txt2img, img2img and inpaint."""
        n = len(seeds)
        inpaint_model = active.is_inpaint
        if request.mode == "txt2img":
            shape = (active.model.vae.config.latent_channels, request.height // 8, request.width // 8)
            subseeds = image_subseeds(request.seed, request.subseed, seeds)
            resize_from = (request.seed_resize_from_w, request.seed_resize_from_h)
            noise = variation_noise(seeds, shape, subseeds, request.subseed_strength, resize_from)
            latents = noise.to(self.manager.device, self.manager.dtype)
            size = {"width": request.width, "height": request.height, "latents": latents}
            if inpaint_model:  # as A1111: a grey picture, all of it masked, full strength
                grey = Image.new("RGB", (request.width, request.height), (127, 127, 127))
                full = Image.new("L", grey.size, 255)
                return {**size, "image": [grey] * n, "mask_image": [full] * n, "strength": 1.0, "mode": "inpaint"}
            return size
        if request.mode == "img2img":
            assert init is not None
            if inpaint_model:  # an inpainting UNet needs a mask: all of the picture
                full = Image.new("L", init.size, 255)
                return {
                    "image": [init] * n,
                    "mask_image": [full] * n,
                    "strength": _strength(request),
                    "width": init.width,
                    "height": init.height,
                    "mode": "inpaint",
                }
            return {"image": [init] * n, "strength": _strength(request)}
        assert plan is not None
        inputs: dict[str, Any] = {
            "image": [plan.image] * n,
            "mask_image": [plan.mask] * n,
            "strength": _strength(request),
            "width": plan.image.width,
            "height": plan.image.height,
        }
        if request.inpainting_fill in (2, 3) and request.denoising_strength < 1:
            inputs.update(self._latent_fill_inputs(request, active, plan, seeds))
        return inputs

    def _latent_fill_inputs(
        self, request: GenerationRequest, active: ActiveModel, plan: InpaintPlan, seeds: list[int]
    ) -> dict[str, Any]:
        """A1111's "latent noise" / "latent nothing": the masked part of the init latents replaced before noising."""
        vae = active.model.vae
        device, dtype = self.manager.device, vae.dtype
        pixels = torch.from_numpy(np.asarray(plan.image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        keep = torch.from_numpy(np.asarray(plan.mask) < 128)[None, None]
        with torch.no_grad():
            image_latents = vae.encode(pixels.to(device, dtype)).latent_dist.mode() * vae.config.scaling_factor
            masked = vae.encode((pixels * keep).to(device, dtype)).latent_dist.mode() * vae.config.scaling_factor
        latent_mask = latent_mask_from_pixel_mask(plan.mask, image_latents.shape[2], image_latents.shape[3])
        filled = [
            latent_fill(
                image_latents.cpu(), latent_mask, request.inpainting_fill, torch.Generator("cpu").manual_seed(seed)
            )
            for seed in seeds
        ]
        dtype = self.manager.dtype
        return {
            "image": torch.cat(filled).to(device, dtype),
            "masked_image_latents": masked.repeat(len(seeds), 1, 1, 1).to(device, dtype),
        }

    def _sample(
        self,
        request: GenerationRequest,
        active: ActiveModel,
        embeds: ScheduledConditioning,
        seeds: list[int],
        job: Job,
        inputs: dict[str, Any],
    ) -> list[Image.Image]:
        """One batch: the pipeline call, then the hires fix's second pass when asked; decoded images."""
        latents = self._denoise(request, active, embeds, seeds, job, inputs)
        if request.mode == "txt2img" and request.enable_hr and not job.interrupted:
            hires_inputs = second_pass_inputs(request, active, latents, lambda x: decode_latents(active.model.vae, x))
            hires = replace(
                request,
                sampler=request.hr_sampler_name or request.sampler,
                schedule_type=request.hr_scheduler or request.schedule_type,
                steps=hires_steps(request),
            )
            embeds = self._embeddings(active, request, hires=True)
            latents = self._denoise(hires, active, embeds, seeds, job, hires_inputs)
        return decode_latents(active.model.vae, latents)

    def _denoise(
        self,
        request: GenerationRequest,
        active: ActiveModel,
        embeds: ScheduledConditioning,
        seeds: list[int],
        job: Job,
        inputs: dict[str, Any],
    ) -> torch.Tensor:
        """One pipeline call for one batch, with progress, preview, interrupt and prompt editing wired in."""
        scheduler = build_scheduler(
            active.model.scheduler_config, request.sampler, request.schedule_type, noise_seed=seeds[0]
        )
        mode = inputs.pop("mode", request.mode)
        pipe = self.manager.pipeline(mode, scheduler, active)
        pipe.set_progress_bar_config(disable=True)
        n = len(seeds)
        batch_embeds = {k: v.repeat(n, *([1] * (v.dim() - 1))) for k, v in embeds.pipeline_kwargs(0).items()}
        strength = inputs.get("strength")
        sampled = request.steps if strength is None else img2img_steps(request.steps, strength)
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        first_step = job.step
        every = self.settings.preview_every
        sdxl = active.model.is_sdxl

        def on_step_end(pipeline: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            done = first_step + i + 1
            job.advance(done)
            if every and (i + 1) % every == 0 and "latents" in kwargs:
                job.offer_latents(kwargs["latents"], done, sdxl)
            if job.interrupted or job.take_skip():
                pipeline._interrupt = True
            kwargs.update(embeds.swap_after(pipeline, i, sampled, n))
            return kwargs

        with torch.no_grad():
            output = pipe(
                **batch_embeds,
                **inputs,
                num_inference_steps=request.steps,
                guidance_scale=request.cfg_scale,
                generator=generators,
                output_type="latent",
                callback_on_step_end=on_step_end,
                callback_on_step_end_tensor_inputs=["latents", *embeds.callback_tensor_inputs()],
            )
        return output.images
