"""``Engine.generate``: the one path every mode, the UI and the API take to make images."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from pipelines.conditioning.encoder import PromptEncoder
from pipelines.conditioning.scheduled import ScheduledConditioning, encode_conditioning, sdxl_time_ids
from pipelines.conditioning.styles import StyleLibrary, StylesFileError
from pipelines.errors import EaselError
from pipelines.fields import FIELDS
from pipelines.hooks import EngineHooks, ModelView, ScriptRunner
from pipelines.imaging.inpaint import InpaintPlan, finish_inpaint, prepare_img2img, prepare_inpaint
from pipelines.imaging.latents import decode_latents
from pipelines.imaging.upscale import SCALE_TO, UpscaleSpec
from pipelines.metadata.filenames import SaveOptions, filename_tags
from pipelines.metadata.infotext import format_infotext
from pipelines.metadata.outputs import save_image
from pipelines.models.manager import ActiveModel, PipelineManager
from pipelines.networks.library import NetworkFolders, NetworkLibrary, NetworkUse
from pipelines.requests import MODE_FOLDERS, GenerationRequest, GenerationResult
from pipelines.runtime.jobs import Job
from pipelines.runtime.queue import GenerationQueue
from pipelines.sampling.denoiser import ModelSwitch, SamplingHooks, SamplingState, UNetDenoiser
from pipelines.sampling.hires import hires_steps, request_hires_size, second_pass_inputs
from pipelines.sampling.k_samplers import SamplerOptions, resolve_sampler
from pipelines.sampling.loop import plan as plan_run
from pipelines.sampling.loop import sample
from pipelines.sampling.passes import DenoisePass, img2img_pass, inpaint_pass, pass_schedule, txt2img_pass
from pipelines.sampling.rng import ImageRNG, image_subseeds, rng_infotext
from pipelines.sampling.schedules import ModelSigmas
from pipelines.upscalers.extras import run_extras
from pipelines.upscalers.library import UpscalerFolders, UpscalerLibrary

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
    clip_skip: int = 1  # A1111's CLIP_stop_at_last_layers: for requests that set none (the API; the UI's default)
    # Saving, as A1111's settings of the same names (pipelines.metadata.filenames.SaveOptions reads them).
    samples_format: str = "png"  # png / jpg / webp
    jpeg_quality: int = 80  # JPEG and lossy WebP
    webp_lossless: bool = False
    samples_filename_pattern: str = ""  # "" means "[seed]"; the file is NNNNN-<pattern>.<format>
    save_to_dirs: bool = True
    directories_filename_pattern: str = "[date]"


def encoder_kind(family: str) -> str:
    if family == "sdxl_refiner":
        return "sdxl_refiner"
    return "sdxl" if family.startswith("sdxl") else family[:3]


def _check_refiner(base: ActiveModel, refiner: ActiveModel) -> None:
    """A refiner continues the base's latents: it must share their latent space (SD 1/2, or SDXL) and UNet input."""
    if base.model.is_sdxl != refiner.model.is_sdxl:
        kind = "an SDXL" if base.model.is_sdxl else "an SD 1.x/2.x"
        raise EaselError(
            f"The refiner {refiner.info.name} cannot continue {kind} checkpoint's latents: choose a refiner of the "
            "same family (SDXL base -> SDXL refiner, SD 1.5 -> SD 1.5)."
        )
    if refiner.is_inpaint and not base.is_inpaint:
        raise EaselError(f"The refiner {refiner.info.name} is an inpainting checkpoint; the base is not.")


def _ignored_fields(request: GenerationRequest) -> list[str]:
    """Say so when a request carries a setting its mode does not use, rather than dropping it silently."""
    if request.mode != "txt2img" and request.subseed_strength > 0:
        return ["Variation seeds apply to txt2img only; this image used its seed alone."]
    return []


