"""Extensions in-process: manifests, isolated loading, hooks and model patches through ``Engine.generate``."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pipelines.errors import EaselError
from pipelines.extensions.install import install, is_git_url, remove, update
from pipelines.extensions.loader import MODULE_PREFIX, LoadedExtensions, load_extensions
from pipelines.extensions.manifest import read_manifest
from pipelines.extensions.state import ExtensionState
from pipelines.fields import FIELDS
from pipelines.generate import Engine
from pipelines.hooks import EngineHooks, ExtensionHooks
from pipelines.metadata.infotext_request import request_from_infotext
from pipelines.requests import GenerationRequest
from tests.extension_support import write_extension, write_test_extensions
from webui.api.scripts import alwayson_values, script_info, script_lists

EMPTY_BUILTINS = Path("/nonexistent-easel-builtins")


@pytest.fixture
def loaded(tmp_path: Path) -> Iterator[LoadedExtensions]:
    user = write_test_extensions(tmp_path / "extensions")
    extensions = load_extensions(user, EMPTY_BUILTINS)
    yield extensions
    extensions.unload()
    assert "testext.shift" not in FIELDS


@pytest.fixture
def engine(make_engine: Callable[[Path], Engine], tmp_path: Path, loaded: LoadedExtensions) -> Engine:
    engine = make_engine(tmp_path / "outputs")
    engine.hooks = loaded.hooks
    return engine


def counts() -> dict[str, int]:
    return sys.modules[MODULE_PREFIX + "testext"].COUNTS


def tiny(**extra: object) -> GenerationRequest:
    values: dict = {"prompt": "a boat", "steps": 2, "width": 64, "height": 64, "seed": 5, "save": False}
    values.update(extra)
    return GenerationRequest(checkpoint="tiny-sd1.safetensors", **values)  # type: ignore[arg-type]


def test_manifest_is_checked(tmp_path: Path) -> None:
    folder = write_extension(tmp_path, "good", "def setup(ctx):\n    pass\n", priority=3)
    manifest = read_manifest(folder)
    assert (manifest.name, manifest.version, manifest.priority, manifest.entry) == ("good", "1.2.3", 3, "extension.py")
    (folder / "extension.toml").write_text('name = "Bad Name"\n')
    with pytest.raises(EaselError, match="lower-case"):
        read_manifest(folder)
    (folder / "extension.toml").write_text('name = "good"\neasel_api = 9\n')
    with pytest.raises(EaselError, match="needs Easel extension API 9"):
        read_manifest(folder)
    (folder / "extension.toml").write_text('name = "good"\nentry = "../elsewhere.py"\n')
    with pytest.raises(EaselError, match="inside the extension's folder"):
        read_manifest(folder)
    with pytest.raises(EaselError, match="no extension.toml"):
        read_manifest(tmp_path)


def test_broken_extensions_are_isolated_and_order_is_priority_then_name(loaded: LoadedExtensions) -> None:
    records = {r.name: r for r in loaded.records}
    assert [r.name for r in loaded.records] == ["broken_hook", "broken_import", "testext"]
    assert records["testext"].active and records["broken_hook"].active
    broken = records["broken_import"]
    assert not broken.loaded and "ModuleNotFoundError" in (broken.error or "")
    assert loaded.hooks.names() == ["broken_hook", "testext"]
    assert "testext.shift" in FIELDS and FIELDS["testext.shift"].widget.elem == "testext_shift"  # type: ignore[union-attr]


def test_field_hooks_and_patch_work_through_generate(engine: Engine, loaded: LoadedExtensions) -> None:
    engine.manager.activate("tiny-sd1.safetensors")
    bias = engine.manager.active.model.unet.conv_out.bias  # type: ignore[union-attr]
    before = bias.detach().clone()
    start = dict(counts())
    plain = engine.generate(tiny())
    shifted = engine.generate(tiny(extensions={"testext": {"shift": 0.5}}))
    assert torch.equal(bias, before)  # the patch came off
    assert counts()["patched"] == start["patched"] + 1 and counts()["images"] == start["images"] + 2
    assert "Testext shift" not in plain.infotexts[0] and "Testext shift: 0.5" in shifted.infotexts[0]
    assert plain.images[0].tobytes() != shifted.images[0].tobytes()
    again = engine.generate(tiny())
    assert again.images[0].tobytes() == plain.images[0].tobytes()
    # the raising hook switched its extension off after its first call; every image was still made
    assert "broken_hook" in loaded.hooks.failed and "this hook always fails" in loaded.hooks.failed["broken_hook"]
    assert "switched off" in (loaded.get("broken_hook").error or "")  # type: ignore[union-attr]
    parsed = request_from_infotext(shifted.infotexts[0])
    assert parsed.extensions == {"testext": {"shift": 0.5}} and "testext.shift" not in parsed.kwargs


def test_step_hook_runs_every_step(engine: Engine) -> None:
    start = counts()["steps"]
    engine.generate(tiny(steps=3))
    assert counts()["steps"] == start + 3


def test_extension_values_are_checked(engine: Engine) -> None:
    with pytest.raises(EaselError, match="between 0 and 2"):
        tiny(extensions={"testext": {"shift": 5}}).validated()
    with pytest.raises(EaselError, match="has no field 'nope'"):
        tiny(extensions={"testext": {"nope": 1}}).validated()
    with pytest.raises(EaselError, match="'ghost' is not installed"):
        tiny(extensions={"ghost": {"x": 1}}).validated()


def test_disabled_extensions_disappear_on_the_next_load(tmp_path: Path) -> None:
    user = write_test_extensions(tmp_path / "extensions")
    state = ExtensionState.beside(user)
    state.set_enabled("testext", False)
    assert state.path == tmp_path / "extensions-state.json" and "testext" in state.path.read_text()
    extensions = load_extensions(user, EMPTY_BUILTINS, ExtensionState.beside(user))
    try:
        record = extensions.get("testext")
        assert record is not None and not record.enabled and not record.loaded
        assert "testext.shift" not in FIELDS and "testext" not in extensions.hooks.names()
        with pytest.raises(EaselError, match="not installed or not enabled"):
            tiny(extensions={"testext": {"shift": 1}}).validated()
    finally:
        extensions.unload()


def test_unreadable_state_file_is_kept_aside(tmp_path: Path) -> None:
    (tmp_path / "extensions-state.json").write_text("{not json")
    state = ExtensionState.beside(tmp_path / "extensions")
    assert state.enabled("anything") and "could not be read" in (state.problem or "")
    assert (tmp_path / "extensions-state.json.broken").exists()


def test_hooks_run_in_priority_then_name_order_and_a_failing_patch_is_skipped() -> None:
    calls: list[str] = []

    def before(name: str) -> Callable[[GenerationRequest], GenerationRequest]:
        def hook(request: GenerationRequest) -> GenerationRequest:
            calls.append(name)
            return replace(request, prompt=request.prompt + name)

        return hook

    def bad_patch(request: GenerationRequest, model: object) -> None:
        raise ValueError("cannot patch")

    exts = [
        ExtensionHooks("b", 10, before_request=[before("b")]),
        ExtensionHooks("a", 10, before_request=[before("a")], model_patches=[bad_patch]),
        ExtensionHooks("z", 1, before_request=[before("z")]),
    ]
    hooks = EngineHooks(exts)
    assert hooks.before_request(GenerationRequest(prompt="")).prompt == "zab" and calls == ["z", "a", "b"]
    with hooks.model_patches(GenerationRequest(), object()):  # type: ignore[arg-type]
        pass
    assert "cannot patch" in hooks.failed["a"] and [e.name for e in hooks.active()] == ["z", "b"]


def test_install_from_a_folder_and_remove(tmp_path: Path) -> None:
    source = write_extension(tmp_path / "src", "fresh", "def setup(ctx):\n    pass\n")
    user = tmp_path / "extensions"
    assert install(str(source), user, set()) == "fresh" and (user / "fresh" / "extension.toml").exists()
    with pytest.raises(EaselError, match="already installed"):
        install(str(source), user, {"fresh"})
    with pytest.raises(EaselError, match="not installed with git"):
        update(user / "fresh")
    remove(user / "fresh", user)
    assert not (user / "fresh").exists() and not [p for p in user.iterdir()]  # no staging folder left behind
    for refused in ("file:///etc", "ext::sh -c touch% /tmp/pwned"):
        with pytest.raises(EaselError, match="only http"):
            install(refused, user, set())
    with pytest.raises(EaselError, match="not a user extension folder"):
        remove(tmp_path / "src" / "fresh", user)
    assert is_git_url("https://github.com/someone/easel-thing.git") and is_git_url("git@github.com:a/b.git")


def test_api_shapes_of_always_on_extensions(loaded: LoadedExtensions) -> None:
    assert alwayson_values({"TestExt": {"args": [0.25]}}, "txt2img") == {"testext": {"shift": 0.25}}
    assert alwayson_values({"testext": {"args": {"shift": 1}}}, "img2img") == {"testext": {"shift": 1}}
    with pytest.raises(EaselError, match="always-on script 'controlnet' not found"):
        alwayson_values({"controlnet": {"args": []}}, "txt2img")
    lists = script_lists(loaded.hooks)
    assert "testext" in lists["txt2img"] and "testext" in lists["img2img"]
    entry = next(i for i in script_info(loaded.hooks) if i["name"] == "testext" and not i["is_img2img"])
    arg = entry["args"][0]
    assert entry["is_alwayson"]
    assert (arg["label"], arg["value"], arg["minimum"], arg["maximum"]) == ("Testext shift", 0.0, 0, 2)
