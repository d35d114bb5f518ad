"""Where a checkpoint's weights live during one generation, decided from free memory, model size and image size.

A pure function (``decide``) so the choice can be tested as a table: free bytes on the device, the component sizes
and the request's size in, a ``MemoryPlan`` out. ``pipelines.runtime.placement`` carries a plan out on the modules.

Levels, from fastest to smallest (each one step below the previous, which is what an out-of-memory retry takes):

- ``resident``: every component on the device for the whole generation;
- ``model offload``: one component (a text encoder, the UNet or the VAE) on the device at a time, the rest in RAM;
- ``group offload``: the UNet streamed through the device block by block (``block``) or layer by layer (``leaf``),
  with the next group prefetched on a side CUDA stream; the other components as in model offload.

VAE tiling (and slicing for batches) is chosen separately, per level: a level whose weights fit but whose whole-image
decode does not is kept, with the decode tiled, before anything is moved off the device.

The activation sizes are estimates (bytes per latent pixel for the UNet, per output pixel for the VAE) meant to be
calibrated: ``benchmarks/gpu.py`` prints the measured numbers on a real GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pipelines.errors import EaselError

SETTINGS = ("auto", "high", "medium", "low")
"""``--memory``: auto decides per request; high/medium/low force resident/model offload/group offload."""
VAE_TILING_SETTINGS = ("auto", "on", "off")

RESIDENT = "resident"
MODEL_OFFLOAD = "model offload"
GROUP_BLOCK = "group offload (block)"
GROUP_LEAF = "group offload (leaf)"
LEVELS = (RESIDENT, MODEL_OFFLOAD, GROUP_BLOCK, GROUP_LEAF)
_FORCED = {"high": (RESIDENT,), "medium": (MODEL_OFFLOAD,), "low": (GROUP_BLOCK, GROUP_LEAF)}

GB = 1 << 30
MB = 1 << 20
# Estimated activation memory at 2 bytes an element (fp16/bf16); doubled for fp32. UNet: per latent pixel per
# sample in the UNet batch (CFG runs cond and uncond: two samples an image). SD1/SD2 attend at the full latent
# resolution, SDXL does not, hence the larger SD figure. VAE: per output pixel; the decoder's last levels hold
# several 128-256 channel feature maps at full resolution (DESIGN.md section 16: gigabytes at 1024x1024).
UNET_ACTIVATION_PER_LATENT_PIXEL = {"sd": 16 * 1024, "sdxl": 12 * 1024}
VAE_ACTIVATION_PER_PIXEL = 3200
TILE_CANDIDATES = (1024, 512, 256)
"""VAE tile sizes tried (pixels a side), largest first; capped at the VAE's own ``sample_size``."""
TILE_OVERLAP = 0.25
"""A tile's working set is about (1 + overlap)^2 of its area: diffusers' blend overlap, and a generous bound for
Easel's exact tiling (``pipelines.imaging.tiled_vae``), whose margins are a few pixels at full resolution (the
latent-resolution layers, 1/64 of the pixels, carry the wide ones and the whole-image mid block)."""


@dataclass(frozen=True)
class ModelSizes:
    """Bytes each component holds, as stored now (fp8 storage counts one byte a weight), and how it computes."""

    unet: int
    text_encoders: tuple[int, ...]
    vae: int
    unet_largest_block: int  # the biggest child block (down/mid/up) of the UNet: block-level group offload holds two
    unet_largest_leaf: int  # the biggest single layer: leaf-level group offload holds a few
    sdxl: bool
    compute_bytes: int = 2  # element size of the UNet's compute dtype
    vae_compute_bytes: int = 2  # 4 when the VAE runs in fp32 (SDXL's original VAE is upcast)
    vae_sample_size: int = 512  # the VAE's training tile: tiles are never larger
    extra: tuple[int, ...] = ()  # modules this request runs beside the UNet (ControlNets), on the device with it

    @property
    def total(self) -> int:
        return self.unet + sum(self.text_encoders) + self.vae + sum(self.extra)


@dataclass(frozen=True)
class RequestSize:
    """The largest pictures one request makes: its size, its batch and the hires fix's second-pass size."""

    width: int
    height: int
    batch: int = 1
    hires: tuple[int, int] | None = None

    @property
    def passes(self) -> tuple[tuple[int, int], ...]:
        """Every (width, height) the UNet runs at."""
        return ((self.width, self.height),) if self.hires is None else ((self.width, self.height), self.hires)

    @property
    def decoded(self) -> tuple[int, int]:
        """The size the VAE decodes at the end (the hires size when there is a second pass)."""
        return self.hires or (self.width, self.height)

    def text(self) -> str:
        w, h = self.decoded
        batch = f", batch {self.batch}" if self.batch > 1 else ""
        return f"{w}x{h}{batch}"


