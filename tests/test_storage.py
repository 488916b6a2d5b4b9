"""core/storage.py: one "folder or s3://" abstraction and one S3 client factory.

The same operations run against a tmp folder and against moto's S3 server on loopback; the
region rule is checked on its own; and no other module may create a boto3 client."""

from __future__ import annotations

import concurrent.futures
import re
import uuid
from pathlib import Path

import pytest

from snap2caption_service.core.storage import Storage, StorageSettings, join, s3_client, split_s3_uri
from stream_support import moto_s3  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]
REGION_VARS = ("AWS_REGION", "AWS_DEFAULT_REGION")


@pytest.fixture
def no_env_file(monkeypatch):
    """Only the process environment counts (a snap2caption.env in the cwd would not)."""
    monkeypatch.setitem(StorageSettings.model_config, "env_file", None)


@pytest.fixture
def s3_env(moto_s3, monkeypatch):
    for k, v in moto_s3.env.items():
        monkeypatch.setenv(k, v)
    return moto_s3


@pytest.fixture(params=["folder", "s3"])
def location(request, tmp_path) -> str:
    if request.param == "folder":
        return str(tmp_path / "store")
    server = request.getfixturevalue("s3_env")
    return f"s3://{server.bucket}/storage-test-{uuid.uuid4().hex[:8]}"


def test_operations(location):
    store = Storage(location, create=True)
    assert store.is_s3 == location.startswith("s3://")
    assert not store.exists("a/b.bin") and store.read("a/b.bin") is None
    assert store.list() == []
    store.write("a/b.bin", b"one")
    store.write("a/c.bin", b"two")
    store.write("top.json", b"{}")
    assert store.exists("a/b.bin") and store.read("a/b.bin") == b"one"
    store.write("a/b.bin", b"replaced")
    assert store.read("a/b.bin") == b"replaced"
    assert store.list() == ["a/b.bin", "a/c.bin", "top.json"]
    assert store.list("a/") == ["a/b.bin", "a/c.bin"]
    assert store.list("nothing/") == []
    # A location below another is the same objects.
    assert Storage(join(location, "a")).read("c.bin") == b"two"


def test_s3_objects_land_under_the_prefix(s3_env):
    prefix = f"pfx-{uuid.uuid4().hex[:8]}"
    Storage(f"s3://{s3_env.bucket}/{prefix}/").write("x/y.txt", b"hi")
    body = s3_env.client().get_object(Bucket=s3_env.bucket, Key=f"{prefix}/x/y.txt")["Body"].read()
    assert body == b"hi"


def test_folder_writes_are_atomic_and_thread_safe(tmp_path):
    store = Storage(tmp_path / "f")
    data = bytes(range(256)) * 400
    for _ in range(3):
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda _: store.write("same/key.bin", data), range(32)))  # raises on a clash
    assert store.read("same/key.bin") == data
    assert store.list() == ["same/key.bin"]  # no temporary file left behind


def test_create_makes_the_folder(tmp_path):
    Storage(tmp_path / "lazy")
    assert not (tmp_path / "lazy").exists()
    Storage(tmp_path / "eager", create=True)
    assert (tmp_path / "eager").is_dir()


def test_split_and_join():
    assert split_s3_uri("s3://bucket/a/b.png") == ("bucket", "a/b.png")
    assert split_s3_uri("s3://bucket") == ("bucket", "")
    with pytest.raises(ValueError):
        split_s3_uri("/tmp/x")
    assert join("s3://b/p/", "x") == "s3://b/p/x"
    assert join("/data/root", "x") == str(Path("/data/root") / "x")


@pytest.mark.parametrize(
    "env,expected",
    [
        ({"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "ap-south-1"}, "eu-west-1"),
        ({"AWS_DEFAULT_REGION": "ap-south-1"}, "ap-south-1"),
        ({"AWS_REGION": "", "AWS_DEFAULT_REGION": "ap-south-1"}, "ap-south-1"),
        ({}, "us-east-1"),
    ],
)
def test_region_rule(monkeypatch, no_env_file, env, expected):
    for name in REGION_VARS:
        monkeypatch.delenv(name, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert StorageSettings().region_name == expected
    assert s3_client().meta.region_name == expected


def test_endpoint(monkeypatch, no_env_file):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    assert s3_client().meta.endpoint_url == "http://127.0.0.1:9"
    assert s3_client(endpoint_url="http://127.0.0.1:10").meta.endpoint_url == "http://127.0.0.1:10"
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert s3_client().meta.endpoint_url == "https://s3.eu-west-1.amazonaws.com"


def test_no_other_module_creates_a_boto3_client():
    allowed = REPO / "snap2caption_service" / "core" / "storage.py"
    offenders = []
    for package in ("snap2caption_service", "stream", "training"):
        for path in sorted((REPO / package).rglob("*.py")):
            if path != allowed and re.search(r"boto3\s*\.\s*client\s*\(", path.read_text(encoding="utf-8")):
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == [], f"create S3 clients with core/storage.py's s3_client(): {offenders}"
    assert "boto3.client(" in allowed.read_text(encoding="utf-8")
