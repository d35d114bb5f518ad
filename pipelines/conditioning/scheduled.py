"""Prompt embeddings per model call: ``[from:to:when]`` editing and ``[a|b]`` alternation, as the loop asks for them.

Each distinct text of the prompt's (and the negative prompt's) schedule is encoded once; all are padded to one
length so they can replace each other. The schedule is built over the sampler's model calls (A1111 builds it over
``steps * 2`` for second-order samplers and indexes it by its denoiser's call counter); ``conditioning_at`` turns it
into the loop's ``ConditioningAt``: the same ``Conditioning`` object while the texts do not change, so the denoiser
batches ``[cond, uncond]`` once per change, not once per call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipelines.conditioning.encoder import PromptEmbeds, PromptEncoder, pad_to_same_length
from pipelines.conditioning.prompt_schedules import conditioning_schedule
from pipelines.conditioning.syntax import extract_network_tags
from pipelines.sampling.denoiser import Conditioning, ConditioningAt


@dataclass
class ScheduledConditioning:
    """Distinct embeddings and, per step, which of them the positive and negative prompts use."""

    cond: list[PromptEmbeds]
    uncond: list[PromptEmbeds]
    cond_at: list[int]
    uncond_at: list[int]
    sdxl: bool
    device: torch.device
    dtype: torch.dtype

    @property
    def is_static(self) -> bool:
        return len(self.cond) == 1 and len(self.uncond) == 1

    @property
    def steps(self) -> int:
        return len(self.cond_at)

    def _indices(self, step: int) -> tuple[int, int]:  # past the end: the last (DPM adaptive may call more)
        step = min(max(step, 0), self.steps - 1)
        return self.cond_at[step], self.uncond_at[step]

    def conditioning_at(
        self,
        batch: int,
        guided: bool = True,
        cond_time_ids: torch.Tensor | None = None,
        uncond_time_ids: torch.Tensor | None = None,
    ) -> ConditioningAt:
        """Model call k -> the batch's ``Conditioning``; ``guided`` False leaves the negative prompt out (CFG 1).

        SDXL's added conditioning is the pooled embedding and ``*_time_ids`` (``[6]``, or ``[5]`` for the refiner).
        """
        cache: dict[tuple[int, int], Conditioning] = {}

        def repeat(t: torch.Tensor) -> torch.Tensor:
            return t.to(self.device, self.dtype).repeat(batch, *([1] * (t.dim() - 1)))

        def added(embeds: PromptEmbeds, time_ids: torch.Tensor | None) -> dict[str, torch.Tensor] | None:
            if not self.sdxl:
                return None
            assert time_ids is not None, "SDXL needs its size conditioning"
            return {"text_embeds": repeat(_pooled(embeds)), "time_ids": repeat(time_ids[None])}

        def at(call: int) -> Conditioning:
            key = self._indices(call)
            if key not in cache:
                c, u = key
                cache[key] = Conditioning(
                    repeat(self.cond[c].embeds),
                    repeat(self.uncond[u].embeds) if guided else None,
                    added(self.cond[c], cond_time_ids),
                    added(self.uncond[u], uncond_time_ids if uncond_time_ids is not None else cond_time_ids)
                    if guided
                    else None,
                )
            return cache[key]

        return at


def sdxl_time_ids(width: int, height: int, aesthetic_score: float | None = None) -> torch.Tensor:
    """SDXL's micro-conditioning: original size, crop (0, 0) and target size, as A1111 sends them (both the size
    of the picture being made); the refiner takes ``(original size, crop, aesthetic score)`` instead."""
    if aesthetic_score is not None:
        return torch.tensor([height, width, 0, 0, aesthetic_score], dtype=torch.float32)
    return torch.tensor([height, width, 0, 0, height, width], dtype=torch.float32)


def _pooled(embeds: PromptEmbeds) -> torch.Tensor:
    if embeds.pooled is None:
        raise ValueError("SDXL conditioning needs pooled embeddings")
    return embeds.pooled


def encode_conditioning(
    encoder: PromptEncoder,
    prompt: str,
    negative_prompt: str,
    steps: int,
    clip_skip: int,
    device: torch.device,
    dtype: torch.dtype,
    sdxl: bool,
) -> ScheduledConditioning:
    """Encode both prompts' schedules over ``steps`` (network tags removed first)."""
    cond_texts = conditioning_schedule(extract_network_tags(prompt)[0], steps)
    uncond_texts = conditioning_schedule(extract_network_tags(negative_prompt)[0], steps)
    distinct_cond = list(dict.fromkeys(cond_texts))
    distinct_uncond = list(dict.fromkeys(uncond_texts))
    with torch.no_grad():
        encoded = [encoder.encode(text, clip_skip=clip_skip) for text in distinct_cond + distinct_uncond]
        padded = list(pad_to_same_length(*encoded))
    cond, uncond = padded[: len(distinct_cond)], padded[len(distinct_cond) :]
    return ScheduledConditioning(
        cond,
        uncond,
        [distinct_cond.index(t) for t in cond_texts],
        [distinct_uncond.index(t) for t in uncond_texts],
        sdxl,
        device,
        dtype,
    )