@dataclass(frozen=True)
class MemoryBudget:
    """What the device offers: ``available`` bytes Easel may use (None: unknown or not a GPU) and its kind."""

    device_type: str
    available: int | None
    total: int | None = None

    @property
    def usable(self) -> int | None:
        """Available bytes less a safety margin for the allocator's fragmentation and the kernels' workspaces."""
        if self.available is None:
            return None
        return max(0, int(self.available * 0.92) - 256 * MB)


@dataclass(frozen=True)
class MemoryPlan:
    """One generation's placement: the level, VAE tiling/slicing (tile size in pixels) and why, in words."""

    mode: str
    vae_tiling: bool
    vae_slicing: bool
    vae_tile: int
    reason: str
    setting: str = "auto"
    estimated_peak: int | None = None

    def describe(self) -> str:
        vae = ", VAE tiled" if self.vae_tiling else (", VAE sliced" if self.vae_slicing else "")
        return f"{self.mode}{vae}"

    def as_dict(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "setting": self.setting,
            "vae_tiling": self.vae_tiling,
            "vae_slicing": self.vae_slicing,
            "vae_tile": self.vae_tile if self.vae_tiling else None,
            "estimated_peak": self.estimated_peak,
            "reason": self.reason,
        }


def check_setting(memory: str, vae_tiling: str = "auto") -> None:
    if memory not in SETTINGS:
        raise EaselError(f"unknown memory setting '{memory}' (use one of {', '.join(SETTINGS)})")
    if vae_tiling not in VAE_TILING_SETTINGS:
        raise EaselError(f"unknown VAE tiling setting '{vae_tiling}' (use one of {', '.join(VAE_TILING_SETTINGS)})")


def gb(n: int) -> str:
    return f"{n / GB:.1f} GB"


