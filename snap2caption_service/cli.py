"""The ``snap2caption`` command.

Flags override SNAP2CAPTION_* environment variables, which override the env file; see
``snap2caption --help`` and ``snap2caption COMMAND --help``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from snap2caption_service.core.contracts import (
    AUDIENCES,
    MAX_CANDIDATES,
    MAX_HASHTAGS,
    MIN_CANDIDATES,
    MIN_HASHTAGS,
    CaptionOptions,
)
from snap2caption_service.core.platforms import DEFAULT_PLATFORM, PLATFORM_NAMES

SERVICE_TARGET = "snap2caption_service.service:Snap2Caption"


def _model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (default: the embedded demo model, built on first use)")
    g.add_argument("--model", help="HF LLaVA id or local folder [SNAP2CAPTION_MODEL]")
    g.add_argument("--adapter", help="PEFT LoRA adapter folder, merged at load [SNAP2CAPTION_ADAPTER]")
    g.add_argument(
        "--data-dir",
        help="cache for the demo model and the feedback store [SNAP2CAPTION_DATA_DIR, default ~/.cache/snap2caption]",
    )
    g.add_argument("--device", help="auto | cpu | cuda [SNAP2CAPTION_DEVICE]")
    g.add_argument("--dtype", help="auto | float32 | bfloat16 | float16 [SNAP2CAPTION_DTYPE]")


def _apply_flags_to_env(args: argparse.Namespace, names: list[str]) -> None:
    """Flags become env vars so the BentoML worker processes see the same configuration."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            os.environ[f"SNAP2CAPTION_{name.upper()}"] = str(value)
    from snap2caption_service.core.settings import get_settings

    get_settings.cache_clear()


def _options_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tone", default="casual", help="free text, at most 32 characters (default: casual)")
    p.add_argument("--audience", default="personal", choices=AUDIENCES, help="default: personal")
    p.add_argument(
        "--platform",
        default=DEFAULT_PLATFORM,
        choices=PLATFORM_NAMES,
        help=f"where the post goes; its rules cap the hashtags and the text (default: {DEFAULT_PLATFORM})",
    )
    p.add_argument(
        "--num-hashtags",
        type=int,
        default=None,
        help=f"{MIN_HASHTAGS}-{MAX_HASHTAGS}, at most the platform's cap (default: the platform's recommended count)",
    )
    p.add_argument(
        "--num-candidates",
        type=int,
        default=1,
        help=f"{MIN_CANDIDATES}-{MAX_CANDIDATES}: 1 greedy + samples, best first (default: 1)",
    )
    p.add_argument(
        "--include-hashtags",
        default="",
        metavar="TAGS",
        help="hashtags you want in the answer, first, comma- or space-separated (they count toward "
        "--num-hashtags; the only way a generic tag such as #reels appears)",
    )


def _tag_list(text: str) -> list[str]:
    return text.replace(",", " ").split()


def cmd_serve(args: argparse.Namespace) -> int:
    _apply_flags_to_env(
        args,
        [
            "model",
            "adapter",
            "data_dir",
            "device",
            "dtype",
            "api_keys",
            "max_batch_size",
            "max_latency_ms",
            "host",
            "port",
        ],
    )
    from snap2caption_service.core.model_loading import choose_model
    from snap2caption_service.core.settings import get_settings
    from training.build_demo import ensure_demo_model

    # Build the demo model here, in the foreground with a progress bar, rather than silently
    # inside a worker that /readyz would report as not ready for ten minutes.
    settings = get_settings()
    ref = choose_model(settings, ensure_demo_model, progress=True).ref
    print(f"serving {ref} on http://{settings.host}:{settings.port}", file=sys.stderr)
    cmd = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        SERVICE_TARGET,
        "--port",
        str(settings.port),
        "--host",
        settings.host,
        # BentoML waits a day (graceful_timeout 86400) for requests that never finish before its
        # workers exit, and only then runs our on_shutdown hooks (feedback drain, torch thread).
        "--timeout-graceful-shutdown",
        str(settings.graceful_shutdown_s),
    ]
    repo_root = Path(__file__).resolve().parent.parent
    os.chdir(repo_root)  # bentoml imports the service relative to the working directory
    os.execv(sys.executable, cmd)
    return 0  # not reached


