"""A1111's noise: one generator per image, drawn from the source its "Random number generator source" setting names.

Every image of a batch owns a generator seeded with that image's seed. The first draw is the image's initial
noise; every later draw (an ancestral step, SDE noise) continues the same generator, so draw k of an image
depends on its seed alone, never on the batch it was made in (A1111 ``modules/rng.py``, ``ImageRNG``).

Sources, by A1111's setting values:

- ``GPU``: a torch generator on the model's device (A1111's default). On NVIDIA hardware these are cuRAND's
  numbers, which is why an A1111 infotext without an ``RNG`` key is read as ``NV``. Where the device is the CPU
  or Apple's MPS it is the CPU generator, as in A1111.
- ``CPU``: torch's CPU generator, moved to the device afterwards: the same numbers on every machine.
- ``NV``: what ``torch.randn(..., device="cuda")`` gives, computed on the CPU (A1111 ``modules/rng_philox.py``):
  Philox4x32-10 with the seed as key, element i of the k-th draw from counter (k, 0, i, 0), then one Box-Muller
  value per element. The arithmetic follows A1111's (float64, rounded to float32 at the end), so the numbers
  equal A1111's NV bit for bit on the same numpy; real CUDA hardware agrees to a few float32 ulps (its
  ``logf``/``__sincosf`` are not correctly rounded). Like A1111, it assumes torch gives each element its own
  CUDA thread, which holds while one image's element count fits the GPU's resident threads (SM count x threads
  per SM: 125,952 on an RTX 3090, so an SDXL 1024x1024 latent's 65,536 fits; on a card with fewer, such as a
  28-SM RTX 3060, torch fills the rest from each thread's other outputs and the tail differs from NV, in A1111 too).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, cast

import numpy as np
import torch

Source = Literal["GPU", "CPU", "NV"]
SOURCES: tuple[Source, ...] = ("GPU", "CPU", "NV")
DEFAULT_SOURCE: Source = "GPU"
INFOTEXT_KEY = "RNG"
LATENT_SCALE = 8  # pixels per latent cell, A1111's fixed ``// 8`` for "Seed resize from"

# Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), as cuRAND uses it.
PHILOX_M = (0xD2511F53, 0xCD9E8D57)  # round multipliers
PHILOX_W = (0x9E3779B9, 0xBB67AE85)  # key increments (golden ratio, sqrt(3) - 1)
PHILOX_ROUNDS = 10

# cuRAND's float32 constants for Box-Muller (CURAND_2POW32_INV and CURAND_2POW32_INV_2PI), exactly as A1111 has them.
_TWO_POW32_INV = float(np.float32(2.3283064e-10))
_TWO_POW32_INV_2PI = float(np.float32(2.3283064e-10 * 6.2831855))

_MASK32 = 0xFFFFFFFF
_MASK64 = 0xFFFFFFFFFFFFFFFF


def parse_source(value: str) -> Source:
    """A setting, API or infotext value ("GPU", "CPU", "NV", any case) as the source name; ValueError otherwise."""
    name = str(value).strip().upper()
    if name not in SOURCES:
        raise ValueError(f"unknown random number source '{value}': expected one of {', '.join(SOURCES)}")
    return cast(Source, name)


def _seed_bits(seed: int) -> int:
    """The 64-bit seed torch's ``manual_seed`` keeps: negative seeds wrap around, as torch wraps them."""
    seed = int(seed)
    if not -(1 << 63) <= seed <= _MASK64:
        raise ValueError(f"seed {seed} does not fit in 64 bits")
    return seed & _MASK64


