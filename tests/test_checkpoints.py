"""Finding, hashing, detecting and loading checkpoint files of every family."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pipelines.errors import EaselError
from pipelines.models.architecture import FAMILIES, derive_architecture
from pipelines.models.checkpoints import HashCache, find_checkpoint, list_checkpoints
from pipelines.models.loader import load_checkpoint, load_single_file, read_shapes


@pytest.mark.parametrize("family", FAMILIES)
def test_single_file_of_every_family_is_detected_and_loads_bit_identical(tiny, family: str) -> None:
    path = tiny.single_file(family)
    sidecar = {"parameterization": "v"} if family == "sd2_v" else None
    assert derive_architecture(read_shapes(path), sidecar).family == family
    model = load_single_file(path)
    assert model.family == family
    reference = tiny.components(family)
    for mine, ref in ((model.unet, reference["unet"]), (model.vae, reference["vae"])):
        ref_state = ref.state_dict()
        for key, value in mine.state_dict().items():
            assert torch.equal(value, ref_state[key]), key
    ref_encoders = [reference[k] for k in ("text_encoder", "text_encoder_2") if reference.get(k) is not None]
    assert len(model.text_encoders) == len(ref_encoders)
    for mine, ref in zip(model.text_encoders, ref_encoders, strict=True):
        ref_state = ref.state_dict()
        for key, value in mine.state_dict().items():
            assert torch.equal(value, ref_state[key]), key
    for tokenizer in model.tokenizers:
        assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
    if family == "sd2_v":
        assert model.scheduler_config["prediction_type"] == "v_prediction"


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_diffusers_folder_loads_with_same_family(tiny, family: str) -> None:
    model = load_checkpoint(tiny.diffusers_folder(family))
    assert model.family == family
    assert all(len(t) == 49408 for t in model.tokenizers)


def test_discovery_is_recursive_and_finds_folders(models_dir: Path) -> None:
    names = [c.name for c in list_checkpoints(models_dir / "Stable-diffusion")]
    assert names == ["sub/tiny-sdxl.safetensors", "tiny-sd1-diffusers", "tiny-sd1.safetensors"]


def test_checkpoints_match_by_title_file_name_and_stem(models_dir: Path) -> None:
    found = list_checkpoints(models_dir / "Stable-diffusion")
    for query in (
        "sub/tiny-sdxl.safetensors",
        "tiny-sdxl.safetensors",
        "tiny-sdxl",
        "tiny-sdxl.safetensors [0123456789]",
    ):
        assert find_checkpoint(found, query).name == "sub/tiny-sdxl.safetensors"
    with pytest.raises(EaselError, match="no checkpoint named"):
        find_checkpoint(found, "nope")


def test_autov2_hash_matches_sha256_and_is_cached(tmp_path: Path, tiny) -> None:
    path = tiny.single_file("sd1")
    cache = HashCache(tmp_path / "hashes.json")
    expected = hashlib.sha256(path.read_bytes()).hexdigest()[:10]
    assert cache.autov2(path) == expected
    again = HashCache(tmp_path / "hashes.json")  # a restart: read from the JSON file, no rehash
    assert again.cached(path) == expected


def test_pickle_checkpoints_are_refused_unless_allowed(tmp_path: Path) -> None:
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}}, path)
    with pytest.raises(EaselError, match="--allow-pickle"):
        load_checkpoint(path)
    with pytest.raises(EaselError, match="old.ckpt"):  # allowed, read weights-only, but not a model
        load_checkpoint(path, allow_pickle=True)


def test_corrupt_and_unknown_files_get_a_clear_error_naming_the_file(tmp_path: Path) -> None:
    corrupt = tmp_path / "broken.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(EaselError, match="broken.safetensors"):
        load_checkpoint(corrupt)
    unknown = tmp_path / "lora-like.safetensors"
    save_file({"lora_unet_down.weight": torch.zeros(2, 2)}, str(unknown))
    with pytest.raises(EaselError, match="lora-like.safetensors.*no Stable Diffusion UNet"):
        load_checkpoint(unknown)
    with pytest.raises(EaselError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
