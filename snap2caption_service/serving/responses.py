"""The one way the service answers an error: ``contracts.ErrorBody`` as JSON."""

from __future__ import annotations

from starlette.responses import JSONResponse

from snap2caption_service.core.contracts import ErrorBody
from snap2caption_service.core.errors import ErrorAnswer


def error_body(code: str, detail: str, stage: str | None = None) -> bytes:
    return ErrorBody(error=code, detail=detail, stage=stage).model_dump_json(exclude_none=True).encode()


def error_response(
    status: int, code: str, detail: str, stage: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        ErrorBody(error=code, detail=detail, stage=stage).model_dump(exclude_none=True),
        status_code=status,
        headers=headers,
    )


def answer_error(exc: ErrorAnswer) -> JSONResponse:
    return error_response(exc.status, exc.code, exc.detail)
