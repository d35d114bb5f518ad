"""Test extensions written into a temporary folder: one that uses every kind of contribution, and broken ones.

``testext`` adds a field (``testext.shift``, infotext ``Testext shift``), an accordion in the generation tabs, a
tab with a button (``api_name="testext_echo"``), a route (``GET /testext/stats``), a step hook, an after-image
hook and a model patch (shifts the UNet's output bias by ``shift`` for the request, then puts it back). Its
counters are read through the route (a server) or its module (in-process).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

TESTEXT = """
from fastapi import APIRouter

from pipelines.fields import Widget
from pipelines.hooks import patched_weights

COUNTS = {"steps": 0, "images": 0, "patched": 0}


def setup(ctx):
    ctx.field(
        "shift",
        float,
        0.0,
        label="Testext shift",
        widget=Widget("slider", "Testext shift", "shift", 0, 2, 0.05),
        infotext="Testext shift",
        bounds=(0, 2),
    )
    ctx.accordion(["txt2img", "img2img", "inpaint"], title="Testext")

    @ctx.after_step
    def count_step(request, state):
        COUNTS["steps"] += 1

    @ctx.after_image
    def count_image(request, image, seed):
        COUNTS["images"] += 1
        return None

    @ctx.model_patch
    def shift_output(request, model):
        shift = (request.extensions.get("testext") or {}).get("shift", 0.0)
        if not shift:
            return None
        COUNTS["patched"] += 1
        bias = model.unet.conv_out.bias
        return patched_weights({bias: bias + shift})

    def tab():
        import gradio as gr

        gr.Markdown("## Testext tab", elem_id="testext_title")
        name = gr.Textbox(label="Name", elem_id="testext_name")
        out = gr.Textbox(label="Echo", elem_id="testext_echo")
        gr.Button("Echo", elem_id="testext_go").click(lambda n: f"hello {n}", name, out, api_name="testext_echo")

    ctx.tab("Testext", tab)

    def router():
        api = APIRouter()

        @api.get("/stats")
        def stats():
            return dict(COUNTS)

        return api

    ctx.routes(router)
"""

BROKEN_IMPORT = """
import a_module_that_does_not_exist  # noqa: F401


def setup(ctx):
    pass
"""

BROKEN_HOOK = """
def setup(ctx):
    @ctx.after_image
    def explode(request, image, seed):
        raise RuntimeError("this hook always fails")
"""


def write_extension(root: Path, name: str, code: str, priority: int = 100, version: str = "1.2.3") -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "extension.toml").write_text(
        f'name = "{name}"\nversion = "{version}"\ndescription = "test extension {name}"\n'
        f"easel_api = 1\npriority = {priority}\n"
    )
    (folder / "extension.py").write_text(textwrap.dedent(code))
    return folder


def write_test_extensions(root: Path) -> Path:
    """``testext`` and the two broken ones in ``root`` (a user extensions folder); returns ``root``."""
    write_extension(root, "testext", TESTEXT)
    write_extension(root, "broken_import", BROKEN_IMPORT)
    write_extension(root, "broken_hook", BROKEN_HOOK, priority=50)
    return root
