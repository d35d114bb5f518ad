"""The one object an extension's ``setup(ctx)`` receives: everything it may declare, and nothing else.

Through it an extension registers request fields (namespaced ``<name>.<field>`` in the field registry, values
carried in ``GenerationRequest.extensions``), engine hooks and model patches (``pipelines.hooks``), selectable
scripts, UI contributions (an accordion in named tabs, or a whole tab: Gradio builder functions, called by the
web UI), REST routes (a function returning a FastAPI router, mounted under ``/<name>/`` behind the same login)
and settings. It holds no engine, no manager, no global state: what an extension can reach is what is listed here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from pipelines.errors import EaselError
from pipelines.fields import ALL_MODES, FIELDS, FieldRegistry, Infotext, RequestField, Widget, whole_number
from pipelines.hooks import ExtensionHooks, InfotextValues, Script, ScriptArg

__all__ = ["AccordionParts", "ExtensionContext", "InfotextValues", "Setting"]  # what extensions import from here

F = TypeVar("F", bound=Callable[..., Any])
GENERATION_TABS = ("txt2img", "img2img", "inpaint")


@dataclass(frozen=True)
class Accordion:
    """An accordion in each of ``tabs``; ``build(tab)`` returns ``{field: component}`` for the fields it shows.

    Without ``build`` the accordion holds the extension's fields' widgets, built from their declarations.
    """

    title: str
    tabs: tuple[str, ...]
    build: Callable[[str], Mapping[str, Any]] | None = None


@dataclass(frozen=True)
class AccordionParts:
    """What an accordion's ``build(tab)`` may return instead of a plain ``{field: component}``.

    ``paste``: ``{key: component}``, the widget each key of the extension's infotext reader (``ctx.infotext_reader``)
    is pasted into by PNG Info's "Send to" and the prompt's "read parameters" button (A1111's ``infotext_fields``).
    """

    fields: Mapping[str, Any]
    paste: Mapping[str, Any] = field(default_factory=dict)
    # (fn, widgets, component): the component holds fn(*widgets), kept so on every change and recomputed just
    # before Generate (so a click that overtakes a change event still sends the widgets' current values)
    derived: Sequence[tuple[Callable[..., Any], Sequence[Any], Any]] = ()


@dataclass(frozen=True)
class Tab:
    """A whole tab of the extension's own; ``build()`` lays out Gradio components inside it."""

    title: str
    build: Callable[[], None]


@dataclass(frozen=True)
class Setting:
    """An extension's setting: read once at start-up (a change takes effect on the next start, as A1111's
    "requires restart" options), kept in config.json under ``config_key``, shown in the Settings tab's ``section``."""

    key: str
    default: Any
    label: str
    config_key: str = ""
    bounds: tuple[float, float] | None = None
    section: str = ""

    def checked(self, value: Any) -> Any:
        """``value`` as this setting's type, numbers clamped into ``bounds``; EaselError when it is not one."""
        kind = type(self.default)
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, int | float | str | bool):
            raise EaselError(f"{self.config_key}: expected {kind.__name__}, got {value!r}")
        if kind in (int, float):
            if isinstance(value, str) or (kind is int and isinstance(value, float) and not value.is_integer()):
                raise EaselError(f"{self.config_key}: expected {kind.__name__}, got {value!r}")
            value = kind(value)
            if self.bounds is not None:
                value = min(max(value, kind(self.bounds[0])), kind(self.bounds[1]))
            return value
        if not isinstance(value, kind):
            raise EaselError(f"{self.config_key}: expected {kind.__name__}, got {value!r}")
        return value


@dataclass
class Contributions:
    """Everything one extension declared, read by the engine (hooks) and the web UI (the rest)."""

    hooks: ExtensionHooks
    fields: list[RequestField] = field(default_factory=list)
    accordions: list[Accordion] = field(default_factory=list)
    tabs: list[Tab] = field(default_factory=list)
    routes: list[Callable[[], Any]] = field(default_factory=list)  # each returns a fastapi.APIRouter
    settings: list[Setting] = field(default_factory=list)


