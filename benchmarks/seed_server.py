"""The seed project's serving style, for comparison only: one FastAPI endpoint that calls
generate once per request (no batching), on the same model and core as our service.

    python benchmarks/seed_server.py --model DIR --port 3100
"""

from __future__ import annotations

import argparse
import time

import uvicorn
from fastapi import FastAPI

from snap2caption_service.core.captioner import Captioner, CaptionJob
from snap2caption_service.core.contracts import CaptionRequest
from snap2caption_service.core.images import decode_base64_image, load_image


def make_app(model_dir: str) -> FastAPI:
    captioner = Captioner.load(model_dir)
    app = FastAPI()

    @app.get("/readyz")
    def ready():
        return {"ok": True}

    @app.post("/generate-caption")
    def generate_caption(req: CaptionRequest):
        # A plain sync endpoint: FastAPI runs it in its thread pool, one generate per request.
        t0 = time.perf_counter()
        img = load_image(decode_base64_image(req.image, 10 << 20), 10 << 20, 40_000_000)
        best = captioner.caption_batch([CaptionJob(img, req.tone, req.audience, req.num_hashtags)])[0][0]
        return {
            "caption": best.caption,
            "hashtags": best.hashtags,
            "alt_text": best.alt_text,
            "latency_ms": (time.perf_counter() - t0) * 1000,
        }

    return app


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--port", type=int, default=3100)
    args = ap.parse_args()
    uvicorn.run(make_app(args.model), host="127.0.0.1", port=args.port, log_level="warning")
