"""VAEs, LoRAs, embeddings and styles: the engine's own listings (``NetworkLibrary``), in A1111's shapes.

The listings rescan the folders on every call; the refresh routes make the library forget what it read from the
files, so one replaced in place is read again.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from pipelines.generate import Engine
from pipelines.networks.embeddings import embedding_shape
from webui.api.models import EmbeddingsResponse, LoraItem, VaeItem


def embedding_items(engine: Engine) -> dict[str, Any]:
    """A1111's loaded/skipped split: a file whose header shows its vectors is loaded, any other is skipped."""
    loaded: dict[str, dict[str, Any]] = {}
    skipped: dict[str, dict[str, Any]] = {}
    for name, path in engine.networks.embedding_files().items():
        shape = embedding_shape(path)
        item = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": None, "vectors": None}
        if shape is None:
            skipped[name] = item
        else:
            loaded[name] = {**item, "vectors": shape[0], "shape": shape[1]}
    return {"loaded": loaded, "skipped": skipped}


def build_networks_router(engine: Engine) -> APIRouter:
    router = APIRouter()
    networks = engine.networks

    @router.get("/sd-vae", response_model=list[VaeItem])
    def sd_vae() -> list[dict[str, str]]:
        return [{"model_name": name, "filename": str(path)} for name, path in networks.vae_files().items()]

    @router.post("/refresh-vae")
    def refresh_vae() -> None:
        networks.refresh_vaes()

    @router.get("/loras", response_model=list[LoraItem])
    def loras() -> list[dict[str, Any]]:
        return [{"name": n, "alias": n, "path": str(p), "metadata": {}} for n, p in networks.lora_files().items()]

    @router.post("/refresh-loras")
    def refresh_loras() -> None:
        networks.refresh_loras()

    @router.get("/embeddings", response_model=EmbeddingsResponse)
    def embeddings() -> dict[str, Any]:
        return embedding_items(engine)

    @router.post("/refresh-embeddings")
    def refresh_embeddings() -> None:
        networks.refresh_embeddings()

    @router.get("/hypernetworks")
    def hypernetworks() -> list[dict[str, Any]]:
        return []

    @router.get("/prompt-styles")
    def prompt_styles() -> list[dict[str, Any]]:
        """The styles file's styles; a broken file is a 422 that says what is wrong with it (it is never rewritten)."""
        return [
            {"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt} for s in engine.styles.styles()
        ]

    return router
