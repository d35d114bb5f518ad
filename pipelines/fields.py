"""One declaration per request field: engine name, A1111 API name and default, infotext key, widget, bounds.

Everything that used to re-list the fields is derived from ``FIELDS``: the API's request models and the payload ->
request mapping (``webui.api``), each tab's widgets and the order of their values (``webui.components``), the
infotext writer (``Engine.infotext``) and reader (``infotext_request``), and "Send to"/PNG Info filling
(``webui.prompt_tools``). Adding a field is one ``RequestField`` here (or ``FIELDS.register`` from an extension,
whose fields are namespaced ``owner.name``), plus the behaviour that uses it.

No gradio here: a ``Widget`` is a plain description that ``webui.field_widgets`` turns into a component.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipelines.errors import EaselError

MODES: tuple[str, ...] = ("txt2img", "img2img", "inpaint")
ALL_MODES = frozenset(MODES)
IMAGE_MODES = frozenset({"img2img", "inpaint"})
CORE = "core"
_UNSET: Any = object()
SKIP: Any = object()
MAX_SEED = 2**32 - 1  # from_api's "this payload value means: the engine's default"

Writer = Callable[[Any, int], object]  # (validated request, this image's seed) -> value, or None to leave it out


@dataclass(frozen=True)
class Widget:
    """How a tab shows a field; ``webui.field_widgets.build`` makes the component (elem_id ``<tab>_<elem>``)."""

    kind: str  # slider | number | dropdown | checkbox | textbox | radio
    label: str
    elem: str
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: Callable[[], Sequence[str]] | None = None
    index: bool = False  # radio/dropdown values are positions in ``choices`` (A1111's int fields)
    lines: int = 1
    precision: int | None = None


@dataclass(frozen=True)
class Infotext:
    """The field's key in A1111's "parameters" text: how it is written and read back.

    ``part`` 1/2 reads one half of a ``WxH`` value (``Size-1``); ``write`` is None for a field whose key another
    field writes (``Size`` is written by width, read by both).
    """

    key: str
    write: Writer | None = None
    read: Callable[[str], Any] | None = None
    part: int | None = None

    @property
    def read_key(self) -> str:
        return f"{self.key}-{self.part}" if self.part else self.key


@dataclass(frozen=True)
class RequestField:
    """One request field. ``name`` is the GenerationRequest attribute (``owner.name`` for an extension's)."""

    name: str
    kind: type
    default: Any
    owner: str = CORE
    label: str = ""  # in error messages; the widget's label when there is one
    modes: frozenset[str] = ALL_MODES
    api: str | None = None  # A1111 payload name; None: not an API field of its own
    api_default: Any = _UNSET  # A1111's default where it differs from the engine's
    infotext: Infotext | None = None
    widget: Widget | None = None
    bounds: tuple[float, float] | None = None
    multiple_of: int | None = None
    group: str = ""  # which panel shows it: params, hires, variation, img2img, inpaint
    api_kind: Any = None  # the payload's type where A1111's differs from the engine's (an int for a bool)
    api_mode_defaults: tuple[tuple[str, Any], ...] = ()  # A1111 defaults that differ between endpoints
    from_api: Callable[[Any], Any] | None = None  # payload value -> engine value (SKIP: leave the default)

    @property
    def payload_default(self) -> Any:
        return self.default if self.api_default is _UNSET else self.api_default

    def payload_default_for(self, endpoint: str) -> Any:
        """A1111's default for this field in ``endpoint``'s payload (``txt2img`` or ``img2img``)."""
        return dict(self.api_mode_defaults).get(endpoint, self.payload_default)

    def in_endpoint(self, endpoint: str) -> bool:
        """Whether A1111's ``/sdapi/v1/<endpoint>`` has the field (img2img serves inpainting too)."""
        served = IMAGE_MODES if endpoint == "img2img" else frozenset({endpoint})
        return self.api is not None and bool(self.modes & served)

    @property
    def title(self) -> str:
        return self.label or (self.widget.label if self.widget else self.name)

    def coerce(self, value: Any) -> Any:
        """A widget's or a payload's value as this field's type (None: the default); EaselError when it is not."""
        if value is None:
            return self.default
        if self.kind is dict:  # an extension's structured value (a ControlNet unit): its own hooks check the rest
            if not isinstance(value, Mapping):
                raise EaselError(f"{self.title} must be an object of named values (got {type(value).__name__})")
            return dict(value)
        try:
            if self.kind is bool:
                return bool(value)
            if self.kind is int:
                number = float(value)
                if not math.isfinite(number):
                    raise ValueError
                return int(number)
            if self.kind is float:
                number = float(value)
                if not math.isfinite(number):
                    raise ValueError
                return number
            if self.kind is str:
                return str(value)
        except (TypeError, ValueError, OverflowError):
            raise EaselError(f"{self.title} must be a finite number (got {value!r})") from None
        return value

    def check(self, value: Any) -> None:
        """Bounds and step, with the message a user can act on."""
        if self.bounds is not None and value is not None:
            low, high = self.bounds
            if isinstance(value, float) and not math.isfinite(value):
                raise EaselError(f"{self.title} must be a finite number (got {value})")
            if not low <= value <= high:
                raise EaselError(f"{self.title} must be between {low:g} and {high:g} (got {value:g})")
        if self.multiple_of and value % self.multiple_of:
            raise EaselError(f"{self.title} must be a multiple of {self.multiple_of} (got {value})")


class FieldRegistry:
    """The fields in declaration order (the order tabs pass values and infotext keys are written)."""

    def __init__(self, fields: Iterable[RequestField] = ()) -> None:
        self._fields: dict[str, RequestField] = {}
        for item in fields:
            self.register(item)

    def register(self, item: RequestField) -> RequestField:
        """Add a field; an extension's must be named ``<owner>.<name>`` and may not shadow another."""
        if item.owner != CORE and not item.name.startswith(f"{item.owner}."):
            raise EaselError(f"extension field '{item.name}' must be named '{item.owner}.<name>'")
        if item.name in self._fields:
            raise EaselError(f"request field '{item.name}' is declared twice")
        clash = item.api and next((f for f in self._fields.values() if f.api == item.api), None)
        if clash:
            raise EaselError(f"API field '{item.api}' of '{item.name}' is already '{clash.name}'")
        self._fields[item.name] = item
        return item

    def remove_owner(self, owner: str) -> list[RequestField]:
        """Take an extension's fields out again (its setup failed, or a test is done with it); core ones stay."""
        if owner == CORE:
            raise EaselError("the core fields cannot be removed")
        gone = self.owned_by(owner)
        for item in gone:
            del self._fields[item.name]
        return gone

    def extension_values(self, values: Any) -> dict[str, dict[str, Any]]:
        """``{extension: {field: value}}`` coerced and checked against the registered fields (unknown ones refused).

        Extension values travel in ``GenerationRequest.extensions`` since a request has no attribute of theirs.
        """
        if not values:
            return {}
        if not isinstance(values, Mapping):
            raise EaselError("extension values must be an object of {extension: {field: value}}")
        checked: dict[str, dict[str, Any]] = {}
        for owner, fields in values.items():
            if not self.owned_by(str(owner)):
                raise EaselError(f"extension '{owner}' is not installed or not enabled")
            if not isinstance(fields, Mapping):
                raise EaselError(f"values of extension '{owner}' must be an object of {{field: value}}")
            own: dict[str, Any] = {}
            for short, value in fields.items():
                name = f"{owner}.{short}"
                if name not in self._fields:
                    known = ", ".join(f.name.split(".", 1)[1] for f in self.owned_by(str(owner)))
                    raise EaselError(f"extension '{owner}' has no field '{short}' (it has: {known})")
                item = self._fields[name]
                own[str(short)] = item.coerce(value)
                item.check(own[str(short)])
            checked[str(owner)] = own
        return checked

    def __iter__(self) -> Iterator[RequestField]:
        return iter(self._fields.values())

    def __getitem__(self, name: str) -> RequestField:
        return self._fields[name]

    def __contains__(self, name: object) -> bool:
        return name in self._fields

    def names(self, group: str | None = None, mode: str | None = None) -> list[str]:
        return [f.name for f in self.select(group, mode)]

    def select(self, group: str | None = None, mode: str | None = None) -> list[RequestField]:
        return [f for f in self if (group is None or f.group == group) and (mode is None or mode in f.modes)]

    def owned_by(self, owner: str) -> list[RequestField]:
        return [f for f in self if f.owner == owner]

    def with_widget(self) -> list[RequestField]:
        return [f for f in self if f.widget is not None]

    def api_fields(self, endpoint: str) -> list[RequestField]:
        """The fields of A1111's ``/sdapi/v1/<endpoint>`` payload, in declaration order."""
        return [f for f in self if f.in_endpoint(endpoint)]

    def from_payload(self, endpoint: str, payload: Any, modes: Iterable[str]) -> dict[str, Any]:
        """Request kwargs from an A1111 payload object: its value, or A1111's default for a null (as A1111 does).

        Only fields of ``modes`` are read (an img2img payload without a mask leaves the inpaint fields alone).
        """
        wanted = frozenset(modes)
        kwargs: dict[str, Any] = {}
        for item in self.api_fields(endpoint):
            if not item.modes & wanted:
                continue
            assert item.api is not None
            value = getattr(payload, item.api, None)
            if value is None:
                value = item.payload_default_for(endpoint)
            if value is not None and item.from_api is not None:
                value = item.from_api(value)
            if value is not None and value is not SKIP:
                kwargs[item.name] = value
        return kwargs

    def from_values(self, names: Sequence[str], values: Sequence[Any]) -> dict[str, Any]:
        """Widget values (in ``names`` order) -> request keyword arguments, each coerced to its field's type."""
        if len(names) != len(values):
            raise ValueError(f"expected {len(names)} values, got {len(values)}")
        return {name: self[name].coerce(value) for name, value in zip(names, values, strict=True)}

    def infotext_readers(self) -> list[RequestField]:
        return [f for f in self if f.infotext is not None and f.infotext.read is not None]

    def infotext_params(self, request: Any, seed: int) -> dict[str, object]:
        """Every key the fields write for one image, in declaration order (None values are left out later)."""
        params: dict[str, object] = {}
        for item in self:
            spec = item.infotext
            if spec is not None and spec.write is not None:
                params[spec.key] = spec.write(request, seed)
        return params


# -- readers and writers shared by several fields ---------------------------------------------------------
def whole_number(text: str) -> int:
    value = float(text)
    if not value.is_integer():
        raise ValueError(f"{text} is not a whole number")
    return int(value)


def _choices(name: str) -> Callable[[], Sequence[str]]:
    """Choices looked up when a widget is built, so this module imports no engine module at import time."""

    def choices() -> Sequence[str]:
        from pipelines.imaging.masks import MASKED_CONTENT
        from pipelines.imaging.resize import RESIZE_MODES
        from pipelines.sampling.hires import HIRES_UPSCALERS
        from pipelines.sampling.samplers import SAMPLERS, SCHEDULE_TYPES

        return {
            "samplers": tuple(SAMPLERS),
            "schedules": tuple(SCHEDULE_TYPES),
            "hires_upscalers": tuple(HIRES_UPSCALERS),
            "hires_samplers": ("Use same sampler", *SAMPLERS),
            "resize_modes": tuple(RESIZE_MODES),
            "masked_content": tuple(MASKED_CONTENT),
            "mask_modes": MASK_MODES,
            "inpaint_areas": INPAINT_AREAS,
        }[name]

    return choices


MASK_MODES = ("Inpaint masked", "Inpaint not masked")
NO_REFINER = "None"
INPAINT_AREAS = ("Whole picture", "Only masked")


def _index_reader(choices: Callable[[], Sequence[str]]) -> Callable[[str], int]:
    def read(text: str) -> int:
        names = [c.lower() for c in choices()]
        value = text.strip().lower()
        if value not in names:
            raise ValueError(f"unknown value '{text}'")
        return names.index(value)

    return read


def schedule_label(name: str) -> str:
    """A1111's API name ("sgm_uniform") or label ("SGM Uniform") -> the label; unknown names pass through."""
    from pipelines.sampling.samplers import SCHEDULE_TYPES

    if not name:
        return "Automatic"
    wanted = name.replace("_", " ").strip().lower()
    return next((s for s in SCHEDULE_TYPES if s.lower() == wanted), name)


def _positive_or_skip(value: Any) -> Any:
    """A1111 sends -1 for "off" sizes."""
    return value if value > 0 else SKIP


def _hires(request: Any) -> bool:
    return bool(request.enable_hr and request.mode == "txt2img")


def _hires_resized(request: Any) -> bool:
    return request.hr_resize_x > 0 or request.hr_resize_y > 0


def _inpaint(request: Any) -> bool:
    return request.mode == "inpaint"


def _when(condition: Callable[[Any], bool], value: Callable[[Any], object]) -> Writer:
    return lambda request, _seed: value(request) if condition(request) else None


def _variation_seed(request: Any, seed: int) -> object:
    from pipelines.sampling.rng import image_subseeds

    if not request.subseed_strength:
        return None
    return image_subseeds(int(request.seed), int(request.subseed), [seed])[0]


def _differs(name: str, base: str) -> Writer:
    """Hires sampler/schedule/prompt: written only when the second pass uses something of its own."""

    def write(request: Any, _seed: int) -> object:
        value = getattr(request, name)
        return value if _hires(request) and value and value != getattr(request, base) else None

    return write


def _resize_from(request: Any) -> bool:
    return request.seed_resize_from_w > 0 and request.seed_resize_from_h > 0


def _denoising_written(request: Any) -> bool:
    return request.mode != "txt2img" or _hires(request)


def _rng(text: str) -> str:
    from pipelines.sampling.rng import parse_source

    return parse_source(text)


def _refiner_name(text: str) -> str:
    """``name [hash]`` -> ``name``: what the checkpoint finder looks up."""
    return text.rsplit(" [", 1)[0].strip() if text.rstrip().endswith("]") else text.strip()


def _slider(label: str, elem: str, low: float, high: float, step: float) -> Widget:
    return Widget("slider", label, elem, low, high, step)


# -- the core fields ----------------------------------------------------------------------------------------
_HIRES = frozenset({"txt2img"})
FIELDS = FieldRegistry(
    [
        # the infotext writer puts the prompts above the parameter line itself (format_infotext)
        RequestField(
            "prompt",
            str,
            "",
            api="prompt",
            infotext=Infotext("Prompt", None, str),
            widget=Widget("textbox", "Prompt", "prompt", lines=3),
        ),
        RequestField(
            "negative_prompt",
            str,
            "",
            api="negative_prompt",
            infotext=Infotext("Negative prompt", None, str),
            widget=Widget("textbox", "Negative prompt", "neg_prompt", lines=2),
        ),
        RequestField(
            "sampler",
            str,
            "Euler a",
            api="sampler_name",
            api_default=None,  # the mapping falls back to the deprecated sampler_index, then "Euler", as A1111
            group="params",
            infotext=Infotext("Sampler", lambda r, _s: r.sampler, str),
            widget=Widget("dropdown", "Sampling method", "sampler", choices=_choices("samplers")),
        ),
        RequestField(
            "schedule_type",
            str,
            "Automatic",
            api="scheduler",
            api_default=None,
            from_api=schedule_label,
            group="params",
            infotext=Infotext(
                "Schedule type", lambda r, _s: r.schedule_type if r.schedule_type != "Automatic" else None, str
            ),
            widget=Widget("dropdown", "Schedule type", "scheduler", choices=_choices("schedules")),
        ),
        RequestField(
            "steps",
            int,
            20,
            api="steps",
            api_default=50,
            group="params",
            bounds=(1, 150),
            infotext=Infotext("Steps", lambda r, _s: r.steps, whole_number),
            widget=_slider("Sampling steps", "steps", 1, 150, 1),
            label="Steps",
        ),
        RequestField(
            "cfg_scale",
            float,
            7.0,
            api="cfg_scale",
            group="params",
            bounds=(1, 30),
            infotext=Infotext("CFG scale", lambda r, _s: r.cfg_scale, float),
            widget=_slider("CFG Scale", "cfg_scale", 1, 30, 0.5),
            label="CFG scale",
        ),
        RequestField(
            "width",
            int,
            512,
            api="width",
            group="params",
            bounds=(64, 2048),
            multiple_of=8,
            infotext=Infotext("Size", lambda r, _s: f"{r.width}x{r.height}", whole_number, part=1),
            widget=_slider("Width", "width", 64, 2048, 8),
        ),
        RequestField(
            "height",
            int,
            512,
            api="height",
            group="params",
            bounds=(64, 2048),
            multiple_of=8,
            infotext=Infotext("Size", None, whole_number, part=2),
            widget=_slider("Height", "height", 64, 2048, 8),
        ),
        RequestField(
            "batch_count",
            int,
            1,
            api="n_iter",
            group="params",
            bounds=(1, 100),
            widget=_slider("Batch count", "batch_count", 1, 100, 1),
        ),
        RequestField(
            "batch_size",
            int,
            1,
            api="batch_size",
            group="params",
            bounds=(1, 8),
            widget=_slider("Batch size", "batch_size", 1, 8, 1),
        ),
        RequestField(
            "seed",
            int,
            -1,
            api="seed",
            group="params",
            bounds=(0, MAX_SEED),  # checked once -1 ("random") has been replaced by a seed
            infotext=Infotext("Seed", lambda _r, seed: seed, whole_number),
            widget=Widget("number", "Seed (-1 = random)", "seed", precision=0),
            label="Seed",
        ),
        RequestField(
            "clip_skip",
            int,
            1,
            group="params",
            bounds=(1, 12),
            infotext=Infotext("Clip skip", lambda r, _s: r.clip_skip if r.clip_skip > 1 else None, whole_number),
            widget=_slider("Clip skip", "clip_skip", 1, 12, 1),
        ),
        RequestField(
            "vae",
            str,
            None,
            infotext=Infotext("VAE", None, str),
        ),
        RequestField("styles", tuple, (), api="styles", api_kind=list[str], api_default=None, from_api=tuple),
        # variation seed (txt2img), as A1111
        RequestField(
            "subseed",
            int,
            -1,
            api="subseed",
            group="variation",
            bounds=(0, MAX_SEED),
            infotext=Infotext("Variation seed", _variation_seed, whole_number),
            widget=Widget("number", "Variation seed (-1 = random)", "subseed", precision=0),
            label="Variation seed",
        ),
        RequestField(
            "subseed_strength",
            float,
            0.0,
            api="subseed_strength",
            group="variation",
            bounds=(0, 1),
            infotext=Infotext(
                "Variation seed strength", lambda r, _s: r.subseed_strength if r.subseed_strength else None, float
            ),
            widget=_slider("Variation strength", "subseed_strength", 0, 1, 0.01),
        ),
        RequestField(
            "seed_resize_from_w",
            int,
            0,
            api="seed_resize_from_w",
            api_default=-1,
            bounds=(1, 2048),  # checked only when on (> 0): the old size's noise is drawn in full
            from_api=_positive_or_skip,
            group="variation",
            infotext=Infotext(
                "Seed resize from",
                _when(_resize_from, lambda r: f"{r.seed_resize_from_w}x{r.seed_resize_from_h}"),
                whole_number,
                part=1,
            ),
            widget=_slider("Resize seed from width", "seed_resize_from_w", 0, 2048, 8),
        ),
        RequestField(
            "seed_resize_from_h",
            int,
            0,
            api="seed_resize_from_h",
            api_default=-1,
            bounds=(1, 2048),
            from_api=_positive_or_skip,
            group="variation",
            infotext=Infotext("Seed resize from", None, whole_number, part=2),
            widget=_slider("Resize seed from height", "seed_resize_from_h", 0, 2048, 8),
        ),
        # img2img and inpaint
        RequestField(
            "resize_mode",
            int,
            0,
            api="resize_mode",
            modes=IMAGE_MODES,
            group="img2img",
            bounds=(0, 2),
            infotext=Infotext(
                "Resize mode",
                _when(  # A1111 writes it for img2img only (inpaint keeps the picture's size)
                    lambda r: r.mode == "img2img" and bool(r.resize_mode),
                    lambda r: _choices("resize_modes")()[r.resize_mode],
                ),
                _index_reader(_choices("resize_modes")),
            ),
            widget=Widget("radio", "Resize mode", "resize", choices=_choices("resize_modes"), index=True),
        ),
        RequestField(
            "mask_blur",
            int,
            4,
            api="mask_blur",
            api_default=None,
            modes=frozenset({"inpaint"}),
            group="inpaint",
            bounds=(0, 64),
            infotext=Infotext("Mask blur", _when(_inpaint, lambda r: r.mask_blur), whole_number),
            widget=_slider("Mask blur", "mask_blur", 0, 64, 1),
        ),
        RequestField(
            "inpaint_full_res",
            bool,
            False,
            api="inpaint_full_res",
            api_default=True,
            from_api=bool,
            modes=frozenset({"inpaint"}),
            group="inpaint",
            infotext=Infotext(
                "Inpaint area",
                _when(_inpaint, lambda r: INPAINT_AREAS[int(r.inpaint_full_res)]),
                lambda text: text.strip().lower() == "only masked",
            ),
            widget=Widget("radio", "Inpaint area", "area", choices=_choices("inpaint_areas"), index=True),
        ),
        RequestField(
            "inpaint_full_res_padding",
            int,
            32,
            api="inpaint_full_res_padding",
            api_default=0,
            modes=frozenset({"inpaint"}),
            group="inpaint",
            bounds=(0, 256),
            infotext=Infotext(
                "Masked area padding",
                _when(lambda r: _inpaint(r) and r.inpaint_full_res, lambda r: r.inpaint_full_res_padding),
                whole_number,
            ),
            widget=_slider("Only masked padding, pixels", "padding", 0, 256, 4),
            label="Only masked padding",
        ),
        RequestField(
            "inpainting_fill",
            int,
            1,
            api="inpainting_fill",
            api_default=0,
            modes=frozenset({"inpaint"}),
            group="inpaint",
            bounds=(0, 3),
            infotext=Infotext(
                "Masked content",
                _when(_inpaint, lambda r: _choices("masked_content")()[r.inpainting_fill]),
                _index_reader(_choices("masked_content")),
            ),
            widget=Widget("radio", "Masked content", "masked_content", choices=_choices("masked_content"), index=True),
            label="Masked content",
        ),
        RequestField(
            "inpainting_mask_invert",
            bool,
            False,
            api="inpainting_mask_invert",
            api_kind=int,
            api_default=0,
            from_api=bool,
            modes=frozenset({"inpaint"}),
            group="inpaint",
            infotext=Infotext(
                "Mask mode",
                _when(lambda r: _inpaint(r) and r.inpainting_mask_invert, lambda _r: MASK_MODES[1]),
                lambda text: text.strip().lower() == "inpaint not masked",
            ),
            widget=Widget("radio", "Mask mode", "mask_mode", choices=_choices("mask_modes"), index=True),
        ),
        RequestField(
            "denoising_strength",
            float,
            0.75,
            api="denoising_strength",
            api_default=None,
            api_mode_defaults=(("img2img", 0.75),),
            bounds=(0, 1),
            infotext=Infotext("Denoising strength", _when(_denoising_written, lambda r: r.denoising_strength), float),
            widget=_slider("Denoising strength", "denoising_strength", 0, 1, 0.01),
        ),
        # txt2img hires fix, named as A1111's API (denoising_strength above is the second pass's strength)
        RequestField(
            "enable_hr",
            bool,
            False,
            api="enable_hr",
            modes=_HIRES,
            group="hires",
            widget=Widget("checkbox", "Enable hires. fix", "enable_hr"),
        ),
        RequestField(
            "hr_scale",
            float,
            2.0,
            api="hr_scale",
            modes=_HIRES,
            group="hires",
            infotext=Infotext(
                "Hires upscale", _when(lambda r: _hires(r) and not _hires_resized(r), lambda r: r.hr_scale), float
            ),
            widget=_slider("Upscale by", "hr_scale", 1, 4, 0.05),
        ),
        RequestField(
            "hr_resize_x",
            int,
            0,
            api="hr_resize_x",
            modes=_HIRES,
            group="hires",
            infotext=Infotext(
                "Hires resize",
                _when(lambda r: _hires(r) and _hires_resized(r), lambda r: f"{r.hr_resize_x}x{r.hr_resize_y}"),
                whole_number,
                part=1,
            ),
            widget=_slider("Resize width to", "hr_resize_x", 0, 2048, 8),
        ),
        RequestField(
            "hr_resize_y",
            int,
            0,
            api="hr_resize_y",
            modes=_HIRES,
            group="hires",
            infotext=Infotext("Hires resize", None, whole_number, part=2),
            widget=_slider("Resize height to", "hr_resize_y", 0, 2048, 8),
        ),
        RequestField(
            "hr_second_pass_steps",
            int,
            0,
            api="hr_second_pass_steps",
            modes=_HIRES,
            group="hires",
            infotext=Infotext("Hires steps", _when(_hires, lambda r: r.hr_second_pass_steps or None), whole_number),
            widget=_slider("Hires steps (0: same)", "hr_steps", 0, 150, 1),
        ),
        RequestField(
            "hr_upscaler",
            str,
            "Latent",
            api="hr_upscaler",
            api_default=None,
            modes=_HIRES,
            group="hires",
            infotext=Infotext("Hires upscaler", _when(_hires, lambda r: r.hr_upscaler), str),
            widget=Widget("dropdown", "Upscaler", "hr_upscaler", choices=_choices("hires_upscalers")),
        ),
        RequestField(
            "hr_sampler_name",
            str,
            None,
            api="hr_sampler_name",
            modes=_HIRES,
            group="hires",
            infotext=Infotext("Hires sampler", _differs("hr_sampler_name", "sampler"), str),
            widget=Widget("dropdown", "Hires sampler", "hr_sampler", choices=_choices("hires_samplers")),
        ),
        RequestField(
            "hr_scheduler",
            str,
            None,
            api="hr_scheduler",
            from_api=schedule_label,
            modes=_HIRES,
            group="hires",
            infotext=Infotext("Hires schedule type", _differs("hr_scheduler", "schedule_type"), str),
        ),
        RequestField(
            "hr_prompt",
            str,
            "",
            api="hr_prompt",
            modes=_HIRES,
            group="hires",
            infotext=Infotext("Hires prompt", _differs("hr_prompt", "prompt"), str),
            widget=Widget("textbox", "Hires prompt (empty: same)", "hr_prompt", lines=2),
        ),
        RequestField(
            "hr_negative_prompt",
            str,
            "",
            api="hr_negative_prompt",
            modes=_HIRES,
            group="hires",
            infotext=Infotext("Hires negative prompt", _differs("hr_negative_prompt", "negative_prompt"), str),
            widget=Widget("textbox", "Hires negative prompt (empty: same)", "hr_neg_prompt", lines=2),
        ),
        # sampler settings a request may override (None: the server's setting); A1111's API names
        *(
            RequestField(
                name,
                float,
                None,
                api=name,
                bounds=bounds,
                label=label,
                infotext=Infotext(key, None, float),
            )
            for name, key, label, bounds in (
                ("eta", "Eta", "Eta", (0.0, 1.0)),
                ("s_churn", "Sigma churn", "Sigma churn", (0.0, 100.0)),
                ("s_tmin", "Sigma tmin", "Sigma tmin", (0.0, 10.0)),
                ("s_tmax", "Sigma tmax", "Sigma tmax", (0.0, 999.0)),
                ("s_noise", "Sigma noise", "Sigma noise", (0.0, 1.1)),
            )
        ),
        # A1111 takes these as override_settings (randn_source, eta_noise_seed_delta); None: the server's setting
        RequestField(
            "rng_source", str, None, label="Random number generator source", infotext=Infotext("RNG", None, _rng)
        ),
        RequestField(
            "eta_noise_seed_delta",
            int,
            None,
            label="Eta noise seed delta",
            bounds=(0, 2**32 - 1),
            infotext=Infotext("ENSD", None, whole_number),
        ),
        # A1111 1.6's refiner: another checkpoint takes over at a fraction of the steps
        RequestField(
            "refiner_checkpoint",
            str,
            None,
            api="refiner_checkpoint",
            group="refiner",
            infotext=Infotext("Refiner", None, _refiner_name),  # the engine writes both: it knows the title
            widget=Widget("dropdown", "Refiner checkpoint", "refiner_checkpoint", choices=lambda: (NO_REFINER,)),
        ),
        RequestField(
            "refiner_switch_at",
            float,
            0.8,
            api="refiner_switch_at",
            bounds=(0.01, 1.0),
            group="refiner",
            label="Refiner switch at",
            infotext=Infotext("Refiner switch at", None, float),
            widget=_slider("Switch at", "refiner_switch_at", 0.01, 1, 0.01),
        ),
    ]
)
HIRES_INFOTEXT_KEYS = ("Hires upscale", "Hires resize", "Hires resize-1", "Hires steps", "Hires upscaler")
"""Any of these in an infotext means the hires fix was on (A1111 writes no key for enable_hr itself)."""
