"""The engine side of extensions: every enabled extension's hooks, in a fixed order, each call isolated.

An extension never touches the engine; it declares hooks through its context (``pipelines.extensions.context``)
and the engine calls them here, at named points of ``Engine.generate``: before the request is run, around the
model while it runs (model patches, restored afterwards), inside the denoising loop (``sampling_hooks``: the
loop's ``SamplingHooks``), after each image and after each batch. Order is deterministic: manifest priority, then
name. An extension whose hook raises is switched off for the rest of the process (its error recorded for the
Extensions tab and logged) and the generation goes on without it, as A1111 does with a failing script.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

from pipelines.errors import EaselError
from pipelines.fields import Widget
from pipelines.sampling.denoiser import ModelCall, ModelInputs, SamplingHooks, SamplingState, cfg

if TYPE_CHECKING:
    from pathlib import Path

    from PIL import Image

    from pipelines.requests import GenerationRequest, GenerationResult
    from pipelines.runtime.jobs import Job

log = logging.getLogger(__name__)

# What an extension's hooks look like. Each receives the request so it can read its own fields
# (``request.extensions[<name>]``) and decide whether it has anything to do for this one.
BeforeRequest = Callable[["GenerationRequest"], "GenerationRequest | None"]
StateHook = Callable[["GenerationRequest", SamplingState], None]
ModelCallHook = Callable[["GenerationRequest", ModelCall, ModelInputs], torch.Tensor]
GuidanceHook = Callable[["GenerationRequest", torch.Tensor, torch.Tensor, float, torch.Tensor], torch.Tensor]
DenoisedHook = Callable[["GenerationRequest", torch.Tensor, SamplingState], torch.Tensor]
AfterImage = Callable[["GenerationRequest", "Image.Image", int], "Image.Image | None"]
AfterBatch = Callable[["GenerationRequest", Sequence["Image.Image"], Sequence[int]], None]
ModelPatch = Callable[["GenerationRequest", "ModelView"], "AbstractContextManager[Any] | None"]
Generate = Callable[["GenerationRequest"], "GenerationResult"]
InfotextReader = Callable[[Mapping[str, str]], "InfotextValues | None"]
RequestModules = Callable[["GenerationRequest", "ModelView"], "Sequence[torch.nn.Module] | None"]


Upscale = Callable[["Image.Image", tuple[int, int], str], "Image.Image | None"]
SaveImage = Callable[["Image.Image", str, "GenerationRequest", int], "Path | None"]


@dataclass(frozen=True)
class ScriptRunner:
    """What a running script may use: the engine's own path for each image set, the job, saving, the upscalers.

    ``generate(request)`` takes one queue turn per call (a checkpoint change happens at that turn, never mid-job);
    ``save_grid(image, infotext, request)`` saves into ``outputs/<mode>-grids/`` when the request saves images;
    ``save_image(image, infotext, request, seed)`` saves a picture the script made itself as the request's own
    image (``outputs/<mode>-images/``, the user's file name pattern) when the request saves images.
    ``upscale(image, (width, height), name)`` resizes to exactly that size with one of ``upscalers()`` (the names
    ``/sdapi/v1/upscalers`` lists, in its order: None, Lanczos, Nearest, then the models), taking one queue turn
    as the Extras tab does; None when the job was interrupted. Wrap calls in ``job.part(i, n)`` so the progress
    bar counts across them.
    """

    generate: Generate
    job: Job
    save_grid: Callable[[Image.Image, str, GenerationRequest], Path | None]
    save_image: SaveImage
    upscale: Upscale
    upscalers: Callable[[], list[str]]


@dataclass(frozen=True)
class ModelView:
    """The loaded model's parts a model patch may change for one request (and must put back)."""

    family: str
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoders: tuple[torch.nn.Module, ...]
    device: torch.device
    dtype: torch.dtype


@dataclass(frozen=True)
class InfotextValues:
    """What an extension reads out of a parsed infotext (A1111's ``infotext_pasted`` callbacks add the same).

    ``values``: keys of the extension's own choosing (sd-webui-controlnet's ``ControlNet 0 module``...), added to
    ``/sdapi/v1/png-info``'s ``parameters`` and pasted into the widgets the extension's accordion names for them;
    ``warnings``: what could not be restored as written (a model that is not installed), for the UI to show.
    """

    values: Mapping[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class ScriptArg:
    """One positional argument of a script: how the UI shows it and A1111's ``script-info`` describes it."""

    widget: Widget
    default: Any = None


@dataclass(frozen=True)
class Script:
    """A1111's selectable script (the "Script" dropdown, ``script_name`` + positional ``script_args``).

    ``run(request, args, runner)`` makes the images itself through ``runner.generate`` (see ``ScriptRunner``) and
    returns what the user sees; ``ui(tab)``, when given, builds its own Gradio widgets (one per arg, in order)
    instead of the generic ones built from ``args``.
    """

    title: str
    args: tuple[ScriptArg, ...]
    run: Callable[[GenerationRequest, list[Any], ScriptRunner], GenerationResult]
    modes: frozenset[str] = frozenset({"txt2img", "img2img", "inpaint"})
    ui: Callable[[str], Sequence[Any]] | None = None

    @property
    def key(self) -> str:
        """A1111 matches ``script_name`` against the lower-cased title."""
        return self.title.lower()


@dataclass
class ExtensionHooks:
    """What one extension declared through its context; filled in by its ``setup`` and then left alone."""

    name: str
    priority: int = 100
    before_request: list[BeforeRequest] = field(default_factory=list)
    before_sampling: list[StateHook] = field(default_factory=list)
    model_call: list[ModelCallHook] = field(default_factory=list)
    guidance: GuidanceHook | None = None
    after_guidance: list[DenoisedHook] = field(default_factory=list)
    after_step: list[StateHook] = field(default_factory=list)
    after_image: list[AfterImage] = field(default_factory=list)
    after_batch: list[AfterBatch] = field(default_factory=list)
    model_patches: list[ModelPatch] = field(default_factory=list)
    scripts: list[Script] = field(default_factory=list)
    infotext_readers: list[InfotextReader] = field(default_factory=list)
    request_modules: list[RequestModules] = field(default_factory=list)


class EngineHooks:
    """The hooks of every loaded extension, called by the engine in manifest-priority-then-name order.

    ``on_error(name, message)`` is told when an extension is switched off for raising (the extension list shows it).
    """

    def __init__(
        self, extensions: Iterable[ExtensionHooks] = (), on_error: Callable[[str, str], None] | None = None
    ) -> None:
        self._extensions = sorted(extensions, key=lambda e: (e.priority, e.name))
        self._failed: dict[str, str] = {}
        self._lock = threading.Lock()
        self._on_error = on_error

    # -- isolation ----------------------------------------------------------------------------------------
    @property
    def failed(self) -> dict[str, str]:
        """Extensions switched off since start-up for raising in a hook: name -> what went wrong."""
        with self._lock:
            return dict(self._failed)

    def active(self) -> list[ExtensionHooks]:
        with self._lock:
            return [e for e in self._extensions if e.name not in self._failed]

    def names(self) -> list[str]:
        return [e.name for e in self._extensions]

    def _fail(self, name: str, where: str, exc: BaseException) -> None:
        message = f"{where} raised {type(exc).__name__}: {exc}"
        log.error("extension %s switched off: %s", name, message, exc_info=exc)
        with self._lock:
            self._failed.setdefault(name, message)
        if self._on_error is not None:
            self._on_error(name, message)

    def _guarded(self, name: str, where: str, call: Callable[..., Any], fallback: Callable[..., Any]) -> Any:
        """``call`` wrapped so that, once it raises, its extension is off and ``fallback`` answers instead."""

        def guarded(*args: Any) -> Any:
            if name in self._failed:
                return fallback(*args)
            try:
                return call(*args)
            except EaselError:
                raise  # a user's mistake the extension reports on purpose (a bad value): the request fails clearly
            except Exception as exc:
                self._fail(name, where, exc)
                return fallback(*args)

        return guarded

    # -- the points the engine calls -----------------------------------------------------------------------
    def before_request(self, request: GenerationRequest) -> GenerationRequest:
        """Each extension may return a changed request (``dataclasses.replace``); None keeps it as it is."""
        for ext in self.active():
            for hook in ext.before_request:
                changed = self._guarded(ext.name, "before_request", hook, lambda _r: None)(request)
                if changed is not None:
                    request = changed
        return request

    def sampling_hooks(self, request: GenerationRequest, base: SamplingHooks | None = None) -> SamplingHooks:
        """The loop's hooks for one run: the engine's own (``base``) first, then each extension's, isolated.

        Model-call wrappers nest in order (the first extension outermost). Only one guidance combiner can decide:
        the first extension (by order) that declares one; the others' are skipped with a log line.
        """
        base = SamplingHooks() if base is None else base
        hooks = replace(
            base,
            before_sampling=list(base.before_sampling),
            model_call=list(base.model_call),
            after_guidance=list(base.after_guidance),
            after_step=list(base.after_step),
        )
        guidance_owner: str | None = None
        for ext in self.active():
            name = ext.name
            for hook in ext.before_sampling:
                hooks.before_sampling.append(self._state_hook(name, "before_sampling", hook, request))
            for hook in ext.after_step:
                hooks.after_step.append(self._state_hook(name, "after_step", hook, request))
            for wrapper in ext.model_call:
                hooks.model_call.append(self._model_call(name, wrapper, request))
            for after in ext.after_guidance:
                hooks.after_guidance.append(self._after_guidance(name, after, request))
            if ext.guidance is not None:
                if guidance_owner is None:
                    guidance_owner = name
                    hooks.guidance = self._guidance(name, ext.guidance, request, base.guidance)
                else:
                    log.warning("extension %s's guidance combiner unused: %s's comes first", name, guidance_owner)
        return hooks

    def _state_hook(self, name: str, where: str, hook: StateHook, request: GenerationRequest) -> Any:
        return self._guarded(name, where, lambda state: hook(request, state), lambda _state: None)

    def _model_call(self, name: str, wrapper: ModelCallHook, request: GenerationRequest) -> Any:
        def wrapped(call: ModelCall, inputs: ModelInputs) -> torch.Tensor:
            if name in self._failed:
                return call(inputs)
            try:
                return wrapper(request, call, inputs)
            except EaselError:
                raise
            except Exception as exc:  # the inner call is made again without this wrapper
                self._fail(name, "model_call", exc)
                return call(inputs)

        return wrapped

    def _after_guidance(self, name: str, hook: DenoisedHook, request: GenerationRequest) -> Any:
        return self._guarded(
            name, "after_guidance", lambda denoised, state: hook(request, denoised, state), lambda d, _s: d
        )

    def _guidance(self, name: str, hook: GuidanceHook, request: GenerationRequest, fallback: Any) -> Any:
        fallback = fallback or cfg
        return self._guarded(name, "guidance", lambda c, u, s, sig: hook(request, c, u, s, sig), fallback)

    def after_image(self, request: GenerationRequest, image: Image.Image, seed: int) -> Image.Image:
        """Each extension may return a replacement image (a watermark, a face fix); None keeps the one it got."""
        for ext in self.active():
            for hook in ext.after_image:
                changed = self._guarded(ext.name, "after_image", hook, lambda *_a: None)(request, image, seed)
                if changed is not None:
                    image = changed
        return image

    def after_batch(self, request: GenerationRequest, images: Sequence[Image.Image], seeds: Sequence[int]) -> None:
        for ext in self.active():
            for hook in ext.after_batch:
                self._guarded(ext.name, "after_batch", hook, lambda *_a: None)(request, list(images), list(seeds))

    @contextmanager
    def model_patches(self, request: GenerationRequest, model: ModelView) -> Iterator[None]:
        """Every extension's patches on the model for the ``with`` block, taken off in reverse order in ``finally``.

        A patch that raises while being put on is skipped (its extension switched off); one that raises while
        being taken off is recorded the same way, and the others still come off.
        """
        worn: list[tuple[str, AbstractContextManager[Any]]] = []
        try:
            for ext in self.active():
                for patch in ext.model_patches:
                    try:
                        manager = patch(request, model)
                        if manager is not None:
                            manager.__enter__()
                            worn.append((ext.name, manager))
                    except EaselError:
                        raise
                    except Exception as exc:
                        self._fail(ext.name, "model_patch", exc)
            yield
        finally:
            for name, manager in reversed(worn):
                try:
                    manager.__exit__(None, None, None)
                except Exception as exc:
                    self._fail(name, "model_patch (taking it off)", exc)

    def request_modules(self, request: GenerationRequest, model: ModelView) -> list[torch.nn.Module]:
        """Modules the extensions will run beside the UNet for this request (ControlNets), once each.

        The memory policy counts their bytes in its decision and places them with the UNet (``placement``).
        """
        found: dict[int, torch.nn.Module] = {}
        for ext in self.active():
            for hook in ext.request_modules:
                modules = self._guarded(ext.name, "request_modules", hook, lambda *_a: None)(request, model)
                for module in modules or ():
                    found.setdefault(id(module), module)
        return list(found.values())

    def read_infotext(self, fields: Mapping[str, str]) -> InfotextValues:
        """Every extension's reading of one parsed infotext (``parse_infotext``'s dict), merged in order."""
        values: dict[str, Any] = {}
        warnings: list[str] = []
        for ext in self.active():
            for reader in ext.infotext_readers:
                try:
                    read = self._guarded(ext.name, "infotext_reader", reader, lambda _f: None)(dict(fields))
                except EaselError as exc:  # a text it cannot read is worth a note, never a failed paste
                    warnings.append(f"{ext.name}: {exc}")
                    continue
                if read is not None:
                    values.update(read.values)
                    warnings.extend(read.warnings)
        return InfotextValues(values, tuple(warnings))

    # -- scripts --------------------------------------------------------------------------------------------
    def scripts(self, mode: str | None = None) -> list[Script]:
        """Selectable scripts of the loaded extensions (all modes when ``mode`` is None), in order."""
        return [s for ext in self.active() for s in ext.scripts if mode is None or mode in s.modes]

    def script(self, title: str, mode: str) -> Script:
        """A script by title, matched without regard to case as A1111 does; EaselError naming the choices."""
        wanted = title.strip().lower()
        for script in self.scripts(mode):
            if script.key == wanted:
                return script
        names = ", ".join(s.title for s in self.scripts(mode)) or "none installed"
        raise EaselError(f"script '{title}' not found for {mode} (available: {names})")

    def run_script(self, request: GenerationRequest, runner: ScriptRunner) -> GenerationResult:
        """Run ``request.script`` with its args; the script calls ``runner.generate`` for each image set it makes.

        A script's own mistakes (a bug, not a user's bad value) fail the request with a clear message; the
        extension stays on, since the next request may not reach the bug.
        """
        assert request.script is not None
        script = self.script(request.script, request.mode)
        args = _script_args(script, list(request.script_args))
        inner = replace(request, script=None, script_args=())
        try:
            return script.run(inner, args, runner)
        except EaselError:
            raise
        except Exception as exc:
            log.exception("script %s failed", script.title)
            raise EaselError(f"script '{script.title}' failed: {type(exc).__name__}: {exc}") from exc


def _script_args(script: Script, given: list[Any]) -> list[Any]:
    """A1111 clients may send fewer args than the script takes: the rest are the declared defaults."""
    if len(given) > len(script.args):
        raise EaselError(f"script '{script.title}' takes {len(script.args)} args, got {len(given)}")
    return given + [arg.default for arg in script.args[len(given) :]]


@contextmanager
def patched_weights(updates: Mapping[torch.Tensor, torch.Tensor]) -> Iterator[None]:
    """Tensors overwritten in place with new values for the ``with`` block, then the exact originals put back.

    The helper for model patches that change weights (as LoRA does): ``{module.weight: new_value}``.
    """
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for tensor, value in updates.items():
                saved.append((tensor, tensor.detach().clone()))
                tensor.copy_(value.to(tensor.device, tensor.dtype))
        yield
    finally:
        with torch.no_grad():
            for tensor, original in reversed(saved):
                tensor.copy_(original)
