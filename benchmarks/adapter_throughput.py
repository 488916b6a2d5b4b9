"""Creator-adapter benchmark (issue 17 §4): the service's throughput at N closed-loop clients on
the demo model, three ways side by side in one run, on one service:

  champion     every request without creator_id: the merged champion, the plain model
  creators     requests spread over --creators creator adapters (all stay resident)
  churn        requests spread over --many-creators creators, more than --resident stay loaded:
               every batch loads adapters again (from the local cache)

The adapters are registered in a real MLflow server (infra/mlflow.sh, like the tests') as the
training side registers them, and the service resolves and loads them as in production. They
are peft's fresh LoRA (B = 0) on every attention projection of the language model: a trained
adapter's cost exactly, with the champion's answers, so all modes generate the same tokens and
the table compares the serving mechanism alone. Modes alternate round by round, because this
VM's speed drifts by 20-30% between minutes (see benchmarks/serving.py).

    python benchmarks/adapter_throughput.py [--clients 32] [--rounds 3] [--requests-per-client 6]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from benchmarks.serving import Row, load, running_server, scene_payloads  # noqa: E402

TARGET = 0.70  # mixed-adapter batches against the merged champion (issue 17)


@dataclass
class Measured:
    row: Row  # serving.load's row: throughput and latency percentiles
    loads: int  # adapter loads the service counted meanwhile


def adapter_loads(url: str) -> int:
    text = httpx.get(url + "/metrics", timeout=30).text
    found = re.search(r'^snap2caption_creator_adapter_loads_total\{outcome="ok"\} (\S+)$', text, re.M)
    return int(float(found.group(1))) if found else 0


def by_creator(creators: list[str]):
    """serving.load's extra fields: client i's k-th request is for creator (i + k) mod len(creators)."""
    if not creators:
        return None
    return lambda i, k: {"creator_id": creators[(i + k) % len(creators)]}


def measure(url: str, mode: str, clients: int, per_client: int, payloads: list[str], creators: list[str]) -> Measured:
    before = adapter_loads(url)
    row = load(url, clients, per_client, payloads, mode, by_creator(creators))
    return Measured(row, adapter_loads(url) - before)


def register_adapters(uri: str, model_dir: str, registered: str, count: int, work: Path) -> list[str]:
    """``count`` creators, each with their own adapter version tagged for the bare demo base."""
    from snap2caption_service.core.captioner import load_checkpoint
    from snap2caption_service.core.registry import NO_CHAMPION, creators_model_name
    from tests.test_creator_adapters import make_adapter, register_creator_version

    model, _ = load_checkpoint(model_dir)
    creators = [f"bench-creator-{i}@example.com" for i in range(count)]
    for i, creator in enumerate(creators):
        folder = make_adapter(model, work / f"adapter-{i}", seed=i, random_weights=False, r=16)
        register_creator_version(uri, creators_model_name(registered), folder, creator, NO_CHAMPION)
    return creators


def fmt_table(rows: list[Measured], champion: float) -> str:
    lines = [
        "| mode                                  | requests | errors | captions/s | p50 s | p90 s | vs champion | adapter loads |",
        "|---------------------------------------|---------:|-------:|-----------:|------:|------:|------------:|--------------:|",
    ]
    for m in rows:
        r = m.row
        lines.append(
            f"| {r.system:<37} | {r.requests:>8} | {r.errors:>6} | {r.throughput:>10.2f} | {r.p50:>5.2f} | "
            f"{r.p90:>5.2f} | {r.throughput / champion:>11.0%} | {m.loads:>13} |"
        )
    return "\n".join(lines)


def combine(mode: str, rounds: list[Measured]) -> Measured:
    """One mode over all rounds: mean throughput, median of the rounds' percentiles, total loads."""
    rows = [m.row for m in rounds]
    return Measured(
        Row(
            mode,
            rows[0].clients,
            sum(r.requests for r in rows),
            sum(r.errors for r in rows),
            statistics.fmean(r.throughput for r in rows),
            statistics.median(r.p50 for r in rows),
            statistics.median(r.p90 for r in rows),
            statistics.median(r.p99 for r in rows),
        ),
        sum(m.loads for m in rounds),
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests-per-client", type=int, default=6, help="back-to-back requests per client per round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; each runs every mode once, in turn")
    ap.add_argument("--creators", type=int, default=8, help="creators of the 'creators' mode (all resident)")
    ap.add_argument("--many-creators", type=int, default=24, help="creators of the 'churn' mode")
    ap.add_argument("--resident", type=int, default=8, help="SNAP2CAPTION_MAX_RESIDENT_ADAPTERS")
    ap.add_argument("--model", help="model folder (default: the embedded demo model, built if needed)")
    args = ap.parse_args()

    from mlflow_support import MlflowServer, _free_port
    from snap2caption_service.core.settings import Settings
    from training.build_demo import ensure_demo_model

    model_dir = args.model or str(ensure_demo_model(Settings().data_dir))
    payloads = scene_payloads(64)
    work = Path(tempfile.mkdtemp(prefix="snap2caption-adapter-bench-"))
    server = MlflowServer(work / "mlflow", _free_port())
    (work / "mlflow").mkdir()
    uri = server.start()
    try:
        registered = f"bench-{uuid.uuid4().hex[:8]}"
        print(f"registering {args.many_creators} creator adapters in {uri} ...", file=sys.stderr)
        creators = register_adapters(uri, model_dir, registered, max(args.many_creators, args.creators), work)
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "SNAP2CAPTION_MODEL": model_dir,
            "SNAP2CAPTION_ENV_FILE": "/nonexistent",
            "SNAP2CAPTION_DATA_DIR": str(work / "data"),
            "BENTOML_HOME": str(work / "bentoml"),
            "MLFLOW_TRACKING_URI": uri,
            "SNAP2CAPTION_REGISTERED_MODEL": registered,
            "SNAP2CAPTION_MAX_RESIDENT_ADAPTERS": str(args.resident),
        }
        modes = {
            "merged champion (no creator_id)": [],
            f"{args.creators} creator adapters, all resident": creators[: args.creators],
            f"{args.many_creators} creators, {args.resident} resident": creators[: args.many_creators],
        }
        cmd = [sys.executable, "-m", "bentoml", "serve", "snap2caption_service.service:Snap2Caption", "--port", "3203"]
        per_mode: dict[str, list[Measured]] = {m: [] for m in modes}
        with running_server(cmd, "http://127.0.0.1:3203", env) as url:
            # The batcher's start-up calibration, and each creator's registry lookup and download
            # once (a lookup then repeats every refresh interval, as in production).
            # The churn mode's creators first, so the resident mode starts with its own loaded.
            for creator_ids in reversed(modes.values()):
                load(url, 8, 2, payloads, "warm-up", by_creator(creator_ids))
            for r in range(args.rounds):
                for mode, creator_ids in modes.items():
                    row = measure(url, mode, args.clients, args.requests_per_client, payloads, creator_ids)
                    per_mode[mode].append(row)
                    print(f"  round {r + 1}: {mode}: {row.row.throughput:.1f}/s, {row.loads} loads", file=sys.stderr)
    finally:
        server.stop()
    rows = [combine(m, rs) for m, rs in per_mode.items()]
    champion = rows[0].row.throughput
    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"model {Path(model_dir).name}; {args.clients} clients, {args.rounds} rounds x "
        f"{args.requests_per_client} requests per client per mode\n"
    )
    print(fmt_table(rows, champion))
    mixed = rows[1].row.throughput / champion
    print(f"\nmixed-adapter batches / merged champion: {mixed:.0%} (target >= {TARGET:.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
