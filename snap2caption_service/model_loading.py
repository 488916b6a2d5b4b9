"""Which weights to serve: the configured checkpoint (+ adapter), else the embedded demo model."""

from __future__ import annotations

import logging

from .captioner import Captioner, GenerationSettings
from .settings import Settings

log = logging.getLogger(__name__)


def resolve_model_ref(settings: Settings, progress: bool = True) -> str:
    if settings.model:
        return settings.model
    from training.build_demo import ensure_demo_model

    return str(ensure_demo_model(settings.data_dir, progress=progress))


def load_captioner(settings: Settings, progress: bool = True) -> Captioner:
    generation = GenerationSettings(max_new_tokens=settings.max_new_tokens,
                                    repetition_penalty=settings.repetition_penalty,
                                    top_p=settings.top_p, seed=settings.seed)
    ref = resolve_model_ref(settings, progress=progress)
    return Captioner.load(ref, settings.adapter, device=settings.device, dtype=settings.dtype,
                          generation=generation)
