"""Pickles that need code to load are refused in Easel's words, even with --allow-pickle; nothing in them runs."""

from __future__ import annotations

import collections
import os
from pathlib import Path

import pytest
import torch

from pipelines.errors import EaselError
from pipelines.models.loader import load_checkpoint, load_state_dict
from pipelines.networks.embeddings import EmbeddingLibrary
from pipelines.networks.lora import read_lora


class _RunsACommand:
    """Unpickling this calls ``os.system`` (what a malicious checkpoint does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def _pickles(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"system": folder / "runs-code.pt", "deque": folder / "needs-a-class.pt", "damaged": folder / "cut.pt"}
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": _RunsACommand(folder / "ran")}, paths["system"])
    torch.save({"emb": torch.zeros(2), "history": collections.deque([1, 2])}, paths["deque"])
    paths["damaged"].write_bytes(b"\x80\x02garbage that is not a pickle")
    return paths


def _check_message(message: str, name: str) -> None:
    assert name in message
    assert "never runs code from model files" in message and ".safetensors" in message
    assert "weights_only" not in message and "torch" not in message.lower()
    assert "\x1b" not in message  # torch's message carries ANSI bold codes


@pytest.mark.parametrize(("kind", "global_name"), [("system", "posix.system"), ("deque", "collections.deque")])
def test_a_pickle_that_needs_code_is_refused_with_easels_reason(tmp_path: Path, kind: str, global_name: str) -> None:
    path = _pickles(tmp_path)[kind]
    with pytest.raises(EaselError) as error:
        load_state_dict(path, allow_pickle=True)
    _check_message(str(error.value), path.name)
    assert global_name in str(error.value)
    with pytest.raises(EaselError) as error:
        load_checkpoint(path, allow_pickle=True)
    _check_message(str(error.value), path.name)
    with pytest.raises(EaselError) as error:
        read_lora("runs-code", path, allow_pickle=True)
    _check_message(str(error.value), path.name)
    assert not (tmp_path / "ran").exists(), "code in the pickle ran"


def test_embeddings_and_damaged_pickles_say_what_happened(tmp_path: Path) -> None:
    paths = _pickles(tmp_path / "embeddings")
    failed = EmbeddingLibrary(tmp_path / "embeddings", allow_pickle=True).current().failed
    assert set(failed) == {"runs-code", "needs-a-class", "cut"}
    _check_message(failed["needs-a-class"], "needs-a-class.pt")
    assert "weights_only" not in failed["cut"] and "\x1b" not in failed["cut"]
    assert "damaged" in failed["cut"]
    with pytest.raises(EaselError, match="damaged or not a PyTorch checkpoint") as error:
        load_state_dict(paths["damaged"], allow_pickle=True)
    assert "weights_only" not in str(error.value)
    assert not (tmp_path / "embeddings" / "ran").exists()
