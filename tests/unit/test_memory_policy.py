"""The memory policy's decisions as a table: (free VRAM, model, request size) -> level and VAE tiling."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pipelines.errors import EaselError
from pipelines.runtime.memory_policy import (
    GB,
    GROUP_BLOCK,
    GROUP_LEAF,
    LEVELS,
    MODEL_OFFLOAD,
    RESIDENT,
    MemoryBudget,
    ModelSizes,
    RequestSize,
    decide,
    step_down,
)

# DESIGN.md section 16's sizes (fp16); SDXL's VAE is upcast to fp32 (its config says force_upcast)
SD15 = ModelSizes(
    unet=int(1.7 * GB),
    text_encoders=(int(0.25 * GB),),
    vae=int(0.17 * GB),
    unet_largest_block=int(0.45 * GB),
    unet_largest_leaf=int(0.03 * GB),
    sdxl=False,
    vae_sample_size=512,
)
SDXL = ModelSizes(
    unet=int(5.1 * GB),
    text_encoders=(int(0.25 * GB), int(1.39 * GB)),
    vae=int(0.33 * GB),
    unet_largest_block=int(1.9 * GB),
    unet_largest_leaf=int(0.05 * GB),
    sdxl=True,
    vae_compute_bytes=4,
    vae_sample_size=1024,
)
S512 = RequestSize(512, 512)
S1024 = RequestSize(1024, 1024)
BATCH4 = RequestSize(1024, 1024, 4)
HIRES2048 = RequestSize(1024, 1024, 1, (2048, 2048))

# (free GB, model, size) -> (mode, VAE tiled, VAE sliced)
TABLE = [
    (80, SD15, S512, RESIDENT, False, False),
    (80, SDXL, S1024, RESIDENT, False, False),
    (80, SDXL, HIRES2048, RESIDENT, False, False),
    (24, SDXL, BATCH4, RESIDENT, False, True),  # four decodes at once do not fit, one at a time does
    (24, SDXL, HIRES2048, RESIDENT, True, False),  # a tiled decode keeps everything resident
    (12, SD15, HIRES2048, RESIDENT, True, False),
    (12, SDXL, S1024, RESIDENT, True, False),
    (8, SD15, S512, RESIDENT, False, False),
    (8, SDXL, S512, MODEL_OFFLOAD, False, False),
    (8, SDXL, S1024, MODEL_OFFLOAD, False, False),  # the promise: SDXL 1024 on 8 GB with no flag
    (8, SDXL, HIRES2048, MODEL_OFFLOAD, True, False),
    (6, SDXL, S1024, GROUP_BLOCK, True, False),
    (6, SDXL, HIRES2048, GROUP_LEAF, True, False),
    (4, SD15, S1024, RESIDENT, True, False),
    (4, SD15, HIRES2048, GROUP_BLOCK, True, False),
    (4, SDXL, S512, GROUP_LEAF, False, False),
    (3, SD15, S1024, MODEL_OFFLOAD, True, False),
    (2, SD15, S512, GROUP_BLOCK, False, False),
]


@pytest.mark.parametrize(("free", "sizes", "size", "mode", "tiled", "sliced"), TABLE)
def test_decision_table(free: float, sizes: ModelSizes, size: RequestSize, mode: str, tiled: bool, sliced: bool):
    plan = decide(MemoryBudget("cuda", int(free * GB)), sizes, size)
    assert (plan.mode, plan.vae_tiling, plan.vae_slicing) == (mode, tiled, sliced), plan.reason
    assert plan.estimated_peak is not None and plan.estimated_peak <= MemoryBudget("cuda", int(free * GB)).usable
    assert mode in plan.reason and size.text() in plan.reason


def test_levels_never_grow_as_memory_shrinks():
    """Less free memory never gives a faster level (a monotone policy: no surprising jumps back up)."""
    for sizes in (SD15, SDXL):
        for size in (S512, S1024, BATCH4, HIRES2048):
            levels = [LEVELS.index(decide(MemoryBudget("cuda", gb * GB), sizes, size).mode) for gb in range(80, 0, -1)]
            assert levels == sorted(levels), (sizes.sdxl, size)


def test_nothing_fits_takes_the_lowest_level_and_says_so():
    plan = decide(MemoryBudget("cuda", int(1.5 * GB)), SDXL, HIRES2048)
    assert (plan.mode, plan.vae_tiling) == (GROUP_LEAF, True)
    assert "trying it anyway" in plan.reason


@pytest.mark.parametrize(
    ("setting", "mode"), [("high", RESIDENT), ("medium", MODEL_OFFLOAD), ("low", GROUP_BLOCK), ("auto", RESIDENT)]
)
def test_forced_levels(setting: str, mode: str):
    plan = decide(MemoryBudget("cuda", 80 * GB), SD15, S512, setting)
    assert plan.mode == mode
    assert (f"--memory {setting}" in plan.reason) == (setting != "auto")


def test_forced_low_picks_leaf_when_blocks_do_not_fit():
    assert decide(MemoryBudget("cuda", 4 * GB), SDXL, S1024, "low").mode == GROUP_LEAF


def test_forced_high_tiles_rather_than_moving():
    plan = decide(MemoryBudget("cuda", 8 * GB), SDXL, S1024, "high")
    assert plan.mode == RESIDENT and plan.vae_tiling and "more than" in plan.reason


def test_medvram_sdxl_applies_to_sdxl_only():
    assert decide(MemoryBudget("cuda", 80 * GB), SDXL, S1024, medvram_sdxl=True).mode == MODEL_OFFLOAD
    assert decide(MemoryBudget("cuda", 80 * GB), SD15, S512, medvram_sdxl=True).mode == RESIDENT
    assert decide(MemoryBudget("cuda", 80 * GB), SDXL, S1024, "low", medvram_sdxl=True).mode == GROUP_BLOCK


def test_vae_tiling_on_and_off():
    on = decide(MemoryBudget("cuda", 80 * GB), SD15, RequestSize(1024, 1024), vae_tiling="on")
    assert on.mode == RESIDENT and on.vae_tiling and on.vae_tile == 512
    off = decide(MemoryBudget("cuda", 12 * GB), SDXL, S1024, vae_tiling="off")
    assert not off.vae_tiling and off.mode == MODEL_OFFLOAD  # untiled SDXL decode needs the UNet off the GPU


def test_cpu_keeps_everything_resident_and_tiles_only_when_ram_is_short():
    roomy = decide(MemoryBudget("cpu", 64 * GB), SDXL, HIRES2048)
    assert (roomy.mode, roomy.vae_tiling) == (RESIDENT, False) and "RAM" in roomy.reason
    short = decide(MemoryBudget("cpu", 10 * GB), SDXL, HIRES2048)
    assert (short.mode, short.vae_tiling) == (RESIDENT, True)
    assert decide(MemoryBudget("cpu", 1 * GB), SDXL, S1024, "low").mode == RESIDENT  # nothing to offload to


def test_unknown_free_memory_stays_resident():
    plan = decide(MemoryBudget("mps", None), SDXL, S1024)
    assert plan.mode == RESIDENT and "unknown" in plan.reason


def test_step_down_ladder():
    plan = decide(MemoryBudget("cuda", 80 * GB), SDXL, S1024)
    seen = [plan.describe()]
    while (plan := step_down(plan)) is not None:
        assert plan.vae_tiling and plan.vae_slicing and "out of memory" in plan.reason
        seen.append(plan.describe())
    assert seen == [
        "resident",
        "model offload, VAE tiled",
        "group offload (block), VAE tiled",
        "group offload (leaf), VAE tiled",
    ]


def test_step_down_at_the_bottom_tiles_first_and_respects_tiling_off():
    leaf_untiled = decide(MemoryBudget("cuda", 4 * GB), SDXL, S512, "low")
    assert leaf_untiled.mode == GROUP_LEAF and not leaf_untiled.vae_tiling
    tiled = step_down(leaf_untiled)
    assert tiled is not None and tiled.mode == GROUP_LEAF and tiled.vae_tiling
    assert step_down(tiled) is None
    assert step_down(leaf_untiled, "off") is None


def test_bad_settings_are_refused():
    with pytest.raises(EaselError, match="memory setting"):
        decide(MemoryBudget("cuda", GB), SD15, S512, "huge")
    with pytest.raises(EaselError, match="VAE tiling"):
        decide(MemoryBudget("cuda", GB), SD15, S512, vae_tiling="maybe")


def test_cli_memory_flags_and_a1111_aliases():
    from webui.cli import parse_args

    assert parse_args([]).memory == "auto"
    assert parse_args(["--medvram"]).memory == "medium"
    assert parse_args(["--lowvram"]).memory == "low"
    assert parse_args(["--memory", "high"]).memory == "high"
    config = parse_args(["--medvram-sdxl", "--vae-tiling", "on", "--fp8-weights", "--compile"])
    assert (config.memory, config.medvram_sdxl, config.vae_tiling, config.fp8_weights, config.compile) == (
        "auto",
        True,
        "on",
        True,
        True,
    )
    with pytest.raises(SystemExit):
        parse_args(["--memory", "huge"])


def test_a_controlnet_beside_the_unet_is_counted():
    """3.5 GB holds SD1.5 resident at 1024; with an SD1.5 ControlNet (0.72 GB in fp16) on the device too it does
    not, and model offload brings it with the UNet; three of them do not fit beside the UNet at all."""
    budget = MemoryBudget("cuda", int(3.5 * GB))
    alone = decide(budget, SD15, S1024)
    assert alone.mode == RESIDENT
    plan = decide(budget, replace(SD15, extra=(int(0.72 * GB),)), S1024)
    assert plan.mode == MODEL_OFFLOAD and "+ 0.7 GB of extension modules (ControlNet)" in plan.reason
    assert plan.estimated_peak > alone.estimated_peak
    assert decide(budget, replace(SD15, extra=(int(0.72 * GB),) * 3), S1024).mode == GROUP_BLOCK
    assert decide(MemoryBudget("cuda", int(4 * GB)), replace(SD15, extra=(int(0.72 * GB),)), S1024).mode == RESIDENT
