"""Prompt embeddings per sampling step: ``[from:to:when]`` editing and ``[a|b]`` alternation in the engine.

Each distinct text of the prompt's (and the negative prompt's) schedule is encoded once; all are padded to one
length so they can replace each other. The engine passes step 0's embeddings to the pipeline and, from diffusers'
``callback_on_step_end``, swaps in the next step's ones where they change. With classifier-free guidance diffusers
has already concatenated ``[negative, positive]`` into ``prompt_embeds`` (and, for SDXL, ``add_text_embeds``)
before its loop, and uses whatever tensor the callback returns from the next step on, so the swap returns the
concatenated form too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pipelines.conditioning.encoder import PromptEmbeds, PromptEncoder, pad_to_same_length
from pipelines.conditioning.prompt_schedules import conditioning_schedule
from pipelines.conditioning.syntax import extract_network_tags


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

    def _indices(self, step: int) -> tuple[int, int]:
        step = min(max(step, 0), self.steps - 1)
        return self.cond_at[step], self.uncond_at[step]

    def pipeline_kwargs(self, step: int = 0) -> dict[str, torch.Tensor]:
        """Embedding arguments of a diffusers pipeline call (batch of one) for ``step``."""
        c, u = self._indices(step)
        out = {
            "prompt_embeds": self.cond[c].embeds.to(self.device, self.dtype),
            "negative_prompt_embeds": self.uncond[u].embeds.to(self.device, self.dtype),
        }
        if self.sdxl:
            out["pooled_prompt_embeds"] = _pooled(self.cond[c]).to(self.device, self.dtype)
            out["negative_pooled_prompt_embeds"] = _pooled(self.uncond[u]).to(self.device, self.dtype)
        return out

    def callback_tensor_inputs(self) -> list[str]:
        """What the step callback must receive to swap conditioning (nothing when the prompt has no schedule)."""
        if self.is_static:
            return []
        return ["prompt_embeds", "add_text_embeds"] if self.sdxl else ["prompt_embeds"]

    def swap_after(self, pipeline: Any, index: int, sampled_steps: int, batch: int) -> dict[str, torch.Tensor]:
        """Tensors to return from the callback after pipeline step ``index`` so the next step uses its prompt.

        ``index`` counts the pipeline's timesteps; samplers that evaluate twice per step (Heun, DPM2) have about
        twice as many, so the sampler step is found by proportion.
        """
        if self.is_static:
            return {}
        total = int(getattr(pipeline, "num_timesteps", 0) or sampled_steps)
        now = (index * sampled_steps) // total
        following = ((index + 1) * sampled_steps) // total
        if self._indices(now) == self._indices(following):
            return {}
        kwargs = self.pipeline_kwargs(following)
        guided = bool(getattr(pipeline, "do_classifier_free_guidance", True))

        def stack(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
            positive = positive.repeat(batch, *([1] * (positive.dim() - 1)))
            negative = negative.repeat(batch, *([1] * (negative.dim() - 1)))
            return torch.cat([negative, positive]) if guided else positive

        out = {"prompt_embeds": stack(kwargs["prompt_embeds"], kwargs["negative_prompt_embeds"])}
        if self.sdxl:
            out["add_text_embeds"] = stack(kwargs["pooled_prompt_embeds"], kwargs["negative_pooled_prompt_embeds"])
        return out


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
