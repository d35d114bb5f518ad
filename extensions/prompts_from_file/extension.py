"""Prompts from file or textbox, built in: one generation per line, as A1111's script of the same name.

A line is a prompt, or options written like a command line: ``--prompt "a cat" --negative_prompt "blurry"
--steps 20 --cfg_scale 7 --seed 5 --sampler_name "DPM++ 2M"``. A line's prompt goes before (``start``) or after
(``end``) the tab's own prompt. API: ``script_name: "prompts from file or textbox"``, ``script_args``
``[iterate_seed, same_seed_for_all_lines, prompt_position, text]`` as A1111 1.10 takes them.
"""

from __future__ import annotations

import random
import shlex
from dataclasses import replace
from typing import Any

from pipelines.errors import EaselError
from pipelines.fields import MAX_SEED, Widget
from pipelines.hooks import ScriptArg, ScriptRunner
from pipelines.requests import GenerationRequest, GenerationResult

TITLE = "Prompts from file or textbox"
MAX_LINES = 1000
POSITIONS = ("start", "end")


def _bool(text: str) -> bool:
    return text.strip().lower() == "true"


# A1111's option -> (GenerationRequest field, converter); None: an A1111 option Easel has no equivalent for
OPTIONS: dict[str, tuple[str, Any] | None] = {
    "sd_model": ("checkpoint", str),
    "prompt": ("prompt", str),
    "negative_prompt": ("negative_prompt", str),
    "styles": ("styles", lambda text: tuple(s.strip() for s in text.split(",") if s.strip())),
    "seed": ("seed", int),
    "subseed_strength": ("subseed_strength", float),
    "subseed": ("subseed", int),
    "seed_resize_from_h": ("seed_resize_from_h", int),
    "seed_resize_from_w": ("seed_resize_from_w", int),
    "sampler_index": ("sampler", str),
    "sampler_name": ("sampler", str),
    "scheduler": ("schedule_type", str),
    "batch_size": ("batch_size", int),
    "n_iter": ("batch_count", int),
    "steps": ("steps", int),
    "cfg_scale": ("cfg_scale", float),
    "width": ("width", int),
    "height": ("height", int),
    "denoising_strength": ("denoising_strength", float),
    "do_not_save_samples": ("save", lambda text: not _bool(text)),
    "restore_faces": None,
    "tiling": None,
    "do_not_save_grid": None,
    "outpath_samples": None,
    "outpath_grids": None,
    "prompt_for_display": None,
}


def parse_line(line: str, number: int) -> dict[str, Any]:
    """One line as request changes; a line without ``--`` is a prompt. EaselError naming the line otherwise."""
    if "--" not in line:
        return {"prompt": line}
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise EaselError(f"{TITLE}, line {number}: {exc}") from None
    changes: dict[str, Any] = {}
    pos = 0
    while pos < len(words):
        word = words[pos]
        if not word.startswith("--"):
            raise EaselError(f"{TITLE}, line {number}: expected an --option, got '{word}'")
        if pos + 1 >= len(words):
            raise EaselError(f"{TITLE}, line {number}: {word} has no value")
        tag = word[2:]
        if tag not in OPTIONS:
            raise EaselError(f"{TITLE}, line {number}: unknown option {word}")
        spec = OPTIONS[tag]
        if tag in ("prompt", "negative_prompt"):  # A1111: the words up to the next --option, joined
            pos += 1
            taken = [words[pos]]
            pos += 1
            while pos < len(words) and not words[pos].startswith("--"):
                taken.append(words[pos])
                pos += 1
            changes[tag] = " ".join(taken)
            continue
        if spec is None:
            raise EaselError(f"{TITLE}, line {number}: {word} is not supported by Easel")
        name, convert = spec
        try:
            changes[name] = convert(words[pos + 1])
        except ValueError:
            raise EaselError(f"{TITLE}, line {number}: bad value for {word}: '{words[pos + 1]}'") from None
        pos += 2
    return changes


def _join(line_text: str, tab_text: str, position: str) -> str:
    if not line_text or not tab_text:
        return line_text or tab_text
    return f"{line_text} {tab_text}" if position == "start" else f"{tab_text} {line_text}"


def run(request: GenerationRequest, args: list[Any], runner: ScriptRunner) -> GenerationResult:
    iterate, same_seed, position, text = args[:4]
    position = str(position or "start").lower()
    if position not in POSITIONS:
        raise EaselError(f"{TITLE}: prompt position must be 'start' or 'end' (got '{position}')")
    lines = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    if not lines:
        raise EaselError(f"{TITLE}: write at least one prompt (one per line)")
    if len(lines) > MAX_LINES:
        raise EaselError(f"{TITLE}: {len(lines)} lines is more than {MAX_LINES}")
    jobs = [parse_line(line, number) for number, line in enumerate(lines, 1)]
    seed = request.seed
    if (iterate or same_seed) and (seed is None or seed == -1):
        seed = random.randint(0, MAX_SEED)
    results: list[GenerationResult] = []
    for changes in jobs:
        if runner.job.interrupted:
            break
        job = replace(request, **{k: v for k, v in changes.items() if k not in ("prompt", "negative_prompt")})
        if "seed" not in changes and (iterate or same_seed):
            job = replace(job, seed=seed)
        job = replace(
            job,
            prompt=_join(changes.get("prompt", ""), request.prompt, position) if "prompt" in changes else job.prompt,
            negative_prompt=_join(changes.get("negative_prompt", ""), request.negative_prompt, position)
            if "negative_prompt" in changes
            else job.negative_prompt,
        )
        result = runner.generate(job)
        results.append(result)
        if iterate:  # as A1111: by the tab's batch size and count, whatever the line asked for
            seed = (seed + request.batch_size * request.batch_count) % (MAX_SEED + 1)
    return _combined(request, results)


def _combined(request: GenerationRequest, results: list[GenerationResult]) -> GenerationResult:
    if not results:
        return GenerationResult([], [], [], [], request, "", None, interrupted=True)
    last = results[-1]
    out = GenerationResult([], [], [], [], last.request, last.model_name, last.model_hash)
    for result in results:
        out.images += result.images
        out.seeds += result.seeds
        out.infotexts += result.infotexts
        out.paths += result.paths
        out.subseeds += result.subseeds
        out.prompts += result.prompts
        out.negative_prompts += result.negative_prompts
        out.warnings += [w for w in result.warnings if w not in out.warnings]
        out.interrupted = out.interrupted or result.interrupted
    out.vae_name, out.vae_hash = last.vae_name, last.vae_hash
    return out


ARGS = (
    ScriptArg(Widget("checkbox", "Iterate seed every line", "iterate_seed"), False),
    ScriptArg(Widget("checkbox", "Use same random seed for all lines", "same_seed"), False),
    ScriptArg(Widget("radio", "Insert prompts at the", "prompt_position", choices=lambda: POSITIONS), "start"),
    ScriptArg(Widget("textbox", "List of prompt inputs", "prompt_txt", lines=4), ""),
)


def setup(ctx: Any) -> None:
    def ui(tab: str) -> list[Any]:
        from .ui import build_ui

        return build_ui(tab, ARGS)

    ctx.script(TITLE, run, ARGS, modes=("txt2img", "img2img", "inpaint"), ui=ui)
