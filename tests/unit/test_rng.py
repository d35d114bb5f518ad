"""A1111's noise (pipelines/sampling/rng.py): NV known answers, per-image generators, variations, infotext."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from pipelines.metadata.infotext import format_infotext, parse_infotext
from pipelines.sampling.rng import (
    SOURCES,
    ImageRNG,
    PhiloxGenerator,
    SeedNoise,
    paste_centred,
    philox4x32_10,
    rng_infotext,
    seed_noise,
    slerp,
    source_from_infotext,
)

SHAPE = (4, 8, 6)

# Random123's published known-answer vectors for Philox4x32-10 (its tests/kat_vectors): counter, key, output.
RANDOM123_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]

# The "Expected output" AUTOMATIC1111/stable-diffusion-webui's modules/rng_philox.py docstring lists for
# Generator(seed=0).randn((3, 4)), i.e. torch.randn(3, 4, device="cuda") after seeding 0, to 8 digits. Ours is
# within 3e-7 of every value: the float32 ulps by which CUDA's logf/__sincosf differ from exact arithmetic.
A1111_SEED0_3X4 = [
    [-0.92466259, -0.42534415, -2.6438457, 0.14518388],
    [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
    [-1.07454231, -0.36314407, -1.67105067, 2.26550497],
]

# torch.manual_seed(0), then torch.randn(8, 8, device="cuda"), torch.randn(8, 8, ...), torch.randn(1, 8, ...) in
# float32 (the printout has no dtype=), printed with device='cuda:0' on a Turing GPU (its extension was built for
# sm_75): kapilsh/cuda-mode-lecture, FusedKernels.ipynb / kernels/triton_fused_add_mul_relu.py ``get_inputs``.
# INPUT is the first draw (4 decimals); EXPECTED = max(0, first + 0.5 * second + third) (5 significant digits)
# pins the second and third draws, i.e. how the generator continues.
CUDA_SEED0_INPUT = [
    [-0.9247, -0.4253, -2.6438, 0.1452, -0.1209, -0.5797, -0.6229, -0.3284],
    [-1.0745, -0.3631, -1.6711, 2.2655, 0.3117, -0.1842, 1.2866, 1.1820],
    [-0.1271, 1.2169, 1.4353, 1.0605, -0.4941, -1.4244, -0.7244, -1.2973],
    [0.0697, -0.0074, 1.8969, 0.6878, -0.0779, -0.8373, 1.3506, -0.2879],
    [-0.5965, -0.3283, -0.9086, -0.8059, -0.7407, -0.0504, 0.5435, 1.5150],
    [0.0141, 0.4532, 1.6349, 0.7124, -0.1806, 1.0252, -1.4622, -0.7554],
    [-0.1836, 0.3824, 0.3918, -0.0830, 0.8971, -1.1123, 0.1116, 0.4863],
    [-0.5499, -0.3231, -0.5469, 0.9049, 0.2837, 0.1210, 0.4730, -1.0823],
]
CUDA_SEED0_EXPECTED = [
    [1.7098e00, 0, 0, 0, 6.7049e-01, 0, 3.4424e-01, 1.1223e-02],
    [1.8750e00, 0, 0, 2.2105e00, 6.6808e-01, 0, 1.8445e00, 1.9246e00],
    [2.2614e00, 1.3964e00, 5.1802e-01, 2.0114e00, 0, 0, 2.7715e-01, 0],
    [2.4750e00, 0, 1.9079e00, 5.4869e-01, 3.7923e-01, 0, 3.1791e00, 6.6843e-01],
    [1.8234e00, 0, 1.1147e-01, 0, 0, 0, 2.4250e00, 3.2593e00],
    [2.2903e00, 0, 1.1721e00, 6.9331e-01, 1.0583e00, 6.7518e-01, 0, 2.6185e-01],
    [1.5804e00, 0, 9.0740e-01, 1.6670e-01, 5.5230e-02, 0, 1.5325e00, 3.5984e-01],
    [1.5554e00, 0, 0, 9.4380e-01, 2.9795e-03, 7.4125e-02, 1.6286e00, 0],
]

# torch.manual_seed(42); torch.randn(2, 5, device="cuda"), printed with device='cuda:0' in the docstring of
# flashinfer-ai/flashinfer's logits_processor ``Sample`` (4 decimals).
CUDA_SEED42_2X5 = [[0.1940, 2.1614, -0.1721, 0.8491, -1.9244], [0.6530, -0.6494, -0.8175, 0.5280, -1.2753]]


@pytest.mark.parametrize(("counter", "key", "expected"), RANDOM123_KAT)
def test_philox_matches_random123_known_answers(counter, key, expected) -> None:
    out = philox4x32_10(np.array(counter, dtype=np.uint32).reshape(4, 1), key)
    assert tuple(int(word) for word in out[:, 0]) == expected


def test_nv_matches_a1111_listed_cuda_values() -> None:
    noise = PhiloxGenerator(0).randn((3, 4))
    assert noise.dtype == np.float32
    np.testing.assert_allclose(noise, A1111_SEED0_3X4, rtol=0, atol=3e-7)


def test_nv_matches_cuda_printout_over_three_draws() -> None:
    generator = PhiloxGenerator(0)
    first, second, third = generator.randn((8, 8)), generator.randn((8, 8)), generator.randn((1, 8))
    np.testing.assert_allclose(first, CUDA_SEED0_INPUT, rtol=0, atol=5.5e-5)  # printed to 4 decimals
    combined = np.maximum(first.astype(np.float64) + 0.5 * second + third, 0)
    np.testing.assert_allclose(combined, CUDA_SEED0_EXPECTED, rtol=6e-5, atol=1e-6)  # 5 significant digits


def test_nv_matches_cuda_seed_42() -> None:
    np.testing.assert_allclose(PhiloxGenerator(42).randn((2, 5)), CUDA_SEED42_2X5, rtol=0, atol=5.5e-5)


def test_nv_through_image_rng_is_the_same_stream() -> None:
    rng = ImageRNG((1, 3, 4), [0], source="NV")
    np.testing.assert_allclose(rng.first()[0, 0].numpy(), A1111_SEED0_3X4, rtol=0, atol=3e-7)
    expected_second = PhiloxGenerator(0)
    expected_second.randn((1, 3, 4))
    assert torch.equal(rng.next()[0], torch.from_numpy(expected_second.randn((1, 3, 4))))


def test_nv_statistics() -> None:
    values = PhiloxGenerator(1234).randn((1_000_000,)).astype(np.float64)
    assert abs(values.mean()) < 5e-3  # standard error 1e-3
    assert abs(values.std() - 1) < 3e-3  # standard error about 7e-4
    assert abs((np.abs(values) < 1).mean() - 0.6827) < 3e-3  # normal, not merely unit variance


def test_nv_latent_is_fast() -> None:
    generator = PhiloxGenerator(5)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        generator.randn((1, 4, 128, 128))  # an SDXL 1024x1024 latent
        best = min(best, time.perf_counter() - start)
    assert best < 0.1


@pytest.mark.parametrize("source", SOURCES)
def test_each_image_is_independent_of_its_batch(source: str) -> None:
    batch = ImageRNG(SHAPE, [100, 101, 7], source=source)
    alone = ImageRNG(SHAPE, [7], source=source)
    first = batch.first()
    assert first.shape == (3, *SHAPE)
    assert torch.equal(first[2], alone.first()[0])
    for _ in range(3):
        assert torch.equal(batch.next()[2], alone.next()[0])


@pytest.mark.parametrize("source", SOURCES)
def test_variation_and_resize_are_per_image_too(source: str) -> None:
    options = {"subseed_strength": 0.3, "resize_from": (32, 80), "eta_noise_seed_delta": 31337}
    batch = ImageRNG(SHAPE, [5, 6], source=source, subseeds=[50, 60], **options)
    alone = ImageRNG(SHAPE, [6], source=source, subseeds=[60], **options)
    for _ in range(3):
        assert torch.equal(batch.next()[1], alone.next()[0])


@pytest.mark.parametrize("source", SOURCES)
def test_later_draws_continue_the_generator(source: str) -> None:
    rng = ImageRNG(SHAPE, [3, 4], source=source)
    first, second, third = rng.first(), rng.next(), rng.next()
    assert first.dtype == torch.float32 and first.device.type == "cpu"
    assert not torch.equal(first, second) and not torch.equal(second, third)
    fresh = ImageRNG(SHAPE, [3, 4], source=source)
    assert torch.equal(fresh.next(), first)  # next() before first() is the initial noise, as in A1111
    assert torch.equal(fresh.next(), second)
    assert torch.equal(fresh.next(), third)
    stream = SeedNoise(4, source)
    assert torch.equal(stream.randn(SHAPE), first[1]) and torch.equal(stream.randn(SHAPE), second[1])


def test_first_is_only_the_first_draw() -> None:
    rng = ImageRNG(SHAPE, [1])
    rng.first()
    with pytest.raises(RuntimeError):
        rng.first()


def test_cpu_source_is_torch_cpu_generator_and_gpu_on_cpu_is_the_same() -> None:
    expected = torch.randn(SHAPE, generator=torch.Generator("cpu").manual_seed(9))
    assert torch.equal(seed_noise(9, SHAPE, "CPU"), expected)
    assert torch.equal(ImageRNG(SHAPE, [9], source="GPU", device="cpu").first()[0], expected)


@pytest.mark.parametrize(
    ("shape", "subseeds", "strength", "resize_from"),
    [
        ((4, 8, 6), (), 0.0, None),
        ((4, 8, 6), (70, 71, 72), 0.4, None),
        ((4, 8, 6), (70, 71, 72), 1.0, None),
        ((4, 10, 8), (), 0.0, (48, 48)),  # grows from 6x6
        ((4, 9, 7), (70, 71, 72), 0.6, (32, 40)),  # grows by odd amounts
        ((4, 6, 6), (70, 71, 72), 0.6, (64, 64)),  # shrinks from 8x8 by an even amount
        ((4, 8, 6), (), 0.0, (48, 64)),  # the same size: no resize
    ],
)
def test_cpu_noise_is_torch_randn_with_variation_and_resize(shape, subseeds, strength, resize_from) -> None:
    """The CPU source is plain ``torch.randn`` per seed; variation slerps two such draws, resize pastes one centred."""

    def randn(seed: int, size: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(size, generator=torch.Generator("cpu").manual_seed(seed))

    seeds = [11, 12, 13]
    initial = shape if resize_from is None else (shape[0], resize_from[1] // 8, resize_from[0] // 8)
    expected = []
    for index, seed in enumerate(seeds):
        noise = randn(seed, initial)
        if strength and index < len(subseeds):
            noise = slerp(strength, noise, randn(subseeds[index], initial))
        if tuple(initial) != tuple(shape):
            noise = paste_centred(noise, randn(seed, shape))
        expected.append(noise)
    rng = ImageRNG(shape, seeds, source="CPU", subseeds=subseeds, subseed_strength=strength, resize_from=resize_from)
    assert torch.equal(rng.first(), torch.stack(expected))


def test_variation_blends_towards_the_variation_seed() -> None:
    assert torch.equal(ImageRNG(SHAPE, [1], subseeds=[2], subseed_strength=0.0).first(), seed_noise(1, (1, *SHAPE)))
    full = ImageRNG(SHAPE, [1], source="NV", subseeds=[2], subseed_strength=1.0).first()[0]
    torch.testing.assert_close(full, seed_noise(2, SHAPE, "NV"), rtol=0, atol=1e-5)
    # past the end of the list the variation seed is 0, as in A1111
    short = ImageRNG(SHAPE, [1, 2], subseeds=[5], subseed_strength=1.0).first()
    torch.testing.assert_close(short[1], seed_noise(0, SHAPE), rtol=0, atol=1e-5)


def test_paste_keeps_a1111_quirk_when_shrinking_by_an_odd_amount() -> None:
    source = torch.arange(81.0).reshape(1, 9, 9)
    out = paste_centred(source, torch.full((1, 6, 6), -1.0))
    # A1111: offset (6 - 9) // 2 = -2, pasted extent 9 + 2 * -2 = 5, so row and column 5 keep the target's noise
    assert torch.equal(out[:, :5, :5], source[:, 2:7, 2:7])
    assert bool((out[:, 5, :] == -1).all()) and bool((out[:, :, 5] == -1).all())
    grown = paste_centred(torch.ones(1, 2, 2), torch.zeros(1, 5, 4))  # offsets (5 - 2) // 2 = 1 and 1
    assert torch.equal(grown[0, 1:3, 1:3], torch.ones(2, 2)) and float(grown.sum()) == 4


def test_eta_noise_seed_delta_reseeds_later_draws() -> None:
    rng = ImageRNG(SHAPE, [8], source="NV", eta_noise_seed_delta=31337)
    assert torch.equal(rng.first()[0], seed_noise(8, SHAPE, "NV"))
    later = SeedNoise(8 + 31337, "NV")
    assert torch.equal(rng.next()[0], later.randn(SHAPE))
    assert torch.equal(rng.next()[0], later.randn(SHAPE))


def test_negative_seeds_wrap_like_torch() -> None:
    assert PhiloxGenerator(-1).seed == torch.Generator().manual_seed(-1).initial_seed()
    with pytest.raises(ValueError):
        PhiloxGenerator(1 << 64)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        ImageRNG(SHAPE, [1], source="TPU")
    with pytest.raises(ValueError):
        ImageRNG((4, 8), [1])
    with pytest.raises(ValueError):
        ImageRNG(SHAPE, [])


def test_rng_infotext_values() -> None:
    assert rng_infotext("CPU") == "CPU"
    assert rng_infotext("nv") == "NV"
    assert rng_infotext("GPU") is None  # A1111 writes nothing for its default
    assert rng_infotext("GPU", device="cuda") is None
    assert rng_infotext("GPU", device="cpu") == "CPU"  # GPU on a CPU is the CPU generator: say so
    assert rng_infotext("GPU", device="mps") == "CPU"


def test_source_from_infotext() -> None:
    assert source_from_infotext({"Steps": "20"}) == "NV"  # no key: an A1111 GPU source, i.e. an NVIDIA card
    assert source_from_infotext({"RNG": ""}) == "NV"
    assert source_from_infotext({"RNG": "CPU"}) == "CPU"
    assert source_from_infotext({"RNG": " gpu "}) == "GPU"
    with pytest.raises(ValueError):
        source_from_infotext({"RNG": "quantum"})


@pytest.mark.parametrize(
    ("source", "device", "read_back"),
    [("CPU", None, "CPU"), ("NV", None, "NV"), ("GPU", "cuda", "NV"), ("GPU", "cpu", "CPU")],
)
def test_infotext_round_trip(source: str, device: str | None, read_back: str) -> None:
    params = {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7, "Seed": 1, "RNG": rng_infotext(source, device)}
    fields = parse_infotext(format_infotext("a cat", "", params))
    assert source_from_infotext(fields) == read_back
