"""The creator web page, served by the service itself (mounted on ``Snap2Caption`` at "/").

Routes this app adds (every API route of the service is matched before these):

* ``GET /``      -> redirect to the page, so a creator who opens the bare address lands on it;
* ``GET /ui/``   -> the page (``web/index.html``, ``app.js``, ``style.css``), static files;
* ``GET /docs``  -> BentoML's Swagger UI, which used to live at "/" (it reads ``/docs.json``);
* ``GET /platforms`` -> the platform profiles (core/platforms.json) the page's picker shows;
* ``GET /info``  -> which model answers and what it knows (the page's first line).

The page calls the API on the same origin, so it needs no CORS. It is a static shell with no
secrets: auth.py leaves "/", "/ui/" and "/docs" open, and the page asks the creator for an API
key (sent as ``Authorization: Bearer``) when the service has keys configured.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from snap2caption_service.core.contracts import MAX_HASHTAGS, ModelDescription
from snap2caption_service.core.platforms import DEFAULT_PLATFORM, PLATFORMS

WEB_DIR = Path(__file__).resolve().parent / "web"


def _swagger_page() -> Path | None:
    """BentoML's own API docs page, if this BentoML version ships it where we expect."""
    try:
        import _bentoml_impl.server as impl
    except ImportError:  # pragma: no cover - other BentoML layouts
        return None
    page = Path(impl.__file__).parent / "main-openapi.html"
    return page if page.is_file() else None


class NoCacheStaticFiles(StaticFiles):
    """Static files that browsers revalidate, so a redeploy never serves a stale app.js."""

    async def get_response(self, path: str, scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.setdefault("Cache-Control", "no-cache")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response


async def home(_: Request) -> Response:
    # Relative, so it still works behind a proxy that serves the service under a path prefix.
    return RedirectResponse("ui/", status_code=307)


async def platforms(_: Request) -> Response:
    """Each platform's rules as the API applies them (a null cap is the API's own maximum)."""
    profiles = [
        {
            "name": p.name,
            "label": p.label,
            "hashtag_cap": p.hashtag_cap or MAX_HASHTAGS,
            "recommended_hashtags": p.recommended_hashtags,
            "caption_limit": p.caption_limit,
            "alt_text": p.alt_text,
            "rule": p.rule,
            "sources": list(p.sources),
        }
        for p in PLATFORMS.values()
    ]
    return JSONResponse({"default": DEFAULT_PLATFORM, "platforms": profiles})


SERVE_A_CHECKPOINT = (
    "SNAP2CAPTION_MODEL=llava-hf/llava-1.5-7b-hf make serve (or any LLaVA-1.5, LLaVA-NeXT or OneVision "
    "checkpoint; README: Serving a real checkpoint)"
)


async def info(request: Request) -> Response:
    """Which model answers (contracts.ModelDescription). The service registers how to ask its model
    worker (``app.state.describe_model``); until the worker answers, 503 with the reason."""
    describe = getattr(request.app.state, "describe_model", None)
    if describe is None:
        return JSONResponse({"error": "model_unknown", "detail": "No model is attached to this page."}, 503)
    try:
        return JSONResponse(ModelDescription(**await describe(), serve_a_checkpoint=SERVE_A_CHECKPOINT).model_dump())
    except Exception as exc:  # noqa: BLE001 - the worker still loading, or gone: say so, never a 500
        return JSONResponse(
            {"error": "model_not_ready", "detail": f"The model worker did not answer: {type(exc).__name__}"},
            503,
            headers={"Retry-After": "5"},
        )


def build_app() -> Starlette:
    routes = [
        Route("/", home, methods=["GET", "HEAD"]),
        Route("/platforms", platforms, methods=["GET", "HEAD"]),
        Route("/info", info, methods=["GET", "HEAD"]),
        # check_dir=False: a packaging slip that drops web/ costs the page (404), not the API.
        Mount("/ui", app=NoCacheStaticFiles(directory=WEB_DIR, html=True, check_dir=False), name="ui"),
    ]
    swagger = _swagger_page()
    if swagger is not None:

        async def docs(_: Request) -> Response:
            return FileResponse(swagger, media_type="text/html")

        routes.append(Route("/docs", docs, methods=["GET", "HEAD"]))
    return Starlette(routes=routes)


web_app = build_app()

__all__ = ["web_app", "build_app", "WEB_DIR"]
