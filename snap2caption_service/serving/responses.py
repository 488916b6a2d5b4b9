"""The one way the service answers an error: ``contracts.ErrorBody`` as JSON.

Our handlers answer with ``error_response``. BentoML answers some errors itself, before or
around our code: a body that fails the input contract (400, pydantic's error list), a body it
cannot parse, an exception (500). ``ErrorBodyMiddleware`` turns those into an ErrorBody too,
keeping only what a caller can act on: for a field problem, the field's path and pydantic's
message; never the input (a value, a document, a file read on the way) in any form.
"""

from __future__ import annotations

import json
import re

from starlette.responses import JSONResponse

from snap2caption_service.core.contracts import ErrorBody, FieldProblem
from snap2caption_service.core.errors import ErrorAnswer

MAX_LOC_PART_CHARS, MAX_MSG_CHARS, MAX_FIELD_PROBLEMS = 64, 200, 20

# An error answer that is not already an ErrorBody gets this code and sentence, by status.
_GENERIC = {
    400: ("bad_request", "The request could not be read."),
    404: ("not_found", "There is nothing at this path."),
    405: ("method_not_allowed", "This path does not take that method."),
    413: ("too_large", "The request is too large."),
    415: ("unsupported_media_type", "The request's content type is not accepted here."),
    422: ("bad_request", "The request could not be read."),
    429: ("too_many_requests", "Too many requests; try again shortly."),
    503: ("unavailable", "The service is not ready; try again shortly."),
}
_SERVER_ERROR = ("internal_error", "An unexpected error occurred; the server log has the details.")


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


def field_problems(errors: list[dict]) -> list[FieldProblem]:
    """pydantic's error entries -> path + message only (``input`` and ``ctx`` are dropped, and a
    path part that came from the input, an unknown key, is cut short)."""
    problems = []
    for e in errors[:MAX_FIELD_PROBLEMS]:
        loc = [p if isinstance(p, int) else str(p)[:MAX_LOC_PART_CHARS] for p in e.get("loc", ())]
        problems.append(FieldProblem(loc=loc, msg=str(e.get("msg", "invalid"))[:MAX_MSG_CHARS]))
    return problems


def invalid_request_body(errors: list[dict]) -> ErrorBody:
    problems = field_problems(errors)
    where = "; ".join(f"{'.'.join(map(str, p.loc)) or 'body'}: {p.msg}" for p in problems)
    return ErrorBody(error="invalid_request", detail=f"The request does not match the API: {where}", fields=problems)


def _is_error_body(body: object) -> bool:
    """One of ours: an ErrorBody whose error is a code (BentoML's own put a sentence there)."""
    try:
        parsed = ErrorBody.model_validate(body, strict=True)
    except ValueError:
        return False
    return re.fullmatch(r"[a-z][a-z0-9_]*", parsed.error) is not None


def sanitize_error(status: int, raw: bytes) -> bytes:
    """An error answer's JSON body as an ErrorBody that carries nothing of the request."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if _is_error_body(body):
        return raw
    if status in (400, 422) and isinstance(body, dict) and isinstance(body.get("detail"), list):
        fixed = invalid_request_body([e for e in body["detail"] if isinstance(e, dict)])
    else:
        code, detail = _GENERIC.get(status, _SERVER_ERROR if status >= 500 else _GENERIC[400])
        fixed = ErrorBody(error=code, detail=detail)
    return fixed.model_dump_json(exclude_none=True).encode()


class ErrorBodyMiddleware:
    """Every JSON error answer leaves as an ErrorBody (see the module docstring)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: dict | None = None
        chunks: list[bytes] = []

        async def send_checked(message):
            nonlocal held
            if message["type"] == "http.response.start":
                content_type = dict(message.get("headers") or ()).get(b"content-type", b"")
                if message["status"] >= 400 and content_type.startswith(b"application/json"):
                    held = message
                    return
            elif message["type"] == "http.response.body" and held is not None:
                chunks.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                body = sanitize_error(held["status"], b"".join(chunks))
                headers = [(k, v) for k, v in held.get("headers") or () if k.lower() != b"content-length"]
                headers.append((b"content-length", str(len(body)).encode()))
                await send({**held, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, send_checked)