def cmd_caption(args: argparse.Namespace) -> int:
    _apply_flags_to_env(args, ["model", "adapter", "data_dir", "device", "dtype"])
    from pydantic import ValidationError

    from snap2caption_service.core.captioner import CaptionJob
    from snap2caption_service.core.creator_adapters import served_model_version
    from snap2caption_service.core.hashtags import hashtag_pool
    from snap2caption_service.core.images import ImageError
    from snap2caption_service.core.model_loading import load_serving
    from snap2caption_service.core.settings import get_settings
    from snap2caption_service.core.tag_stats import TagStatsReader
    from snap2caption_service.serving.pipeline import ModelOutput, build_result, new_request_id, prepare_image

    try:
        options = CaptionOptions(
            tone=args.tone,
            audience=args.audience,
            platform=args.platform,
            num_hashtags=args.num_hashtags,
            num_candidates=args.num_candidates,
            include_hashtags=_tag_list(args.include_hashtags),
            creator_id=args.creator_id,
        )
    except ValidationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings = get_settings()
    prepared, failures = [], 0
    for path in args.images:
        try:
            prepared.append((path, prepare_image(Path(path).read_bytes(), settings)))
        except (OSError, ImageError) as exc:
            failures += 1
            print(f"error: {path}: {getattr(exc, 'detail', exc)}", file=sys.stderr)
    if not prepared:
        return 1
    from training.build_demo import ensure_demo_model

    captioner, adapters = load_serving(settings, ensure_demo_model)
    adapter = adapters.acquire(options.creator_id) if adapters is not None and options.creator_id else None
    t0 = time.perf_counter()
    jobs = [
        CaptionJob(
            p.image,
            options.tone,
            options.audience,
            hashtag_pool(options),
            options.num_candidates,
            options.platform,
            adapter=adapter.name if adapter is not None else None,
        )
        for _, p in prepared
    ]
    per_job = captioner.caption_batch(jobs)
    latency = (time.perf_counter() - t0) * 1000 / len(jobs)
    results = []
    tag_stats = TagStatsReader(settings.tag_stats_file)
    for (path, p), cands in zip(prepared, per_job):
        version = served_model_version(captioner.version, adapter.label if adapter is not None else None)
        output = ModelOutput(candidates=cands, model_version=version)
        res = build_result(output, new_request_id(), latency, p.sha256, options, tag_stats, settings.min_confidence)
        results.append({"file": path, **res.model_dump()})
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=2))
    else:
        for r in results:
            print(
                f"{r['file']}\n  caption:  {r['caption']}\n  hashtags: {' '.join(r['hashtags'])}\n"
                f"  alt text: {r['alt_text']}"
                + (f"\n  notice:   {r['notice']} (confidence {r['confidence']:.2f})" if r["notice"] else "")
            )
            for c in r["candidates"][1:]:
                print(f"  also ({c['score']:.3f}): {c['caption']}")
    return 1 if failures else 0


def cmd_demo_model(args: argparse.Namespace) -> int:
    _apply_flags_to_env(args, ["data_dir"])
    from snap2caption_service.core.settings import get_settings
    from training.build_demo import META_FILE, ensure_demo_model

    path = ensure_demo_model(get_settings().data_dir, progress=True)
    print(path)
    print((path / META_FILE).read_text())
    return 0


def cmd_import_model(args: argparse.Namespace) -> int:
    """Save the model to serve into BentoML's model store, where `bentoml build` finds it."""
    _apply_flags_to_env(args, ["data_dir"])
    from snap2caption_service.core.model_store import import_model
    from snap2caption_service.core.settings import get_settings

    model, adapter, version, source = args.model, args.adapter or "", args.version or "", args.source or ""
    if args.champion:
        from snap2caption_service.core.model_loading import champion_choice
        from training.build_demo import ensure_demo_model

        choice = champion_choice(get_settings(), ensure_demo_model)  # MLFLOW_TRACKING_URI names the server
        if choice is None:
            print(f"error: MLflow model {get_settings().registered_model} has no champion", file=sys.stderr)
            return 2
        model, adapter = choice.ref, choice.adapter
        version, source = version or choice.version, source or choice.source
    if not model:
        from training.build_demo import ensure_demo_model

        model = str(ensure_demo_model(get_settings().data_dir, progress=True))
    try:
        stored = import_model(model, adapter, version=version, source=source, dtype=args.dtype, force=args.force)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(stored.as_dict(), indent=2))
    else:
        print(stored.tag)
        print(
            f"  version: {stored.version}\n  source:  {stored.source}\n  weights: {stored.path} "
            f"({stored.size_bytes / 1e6:.1f} MB)",
            file=sys.stderr,
        )
    return 0


