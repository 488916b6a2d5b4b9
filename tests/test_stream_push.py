"""Knative push mode: POST /events with a KafkaSource-shaped binary CloudEvent gets the
captioned CloudEvent back (binary mode); bad events get a 4xx naming the reason, transient
trouble a 503 that Knative retries. Runs on the real service (tiny model)."""

from __future__ import annotations

import base64
import uuid

import httpx
import pytest

from conftest import png_bytes
from stream_support import inline

pytestmark = pytest.mark.service


def _kafka_source_headers(original_id: str, media_id: str, **override) -> dict[str, str]:
    """What a Knative KafkaSource sends for a record that is not itself forwarded as a CloudEvent."""
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "partition:2/offset:4711",
        "ce-source": "/apis/v1/namespaces/media/kafkasources/uploads#media.uploaded",
        "ce-type": "dev.knative.kafka.event",
        "ce-subject": "partition:2#4711",
        "ce-time": "2025-03-01T12:00:00Z",
        "ce-key": media_id,
        "ce-kafkaheadercespecversion": "1.0",
        "ce-kafkaheaderceid": original_id,
        "ce-kafkaheadercetype": "com.snap2caption.media.uploaded",
        "content-type": "application/json",
    }
    headers.update(override)
    return headers


def _data(media_id: str, image: dict | None = None, **extra) -> dict:
    return {"media_id": media_id, "creator_id": "creator-9", "image": image or inline(), **extra}


