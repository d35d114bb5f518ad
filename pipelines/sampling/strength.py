"""The denoising strength an img2img pass really runs at, as A1111 counts it.

One rule for every img2img-like pass (img2img, inpaint, the hires fix's second pass), so the progress bar's total,
the prompt-editing schedule and the sampler always agree on the count.
"""

from __future__ import annotations


def effective_strength(steps: int, strength: float) -> float:
    """The strength the pipeline is given: raised so that at least one step runs (A1111 runs one at strength 0)."""
    return min(1.0, max(strength, 1.0 / steps))
