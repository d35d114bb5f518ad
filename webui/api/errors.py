"""Errors as A1111's JSON shape: what a user can cause is a 4xx that says what to fix, never a 500."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from pipelines.errors import EaselError, RequestTooLargeError
from pipelines.metadata.history import OutputNotFoundError, OutputPathError
from pipelines.runtime.queue import QueueFullError
from pipelines.runtime.queue_view import JobNotFoundError, NotAllowedError

_STATUS: tuple[tuple[type[EaselError], int, str], ...] = (
    (QueueFullError, 429, "QueueFull"),
    (RequestTooLargeError, 413, "RequestTooLarge"),
    (OutputPathError, 400, "BadPath"),
    (OutputNotFoundError, 404, "NotFound"),
    (JobNotFoundError, 404, "NotFound"),
    (NotAllowedError, 403, "Forbidden"),
)


def _error(status: int, error: str, detail: Any, errors: Any = "") -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content=jsonable_encoder({"error": error, "detail": detail, "body": "", "errors": errors or detail}),
    )


def _message(error: dict[str, Any]) -> str:
    """Pydantic's message, without the "Value error, " it puts before the ones our validators raise."""
    return str(error.get("msg", "")).removeprefix("Value error, ")


async def _easel_error(_request: Request, exc: Exception) -> JSONResponse:
    for kind, status, name in _STATUS:
        if isinstance(exc, kind):
            return _error(status, name, str(exc))
    return _error(422, "EaselError", str(exc))


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    # Only where and what: pydantic's ``input``/``ctx`` echo the body, and a NaN or a deep list there made the
    # error reply itself fail (a 500).
    raw = exc.errors() if isinstance(exc, RequestValidationError) else []
    errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": _message(e), "type": e.get("type")} for e in raw]
    detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors)
    return _error(422, "RequestValidationError", detail or str(exc), errors)


def install_error_handlers(app: FastAPI) -> None:
    """EaselError -> 422, a full queue -> 429, too large -> 413, bad JSON / wrong types -> 422, a path outside the
    outputs -> 400, no such image or job -> 404, someone else's job -> 403; A1111's error shape."""
    app.add_exception_handler(EaselError, _easel_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
