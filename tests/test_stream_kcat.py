"""kcat (librdkafka, the Debian package) as an independent client: it produces an upload
event in CloudEvents binary mode and reads the captioned event back with read_committed,
so the contract is checked by something that shares no code with ours; and it produces the
records that once stopped the consumer (a structured event with a lone surrogate, a null header)."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid

import pytest

from conftest import REPO
from stream_support import (  # noqa: F401
    ConsumerProcess,
    bootstrap,
    consumer_env,
    create_topics,
    headers_dict,
    inline,
    read_topic,
    topic_env,
    upload_event,
)

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


def test_kcat_events_that_once_stopped_the_consumer_are_dead_lettered_and_it_goes_on(
    kcat, bootstrap, service, tmp_path
):
    """Issue 13. Before: a structured-mode event with a lone surrogate in ``id`` (the JSON escape
    "\\ud800") passed decoding and raised UnicodeEncodeError outside the handler, and a poison
    record with a null-valued header (kcat's ``-H name``) raised TypeError when its dead letter
    was sent: either one stopped the consumer, on every restart."""
    topics = topic_env("kcat-bad")
    create_topics(bootstrap, topics, partitions=1)
    uploaded = topics["SNAP2CAPTION_TOPIC_UPLOADED"]
    data = {"media_id": "kcat-s", "creator_id": "c", "image": inline()}
    structured = {
        "specversion": "1.0",
        "id": "evt-\ud800",
        "source": "urn:test:kcat",
        "type": "com.snap2caption.media.uploaded",
        "data": data,
    }
    line = json.dumps(structured)  # ensure_ascii: the lone surrogate is the six characters \ud800
    assert "\\ud800" in line
    _, good_value, good_headers = upload_event("kcat-good", inline((9, 99, 199)))
    sends = [
        (["-k", "bad-surrogate", "-H", "content-type=application/cloudevents+json"], line),
        (
            ["-k", "bad-null"] + [a for k, v in good_headers for a in ("-H", f"{k}={v.decode()}")] + ["-H", "x-null"],
            "{oops",
        ),
        (["-k", "kcat-good"] + [a for k, v in good_headers for a in ("-H", f"{k}={v.decode()}")], good_value.decode()),
    ]
    for args, payload in sends:
        subprocess.run(
            [kcat, "-P", "-b", bootstrap, "-t", uploaded, *args],
            input=payload + "\n",
            text=True,
            check=True,
            timeout=60,
        )

    consumer = ConsumerProcess(consumer_env(bootstrap, service.url, topics), tmp_path / "consumer.log")
    try:
        captioned = read_topic(bootstrap, topics["SNAP2CAPTION_TOPIC_CAPTIONED"], 1, timeout=120, settle=1)
        dlq = read_topic(bootstrap, topics["SNAP2CAPTION_TOPIC_DLQ"], 2, timeout=30, settle=1)
        assert consumer.proc.poll() is None, consumer.log()[-3000:]
    finally:
        assert consumer.terminate() == 0, consumer.log()[-3000:]
    assert [r.key for r in captioned] == [b"kcat-good"], consumer.log()[-3000:]
    reasons = {r.key: (headers_dict(r)["dlq_reason"], headers_dict(r)["dlq_stage"]) for r in dlq}
    assert reasons == {b"bad-surrogate": ("invalid_attribute", "decode"), b"bad-null": ("invalid_json", "decode")}
    (null_dlq,) = [r for r in dlq if r.key == b"bad-null"]
    assert ("x-null", b"") in null_dlq.headers and null_dlq.value == b"{oops"  # null header: sent as empty


def test_kcat_a_header_key_that_is_not_utf8_is_dead_lettered_and_the_events_around_it_captioned(
    kcat, bootstrap, service, tmp_path
):
    """Issue 13. Before: a record whose header *key* is not UTF-8 (kcat ``-H $'\\xff\\xfe=1'``)
    made kafka-python raise CorruptRecordError from poll(), before the consumer saw the record:
    it exited, and crash-looped on every restart. Now (stream/kafka_compat.py) the record is
    dead-lettered as ``undecodable_header`` and every good event around it is captioned once."""
    topics = topic_env("kcat-hkey")
    create_topics(bootstrap, topics, partitions=1)
    uploaded = topics["SNAP2CAPTION_TOPIC_UPLOADED"]

    def send(media_id: str, color, extra: list[bytes] = ()) -> None:
        _, value, headers = upload_event(media_id, inline(color))
        args = [a for k, v in headers for a in (b"-H", k.encode() + b"=" + v)]
        subprocess.run(
            [kcat, "-P", "-b", bootstrap, "-t", uploaded, "-k", media_id, *args, *extra],
            input=value + b"\n",
            check=True,
            timeout=60,
        )

    send("hkey-good-1", (1, 2, 3))
    send("hkey-bad", (4, 5, 6), [b"-H", b"\xff\xfe=1"])  # otherwise a valid event
    send("hkey-good-2", (7, 8, 9))
    send("hkey-good-3", (10, 11, 12))

    consumer = ConsumerProcess(consumer_env(bootstrap, service.url, topics), tmp_path / "consumer.log")
    try:
        captioned = read_topic(bootstrap, topics["SNAP2CAPTION_TOPIC_CAPTIONED"], 3, timeout=120, settle=2)
        dlq = read_topic(bootstrap, topics["SNAP2CAPTION_TOPIC_DLQ"], 1, timeout=30, settle=1)
        assert consumer.proc.poll() is None, consumer.log()[-3000:]
    finally:
        assert consumer.terminate() == 0, consumer.log()[-3000:]
    assert sorted(r.key for r in captioned) == [b"hkey-good-1", b"hkey-good-2", b"hkey-good-3"], consumer.log()[-3000:]
    assert [r.key for r in dlq] == [b"hkey-bad"], consumer.log()[-3000:]
    got = headers_dict(dlq[0])
    assert (got["dlq_reason"], got["dlq_stage"]) == ("undecodable_header", "decode")
    assert got["dlq_source_offset"] == "1"
    # The original headers are kept, the undecodable key escaped as UTF-8 text.
    assert ("\\xff\\xfe", b"1") in dlq[0].headers and "ce_id" in got
