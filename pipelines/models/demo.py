"""The built-in demo model: a tiny random-weight SD1.x checkpoint, so Easel starts with no download.

It is saved like a real checkpoint (single-file .safetensors, original key layout) in the checkpoints folder and
loaded through the same loader as any other file. Its images are noise: it shows the UI working, nothing more.
Its UNet attends only at the lower resolution, so a 512x512, 20-step image takes seconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from pipelines.models.checkpoints import list_checkpoints
from pipelines.models.tiny_models import build_tiny_components, save_single_file, tiny_unet_config

DEMO_FILE = "easel-demo-random-weights.safetensors"
DEMO_SEED = 20240601


def build_demo_components() -> dict:
    """Tiny SD1 components with the cross-attention moved off the full-resolution level."""
    components = build_tiny_components("sd1", seed=DEMO_SEED)
    config = tiny_unet_config("sd1") | {
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DEMO_SEED)
        components["unet"] = UNet2DConditionModel(**config)
    return components


def ensure_demo_checkpoint(checkpoints_dir: Path) -> Path | None:
    """Build the demo checkpoint when the folder holds no checkpoint; returns its path, or None if not needed."""
    path = checkpoints_dir / DEMO_FILE
    others = [c for c in list_checkpoints(checkpoints_dir) if c.path != path]
    if others:
        return None
    if not path.is_file():
        checkpoints_dir.mkdir(parents=True, exist_ok=True)
        save_single_file("sd1", build_demo_components(), path)
    return path
