"""Names vulture cannot see being used: the frameworks call or read them. Only such false positives
belong here, each with its reason; anything else `vulture` reports is dead code to delete.

vulture marks a name used wherever it appears, so one line covers every definition of that name.
This file is parsed by vulture (pyproject.toml [tool.vulture]), never imported.
"""


class _AnyAttribute:
    def __getattr__(self, _attribute):
        return None


_ = _AnyAttribute()

# pydantic: model settings and fields that are only ever serialized (model_dump / JSON).
_.model_config
_.served_at  # core/contracts.py ServedCaption
_.received_at  # core/contracts.py FeedbackRecord
_.uploaded_at  # core/contracts.py UploadEvent
_.low_confidence  # core/contracts.py CaptionResult
_.notice  # core/contracts.py CaptionResult
_.confidence_source  # core/contracts.py ModelDescription (GET /info)
_.serve_a_checkpoint  # core/contracts.py ModelDescription (GET /info)

# dataclass fields written out whole with dataclasses.asdict.
_.created  # core/model_store.py ModelInfo.as_dict()
_.created_at  # training/feedback_snapshot.py SnapshotInfo -> snapshot.json
_.timings_s  # training/prove_loop.py ProofReport -> --json-out

# CloudEvents attributes read by name (core/cloudevents.py loops over the attribute names).
_.dataschema

# BentoML: an IODescriptor's parse hook and its signature; an API output's media type we override.
_.from_http_request  # serving/push.py PushRequest
_.serde
_.media_type  # service.py: CaptionModel.apis["caption"].output_spec.media_type

# kafka-python ConsumerRebalanceListener callbacks (stream/consumer.py).
_.on_partitions_revoked
_.on_partitions_lost
_.on_partitions_assigned
_.rejoin_needed  # stream/kafka_compat.py sets kafka-python's flag; its coordinator reads it

# Attributes of library objects that the library reads: the tokenizer's padding side
# (core/captioner.py); the `tokenizers` pipeline stages of the demo tokenizer (training/demo_model.py).
_.padding_side
_.pre_tokenizer
_.decoder
_.post_processor

# Shipped for the tests' and benchmarks' use (vulture scans shipped code only): the tiny
# random-weight checkpoints of each family, and a 7b-shaped processor for benchmarks/gpu.py.
_.ensure_random_checkpoint  # training/checkpoint_families.py <- tests/checkpoint_support.py
_.processor_for  # training/checkpoint_families.py <- benchmarks/gpu.py
_.main_mask  # training/heldout_scenes.py HeldOutScene <- tests/test_heldout_scenes.py (drawing honesty)
_.events_per_creator  # training/prove_creators.py ProofReport -> --json-out
_.WORLD_MIX  # training/synthetic.py <- benchmarks/vision_towers.py (the tower comparison's scene mix)
_.scene_mix  # training/synthetic.py <- benchmarks/vision_towers.py, tests/test_synthetic.py
_.HYBRID_ARCHITECTURE  # training/demo_model.py <- benchmarks/vision_towers.py, tests (the tower that reads held-out shapes)
_.center  # training/validation_scenes.py ValidationScene <- tests/test_validation_scenes.py (the truth is where it was drawn)
_.ZOOM  # snap2caption_service/core/scene_heads.py <- benchmarks/heads_views.py (the crop side it compares; the service reads none)
