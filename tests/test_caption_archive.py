"""snap2caption_service.core.caption_archive: the archive of served captions and their images.
tests/test_feedback_snapshot.py reads it back into training examples."""

from __future__ import annotations


def test_archive_takes_the_same_image_from_many_threads_at_once(tmp_path):
    """Two requests for one photo archive the same image key at the same moment (each in a
    worker thread): both writes must land, and the stored image must be whole."""
    import concurrent.futures

    from snap2caption_service.core.caption_archive import CaptionArchive
    from snap2caption_service.core.contracts import ServedCaption

    archive = CaptionArchive(str(tmp_path / "archive"))
    image = b"\x89PNG" + bytes(range(256)) * 400

    def put(i: int):
        archive.put(
            ServedCaption(
                request_id=f"r{i}",
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
    assert all(archive.get(f"r{i}").request_id == f"r{i}" for i in range(64))
