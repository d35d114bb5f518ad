"""How many steps an img2img pass runs at a denoising strength, as A1111 counts them.

One rule for every img2img-like pass (img2img, inpaint, the hires fix's second pass), so the progress bar's total,
the prompt-editing schedule and the sampler always agree on the count.
"""

from __future__ import annotations


def effective_strength(steps: int, strength: float) -> float:
    """The strength the pipeline is given: raised so that at least one step runs (A1111 runs one at strength 0)."""
    return min(1.0, max(strength, 1.0 / steps))


def img2img_steps(steps: int, strength: float) -> int:
    """Steps the sampler really runs out of ``steps`` scheduled: about ``steps * strength``, at least one."""
    return steps - int(steps - steps * effective_strength(steps, strength))
