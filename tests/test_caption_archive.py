"""snap2caption_service.core.caption_archive: the archive of served captions and their images.
tests/test_feedback_snapshot.py reads it back into training examples."""

from __future__ import annotations

import json

import pytest

from snap2caption_service.core.caption_archive import CaptionArchive, InvalidKey, UnreadableRecord
from snap2caption_service.core.contracts import ServedCaption


def served(request_id: str = "0" * 32) -> ServedCaption:
    return ServedCaption(
        request_id=request_id,
        image_sha256="ab" * 32,
        tone="casual",
        audience="personal",
        caption="c",
        hashtags=["#a"],
        alt_text="a",
        model_version="v",
    )


@pytest.mark.parametrize(
    "request_id", ["../../../../tmp/planted", "../images/ab/x", "/etc/passwd", "A" * 32, "never-served"]
)
def test_the_archive_reads_nothing_but_request_ids_of_the_issued_shape(tmp_path, request_id):
    """A /feedback request_id of ../../.. once made the service read any .json file on the
    machine (400 '8 validation errors for ServedCaption' for a planted file, 404 otherwise: an
    existence oracle; the content where pydantic's errors carried their input)."""
    planted = tmp_path / "planted.json"
    planted.write_text(json.dumps({"secret": "s3cr3t"}))
    archive = CaptionArchive(str(tmp_path / "a" / "b" / "c" / "archive"))
    with pytest.raises(InvalidKey) as err:
        archive.get(request_id)
    assert "s3cr3t" not in str(err.value) and request_id not in str(err.value)
    with pytest.raises(InvalidKey):
        archive.image("../" * 8 + "tmp/x")


def test_the_archive_refuses_a_key_that_resolves_outside_it(tmp_path):
    """A link planted inside the archive does not lead out of it."""
    outside = tmp_path / "outside.json"
    outside.write_text(served().model_dump_json())
    archive = CaptionArchive(str(tmp_path / "archive"))
    (tmp_path / "archive" / "requests").mkdir()
    (tmp_path / "archive" / "requests" / f"{1:032x}.json").symlink_to(outside)
    with pytest.raises(InvalidKey, match="outside"):
        archive.get(f"{1:032x}")


def test_an_unreadable_record_is_refused_without_its_content(tmp_path):
    archive = CaptionArchive(str(tmp_path / "archive"))
    archive.put(served(), b"png")
    (tmp_path / "archive" / "requests" / f"{0:032x}.json").write_text('{"secret": "s3cr3t"}')
    with pytest.raises(UnreadableRecord) as err:
        archive.get("0" * 32)
    assert "s3cr3t" not in str(err.value)
    assert archive.get("1" * 32) is None
    assert archive.image("ab" * 32) == b"png"


def test_archive_takes_the_same_image_from_many_threads_at_once(tmp_path):
    """Two requests for one photo archive the same image key at the same moment (each in a
    worker thread): both writes must land, and the stored image must be whole."""
    import concurrent.futures

    archive = CaptionArchive(str(tmp_path / "archive"))
    image = b"\x89PNG" + bytes(range(256)) * 400

    def put(i: int):
        archive.put(
            ServedCaption(
                request_id=f"{i:032x}",
                image_sha256="ab" * 32,
                tone="casual",
                audience="personal",
                num_hashtags=8,
                caption="c",
                hashtags=["#a"],
                alt_text="a",
                model_version="v",
                served_at="2026-11-25T00:00:00+00:00",
            ),
            image,
        )

    for _ in range(5):
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(put, range(64)))  # raises if any write failed
    assert archive.image("ab" * 32) == image
    assert all(archive.get(f"{i:032x}").request_id == f"{i:032x}" for i in range(64))
