"""BentoML services: a batching model worker and the public API in front of it.

Every caller (HTTP JSON, HTTP upload, and the Kafka paths) reaches the model through
``CaptionModel.caption``, so all traffic shares one adaptive batcher. The captioning logic
itself lives in plain modules (captioner, pipeline, images) that work without BentoML.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import anyio
import bentoml

from snap2caption_service.core.caption_archive import CaptionArchive, UnreadableRecord
from snap2caption_service.core.captioner import BatchStats, CaptionJob, CheckpointRefused
from snap2caption_service.core.contracts import (
    AUDIENCES,
    CaptionedEvent,
    CaptionOptions,
    CaptionRequest,
    CaptionResult,
    FeedbackAccepted,
    FeedbackRequest,
    ImageRef,
    ServedCaption,
)
from snap2caption_service.core.creator_adapters import served_model_version
from snap2caption_service.core.errors import ErrorAnswer, Poison, Transient
from snap2caption_service.core.hashtags import warm_up_segmenter
from snap2caption_service.core.images import ImageError, decode_base64_image, decode_png_base64
from snap2caption_service.core.settings import get_settings
from snap2caption_service.core.tag_stats import TagStatsReader
from snap2caption_service.serving.auth import ApiKeyMiddleware
from snap2caption_service.serving.batching import install_gather_dispatch
from snap2caption_service.serving.feedback_store import FeedbackLogUnavailable, FeedbackStore, FeedbackTooLarge
from snap2caption_service.serving.image_fetch import FetchPool, fetch_error_response
from snap2caption_service.serving.limits import RequestLimitMiddleware
from snap2caption_service.serving.metrics import get_metrics, record_adapter_load, record_resident_adapters
from snap2caption_service.serving.pipeline import (
    ModelItem,
    ModelOutput,
    build_result,
    model_item,
    new_request_id,
    prepare_image,
)
from snap2caption_service.serving.push import PushHandler, PushRequest
from snap2caption_service.serving.responses import ErrorBodyMiddleware, answer_error, error_response
from snap2caption_service.serving.upload import UploadRequest
from snap2caption_service.serving.web_app import web_app
from stream.feedback_producer import FeedbackPublisher

log = logging.getLogger("snap2caption")
install_gather_dispatch()
settings = get_settings()  # env only; cheap. Batcher limits must be known when the class is defined.


def stop_server_for(exc: Exception) -> None:
    """The configured model can never be served (unsupported, unsafe, adapter on the wrong base):
    stop the whole server instead of letting BentoML restart this worker forever, so that
    start-up fails with the reason (a crash-looping pod names it; a never-ready one does not)."""
    log.critical("cannot serve the configured model, stopping the server: %s", exc)
    os.kill(os.getppid(), signal.SIGTERM)  # the BentoML arbiter that started this worker


@bentoml.service(
    name="snap2caption-model",
    workers=1,
    traffic={"timeout": 600},
    # BentoML's client to this service replaces its HTTP session every 100 requests by default,
    # closing the old one under requests still in flight on it ("Server disconnected" at
    # 50 concurrent clients). The hop is a local socket: keep one session.
    runner_connection={"max_requests": 1_000_000_000, "max_age": 10 * 365 * 86400.0},
    # Every caption crosses this internal hop once; the public service's access log already
    # has one line per request, so a second line per caption would only double the volume.
    logging={"access": {"enabled": False}},
)
class CaptionModel:
    """Owns the model. One worker, one model call at a time; the batcher fills each call.

    Every torch call (loading included) runs on one dedicated thread. PyTorch's CPU wheels
    parallelise with OpenMP (libgomp), which gives each calling thread its own team of
    workers. Loading on the main thread and generating on BentoML's pool threads left two
    teams, more OpenMP threads than the 2 cores, and libgomp then cuts its spin-wait to ~1000
    spins: the workers sleep between the thousands of small ops of a generate and wake late.
    Measured on the demo model, batch 32: generate on a second thread ran at 37 captions/s
    against 47 on the thread that loaded the model, with one core ~30% idle.
    """

    def __init__(self) -> None:
        from snap2caption_service.core.model_loading import load_serving
        from training.build_demo import ensure_demo_model

        self._torch_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        # Creator adapters are looked up, downloaded and read here, off the model thread, so the
        # batches of other creators keep running while one creator's adapter loads.
        self._adapter_threads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="adapters")
        t0 = time.perf_counter()
        try:
            self.captioner, self.adapters = self._torch_thread.submit(
                load_serving,
                get_settings(),
                ensure_demo_model,
                False,
                self._on_model_thread,
                on_load=record_adapter_load,
                on_resident=record_resident_adapters,
            ).result()
        except CheckpointRefused as exc:
            stop_server_for(exc)
            raise
        get_metrics().model_load.observe(time.perf_counter() - t0)
        get_metrics().model_info.labels(self.captioner.version).set(1)

    def _on_model_thread(self, fn):
        """Run ``fn`` (a change of the model) between batches on the model thread, and wait for it."""
        return self._torch_thread.submit(fn).result()

    @bentoml.on_shutdown
    def close(self) -> None:
        self._adapter_threads.shutdown(wait=False, cancel_futures=True)
        self._torch_thread.shutdown(wait=True, cancel_futures=True)

    @bentoml.api
    async def describe(self) -> dict:
        """Which model this worker serves (GET /info adds the service's side)."""
        return self.captioner.describe()

    @bentoml.api
    async def creator_adapter(self, creator_id: str) -> str:
        """The creator's adapter, loaded and held for the caption call that follows; "" = the champion."""
        if self.adapters is None:
            return ""
        loop = asyncio.get_running_loop()
        adapter = await loop.run_in_executor(self._adapter_threads, self.adapters.acquire, creator_id)
        return adapter.name if adapter is not None else ""

    @bentoml.api(batchable=True, max_batch_size=settings.max_batch_size, max_latency_ms=settings.max_latency_ms)
    async def caption(self, items: list[ModelItem]) -> list[ModelOutput]:
        return await asyncio.get_running_loop().run_in_executor(self._torch_thread, self._caption_batch, items)

    def _caption_batch(self, items: list[ModelItem]) -> list[ModelOutput]:
        adapters = self.adapters.adapters_for([i.adapter for i in items]) if self.adapters else [None] * len(items)
        jobs = [
            CaptionJob(
                decode_png_base64(i.image_png_b64),
                i.tone,
                i.audience,
                i.num_hashtags,
                i.num_candidates,
                i.platform,
                adapter=a.name if a is not None else None,
            )
            for i, a in zip(items, adapters)
        ]
        stats = BatchStats()
        try:
            results = self.captioner.caption_batch(jobs, stats)
        finally:
            if self.adapters is not None:
                self.adapters.release(adapters)
        m = get_metrics()
        m.batch_size.observe(stats.batch_size)
        m.adapter_rows.observe(stats.adapter_rows)
        m.model_call.observe(stats.seconds)
        m.generated_tokens.inc(stats.generated_tokens)
        return [
            ModelOutput(
                candidates=c,
                model_version=served_model_version(self.captioner.version, a.label if a is not None else None),
            )
            for c, a in zip(results, adapters)
        ]


# BentoML works out a list output's media type by building its whole JSON schema, for every
# response (IORootModel.mime_type): 0.8 ms per answer, 25 ms per batch of 32 spent in the model
# worker's event loop while the answers go back and the next batch gathers. It is JSON.
CaptionModel.apis["caption"].output_spec.media_type = "application/json"


@bentoml.service(
    name="snap2caption",
    traffic={"timeout": 300, "max_concurrency": settings.max_concurrency},
    http={"cors": {"enabled": False}},
)
@bentoml.asgi_app(web_app, path="/")  # the creator page at /ui/ (and / -> /ui/), Swagger at /docs
class Snap2Caption:
    model = bentoml.depends(CaptionModel)

    def __init__(self) -> None:
        self.settings = get_settings()
        # The feedback log: the one durable copy of each feedback (fsynced before 202), one writer.
        self.feedback_store = FeedbackStore(self.settings.feedback_file, fsync=self.settings.feedback_fsync)
        # When KAFKA_BOOTSTRAP_SERVERS is set, that log is shipped to the training topic from a cursor.
        self.feedback_out = FeedbackPublisher.from_env(
            self.settings.feedback_file, self.settings.data_dir, self.settings.feedback_fsync
        )
        if self.feedback_out is not None:
            self.feedback_out.drain_on_sigterm()  # close() below may come late, or never (see there)
        # Each served caption's image and result, so feedback on it can become training data.
        self.archive = CaptionArchive(self.settings.archive_location)
        # Images by reference (/events, image_url): one pool, the fetch rules (S3 buckets, URL
        # allowlist, limits) of `consume`.
        self.fetches = FetchPool()
        self.push = PushHandler(pool=self.fetches)
        # What creators keep and remove per hashtag, written by `snap2caption tag-stats`; read-only here.
        self.tag_stats = TagStatsReader(self.settings.tag_stats_file)
        warm_up_segmenter()  # its dictionary loads in about a second: here, not in the first request
        # GET /info (serving/web_app.py) asks the model worker through this.
        self._description: dict | None = None
        web_app.state.describe_model = self.describe_model

    async def describe_model(self) -> dict:
        """The model worker's description plus this service's confidence threshold, asked once."""
        if self._description is None:
            described = await self.model.to_async.describe()
            self._description = {**described, "min_confidence": self.settings.min_confidence}
        return self._description

    @bentoml.on_shutdown
    def close(self) -> None:
        """Ship what feedback still waits, within SNAP2CAPTION_FEEDBACK_DRAIN_TIMEOUT_S; release the log.

        BentoML runs this only once uvicorn has seen every request task end, with no time limit;
        a task that never ends (seen in the tests: requests from before the model was ready)
        puts it off until the SIGKILL. So the drain itself starts at SIGTERM
        (FeedbackPublisher.drain_on_sigterm)."""
        if self.feedback_out is not None:
            self.feedback_out.close()
        self.feedback_store.close()
        self.tag_stats.close()

    async def _caption(self, data_or_b64: bytes | str, options: CaptionOptions, source: str) -> CaptionResult:
        """Decode, check, batch through the model worker, and shape the result; raises ErrorAnswer."""
        m = get_metrics()
        t0 = time.perf_counter()
        request_id = new_request_id()
        s = self.settings
        try:

            def prepare():
                data = (
                    decode_base64_image(data_or_b64, s.max_image_bytes) if isinstance(data_or_b64, str) else data_or_b64
                )
                return prepare_image(data, s)

            # Decoding a 10 MB JPEG takes ~100 ms: keep it off the event loop.
            prepared = await anyio.to_thread.run_sync(prepare)
        except ImageError as exc:
            m.captions.labels("bad_input", source).inc()
            log.info("request %s rejected: %s (%s)", request_id, exc.code, exc.detail)
            raise
        if s.fault_latency_ms:
            await asyncio.sleep(s.fault_latency_ms / 1000)
        if s.fault_error_rate and random.random() < s.fault_error_rate:
            m.injected_faults.inc()
            m.captions.labels("error", source).inc()
            raise ErrorAnswer(500, "injected_fault", "Fault injected by SNAP2CAPTION_FAULT_ERROR_RATE.")
        adapter = await self.model.to_async.creator_adapter(creator_id=options.creator_id) if options.creator_id else ""
        item = model_item(prepared, options, adapter or None)
        outputs = await self._call_model(item)
        output = outputs[0]
        if not isinstance(output, ModelOutput):
            output = ModelOutput.model_validate(output)
        result = build_result(
            output, request_id, 0.0, prepared.sha256, options, self.tag_stats, self.settings.min_confidence
        )
        await self._archive(result, options, item.image_png_b64)
        latency = time.perf_counter() - t0
        m.captions.labels("ok", source).inc()
        m.caption_latency.observe(latency)
        result.latency_ms = round(latency * 1000, 1)
        return result

    async def _archive(self, result: CaptionResult, options: CaptionOptions, image_png_b64: str) -> None:
        """Keep the image and the shown result for feedback. A failing archive (S3 down) costs
        this request its trainability, not its caption: logged and counted, not raised. The
        creator it was made for, if the request named one, is the only one whose feedback counts."""
        try:
            served = ServedCaption(
                request_id=result.request_id,
                image_sha256=result.image_sha256,
                tone=options.tone,
                audience=options.audience,
                num_hashtags=options.num_hashtags,
                platform=options.platform,
                caption=result.caption,
                hashtags=result.hashtags,
                alt_text=result.alt_text,
                model_version=result.model_version,
                served_at=datetime.now(UTC).isoformat(),
                creator_id=options.creator_id,
            )
            await anyio.to_thread.run_sync(self.archive.put, served, base64.b64decode(image_png_b64))
        except Exception:  # noqa: BLE001 - any storage failure (or a result over the record's bounds)
            get_metrics().archive_errors.inc()
            log.exception("could not archive request %s; feedback on it will be refused", result.request_id)

    async def _call_model(self, item: ModelItem):
        import aiohttp

        # Captioning is idempotent, so a connection dropped before the answer is retried once.
        try:
            return await self.model.to_async.caption([item])
        except aiohttp.ServerDisconnectedError:
            log.warning("model worker connection dropped; retrying once")
            return await self.model.to_async.caption([item])

    @bentoml.api(route="/generate-caption", input_spec=CaptionRequest)
    async def generate_caption(self, **fields) -> CaptionResult:
        """Caption a photo sent as base64 or a data URL, or fetched from image_url, in a flat JSON body."""
        request = CaptionRequest.model_construct(**fields)
        image: bytes | str = request.image or ""
        if request.image_url is not None:
            try:
                image = await self.fetches.fetch(ImageRef(url=request.image_url))
            except (Poison, Transient) as exc:
                if isinstance(exc, Poison):
                    get_metrics().captions.labels("bad_input", "http").inc()
                log.info("image_url not fetched: %s", exc.reason)  # not the URL: it may carry a signature
                return fetch_error_response(exc)
        try:
            return await self._caption(image, request, "http")
        except ErrorAnswer as exc:
            return answer_error(exc)

    @bentoml.api(route="/generate-caption/upload", input_spec=UploadRequest)
    async def generate_caption_upload(self, **fields) -> CaptionResult:
        """The same as /generate-caption, with the photo as a multipart file upload."""
        request = UploadRequest.model_construct(**fields)
        image, options = request.image, request.options()
        size = image.stat().st_size
        if size > self.settings.max_image_bytes:
            return error_response(
                413,
                "image_too_large",
                f"The image is {size} bytes; the limit is {self.settings.max_image_bytes} bytes.",
            )
        try:
            return await self._caption(image.read_bytes(), options, "upload")
        except ErrorAnswer as exc:
            return answer_error(exc)

    @bentoml.api(route="/feedback", input_spec=FeedbackRequest)
    async def feedback(self, ctx: bentoml.Context, **fields) -> FeedbackAccepted:
        """Record a rating or an edit; 202 once it is durably stored.

        The request_id must name a caption this service returned (404); when that caption was
        requested for a creator_id, only feedback naming the same creator_id is taken (403).
        No answer repeats what was sent or what is on record."""
        request = FeedbackRequest.model_construct(**fields)

        def refuse(status: int, code: str, detail: str, headers: dict[str, str] | None = None):
            ctx.response.status_code = status  # BentoML applies the context's status to a returned Response too
            return error_response(status, code, detail, headers=headers)

        try:
            served = await anyio.to_thread.run_sync(self.archive.get, request.request_id)
        except UnreadableRecord:
            return refuse(500, "archive_unreadable", "The caption this feedback names cannot be read back.")
        if served is None:
            return refuse(
                404,
                "unknown_request",
                "No caption with this request_id is on record: feedback must name the request_id of a "
                "caption this service returned.",
            )
        if served.creator_id is not None and request.creator_id != served.creator_id:
            if request.creator_id is None:
                return refuse(
                    403, "creator_required", "This caption was made for a creator: send that creator's creator_id."
                )
            return refuse(403, "creator_mismatch", "This caption was made for another creator.")
        try:
            record = await anyio.to_thread.run_sync(self.feedback_store.append, request, served)
        except FeedbackTooLarge as exc:
            return refuse(413, "feedback_too_large", str(exc))
        except FeedbackLogUnavailable:
            return refuse(
                503,
                "feedback_unavailable",
                "Feedback cannot be stored right now; send it again.",
                {"Retry-After": "30"},
            )
        if self.feedback_out is not None:
            self.feedback_out.notify()
        get_metrics().feedback.labels(request.rating).inc()
        ctx.response.status_code = 202
        return FeedbackAccepted(feedback_id=record.feedback_id)

    @bentoml.api(route="/events", input_spec=PushRequest)
    async def events(self, body: bytes, headers: dict[str, str]) -> CaptionedEvent:
        """Knative push mode: a media.uploaded CloudEvent (binary mode) in, the captioned CloudEvent out."""
        return await self.push.handle(headers, body, lambda image, options: self._caption(image, options, "events"))


# Outermost first: oversized bodies get 413 before auth, handlers or multipart parsers read them.
# The routes that carry an image get the image-sized limit; everything else (/feedback...) the small one.
IMAGE_ROUTES = ("/generate-caption", "/generate-caption/upload", "/events")
Snap2Caption.add_asgi_middleware(
    RequestLimitMiddleware,
    limits=dict.fromkeys(IMAGE_ROUTES, settings.max_request_bytes),
    default_limit=settings.max_small_request_bytes,
    image_bytes=settings.max_image_bytes,
)
if settings.api_key_list or settings.events_auth == "oidc":  # oidc guards /events with or without keys
    Snap2Caption.add_asgi_middleware(ApiKeyMiddleware, keys=settings.api_key_list)

# Innermost: BentoML's own error answers (invalid bodies, exceptions) leave as an ErrorBody that
# names fields and rules, never the input (serving/responses.py).
Snap2Caption.add_asgi_middleware(ErrorBodyMiddleware)

__all__ = ["Snap2Caption", "CaptionModel", "AUDIENCES"]