def cmd_evaluate_demo(args: argparse.Namespace) -> int:
    _apply_flags_to_env(args, ["model", "adapter", "data_dir", "device", "dtype"])
    from training.evaluate_demo import main as evaluate_main

    return evaluate_main(
        num_scenes=args.scenes,
        seed=args.seed,
        batch_size=args.batch_size,
        json_out=args.json_out,
        heldout_scenes=args.heldout_scenes,
    )


def cmd_consume(args: argparse.Namespace) -> int:
    """Kafka consumer: media.uploaded -> captioning service -> media.captioned / DLQ."""
    for flag, env in (
        ("bootstrap_servers", "KAFKA_BOOTSTRAP_SERVERS"),
        ("service_url", "SNAP2CAPTION_SERVICE_URL"),
        ("group", "SNAP2CAPTION_CONSUMER_GROUP"),
        ("instance_id", "SNAP2CAPTION_INSTANCE_ID"),
        ("max_in_flight", "SNAP2CAPTION_MAX_IN_FLIGHT"),
        ("metrics_port", "SNAP2CAPTION_METRICS_PORT"),
    ):
        if getattr(args, flag, None) is not None:
            os.environ[env] = str(getattr(args, flag))
    from stream.consumer import run_consumer

    return run_consumer()


def cmd_tag_stats(args: argparse.Namespace) -> int:
    """Kafka consumer: caption.feedback -> per-hashtag keep/remove/add counts for the ranker."""
    for flag, env in (
        ("bootstrap_servers", "KAFKA_BOOTSTRAP_SERVERS"),
        ("group", "SNAP2CAPTION_TAG_STATS_GROUP"),
        ("file", "SNAP2CAPTION_TAG_STATS_FILE"),
        ("data_dir", "SNAP2CAPTION_DATA_DIR"),
    ):
        if getattr(args, flag, None) is not None:
            os.environ[env] = str(getattr(args, flag))
    from snap2caption_service.core.settings import get_settings
    from stream.tag_stats_consumer import run_tag_stats

    get_settings.cache_clear()
    return run_tag_stats(get_settings().tag_stats_file, until_end=args.until_end)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snap2caption",
        description="Photo in; Instagram caption, hashtags and alt text out.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  snap2caption serve --port 3000\n"
        "  snap2caption caption photo.jpg --tone funny --audience promotional --json\n"
        "  snap2caption demo-model\n"
        "  snap2caption import-model --model ./llava --adapter ./lora  # then: bentoml build\n"
        "  snap2caption consume --bootstrap-servers 127.0.0.1:9092",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="start the HTTP service (BentoML) at http://127.0.0.1:3000")
    p.add_argument("--port", type=int, default=None, help="port [SNAP2CAPTION_PORT, default 3000]")
    p.add_argument("--host", default=None, help="address [SNAP2CAPTION_HOST, default 127.0.0.1]")
    p.add_argument("--api-keys", help="comma-separated bearer keys; empty = auth off [SNAP2CAPTION_API_KEYS]")
    p.add_argument("--max-batch-size", type=int, help="adaptive batcher limit [SNAP2CAPTION_MAX_BATCH_SIZE]")
    p.add_argument("--max-latency-ms", type=int, help="adaptive batcher budget [SNAP2CAPTION_MAX_LATENCY_MS]")
    _model_flags(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("caption", help="caption local image files without a server")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    _options_flags(p)
    p.add_argument(
        "--creator-id",
        help="caption in this creator's adapter (the registry's, on the champion); without one, or when "
        "the creator has none, the champion answers",
    )
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    _model_flags(p)
    p.set_defaults(func=cmd_caption)

    p = sub.add_parser("demo-model", help="build (or find cached) the embedded demo model")
    p.add_argument("--data-dir", help="[SNAP2CAPTION_DATA_DIR]")
    p.set_defaults(func=cmd_demo_model)

    p = sub.add_parser(
        "import-model",
        help="save the model to serve into the BentoML model store (for `bentoml build`)",
        description="Merge the adapter (if any) into the model and save one set of safetensors weights as "
        "snap2caption-captioner:<version> in the BentoML model store (BENTOML_HOME, default "
        "~/bentoml). `bentoml build` then packages it; prints the model tag.",
    )
    p.add_argument("--model", help="LLaVA folder or Hugging Face id (default: the demo model, built if needed)")
    p.add_argument("--adapter", help="PEFT LoRA adapter folder, merged before saving")
    p.add_argument(
        "--champion",
        action="store_true",
        help="import the MLflow registry's champion (models:/<name>@champion; needs MLFLOW_TRACKING_URI, "
        "name from SNAP2CAPTION_REGISTERED_MODEL)",
    )
    p.add_argument(
        "--version", help="the model_version the service will report (default: derived from the folders' contents)"
    )
    p.add_argument(
        "--source", help="where the model came from, kept in the store's metadata (default: demo, path or hub)"
    )
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights dtype to save (default: the checkpoint's own)",
    )
    p.add_argument("--force", action="store_true", help="re-import a version already in the store")
    p.add_argument("--json", action="store_true", help="print the stored model's description as JSON")
    p.add_argument("--data-dir", help="where the demo model is cached [SNAP2CAPTION_DATA_DIR]")
    p.set_defaults(func=cmd_import_model)

    p = sub.add_parser("consume", help="caption upload events from Kafka (media.uploaded -> media.captioned)")
    p.add_argument("--bootstrap-servers", help="[KAFKA_BOOTSTRAP_SERVERS, default 127.0.0.1:9092]")
    p.add_argument(
        "--service-url", help="the captioning service [SNAP2CAPTION_SERVICE_URL, default http://127.0.0.1:3000]"
    )
    p.add_argument("--group", help="consumer group [SNAP2CAPTION_CONSUMER_GROUP, default snap2caption-captioner]")
    p.add_argument(
        "--instance-id",
        help="stable per instance: static member and transactional id "
        "[SNAP2CAPTION_INSTANCE_ID, default the host name]",
    )
    p.add_argument(
        "--max-in-flight", type=int, help="events fetched/captioned at once [SNAP2CAPTION_MAX_IN_FLIGHT, 64]"
    )
    p.add_argument("--metrics-port", type=int, help="Prometheus port, 0 = off [SNAP2CAPTION_METRICS_PORT, 9400]")
    p.set_defaults(func=cmd_consume)

    p = sub.add_parser(
        "tag-stats",
        help="count what creators keep, remove and add per hashtag (caption.feedback -> the ranker's table)",
        description="Consume the training topic and keep per-hashtag keep/remove/add counts (per platform, "
        "creator and image context) in a SQLite table that the service's hashtag ranker reads. Counts and "
        "offsets commit together: a restart resumes exactly where the table ends.",
    )
    p.add_argument("--bootstrap-servers", help="[KAFKA_BOOTSTRAP_SERVERS, default 127.0.0.1:9092]")
    p.add_argument("--group", help="consumer group [SNAP2CAPTION_TAG_STATS_GROUP, default snap2caption-tag-stats]")
    p.add_argument("--file", help="the table [SNAP2CAPTION_TAG_STATS_FILE, default <data dir>/tag-stats.sqlite]")
    p.add_argument("--data-dir", help="[SNAP2CAPTION_DATA_DIR]")
    p.add_argument("--until-end", action="store_true", help="exit once the topic is read to its end")
    p.set_defaults(func=cmd_tag_stats)

    from training.commands import add_parsers as add_training_parsers  # train, retrain

    add_training_parsers(sub)

    p = sub.add_parser(
        "evaluate-demo",
        help="the demo model's quality bar: unseen scenes of its own generator, then two held-out sets "
        "drawn by independent code (flat vector shapes; shapes on real photos)",
    )
    p.add_argument("--scenes", type=int, default=300, help="in-distribution scenes")
    p.add_argument(
        "--heldout-scenes", type=int, default=300, help="scenes per held-out set (0: skip the held-out sets)"
    )
    p.add_argument("--seed", type=int, default=9001, help="differs from the training seed")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--json-out", help="also write the figures to this JSON file")
    _model_flags(p)
    p.set_defaults(func=cmd_evaluate_demo)

    from snap2caption_service.release.canary_cli import add_canary_parser

    add_canary_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