# -- estimates ---------------------------------------------------------------------------------------------------
def unet_activations(sizes: ModelSizes, width: int, height: int, batch: int) -> int:
    per_pixel = UNET_ACTIVATION_PER_LATENT_PIXEL["sdxl" if sizes.sdxl else "sd"] * sizes.compute_bytes // 2
    return per_pixel * (width // 8) * (height // 8) * batch * 2  # CFG: cond + uncond


def vae_activations(sizes: ModelSizes, width: int, height: int, images: int, tile: int | None = None) -> int:
    """Decode (or encode) working memory for ``images`` pictures at once, or for one tile of ``tile`` pixels."""
    per_pixel = VAE_ACTIVATION_PER_PIXEL * sizes.vae_compute_bytes // 2
    if tile is not None:
        side = min(int(tile * (1 + TILE_OVERLAP)), max(width, height))
        return per_pixel * min(side, width) * min(side, height) * images
    return per_pixel * width * height * images


def _unet_peak(sizes: ModelSizes, size: RequestSize) -> int:
    return max(unet_activations(sizes, w, h, size.batch) for w, h in size.passes)


def weights_during(mode: str, sizes: ModelSizes) -> tuple[int, int, int]:
    """Weight bytes on the device while (the text encoders, the UNet, the VAE) run, at one level."""
    everything = sizes.total
    if mode == RESIDENT:
        return everything, everything, everything
    largest_te = max(sizes.text_encoders, default=0)
    if mode == MODEL_OFFLOAD:
        unet = sizes.unet + sum(sizes.extra)  # the ControlNets come onto the device with the UNet
    else:  # the UNet streams; each extra module is one more component on the device on its own
        streamed = 2 * sizes.unet_largest_block if mode == GROUP_BLOCK else 4 * sizes.unet_largest_leaf
        unet = max(streamed, max(sizes.extra, default=0))
    return largest_te, unet, sizes.vae


def _peak(mode: str, sizes: ModelSizes, size: RequestSize, decode: int) -> int:
    te, unet, vae = weights_during(mode, sizes)
    return max(te + 64 * MB, unet + _unet_peak(sizes, size), vae + decode)


# -- the decision ------------------------------------------------------------------------------------------------
def _decode_options(sizes: ModelSizes, size: RequestSize, vae_tiling: str) -> list[tuple[bool, bool, int, int]]:
    """(tiled, sliced, tile, decode bytes) options, cheapest in time first."""
    w, h = size.decoded
    n = size.batch
    tiles = [t for t in TILE_CANDIDATES if t <= sizes.vae_sample_size] or [sizes.vae_sample_size]
    tiled = [(True, n > 1, t, vae_activations(sizes, w, h, 1, t)) for t in tiles if t < max(w, h)]
    if vae_tiling == "on":
        return tiled or [(True, n > 1, tiles[-1], vae_activations(sizes, w, h, 1, tiles[-1]))]
    whole = [(False, False, tiles[0], vae_activations(sizes, w, h, n))]
    if n > 1:
        whole.append((False, True, tiles[0], vae_activations(sizes, w, h, 1)))
    return whole if vae_tiling == "off" else whole + tiled


def decide(
    budget: MemoryBudget,
    sizes: ModelSizes,
    size: RequestSize,
    setting: str = "auto",
    vae_tiling: str = "auto",
    medvram_sdxl: bool = False,
) -> MemoryPlan:
    """The fastest level (and the cheapest VAE decode) whose estimated peak fits the budget.

    ``high``/``medium``/``low`` fix the level (``low`` still picks block or leaf); ``--medvram-sdxl`` means
    ``medium`` for SDXL models only. Off the GPU (or with no number for free memory) everything stays resident,
    since RAM is the only memory there is; VAE tiling is then decided against free RAM (what ``available`` holds).
    """
    check_setting(setting, vae_tiling)
    effective = "medium" if medvram_sdxl and sizes.sdxl and setting == "auto" else setting
    decodes = _decode_options(sizes, size, vae_tiling)
    extra = sum(sizes.extra)
    beside = f" + {gb(extra)} of extension modules (ControlNet)" if extra else ""
    what = f"{size.text()}, model {gb(sizes.total - extra)}{beside}"
    if budget.device_type not in ("cuda", "mps"):
        return _resident_off_gpu(budget, sizes, size, setting, decodes, what)
    levels = _FORCED.get(effective, LEVELS)
    usable = budget.usable
    forced = f" (--memory {setting})" if setting != "auto" else (" (--medvram-sdxl)" if effective != "auto" else "")
    if usable is None:
        tiled, sliced, tile, decode = decodes[0]
        peak = _peak(levels[0], sizes, size, decode)
        reason = f"free {budget.device_type} memory unknown: {levels[0]}{forced}"
        return MemoryPlan(levels[0], tiled, sliced, tile, reason, setting, peak)
    for mode in levels:
        for tiled, sliced, tile, decode in decodes:
            peak = _peak(mode, sizes, size, decode)
            if peak <= usable:
                vae = " with the VAE tiled" if tiled else (" with the VAE sliced" if sliced else "")
                reason = f"{what}: {mode}{vae} needs about {gb(peak)} of {gb(usable)} usable{forced}"
                return MemoryPlan(mode, tiled, sliced, tile, reason, setting, peak)
    mode = levels[-1]
    tiled, sliced, tile, decode = decodes[-1]
    peak = _peak(mode, sizes, size, decode)
    reason = f"{what}: even {mode} needs about {gb(peak)}, more than the {gb(usable)} usable; trying it anyway{forced}"
    return MemoryPlan(mode, tiled, sliced, tile, reason, setting, peak)


def _resident_off_gpu(
    budget: MemoryBudget,
    sizes: ModelSizes,
    size: RequestSize,
    setting: str,
    decodes: list[tuple[bool, bool, int, int]],
    what: str,
) -> MemoryPlan:
    usable = budget.usable
    choice = decodes[0]
    if usable is not None:  # the weights are already in RAM: only the decode's working memory must fit
        choice = next((d for d in decodes if d[3] <= usable), decodes[-1])
    tiled, sliced, tile, decode = choice
    vae = " with the VAE tiled" if tiled else (" with the VAE sliced" if sliced else "")
    room = f" ({gb(usable)} RAM free)" if usable is not None else ""
    reason = f"{what}: {budget.device_type}: everything in RAM{vae}{room}"
    return MemoryPlan(RESIDENT, tiled, sliced, tile, reason, setting, sizes.total + decode)


def step_down(plan: MemoryPlan, vae_tiling: str = "auto") -> MemoryPlan | None:
    """The next smaller placement after an out-of-memory error: one level down, VAE tiled; None at the bottom."""
    tile_ok = vae_tiling != "off"
    index = LEVELS.index(plan.mode)
    if index + 1 < len(LEVELS):
        mode = LEVELS[index + 1]
    elif tile_ok and not plan.vae_tiling:
        mode = plan.mode
    else:
        return None
    tile = plan.vae_tile if plan.vae_tiling else min(plan.vae_tile, 512)
    reason = f"stepped down from {plan.describe()} after running out of memory"
    return replace(
        plan, mode=mode, vae_tiling=tile_ok, vae_slicing=True, vae_tile=tile, reason=reason, estimated_peak=None
    )
