"""stream/feedback_producer.py without a broker: the durable spool feedback waits in.
tests/test_stream_feedback.py sends feedback through a real broker that goes down and back up."""

from __future__ import annotations

import json

from stream.feedback_producer import Spool


def test_spool_keeps_order_and_resumes_from_its_cursor(tmp_path):
    spool = Spool(tmp_path / "spool.jsonl")
    for i in range(3):
        spool.append(json.dumps({"n": i}))
    with open(spool.path, "a") as f:
        f.write('{"n": "half-writ')  # a line still being written is not shipped
    batch = spool.pending()
    assert [json.loads(line)["n"] for _, line in batch] == [0, 1, 2]
    spool.advance(batch[1][0])  # the first two acknowledged
    assert [json.loads(line)["n"] for _, line in Spool(spool.path).pending()] == [2]  # survives a restart
    with open(spool.path, "a") as f:
        f.write('ten"}\n')
    spool.advance(Spool(spool.path).pending()[-1][0])
    assert spool.path.stat().st_size == 0 and spool.cursor() == 0  # fully shipped: emptied