def philox4x32_10(counter: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """Philox4x32-10 of each column of ``counter`` ((4, N) 32-bit words) under ``key`` (two 32-bit words).

    Lanes are held in uint64 so each 32x32-bit product is exact; its high and low halves are the round's mulhi/mullo.
    """
    c0, c1, c2, c3 = (np.asarray(word, dtype=np.uint64) for word in np.asarray(counter, dtype=np.uint32))
    k0, k1 = int(key[0]) & _MASK32, int(key[1]) & _MASK32
    m0, m1, mask, shift = np.uint64(PHILOX_M[0]), np.uint64(PHILOX_M[1]), np.uint64(_MASK32), np.uint64(32)
    for _ in range(PHILOX_ROUNDS):
        p0, p1 = c0 * m0, c2 * m1
        c0, c1, c2, c3 = (p1 >> shift) ^ c1 ^ np.uint64(k0), p1 & mask, (p0 >> shift) ^ c3 ^ np.uint64(k1), p0 & mask
        k0, k1 = (k0 + PHILOX_W[0]) & _MASK32, (k1 + PHILOX_W[1]) & _MASK32
    return np.stack(np.broadcast_arrays(c0, c1, c2, c3)).astype(np.uint32)


def box_muller(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """cuRAND's Box-Muller of two uint32 words: the sine half, the only value torch keeps per element and draw.

    Evaluated in float64 like A1111's numpy code (numpy promotes uint32 x float32 to float64), rounded once.
    """
    u = x.astype(np.float64) * _TWO_POW32_INV + _TWO_POW32_INV / 2
    v = y.astype(np.float64) * _TWO_POW32_INV_2PI + _TWO_POW32_INV_2PI / 2
    return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)


class PhiloxGenerator:
    """The NV source: the normal numbers a seeded CUDA generator gives ``torch.randn``, draw after draw, on the CPU."""

    def __init__(self, seed: int) -> None:
        self.seed = _seed_bits(seed)
        self.offset = 0  # draws made: torch advances the Philox offset by one counter block per (small) randn

    def randn(self, shape: Sequence[int]) -> np.ndarray:
        count = int(np.prod(tuple(shape), dtype=np.int64))
        index = np.arange(count, dtype=np.uint64)
        counter = np.zeros((4, count), dtype=np.uint32)
        counter[0], counter[1] = self.offset & _MASK32, self.offset >> 32  # the draw, in the counter's low words
        counter[2], counter[3] = index & np.uint64(_MASK32), index >> np.uint64(32)  # the element: CUDA's thread
        self.offset += 1
        words = philox4x32_10(counter, (self.seed & _MASK32, self.seed >> 32))
        return box_muller(words[0], words[1]).reshape(tuple(shape))


def _generator_device(source: Source, device: torch.device) -> torch.device:
    """Where a torch source's generator lives: GPU is the model's device, except MPS, drawn on the CPU as in A1111."""
    if source == "GPU" and device.type not in ("cpu", "mps"):
        return device
    return torch.device("cpu")


class SeedNoise:
    """One seed's stream of standard-normal draws from one source, delivered as float32 on ``device``."""

    def __init__(self, seed: int, source: str = DEFAULT_SOURCE, device: torch.device | str = "cpu") -> None:
        self.seed = int(seed)
        self.source = parse_source(source)
        self.device = torch.device(device)
        self._philox: PhiloxGenerator | None = None
        self._torch: torch.Generator | None = None
        if self.source == "NV":
            self._philox = PhiloxGenerator(seed)
        else:
            self._torch = torch.Generator(_generator_device(self.source, self.device)).manual_seed(_seed_bits(seed))

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        """The next draw; each call continues where the previous one stopped."""
        shape = tuple(int(s) for s in shape)
        if self._philox is not None:
            return torch.from_numpy(self._philox.randn(shape)).to(self.device)
        assert self._torch is not None
        noise = torch.randn(shape, generator=self._torch, device=self._torch.device, dtype=torch.float32)
        return noise.to(self.device)


def image_subseeds(seed: int, subseed: int, seeds: Sequence[int]) -> list[int]:
    """Each image's variation seed: it advances with the image's seed, as A1111's ``subseed + i`` does."""
    return [subseed + (image_seed - seed) for image_seed in seeds]


def seed_noise(
    seed: int, shape: Sequence[int], source: str = DEFAULT_SOURCE, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The first draw of a fresh generator for ``seed``: A1111's ``randn(seed, shape)``."""
    return SeedNoise(seed, source, device).randn(shape)


def slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from ``a`` (t=0) to ``b`` (t=1), vector by vector along dim 1 as A1111 does.

    Where the two are nearly parallel the linear blend is used, as in A1111 (whose blend there has t and 1-t swapped;
    that only happens for identical noise, where both agree).
    """
    a_unit = a / torch.linalg.vector_norm(a, dim=1, keepdim=True)
    b_unit = b / torch.linalg.vector_norm(b, dim=1, keepdim=True)
    cos = (a_unit * b_unit).sum(1).clamp(-1.0, 1.0)
    if float(cos.mean()) > 0.9995:
        return a * (1 - t) + b * t
    omega = torch.acos(cos)
    sin = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / sin).unsqueeze(1) * a + (torch.sin(t * omega) / sin).unsqueeze(1) * b


def paste_centred(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``target`` ([C, H, W]) with ``source`` ([C, h, w]) centred in it, with A1111's arithmetic for every size.

    A1111 crops a larger source to ``h + 2 * ((H - h) // 2)`` rows, so when it shrinks by an odd amount the last
    row (column) keeps the target's own noise; "Seed resize from" images only reproduce with that quirk kept.
    """
    out = target.clone()
    (_, height, width), (_, src_height, src_width) = target.shape, source.shape
    dy, dx = (height - src_height) // 2, (width - src_width) // 2
    rows = src_height if dy >= 0 else src_height + 2 * dy
    cols = src_width if dx >= 0 else src_width + 2 * dx
    ty, tx, sy, sx = max(dy, 0), max(dx, 0), max(-dy, 0), max(-dx, 0)
    out[:, ty : ty + rows, tx : tx + cols] = source[:, sy : sy + rows, sx : sx + cols]
    return out


class ImageRNG:
    """The noise of one batch: ``first()`` is the initial noise, ``next()`` every later draw, ``(N, C, H, W)`` each.

    ``subseeds``/``subseed_strength`` are A1111's variation seed (one per image; an image past the end of the list
    uses variation seed 0, as in A1111), ``resize_from`` its "Seed resize from" ``(width, height)`` in pixels, and
    ``eta_noise_seed_delta`` its ENSD setting: after the initial noise, later draws come from generators seeded
    with ``seed + delta``. Variation and resize shape only the initial noise, as in A1111.
    """

    def __init__(
        self,
        shape: Sequence[int],
        seeds: Sequence[int],
        *,
        source: str = DEFAULT_SOURCE,
        device: torch.device | str = "cpu",
        subseeds: Sequence[int] | None = None,
        subseed_strength: float = 0.0,
        resize_from: tuple[int, int] | None = None,
        eta_noise_seed_delta: int = 0,
    ) -> None:
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) != 3 or min(self.shape) <= 0:
            raise ValueError(f"noise shape must be (channels, height, width), got {tuple(shape)}")
        if not seeds:
            raise ValueError("a batch needs at least one seed")
        self.seeds = [int(seed) for seed in seeds]
        self.source = parse_source(source)
        self.device = torch.device(device)
        self.subseeds = None if subseeds is None else [int(s) for s in subseeds]
        self.subseed_strength = float(subseed_strength)
        self.resize_from = resize_from
        self.eta_noise_seed_delta = int(eta_noise_seed_delta)
        self._streams = [SeedNoise(seed, self.source, self.device) for seed in self.seeds]
        self._drawn = False

    def _initial_shape(self) -> tuple[int, int, int]:
        """The shape the seed's noise is drawn at: the old size when "Seed resize from" is set."""
        if self.resize_from is None or self.resize_from[0] <= 0 or self.resize_from[1] <= 0:
            return cast(tuple[int, int, int], self.shape)
        width, height = (int(v) for v in self.resize_from)
        return (self.shape[0], height // LATENT_SCALE, width // LATENT_SCALE)

    def first(self) -> torch.Tensor:
        """The initial noise: the first draw of every image's generator, with variation and resize applied."""
        if self._drawn:
            raise RuntimeError("first() is the first draw of this batch's generators; use next() for later draws")
        self._drawn = True
        initial_shape = self._initial_shape()
        resized = initial_shape != self.shape
        images = []
        for index, (seed, stream) in enumerate(zip(self.seeds, self._streams, strict=True)):
            # The per-image generator makes the full-size draw in every case; helper draws use fresh generators.
            noise = seed_noise(seed, initial_shape, self.source, self.device) if resized else stream.randn(self.shape)
            if self.subseeds is not None and self.subseed_strength != 0:
                subseed = self.subseeds[index] if index < len(self.subseeds) else 0
                subnoise = seed_noise(subseed, initial_shape, self.source, self.device)
                noise = slerp(self.subseed_strength, noise, subnoise)
            if resized:
                noise = paste_centred(noise, stream.randn(self.shape))
            images.append(noise)
        if self.eta_noise_seed_delta:
            delta = self.eta_noise_seed_delta
            self._streams = [SeedNoise(seed + delta, self.source, self.device) for seed in self.seeds]
        return torch.stack(images)

    def next(self) -> torch.Tensor:
        """The next draw of every image's generator (the initial noise if nothing was drawn yet, as in A1111)."""
        if not self._drawn:
            return self.first()
        return torch.stack([stream.randn(self.shape) for stream in self._streams])


def rng_infotext(source: str, device: torch.device | str | None = None) -> str | None:
    """The value A1111 writes under the infotext key ``RNG``: the source, or None (no key) for its default GPU.

    With ``device``, GPU noise not made by NVIDIA's generator (a CPU or MPS device, where GPU means the CPU
    generator) is written as ``CPU``, since a text without the key is read back as NV.
    """
    name = parse_source(source)
    if name == "GPU":
        if device is not None and _generator_device(name, torch.device(device)).type == "cpu":
            return "CPU"
        return None
    return name


def source_from_infotext(fields: Mapping[str, str]) -> Source:
    """The source that reproduces an image from its parsed infotext: its ``RNG`` value, else NV.

    A1111 leaves the key out for its default GPU source, and nearly all such images were made on NVIDIA GPUs,
    whose numbers NV reproduces on any device. An unknown value raises ValueError.
    """
    value = fields.get(INFOTEXT_KEY)
    if value is None or not str(value).strip():
        return "NV"
    return parse_source(value)
