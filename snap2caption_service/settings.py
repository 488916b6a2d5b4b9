"""Service configuration: one Settings class, env prefix SNAP2CAPTION_, documented defaults.

Values come from (highest first) CLI flags (the CLI writes them into the environment),
environment variables, then an env file named by SNAP2CAPTION_ENV_FILE (default
``snap2caption.env`` in the working directory, if present).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "snap2caption"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SNAP2CAPTION_",
        env_file=os.environ.get("SNAP2CAPTION_ENV_FILE", "snap2caption.env"),
        extra="ignore",
    )

    model: str = Field("", description="HF LLaVA id or local folder; empty = the embedded demo model.")
    adapter: str = Field("", description="PEFT LoRA adapter folder merged at load time; empty = none.")
    data_dir: Path = Field(default_factory=default_data_dir, description="Demo model cache, feedback store.")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: str = Field("auto", description="auto (CUDA bf16/fp16, CPU fp32) | float32 | bfloat16 | float16")
    max_new_tokens: int = Field(128, ge=8, le=1024)
    repetition_penalty: float = Field(1.0, ge=0.5, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    seed: int = 0
    registered_model: str = Field("snap2caption-captioner",
                                  description="MLflow registered model whose @champion is served when "
                                              "MLFLOW_TRACKING_URI is set.")

    max_batch_size: int = Field(32, ge=1, le=512, description="Adaptive batcher: most items per model call.")
    # BentoML's batcher refuses (503) requests it predicts will exceed this, and until it has
    # measured the model it predicts pessimistically (~2 s per item): a small budget turns a
    # burst right after start-up into errors. Overload is bounded by max_concurrency instead.
    max_latency_ms: int = Field(300_000, ge=10, description="Adaptive batcher: latency budget per request.")
    max_concurrency: int = Field(256, ge=1, description="Requests in flight before the API answers 503.")

    max_image_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1024)
    model_image_side: int = Field(
        448, ge=32, description="Images are shrunk to this long side before crossing to the model worker.")

    api_keys: str = Field("", description="Comma-separated bearer keys; empty = auth off.")
    feedback_path: Path | None = Field(None, description="Feedback store file; default <data_dir>/feedback.jsonl")
    feedback_fsync: bool = True
    archive: str = Field("", description="Where served images and results are kept for feedback: a folder or "
                                         "s3://bucket/prefix; default <data_dir>/archive")

    # Fault injection for canary-analysis tests and drills; never set in production.
    fault_error_rate: float = Field(0.0, ge=0.0, le=1.0)
    fault_latency_ms: int = Field(0, ge=0)

    @field_validator("data_dir", mode="before")
    @classmethod
    def _expand(cls, v):
        return Path(v).expanduser() if v else default_data_dir()

    @property
    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]

    @property
    def archive_location(self) -> str:
        return self.archive or str(self.data_dir / "archive")

    @property
    def feedback_file(self) -> Path:
        return self.feedback_path or self.data_dir / "feedback.jsonl"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
