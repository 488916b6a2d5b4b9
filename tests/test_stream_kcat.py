"""kcat (librdkafka, the Debian package) as an independent client: it produces an upload
event in CloudEvents binary mode and reads the captioned event back with read_committed,
so the contract is checked by something that shares no code with ours."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid

import pytest

from conftest import REPO
from stream_support import ConsumerProcess, bootstrap, consumer_env, create_topics, inline, topic_env  # noqa: F401

pytestmark = [pytest.mark.kafka, pytest.mark.service]


@pytest.fixture(scope="module")
def kcat() -> str:
    proc = subprocess.run(
        ["bash", str(REPO / "infra" / "install_tools.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    path = shutil.which("kcat")
    if proc.returncode != 0 or not path:
        pytest.fail(f"kcat is unavailable: infra/install_tools.sh exited {proc.returncode}\n{proc.stderr}")
    return path


def test_kcat_produces_an_upload_event_and_reads_the_captioned_event(kcat, bootstrap, service, tmp_path):
    topics = topic_env("kcat")
    create_topics(bootstrap, topics)
    media_id, event_id = f"kcat-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    data = {
        "media_id": media_id,
        "creator_id": "creator-kcat",
        "image": inline(),
        "tone": "dry",
        "uploaded_at": "2025-01-01T00:00:00Z",
    }
    headers = {
        "ce_specversion": "1.0",
        "ce_id": event_id,
        "ce_source": "urn:test:kcat",
        "ce_type": "com.snap2caption.media.uploaded",
        "ce_time": "2025-01-01T00:00:00Z",
        "content-type": "application/json",
    }
    produce = [kcat, "-P", "-b", bootstrap, "-t", topics["SNAP2CAPTION_TOPIC_UPLOADED"], "-k", media_id]
    for name, value in headers.items():
        produce += ["-H", f"{name}={value}"]
    subprocess.run(produce, input=json.dumps(data) + "\n", text=True, check=True, timeout=60)

    consumer = ConsumerProcess(consumer_env(bootstrap, service.url, topics), tmp_path / "consumer.log")
    try:
        read = subprocess.run(
            [
                kcat,
                "-C",
                "-b",
                bootstrap,
                "-t",
                topics["SNAP2CAPTION_TOPIC_CAPTIONED"],
                "-o",
                "beginning",
                "-c",
                "1",
                "-J",
                "-X",
                "isolation.level=read_committed",
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        assert consumer.terminate() == 0, consumer.log()[-3000:]
    assert read.returncode == 0, read.stderr
    message = json.loads(read.stdout.strip().splitlines()[0])
    got_headers = dict(zip(message["headers"][::2], message["headers"][1::2]))
    assert message["key"] == media_id
    assert got_headers["ce_type"] == "com.snap2caption.media.captioned"
    assert got_headers["ce_specversion"] == "1.0" and got_headers["content-type"] == "application/json"
    assert got_headers["ce_subject"] == media_id
    payload = json.loads(message["payload"])
    assert payload["media_id"] == media_id and payload["source_event_id"] == event_id
    assert payload["caption"] and isinstance(payload["hashtags"], list) and payload["model_version"]
