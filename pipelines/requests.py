"""What a user asks for (validated once, here) and what they get back."""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from pipelines.errors import EaselError
from pipelines.fields import FIELDS, MAX_SEED, MODES
from pipelines.sampling.samplers import canonical_schedule_type, split_sampler_name

MODE_FOLDERS = {mode: f"{mode}-images" for mode in MODES}


def _whole_number(name: str, value: float) -> int:
    """``int(value)``, with NaN and Infinity (ValueError, OverflowError) a user's error instead of a crash."""
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise EaselError(f"{name} must be a whole number (got {value})") from exc


@dataclass(frozen=True)
class GenerationRequest:
    """One user request, in every mode. Construct through ``validated()`` so bad input fails early and clearly."""

    mode: str = "txt2img"
    prompt: str = ""
    negative_prompt: str = ""
    checkpoint: str | None = None  # None: the active one
    restore_checkpoint: bool = False  # A1111's override_settings_restore_afterwards: the active one comes back
    sampler: str = "Euler a"
    schedule_type: str = "Automatic"
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    seed: int = -1
    batch_count: int = 1
    batch_size: int = 1
    clip_skip: int = 1
    save: bool = True
    # img2img / inpaint
    init_image: Image.Image | None = None
    denoising_strength: float = 0.75
    resize_mode: int = 0
    mask: Image.Image | None = None
    mask_blur: int = 4
    inpainting_mask_invert: bool = False
    inpainting_fill: int = 1
    inpaint_full_res: bool = False
    inpaint_full_res_padding: int = 32
    # txt2img hires fix, named as A1111's API (denoising_strength above is the second pass's strength)
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = 0  # 0: the same as steps
    hr_sampler_name: str | None = None  # None: the same sampler
    hr_scheduler: str | None = None  # None: the same schedule type
    hr_prompt: str = ""  # empty: the same prompt
    hr_negative_prompt: str = ""
    # variation seed (txt2img), as A1111
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_w: int = 0
    seed_resize_from_h: int = 0
    # styles.csv names applied to the prompts, and a VAE from models/VAE (None or "Automatic": the checkpoint's)
    styles: tuple[str, ...] = ()
    vae: str | None = None
    # sampler settings (None: the server's settings), as A1111's API and override_settings name them
    eta: float | None = None
    s_churn: float | None = None
    s_tmin: float | None = None
    s_tmax: float | None = None
    s_noise: float | None = None
    rng_source: str | None = None  # "GPU" / "CPU" / "NV"
    eta_noise_seed_delta: int | None = None
    # A1111's refiner: this checkpoint takes over once refiner_switch_at of the denoising is done
    refiner_checkpoint: str | None = None
    refiner_switch_at: float = 0.8
    extra_params: dict[str, object] = field(default_factory=dict)
    # extensions: their fields' values ({extension: {field: value}}, see FIELDS.extension_values) and the selected
    # A1111-style script with its positional args (None: plain generation)
    extensions: dict[str, dict[str, Any]] = field(default_factory=dict)
    script: str | None = None
    script_args: tuple[Any, ...] = ()

    def validated(self, hires_upscalers: Collection[str] | None = None) -> GenerationRequest:
        """A copy with names canonical and a concrete seed; raises EaselError naming what is wrong.

        ``hires_upscalers``: the hires upscaler names the engine knows (None: the built-in ones only).
        """
        if self.mode not in MODES:
            raise EaselError(f"unknown mode '{self.mode}' (use {', '.join(MODES)})")
        sampler, schedule = split_sampler_name(self.sampler)
        if (
            schedule
            and self.schedule_type
            and canonical_schedule_type(self.schedule_type) not in ("Automatic", schedule)
        ):
            raise EaselError(
                f"Sampler {self.sampler!r} already names the {schedule} schedule, which conflicts with schedule type "
                f"{self.schedule_type}. Pick the sampler {sampler!r} and one schedule type."
            )
        match = schedule or canonical_schedule_type(self.schedule_type)
        self._check("steps", "cfg_scale", "width", "height", "batch_count", "batch_size", "clip_skip")
        seed = _whole_number("Seed", self.seed)
        if seed == -1:
            seed = random.randint(0, MAX_SEED)
        FIELDS["seed"].check(seed)
        if self.mode != "txt2img":
            if self.init_image is None:
                raise EaselError("no image given: upload or paste an image first")
            self._check("denoising_strength", "resize_mode")
        if self.mode == "inpaint":
            if self.mask is None:
                raise EaselError("paint a mask first (or upload one)")
            self._check("mask_blur", "inpainting_fill", "inpaint_full_res_padding")
        subseed = _whole_number("Variation seed", self.subseed) if self.subseed is not None else -1
        if subseed == -1:
            subseed = random.randint(0, MAX_SEED)
        FIELDS["subseed"].check(subseed)
        self._check("subseed_strength", "refiner_switch_at")
        sampling = self._sampling_overrides()
        for name in ("seed_resize_from_w", "seed_resize_from_h"):
            if getattr(self, name) > 0:  # 0 or -1: off; the old size's noise is drawn in full, hence the bound
                self._check(name)
        hires = _checked_hires(self, hires_upscalers) if self.enable_hr and self.mode == "txt2img" else {}
        return replace(
            self,
            **hires,
            subseed=subseed,
            extensions=FIELDS.extension_values(self.extensions),
            script_args=tuple(self.script_args or ()),
            styles=tuple(self.styles or ()),
            sampler=sampler,
            schedule_type=match,
            seed=seed,
            steps=int(self.steps),
            width=int(self.width),
            height=int(self.height),
            batch_count=int(self.batch_count),
            batch_size=int(self.batch_size),
            clip_skip=int(self.clip_skip),
            **sampling,
        )

    def _sampling_overrides(self) -> dict[str, object]:
        """The sampler settings a request overrides, checked; the RNG source by its canonical name."""
        from pipelines.sampling.rng import SOURCES, parse_source

        changes: dict[str, object] = {}
        for name in ("eta", "s_churn", "s_tmin", "s_tmax", "s_noise", "eta_noise_seed_delta"):
            value = getattr(self, name)
            if value is not None:
                value = FIELDS[name].coerce(value)
                FIELDS[name].check(value)
                changes[name] = value
        if self.rng_source is not None:
            try:
                changes["rng_source"] = parse_source(self.rng_source)
            except ValueError:
                raise EaselError(
                    f"unknown random number generator source '{self.rng_source}' (use {', '.join(SOURCES)})"
                ) from None
        if self.refiner_checkpoint is not None and str(self.refiner_checkpoint).strip().lower() in ("", "none"):
            changes["refiner_checkpoint"] = None  # A1111's UI and clients send "None" for no refiner
        return changes

    def _check(self, *names: str) -> None:
        """Each field's declared bounds (pipelines.fields), with the message a user can act on."""
        for name in names:
            FIELDS[name].check(getattr(self, name))

    @property
    def image_count(self) -> int:
        return self.batch_count * self.batch_size