class Catalog:
    """Read-only names of what is installed (checkpoints, VAEs, styles, upscalers), for an extension's choices.

    Bound by the server once the engine exists (``bind``); until then, and in tests without one, the lists are empty.
    """

    def __init__(self) -> None:
        self._sources: dict[str, Callable[[], Sequence[str]]] = {}
        self._folders: dict[str, tuple[Path, ...]] = {}
        self._allow_pickle = False
        self._device = "cpu"

    def bind(self, **sources: Callable[[], Sequence[str]]) -> None:
        self._sources.update(sources)

    def bind_model_folders(self, allow_pickle: bool = False, **folders: Sequence[Path]) -> None:
        """The server's model folders by kind (``controlnet``: ``--controlnet-dir``) and its ``--allow-pickle``."""
        self._folders.update({kind: tuple(Path(p) for p in paths) for kind, paths in folders.items()})
        self._allow_pickle = allow_pickle

    def bind_device(self, device: str) -> None:
        self._device = device

    @property
    def device(self) -> str:
        """The engine's device (``cuda:0``, ``cpu``...), for an extension's own models (ControlNet's annotators)."""
        return self._device

    def model_folders(self, kind: str) -> list[Path]:
        """Where models of ``kind`` live (the extension lists and opens files only inside them); empty if unbound."""
        return list(self._folders.get(kind, ()))

    @property
    def allow_pickle(self) -> bool:
        """Whether the user allowed pickled model files (read weights-only, ``pipelines.models.loader``)."""
        return self._allow_pickle

    def _names(self, kind: str) -> list[str]:
        source = self._sources.get(kind)
        return list(source()) if source else []

    def checkpoints(self) -> list[str]:
        return self._names("checkpoints")

    def vaes(self) -> list[str]:
        return self._names("vaes")

    def styles(self) -> list[str]:
        return self._names("styles")

    def upscalers(self) -> list[str]:
        """As ``/sdapi/v1/upscalers`` lists them: None, Lanczos, Nearest, then the models (A1111's index order)."""
        return self._names("upscalers")


def extension_value(request: Any, name: str) -> Any:
    """A request's value of the extension field ``<owner>.<field>`` (its default when the request sets none)."""
    owner, short = name.split(".", 1)
    values = getattr(request, "extensions", None) or {}
    own = values.get(owner) or {}
    return own[short] if short in own else FIELDS[name].default


def _reader(kind: type) -> Callable[[str], Any]:
    if kind is bool:
        return lambda text: text.strip().lower() in ("true", "1", "yes", "on")
    if kind is int:
        return whole_number
    if kind is float:
        return float
    return str