def test_kafka_source_event_gets_the_captioned_cloudevent_back(service):
    original_id = str(uuid.uuid4())
    r = httpx.post(
        service.url + "/events",
        json=_data("push-1", tone="witty"),
        headers=_kafka_source_headers(original_id, "push-1"),
        timeout=120,
    )
    assert r.status_code == 200, r.text
    assert r.headers["ce-specversion"] == "1.0"
    assert r.headers["ce-type"] == "com.snap2caption.media.captioned"
    assert r.headers["ce-subject"] == "push-1" and r.headers["ce-partitionkey"] == "push-1"
    assert r.headers["ce-id"] and r.headers["ce-source"] and r.headers["ce-time"]
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["media_id"] == "push-1" and body["source_event_id"] == original_id
    assert body["caption"] and body["model_version"] and set(body["timings"]) >= {"fetch_ms", "caption_ms"}

    # The same event forwarded as-is (the record was already a binary-mode CloudEvent).
    r = httpx.post(
        service.url + "/events",
        json=_data("push-2"),
        timeout=120,
        headers={
            "ce-specversion": "1.0",
            "ce-id": "evt-2",
            "ce-source": "urn:uploader",
            "ce-type": "com.snap2caption.media.uploaded",
            "content-type": "application/json",
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["source_event_id"] == "evt-2" and r.headers["ce-subject"] == "push-2"


@pytest.mark.parametrize(
    "name,data,headers,status,reason",
    [
        ("no media_id", {"creator_id": "c", "image": inline()}, {}, 400, "schema_violation"),
        (
            "two image sources",
            _data("p", {"inline_base64": "aGk=", "url": "https://example.com/a.png"}),
            {},
            400,
            "schema_violation",
        ),
        ("not a CloudEvent", _data("p"), {"ce-type": None, "ce-id": None}, 400, "not_a_cloudevent"),
        (
            "another original type",
            _data("p"),
            {"ce-kafkaheadercetype": "com.example.deleted"},
            400,
            "unexpected_event_type",
        ),
        ("another event type", _data("p"), {"ce-type": "com.example.other"}, 400, "unexpected_event_type"),
        ("metadata URL", _data("p", {"url": "https://169.254.169.254/latest/meta-data/"}), {}, 422, "ssrf_blocked"),
        ("plain http", _data("p", {"url": "http://example.com/a.png"}), {}, 422, "url_scheme_not_allowed"),
        (
            "bucket not allowlisted",
            _data("p", {"s3_uri": "s3://private-bucket/a.png"}),
            {},
            422,
            "s3_bucket_not_allowed",
        ),
        ("invalid base64", _data("p", {"inline_base64": "*not base64*"}), {}, 400, "invalid_base64"),
        (
            "a PDF",
            _data("p", {"inline_base64": base64.b64encode(b"%PDF-1.4 " + b"x" * 100).decode()}),
            {},
            415,
            "not_an_image",
        ),
        (
            "truncated PNG",
            _data("p", {"inline_base64": base64.b64encode(png_bytes()[:60]).decode()}),
            {},
            400,
            "truncated_image",
        ),
    ],
)
def test_bad_events_get_a_4xx_naming_the_reason(service, name, data, headers, status, reason):
    sent = {k: v for k, v in {**_kafka_source_headers("orig", "p"), **headers}.items() if v is not None}
    r = httpx.post(service.url + "/events", json=data, headers=sent, timeout=120)
    assert r.status_code == status, (name, r.text)
    assert r.json()["error"] == reason, name


@pytest.mark.parametrize(
    "body,content_type,reason",
    [
        (b"{oops", "application/json", "invalid_json"),
        (b"<upload/>", "application/xml", "unsupported_content_type"),
        (b"", "application/json", "empty_value"),
    ],
)
def test_body_that_is_not_json_is_a_400_naming_the_reason(service, body, content_type, reason):
    r = httpx.post(
        service.url + "/events",
        content=body,
        timeout=60,
        headers=_kafka_source_headers("o", "p", **{"content-type": content_type}),
    )
    assert (r.status_code, r.json()["error"]) == (400, reason)


def test_events_needs_the_api_key_like_every_other_route(auth_service):
    r = httpx.post(auth_service.url + "/events", json=_data("p"), headers=_kafka_source_headers("o", "p"), timeout=60)
    assert r.status_code == 401
    r = httpx.post(
        auth_service.url + "/events",
        json=_data("push-auth"),
        timeout=120,
        headers={**_kafka_source_headers("o", "push-auth"), "Authorization": "Bearer key-one"},
    )
    assert r.status_code == 200, r.text


CLUSTER_LOCAL_HOST = "snap2caption.snap2caption-prod.svc.cluster.local"


@pytest.fixture(scope="module")
def cluster_local_events_service(tmp_path_factory, tiny_model_dir):
    """API keys on, SNAP2CAPTION_EVENTS_AUTH=cluster-local (what k8s/base configures)."""
    from conftest import start_service, stop_service

    svc = start_service(
        tmp_path_factory.mktemp("svc-events-auth"),
        tiny_model_dir,
        {
            "SNAP2CAPTION_API_KEYS": "key-one",
            "SNAP2CAPTION_EVENTS_AUTH": "cluster-local",
            "K_SERVICE": "snap2caption",  # as Knative sets it
            "SNAP2CAPTION_NAMESPACE": "snap2caption-prod",  # as k8s/overlays/production sets it
        },
    )
    yield svc
    stop_service(svc.proc)


def test_events_from_the_cluster_local_address_need_no_key(cluster_local_events_service):
    """What a Knative Sequence/KafkaSource delivery looks like: the Service's cluster-local
    host, no Authorization header (a KafkaSource cannot send one)."""
    url = cluster_local_events_service.url
    r = httpx.post(
        url + "/events",
        json=_data("push-local"),
        timeout=120,
        headers={**_kafka_source_headers("o", "push-local"), "Host": CLUSTER_LOCAL_HOST},
    )
    assert r.status_code == 200, r.text
    assert r.json()["media_id"] == "push-local"
    # Short in-cluster form and an explicit port are the same address.
    r = httpx.post(
        url + "/events",
        json=_data("push-local-2"),
        timeout=120,
        headers={**_kafka_source_headers("o", "push-local-2"), "Host": "snap2caption.snap2caption-prod.svc:80"},
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "host",
    [
        "snap2caption.snap2caption-prod.example.com",
        "127.0.0.1",
        "svc.cluster.local",
        "snap2caption.svc.cluster.local.evil.example",
        "other.snap2caption-prod.svc.cluster.local",  # another Service in the same namespace
        "snap2caption.other-ns.svc.cluster.local",  # the same name in another namespace
    ],
)
def test_events_through_any_other_host_still_need_the_key(cluster_local_events_service, host):
    url = cluster_local_events_service.url
    headers = {**_kafka_source_headers("o", "push-public"), "Host": host}
    r = httpx.post(url + "/events", json=_data("push-public"), headers=headers, timeout=60)
    assert r.status_code == 401, r.text
    r = httpx.post(
        url + "/events", json=_data("push-public"), timeout=120, headers={**headers, "Authorization": "Bearer key-one"}
    )
    assert r.status_code == 200, r.text


def test_cluster_local_host_opens_only_events(cluster_local_events_service):
    with httpx.Client(base_url=cluster_local_events_service.url, timeout=60, headers={"Host": CLUSTER_LOCAL_HOST}) as c:
        assert c.post("/generate-caption", json={"image": inline()["inline_base64"]}).status_code == 401
        assert c.post("/feedback", json={"request_id": "x", "rating": "up"}).status_code == 401
        assert c.post("/events/", json=_data("p"), headers=_kafka_source_headers("o", "p")).status_code == 401