def _checked_hires(request: GenerationRequest, upscalers: Collection[str] | None = None) -> dict[str, object]:
    """Hires fields made canonical (sampler names split as for the first pass) and checked."""
    from pipelines.sampling.hires import HIRES_UPSCALERS, check_hires

    changes: dict[str, object] = {
        "hr_scale": float(request.hr_scale),
        "hr_resize_x": int(request.hr_resize_x or 0),
        "hr_resize_y": int(request.hr_resize_y or 0),
        "hr_second_pass_steps": int(request.hr_second_pass_steps or 0),
    }
    sampler = request.hr_sampler_name
    if sampler and sampler not in ("Use same sampler",):
        name, schedule = split_sampler_name(sampler)
        changes["hr_sampler_name"] = name
        if schedule and not request.hr_scheduler:
            changes["hr_scheduler"] = schedule
    else:
        changes["hr_sampler_name"] = None
    scheduler = changes.get("hr_scheduler", request.hr_scheduler)
    if scheduler and scheduler != "Use same scheduler":
        changes["hr_scheduler"] = canonical_schedule_type(str(scheduler))
    else:
        changes["hr_scheduler"] = None
    check_hires(replace(request, **changes), HIRES_UPSCALERS if upscalers is None else upscalers)
    return changes


@dataclass
class GenerationResult:
    """Images with their seeds, infotexts and saved paths (paths empty when not saved), and what made them.

    ``request`` is the validated request as run: styles already applied to its prompts (and cleared, so running it
    again does not apply them twice), a concrete seed and subseed. What it no longer says is kept here.
    """

    images: list[Image.Image]
    seeds: list[int]
    infotexts: list[str]
    paths: list[Path]
    request: GenerationRequest
    model_name: str
    model_hash: str | None
    warnings: list[str] = field(default_factory=list)
    interrupted: bool = False
    subseeds: list[int] = field(default_factory=list)  # the variation seed of each image
    prompts: list[str] = field(default_factory=list)  # each image's prompts, styles applied
    negative_prompts: list[str] = field(default_factory=list)
    styles: tuple[str, ...] = ()  # the styles applied to the prompts
    vae_name: str | None = None  # the VAE file decoded with; None: the checkpoint's own
    vae_hash: str | None = None

    @classmethod
    def combined(
        cls,
        request: GenerationRequest,
        parts: list[GenerationResult],
        images: list[Image.Image],
        seeds: list[int],
        infotexts: list[str],
        paths: list[Path],
        *,
        interrupted: bool,
        subseeds: list[int],
        prompts: list[str],
        negative_prompts: list[str],
    ) -> GenerationResult:
        """A script's result made of the results it ran (grids, tiles): their warnings once each, the model of the last.

        ``request`` is the script's own request; the result carries it without the script, so running it again from
        the result (e.g. "send to") is a plain generation.
        """
        warnings: list[str] = []
        for part in parts:
            warnings += [w for w in part.warnings if w not in warnings]
        last = parts[-1] if parts else None
        return cls(
            images,
            seeds,
            infotexts,
            paths,
            replace(request, script=None, script_args=()),
            last.model_name if last else "",
            last.model_hash if last else None,
            warnings=warnings,
            interrupted=interrupted,
            subseeds=subseeds,
            prompts=prompts,
            negative_prompts=negative_prompts,
            vae_name=last.vae_name if last else None,
            vae_hash=last.vae_hash if last else None,
        )
