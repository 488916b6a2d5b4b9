"""Tiny random-weight checkpoints of each LLaVA family the service serves (llava, llava_next,
llava_onevision), saved as a Hub checkpoint is and cached across runs.

tests/conftest.py imports the fixture; a test that takes ``family_checkpoint`` runs once per
family. The first run builds each checkpoint (a few seconds); later runs reuse the cache under
$SNAP2CAPTION_CACHE/checkpoints (default ~/.cache/snap2caption/checkpoints).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from training.checkpoint_families import FAMILIES, ensure_random_checkpoint


def checkpoint_dir(family: str) -> Path:
    """The cached tiny checkpoint of ``family``, built first if it is not there yet."""
    return ensure_random_checkpoint(family)


@pytest.fixture(scope="session", params=FAMILIES)
def family_checkpoint(request) -> Path:
    return checkpoint_dir(request.param)
