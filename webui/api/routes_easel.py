"""``/easel/*``: what A1111 has no route for. The outputs history (for scripts) and the queue everyone can see.

Behind the same login as everything (the security middleware runs first). Paths are relative to the outputs folder
and checked by ``OutputHistory.resolve``; files are served only when they are images inside it. Queue rows are what
``pipelines.runtime.queue_view`` lets the caller see: their own jobs in full, other users' anonymised.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel

from pipelines.errors import EaselError
from pipelines.metadata.history import IMAGE_TYPES, MAX_PER_PAGE, HistoryQuery
from pipelines.runtime.queue_view import NotAllowedError, cancel_job, queue_rows
from webui.context import AppContext
from webui.users import api_user

PREFIX = "/easel"


class PathBody(BaseModel):
    path: str


class TrashBody(BaseModel):
    id: str


def _image_response(path: Any) -> FileResponse:
    media = IMAGE_TYPES[path.suffix.lower()]
    return FileResponse(path, media_type=media, headers={"Cache-Control": "private, max-age=60"})


def build_easel_router(ctx: AppContext) -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["easel"])
    history = ctx.history

    @router.get("/history")
    def list_history(
        page: int = 1,
        per_page: int = Query(48, ge=1, le=MAX_PER_PAGE),
        mode: str = "",
        date: str = "",
        checkpoint: str = "",
        q: str = "",
    ) -> dict[str, Any]:
        """Outputs newest first, one page; ``mode``, ``date`` (YYYY[-MM[-DD]]), ``checkpoint`` and ``q`` filter."""
        result = history.page(HistoryQuery(mode, date, checkpoint, q), page, per_page)
        return {
            "items": [item.to_json() for item in result.items],
            "total": result.total,
            "page": result.page,
            "per_page": result.per_page,
            "pages": result.pages,
        }

    @router.get("/history/file")
    def history_file(path: str, trash: bool = False) -> FileResponse:
        """The image itself (``trash=true``: a path inside ``.trash``, as ``/history/trash`` lists them)."""
        return _image_response(history.resolve(f".trash/{path}" if trash else path, in_trash=trash))

    @router.get("/history/thumbnail")
    def history_thumbnail(path: str) -> FileResponse:
        return FileResponse(history.thumbnail(path), media_type="image/webp")

    @router.post("/history/delete")
    def history_delete(body: PathBody) -> dict[str, Any]:
        """Moves the image to ``outputs/.trash`` (restorable)."""
        item = history.delete(body.path)
        return {"id": item.id, "original": item.original}

    @router.get("/history/trash")
    def history_trash() -> dict[str, Any]:
        items = [
            {"id": t.id, "original": t.original, "deleted_at": t.deleted_at.isoformat(timespec="seconds")}
            for t in history.trash()
        ]
        return {"items": items}

    @router.post("/history/restore")
    def history_restore(body: TrashBody) -> dict[str, Any]:
        return {"path": history.restore(body.id)}

    @router.post("/history/trash/empty")
    def history_empty_trash(request: Request) -> dict[str, Any]:
        """Deletes the trash for good; with --admin set, only an admin may."""
        if ctx.admins and not ctx.is_admin(api_user(request)):
            raise NotAllowedError("only an admin can empty the trash for good")
        return {"deleted": history.empty_trash()}

    @router.get("/queue")
    def list_queue(request: Request) -> dict[str, Any]:
        """Every job in line; the caller's own with prompt and progress, other users' as "another user"."""
        user = api_user(request)
        rows = queue_rows(ctx.engine.queue, user, ctx.is_admin(user))
        return {"user": user or None, "admin": ctx.is_admin(user), "jobs": [row.to_json() for row in rows]}

    @router.post("/queue/{job_id}/cancel")
    def cancel(job_id: str, request: Request) -> dict[str, Any]:
        """Cancel one's own job (an admin: anyone's); 403 for another user's, 404 when it is no longer in line."""
        user = api_user(request)
        if len(job_id) > 64:
            raise EaselError("job id too long")
        row = cancel_job(ctx.engine.queue, job_id, user, ctx.is_admin(user))
        return {"cancelled": row.id}

    return router