class Engine:
    """Owns the pipeline manager; turns validated requests into saved images."""

    def __init__(
        self,
        manager: PipelineManager,
        outputs_dir: Path,
        settings: EngineSettings | None = None,
        queue: GenerationQueue | None = None,
        networks: NetworkLibrary | None = None,
        upscalers: UpscalerLibrary | None = None,
        hooks: EngineHooks | None = None,
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
        if upscalers is None:
            upscalers = UpscalerLibrary(UpscalerFolders.beside(manager.checkpoints_dir), manager.device, manager.dtype)
        self.upscalers = upscalers  # model upscalers (Extras, hires fix), run on this engine's device
        self.queue = GenerationQueue() if queue is None else queue  # shared by the UI and the API: one line per device
        self.hooks = EngineHooks() if hooks is None else hooks  # the loaded extensions' (pipelines/hooks.py)

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
        """Both prompts encoded per model call of their [from:to:when] / [a|b] schedules (the hires pass: its own).

        A1111 counts prompt-editing steps in model calls: twice the steps for second-order samplers.
        """
        prompt, negative, steps, sampler = request.prompt, request.negative_prompt, request.steps, request.sampler
        if hires:
            prompt, negative = request.hr_prompt or prompt, request.hr_negative_prompt or negative
            steps, sampler = hires_steps(request), request.hr_sampler_name or sampler
        steps *= 2 if resolve_sampler(sampler).second_order else 1
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
        job = Job() if job is None else job
        if request.script is not None:  # a script makes its images through this same path, one call per set
            return self._run_script(request, job)  # unvalidated: it decides about -1 seeds (X/Y/Z's "keep -1")
        hires_names = self.upscalers.hires_names() if request.enable_hr else None
        request = self.hooks.before_request(request.validated(hires_names)).validated(hires_names)
        if request.vae is None and self.settings.sd_vae:
            request = replace(request, vae=self.settings.sd_vae)
        request, styles, notes = self._styled(request)
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

    def _run_script(self, request: GenerationRequest, job: Job) -> GenerationResult:
        """A selected script; a checkpoint axis's last model is switched back to the request's own, as A1111 does."""
        before = self.manager.active.info.name if self.manager.active else None
        when = datetime.now()

        def save_grid(image: Image.Image, text: str, inner: GenerationRequest) -> Path | None:
            if not (inner.save and self.settings.save_outputs):
                return None
            return save_image(image, self.outputs_dir, f"{inner.mode}-grids", inner.seed, text, when)

        def save_sample(image: Image.Image, text: str, inner: GenerationRequest, seed: int) -> Path | None:
            if not (inner.save and self.settings.save_outputs):
                return None
            active = self.manager.active
            tags = filename_tags(inner, seed, active.info.model_name, active.hash, inner.vae) if active else None
            options = SaveOptions.from_settings(self.settings)
            return save_image(
                image, self.outputs_dir, MODE_FOLDERS[inner.mode], seed, text, when, options=options, tags=tags
            )

        def upscale(image: Image.Image, size: tuple[int, int], name: str) -> Image.Image | None:
            spec = UpscaleSpec(SCALE_TO, 1, size[0], size[1], upscaling_crop=False, upscaler_1=name)
            done = run_extras(self, [lambda: image], spec, job)
            return done.images[0] if done.images and not done.interrupted else None

        runner = ScriptRunner(
            lambda inner: self.generate(inner, job), job, save_grid, save_sample, upscale, self.upscalers.names
        )
        try:
            return self.hooks.run_script(request, runner)
        finally:
            target = request.checkpoint or before
            after = self.manager.active.info.name if self.manager.active else None
            if target is not None and after != target:
                self.switch_checkpoint(target)

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
        if request.refiner_checkpoint:
            self.manager.prepare(request.refiner_checkpoint)
        with self.manager.device_lock:
            job.set_status("running")
            previous = self.manager.active.info.name if self.manager.active else None
            try:
                active = self.manager.activate(target)
                with ExitStack() as stack:
                    refiner = None
                    if request.refiner_checkpoint:
                        refiner = stack.enter_context(self.manager.borrowed(request.refiner_checkpoint))
                        _check_refiner(active, refiner)
                    # the memory policy places the model for this request's size; on out of memory it retries lower
                    extra = self.hooks.request_modules(request, self._model_view(active))  # ControlNets
                    result = self.manager.memory.run(
                        request, active, lambda plan: self._run_placed(request, active, job, refiner), extra
                    )
            except BaseException:
                job.set_status("failed")
                raise
            finally:
                if request.restore_checkpoint and previous not in (None, target):
                    self.manager.activate(previous)  # still under the lock: no other job sees the override
            job.set_status("interrupted" if result.interrupted else "done")
            return result

    def _model_view(self, active: ActiveModel) -> ModelView:
        m = active.model
        return ModelView(m.family, m.unet, m.vae, tuple(m.text_encoders), self.manager.device, self.manager.dtype)

    def _run_placed(
        self, request: GenerationRequest, active: ActiveModel, job: Job, refiner: ActiveModel | None = None
    ) -> GenerationResult:
        """One attempt at the job with its networks and extension patches worn; the memory policy calls it again
        after running out of memory (everything it wears is restored on the way out)."""
        device, dtype = self.manager.device, self.manager.dtype
        with (
            self.networks.applied(active, request, device, dtype) as worn,
            self.hooks.model_patches(request, self._model_view(active)),
        ):
            self.manager.memory.adopt_vae(active)  # a VAE the request swapped in is placed and tiled like its own
            worn.infotext.update(self.manager.memory.infotext(active))
            return self._run(request, active, job, worn, refiner)

    def _run(
        self,
        request: GenerationRequest,
        active: ActiveModel,
        job: Job,
        worn: NetworkUse | None = None,
        refiner: ActiveModel | None = None,
    ) -> GenerationResult:
        worn = NetworkUse() if worn is None else worn
        embeds = self._embeddings(active, request)
        self.networks.embedding_notes(self.prompt_encoder(active), request, worn)
        plan = prepare_inpaint(request) if request.mode == "inpaint" else None
        init = prepare_img2img(request) if request.mode == "img2img" else None
        extra = {**worn.infotext, **self._sampling_infotext(request)}
        if refiner is not None:  # A1111's keys, with the refiner's short title
            title = f"{refiner.info.model_name} [{refiner.hash}]" if refiner.hash else refiner.info.model_name
            extra.update({"Refiner": title, "Refiner switch at": request.refiner_switch_at})
        hires = request.mode == "txt2img" and request.enable_hr
        images: list[Image.Image] = []
        seeds: list[int] = []
        infotexts: list[str] = []
        paths: list[Path] = []
        when = datetime.now()
        steps_per_batch = self._sampled_steps(request, active)
        job.plan(request.batch_count, steps_per_batch * request.batch_count)
        for batch in range(request.batch_count):
            if job.interrupted:
                break
            job.start_batch(batch, batch * steps_per_batch)
            batch_seeds = [request.seed + batch * request.batch_size + i for i in range(request.batch_size)]
            # A1111's "Hires fix: which pass the refiner runs on" defaults to the second pass
            first_refiner = None if hires else refiner
            latents = self._first_pass(request, active, embeds, batch_seeds, job, plan, init, first_refiner)
            if hires and not job.interrupted:
                latents = self._hires_pass(request, active, batch_seeds, job, latents, refiner)
            batch_images = decode_latents(active.model.vae, latents)
            if plan is not None:
                batch_images = [finish_inpaint(plan, image) for image in batch_images]
            pairs = zip(batch_images, batch_seeds, strict=True)
            batch_images = [self.hooks.after_image(request, image, seed) for image, seed in pairs]
            self.hooks.after_batch(request, batch_images, batch_seeds)
            for image, seed in zip(batch_images, batch_seeds, strict=True):
                text = self.infotext(request, active, seed, extra)
                if request.save and self.settings.save_outputs:
                    tags = filename_tags(request, seed, active.info.model_name, active.hash, worn.vae)
                    options = SaveOptions.from_settings(self.settings)
                    paths.append(
                        save_image(
                            image,
                            self.outputs_dir,
                            MODE_FOLDERS[request.mode],
                            seed,
                            text,
                            when,
                            options=options,
                            tags=tags,
                        )
                    )
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

    # -- sampling ----------------------------------------------------------------------------------------
    def _rng_source(self, request: GenerationRequest) -> str:
        return request.rng_source or self.settings.randn_source

    def _sampler_options(self, request: GenerationRequest, sampler: str) -> SamplerOptions:
        """A1111's sampler settings, each overridable per request (its API's eta, s_churn, s_tmin, ...)."""
        spec = resolve_sampler(sampler)
        settings = self.settings
        eta = request.eta
        if eta is None:
            eta = settings.eta_ddim if spec.kind == "timesteps" else settings.eta_ancestral
        s_tmax = request.s_tmax if request.s_tmax is not None else settings.s_tmax
        return SamplerOptions(
            eta=eta,
            s_churn=request.s_churn if request.s_churn is not None else settings.s_churn,
            s_tmin=request.s_tmin if request.s_tmin is not None else settings.s_tmin,
            s_tmax=s_tmax if s_tmax else float("inf"),
            s_noise=request.s_noise if request.s_noise is not None else settings.s_noise,
        )

    def _eta_noise_seed_delta(self, request: GenerationRequest) -> int:
        delta = request.eta_noise_seed_delta
        return self.settings.eta_noise_seed_delta if delta is None else delta

    def _sampling_infotext(self, request: GenerationRequest) -> dict[str, object]:
        """What A1111 writes of its sampler settings: Eta when not the sampler's default, ENSD, RNG, Beta params."""
        spec = resolve_sampler(request.sampler)
        params: dict[str, object] = {}
        options = self._sampler_options(request, request.sampler)
        if options.eta is not None and options.eta != spec.default_eta:
            params["Eta"] = options.eta
        if options.s_churn:
            params["Sigma churn"] = options.s_churn
        if options.s_noise != 1.0:
            params["Sigma noise"] = options.s_noise
        delta = self._eta_noise_seed_delta(request)
        if delta and spec.uses_ensd:
            params["ENSD"] = delta
        params["RNG"] = rng_infotext(self._rng_source(request), self.manager.device)
        return params

    def _denoiser(self, active: ActiveModel) -> UNetDenoiser:
        config = active.model.scheduler_config
        sigmas = ModelSigmas.from_scheduler_config(config, is_sdxl=active.model.is_sdxl)
        return UNetDenoiser(active.model.unet, sigmas, config.get("prediction_type") or "epsilon")

    def _pass_steps(
        self, active: ActiveModel, sampler: str, schedule: str, scheduled: tuple[int, int], img2img: bool
    ) -> int:
        """Steps the sampler reports for one pass (what progress counts), from ``pass_schedule``'s answer."""
        spec = resolve_sampler(sampler)
        total, start = scheduled
        sigmas = ModelSigmas.from_scheduler_config(active.model.scheduler_config, is_sdxl=active.model.is_sdxl)
        return plan_run(spec, schedule, total, sigmas.lcm() if spec.lcm else sigmas, start, img2img).total_steps

    def _sampled_steps(self, request: GenerationRequest, active: ActiveModel) -> int:
        """Steps one batch runs: the first pass (img2img runs about ``steps * strength``) plus the hires pass."""
        strength = None if request.mode == "txt2img" else request.denoising_strength
        scheduled = pass_schedule(request.steps, strength)
        steps = self._pass_steps(active, request.sampler, request.schedule_type, scheduled, strength is not None)
        if request.mode == "txt2img" and request.enable_hr:
            steps += hires_steps(request)
        return steps

    def _time_ids(
        self, active: ActiveModel, width: int, height: int
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """SDXL's size conditioning for the cond and uncond halves (the refiner's carries aesthetic scores)."""
        if not active.model.is_sdxl:
            return None, None
        if active.family == "sdxl_refiner":
            return sdxl_time_ids(width, height, 6.0), sdxl_time_ids(width, height, 2.5)
        ids = sdxl_time_ids(width, height)
        return ids, ids

    def _first_pass(
        self,
        request: GenerationRequest,
        active: ActiveModel,
        embeds: ScheduledConditioning,
        seeds: list[int],
        job: Job,
        plan: InpaintPlan | None,
        init: Image.Image | None,
        refiner: ActiveModel | None = None,
    ) -> torch.Tensor:
        """txt2img, img2img or inpaint for one batch: the loop's final latents."""
        vae, inpaint_model, n = active.model.vae, active.is_inpaint, len(seeds)
        if request.mode == "txt2img":
            run = txt2img_pass(request, vae, inpaint_model, n)
        elif request.mode == "img2img":
            assert init is not None
            run = img2img_pass(request, vae, inpaint_model, [init], request.denoising_strength)
            run = replace(run, init_latents=run.init_latents.repeat(n, 1, 1, 1))  # type: ignore[union-attr]
        else:
            assert plan is not None
            fill = None
            if request.inpainting_fill == 2:  # A1111 fills with each seed's own first noise draw
                h, w = plan.image.height // 8, plan.image.width // 8
                fill = ImageRNG((vae.config.latent_channels, h, w), seeds, **self._rng_kwargs(request)).first()
            run = inpaint_pass(request, vae, inpaint_model, plan.image, plan.mask, n, fill)
        subseeds = image_subseeds(request.seed, request.subseed, seeds) if request.mode == "txt2img" else None
        rng = ImageRNG(
            run.shape,
            seeds,
            subseeds=subseeds,
            subseed_strength=request.subseed_strength if subseeds else 0.0,
            resize_from=(request.seed_resize_from_w, request.seed_resize_from_h) if subseeds else None,
            eta_noise_seed_delta=self._eta_noise_seed_delta(request),
            **self._rng_kwargs(request),
        )
        size = (request.width, request.height)
        return self._denoise(request, active, embeds, seeds, job, run, rng, size, refiner)

    def _rng_kwargs(self, request: GenerationRequest) -> dict[str, Any]:
        return {"source": self._rng_source(request), "device": self.manager.device}

    def _hires_pass(
        self,
        request: GenerationRequest,
        active: ActiveModel,
        seeds: list[int],
        job: Job,
        latents: torch.Tensor,
        refiner: ActiveModel | None = None,
    ) -> torch.Tensor:
        """The hires fix's second pass: upscale (latents or pixels), then img2img at the big size, as A1111."""
        vae = active.model.vae
        upscale = self.upscalers.hires_upscale(job)
        inputs = second_pass_inputs(request, active, latents, lambda x: decode_latents(vae, x), upscale)
        sampler = request.hr_sampler_name or request.sampler
        schedule = request.hr_scheduler or request.schedule_type
        hr_steps = hires_steps(request)
        image = inputs["image"]
        encoded = image if isinstance(image, torch.Tensor) else None
        pictures = [] if encoded is not None else image
        run = img2img_pass(
            request,
            vae,
            active.is_inpaint,
            pictures,
            request.denoising_strength,
            steps=hr_steps,
            fix_steps=True,
            sampler=sampler,
            schedule=schedule,
            init_latents=None if encoded is None else encoded.float(),
        )
        hires = replace(request, sampler=sampler, schedule_type=schedule, steps=hr_steps)
        embeds = self._embeddings(active, request, hires=True)
        size = request_hires_size(request).target
        rng = ImageRNG(
            run.shape,
            seeds,
            subseeds=image_subseeds(request.seed, request.subseed, seeds),
            subseed_strength=request.subseed_strength,
            resize_from=(request.seed_resize_from_w, request.seed_resize_from_h),
            eta_noise_seed_delta=self._eta_noise_seed_delta(request),
            **self._rng_kwargs(request),
        )
        return self._denoise(hires, active, embeds, seeds, job, run, rng, size, refiner, hires=True)

    def _denoise(
        self,
        request: GenerationRequest,
        active: ActiveModel,
        embeds: ScheduledConditioning,
        seeds: list[int],
        job: Job,
        run: DenoisePass,
        rng: ImageRNG,
        size: tuple[int, int],
        refiner: ActiveModel | None = None,
        hires: bool = False,
    ) -> torch.Tensor:
        """One run of Easel's loop for one batch, with progress, preview, interrupt/skip and inpaint blending."""
        device = self.manager.device
        spec = resolve_sampler(run.sampler)
        guided = request.cfg_scale != 1  # CFG 1 is the conditional prediction alone: skip the negative half
        cond_ids, uncond_ids = self._time_ids(active, *size)
        conditioning = embeds.conditioning_at(len(seeds), guided, cond_ids, uncond_ids)
        first_step = job.step
        every = self.settings.preview_every
        sdxl = active.model.is_sdxl

        def after_step(state: SamplingState) -> None:
            done = first_step + state.step + 1
            job.advance(done)
            if every and (state.step + 1) % every == 0 and state.denoised is not None:
                job.offer_latents(state.denoised, done, sdxl)
            if job.interrupted or job.take_skip():
                state.stop = True

        own = SamplingHooks(after_step=[after_step], after_guidance=[run.blend] if run.keep is not None else [])
        hooks = self.hooks.sampling_hooks(request, own)  # the engine's first, then each extension's, isolated
        total, start = run.schedule_steps()
        init = None if run.init_latents is None else run.init_latents.to(device, torch.float32)
        image_conditioning = None if run.image_conditioning is None else run.image_conditioning.to(device)
        with torch.no_grad():
            latents = sample(
                self._denoiser(active),
                spec.label,
                run.schedule,
                total,
                rng.first().to(device, torch.float32),
                conditioning,
                request.cfg_scale,
                lambda _sigma, _sigma_next: rng.next().to(device, torch.float32),
                hooks,
                start,
                init_latents=init,
                image_conditioning=image_conditioning,
                options=self._sampler_options(request, run.sampler),
                brownian_seeds=seeds if spec.brownian else None,
                beta=(self.settings.beta_dist_alpha, self.settings.beta_dist_beta),
                switch=self._refiner_switch(request, refiner, run, size, len(seeds), guided, hires),
            )
        return run.blend(latents)

    def _refiner_switch(
        self,
        request: GenerationRequest,
        refiner: ActiveModel | None,
        run: DenoisePass,
        size: tuple[int, int],
        batch: int,
        guided: bool,
        hires: bool,
    ) -> ModelSwitch | None:
        """The refiner's UNet and its own encoding of the prompts, ready to take over mid-run."""
        if refiner is None:
            return None
        embeds = self._embeddings(refiner, request, hires=hires)
        cond_ids, uncond_ids = self._time_ids(refiner, *size)
        device = self.manager.device
        image_conditioning = None if run.image_conditioning is None else run.image_conditioning.to(device)
        return ModelSwitch(
            request.refiner_switch_at,
            self._denoiser(refiner),
            embeds.conditioning_at(batch, guided, cond_ids, uncond_ids),
            image_conditioning if refiner.is_inpaint else None,
        )