class ExtensionContext:
    """What ``setup(ctx)`` of extension ``name`` may use. Declarations made after start-up have no effect."""

    def __init__(
        self,
        name: str,
        folder: Path,
        priority: int = 100,
        settings: Mapping[str, Any] | None = None,
        registry: FieldRegistry = FIELDS,
        catalog: Catalog | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.catalog = Catalog() if catalog is None else catalog  # names of installed models, VAEs, styles
        self.folder = folder  # the extension's own folder: for its data files, read-only by convention
        self.log = logging.getLogger(f"easel.extensions.{name}")
        self._registry = registry
        self._saved_settings = dict(settings or {})  # extensions-state.json's (older Easel versions kept them there)
        self._config = dict(config or {})  # config.json's values at start-up: where settings live now
        self.contributions = Contributions(ExtensionHooks(name, priority))

    # -- request fields --------------------------------------------------------------------------------------
    def field(
        self,
        name: str,
        kind: type,
        default: Any,
        *,
        label: str = "",
        widget: Widget | None = None,
        infotext: str | None = None,
        bounds: tuple[float, float] | None = None,
        modes: Sequence[str] = tuple(ALL_MODES),
    ) -> RequestField:
        """Declare a request field ``<extension>.<name>``; ``infotext``: its key in the parameters text.

        ``kind`` dict: a structured value (an object from the API, a dict from the extension's own UI), passed to
        the hooks as a shallow copy; the extension validates its contents itself.

        The infotext key is written only when the value differs from the default, as A1111's extensions do.
        Its widget's elem_id is ``<tab>_<extension>_<name>``. API clients set it through ``alwayson_scripts``.
        """
        full = f"{self.name}.{name}"
        if kind not in (bool, int, float, str, dict):
            raise EaselError(f"{full}: a field's kind must be bool, int, float, str or dict")
        if kind is dict and (widget is not None or infotext):
            raise EaselError(f"{full}: a dict field has no generic widget or infotext key (build its own UI)")
        if widget is not None and widget.elem != f"{self.name}_{name}":
            widget = replace(widget, elem=f"{self.name}_{name}")
        spec = None
        if infotext:

            def write(request: Any, _seed: int, full: str = full, default: Any = default) -> object:
                value = extension_value(request, full)
                return None if value == default else value

            spec = Infotext(infotext, write, _reader(kind))
        item = RequestField(
            full,
            kind,
            default,
            owner=self.name,
            label=label or (widget.label if widget else name),
            modes=frozenset(modes),
            infotext=spec,
            widget=widget,
            bounds=bounds,
            group=f"extension:{self.name}",  # never one of the core panels: their positional order stays as it is
        )
        self._registry.register(item)
        self.contributions.fields.append(item)
        return item

    # -- engine hooks (each returns the function, so they work as decorators) --------------------------------
    def _add(self, point: str, fn: F) -> F:
        getattr(self.contributions.hooks, point).append(fn)
        return fn

    def before_request(self, fn: F) -> F:
        """``fn(request) -> request | None``: change the request before it runs (None: unchanged)."""
        return self._add("before_request", fn)

    def before_sampling(self, fn: F) -> F:
        """``fn(request, state)``: the loop's state (latents, sigmas, conditioning) before the first step."""
        return self._add("before_sampling", fn)

    def model_call(self, fn: F) -> F:
        """``fn(request, call, inputs) -> tensor``: wraps every UNet call (add residuals to ``inputs``...)."""
        return self._add("model_call", fn)

    def guidance(self, fn: F) -> F:
        """``fn(request, cond, uncond, scale, sigma) -> denoised``: replaces CFG (the first extension's wins)."""
        self.contributions.hooks.guidance = fn
        return fn

    def after_guidance(self, fn: F) -> F:
        """``fn(request, denoised, state) -> denoised``: after the guidance combiner, every model call."""
        return self._add("after_guidance", fn)

    def after_step(self, fn: F) -> F:
        """``fn(request, state)``: after each sampler step (``state.stop = True`` ends sampling)."""
        return self._add("after_step", fn)

    def after_image(self, fn: F) -> F:
        """``fn(request, image, seed) -> image | None``: each finished image, before it is saved."""
        return self._add("after_image", fn)

    def after_batch(self, fn: F) -> F:
        """``fn(request, images, seeds)``: each finished batch."""
        return self._add("after_batch", fn)

    def request_modules(self, fn: F) -> F:
        """``fn(request, model: ModelView) -> [torch.nn.Module]``: modules this request runs beside the UNet (a
        ControlNet), loaded in RAM. The memory policy counts their size in its decision and places them with the
        UNet (on the device only while it runs, under model offload too); the extension must not move them itself.
        """
        return self._add("request_modules", fn)

    def infotext_reader(self, fn: F) -> F:
        """``fn(fields) -> InfotextValues | None``: read the extension's keys out of a parsed infotext
        (``parse_infotext``'s dict); PNG Info's "Send to" pastes the values into the accordion's ``paste`` widgets
        (``AccordionParts``), and ``/sdapi/v1/png-info`` adds them to its ``parameters``."""
        return self._add("infotext_readers", fn)

    def model_patch(self, fn: F) -> F:
        """``fn(request, model: ModelView) -> context manager | None``: changes the model for one request and
        restores it on exit (``pipelines.hooks.patched_weights`` does both for weight tensors)."""
        return self._add("model_patches", fn)

    # -- scripts, UI, routes, settings -------------------------------------------------------------------------
    def script(
        self,
        title: str,
        run: Callable[..., Any],
        args: Sequence[ScriptArg] = (),
        modes: Sequence[str] = GENERATION_TABS,
        ui: Callable[[str], Sequence[Any]] | None = None,
    ) -> Script:
        """A selectable script (A1111's "Script" dropdown and ``script_name``), see ``pipelines.hooks.Script``."""
        script = Script(title, tuple(args), run, frozenset(modes), ui)
        self.contributions.hooks.scripts.append(script)
        return script

    def accordion(
        self,
        tabs: Sequence[str] = GENERATION_TABS,
        title: str | None = None,
        build: Callable[[str], Mapping[str, Any]] | None = None,
    ) -> None:
        """An accordion in each of ``tabs`` (txt2img, img2img, inpaint) holding the extension's fields."""
        unknown = [t for t in tabs if t not in GENERATION_TABS]
        if unknown:
            raise EaselError(f"{self.name}: no tab {unknown[0]!r} to put an accordion in (use {GENERATION_TABS})")
        self.contributions.accordions.append(Accordion(title or self.name, tuple(tabs), build))

    def tab(self, title: str, build: Callable[[], None]) -> None:
        """A whole tab; ``build()`` makes its Gradio components (imported by the extension itself)."""
        self.contributions.tabs.append(Tab(title, build))

    def routes(self, build: Callable[[], Any]) -> None:
        """``build()`` returns a FastAPI ``APIRouter``; its paths are served under ``/<extension>/``, behind login."""
        self.contributions.routes.append(build)

    def setting(
        self,
        key: str,
        default: Any,
        label: str = "",
        *,
        config_key: str | None = None,
        bounds: tuple[float, float] | None = None,
        section: str | None = None,
    ) -> Any:
        """Declare a setting; returns its saved value (config.json's ``config_key``, default ``<extension>_<key>``;
        else ``extensions-state.json``'s) or ``default``. Numbers are clamped into ``bounds``; a value of the wrong
        type gives the default (with a log line). The Settings tab shows it under ``section`` (default: the name).
        """
        setting = Setting(key, default, label or key, config_key or f"{self.name}_{key}", bounds, section or self.name)
        self.contributions.settings.append(setting)
        for source, values, name in (
            ("config.json", self._config, setting.config_key),
            ("state", self._saved_settings, key),
        ):
            if name not in values:
                continue
            try:
                return setting.checked(values[name])
            except EaselError as exc:
                self.log.warning("%s: %s; the default %r is used", source, exc, default)
                return default
        return default
