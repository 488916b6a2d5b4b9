"""Kafka vs HTTP: the same service, the same images, the same machine, in one run.

    HTTP   N clients post /generate-caption back to back (closed loop) until R requests
           are answered: the service at saturation.
    Kafka  R upload events (CloudEvents, inline images) produced at once to media.uploaded;
           `snap2caption consume` (a real subprocess) captions them through the same service
           and commits media.captioned transactionally; a read_committed reader here times
           when each captioned event becomes visible.

Throughput: HTTP = answers / wall time; Kafka = events / (first produce -> last captioned
event visible to read_committed readers). Upload-to-caption latency per event: the event's
``uploaded_at`` (set when it is produced) to the moment the reader sees its captioned
event; with all R events produced at once this includes the wait in the topic, so it is
compared with HTTP's per-request latency only in the "in service" columns (HTTP: request
latency; Kafka: poll -> caption answer, the consumer's own ``timings.total_ms``).

The phases alternate (HTTP, Kafka, Kafka, HTTP, ...) so that both see the same machine:
this VM's speed drifts by 20-30% between minutes and other work may run beside it. Each
phase also reports the service's mean model batch size (its /metrics histogram), which is
what decides throughput on this model, and where the CPU went, in ms per caption: the
service (API + model worker), the consumer at work (in HTTP phases: the idle consumers),
this process (the HTTP clients; or the upload producer and the read_committed reader) and
the infra/kafka.sh broker (shared: anything else using it counts too). On 2 cores every
one of them takes CPU from the model.

    python benchmarks/kafka_vs_http.py [--events 1000] [--clients 64] [--rounds 2]
        [--variant "name:SNAP2CAPTION_X=1,SNAP2CAPTION_Y=2" ...]

Each --variant adds a second consumer (own topics and group, started once, idle outside its
phases) with those settings, so that consumer settings can be compared in the same run. The
setting CHECKOUT=DIR runs that consumer from another checkout of the code (e.g. an older
commit extracted with `git archive`), to compare versions of the consumer.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import io
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


@dataclass
class Phase:
    path: str  # "HTTP" or "Kafka" (or "Kafka <variant>")
    round: int
    n: int  # answered requests / captioned events
    errors: int
    wall_s: float
    e2e: list[float] = field(default_factory=list)  # upload/request -> caption, s
    service: list[float] = field(default_factory=list)  # request latency / poll -> answer, s
    batch_mean: float = float("nan")
    extra: dict = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.n / self.wall_s


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] if s else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scene_pngs(n: int) -> list[bytes]:
    from training import synthetic

    out = []
    for e in synthetic.make_examples(n, 4242):
        buf = io.BytesIO()
        synthetic.render_scene(e.scene).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


# --- the parts: broker, service, consumer ------------------------------------------------


def broker_pid() -> int | None:
    """The infra/kafka.sh broker's pid (for its CPU time), if this run uses that broker."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return None
    data = Path(
        os.environ.get("KAFKA_DATA_DIR")
        or Path(os.environ.get("SNAP2CAPTION_CACHE") or Path.home() / ".cache/snap2caption") / "kafka-data"
    )
    try:
        return int((data / "kafka.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def ensure_broker() -> str:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    proc = subprocess.run(
        ["bash", str(REPO / "infra" / "kafka.sh"), "start"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=900,
    )
    match = re.search(r"^KAFKA_BOOTSTRAP_SERVERS=(\S+)$", proc.stdout, re.M)
    if proc.returncode != 0 or not match:
        raise SystemExit(f"infra/kafka.sh start failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return match.group(1)


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen, timeout: float = 60) -> None:
    from snap2caption_service.core.process_tree import stop_process_trees

    stop_process_trees([proc], timeout)


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    from snap2caption_service.core.process_tree import wait_until_up

    try:
        wait_until_up(url, proc, timeout, log)
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None


def histogram(metrics_url: str, name: str) -> tuple[float, float]:
    """(sum, count) of a Prometheus histogram, summed over its label sets."""
    text = httpx.get(metrics_url, timeout=10).text
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith(name + "_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith(name + "_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def cpu_seconds(pid: int, descendants: bool = True) -> float:
    """User + system CPU time of a process (and its descendants), in seconds."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)] if descendants else [root]
    except psutil.NoSuchProcess:
        return 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def counter(metrics_url: str, name: str, labels: str = "") -> float:
    text = httpx.get(metrics_url, timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and labels in line and not line.startswith("#")
    )


# --- HTTP at saturation ------------------------------------------------------------------


def http_phase(url: str, clients: int, requests: int, payloads: list[str], rnd: int) -> Phase:
    latencies, errors, lock, next_i = [], [0], threading.Lock(), [0]

    def client(_):
        with httpx.Client(base_url=url, timeout=600) as c:
            while True:
                with lock:
                    i = next_i[0]
                    next_i[0] += 1
                if i >= requests:
                    return
                t0 = time.perf_counter()
                r = c.post("/generate-caption", json={"image": payloads[i % len(payloads)], "tone": "funny"})
                dt = time.perf_counter() - t0
                with lock:
                    if r.status_code == 200:
                        latencies.append(dt)
                    else:
                        errors[0] += 1

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - t0
    # Closed loop: the request *is* the upload, so upload-to-caption = request latency.
    return Phase("HTTP", rnd, len(latencies), errors[0], wall, latencies, latencies)


# --- Kafka end to end --------------------------------------------------------------------


class CaptionedReader(threading.Thread):
    """read_committed reader of media.captioned: when each media_id's captioned event shows up."""

    def __init__(self, bootstrap: str, topic: str):
        super().__init__(daemon=True)
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="latest",
            fetch_max_wait_ms=20,
        )
        parts = self.consumer.partitions_for_topic(topic)
        deadline = time.time() + 30
        while not parts and time.time() < deadline:
            time.sleep(0.2)
            parts = self.consumer.partitions_for_topic(topic)
        self.consumer.assign([TopicPartition(topic, p) for p in sorted(parts)])
        self.consumer.seek_to_end()
        self.seen: dict[str, tuple[float, dict]] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            for records in self.consumer.poll(timeout_ms=100).values():
                now = time.time()
                with self.lock:
                    for r in records:
                        self.seen.setdefault(r.key.decode(), (now, json.loads(r.value)))
        self.consumer.close()

    def wait(self, keys: list[str], timeout: float) -> dict[str, tuple[float, dict]]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                if all(k in self.seen for k in keys):
                    return {k: self.seen[k] for k in keys}
            time.sleep(0.05)
        with self.lock:
            missing = [k for k in keys if k not in self.seen]
        raise SystemExit(f"{len(missing)} of {len(keys)} events not captioned after {timeout}s (e.g. {missing[:3]})")


def upload_records(prefix: str, pngs: list[bytes], n: int):
    from snap2caption_service.core import cloudevents
    from snap2caption_service.core.contracts import EVENT_TYPE_UPLOADED

    inline = [base64.b64encode(p).decode() for p in pngs]
    for i in range(n):
        media_id = f"{prefix}-{i:05d}"
        data = {
            "media_id": media_id,
            "creator_id": "bench",
            "tone": "funny",
            "image": {"inline_base64": inline[i % len(inline)]},
            "uploaded_at": cloudevents.now_rfc3339(),
        }
        value, headers = cloudevents.to_kafka(
            cloudevents.new_event(EVENT_TYPE_UPLOADED, "urn:bench:uploader", data, subject=media_id)
        )
        yield media_id, value, headers


def kafka_phase(
    producer, reader: CaptionedReader, topic: str, events: int, pngs: list[bytes], rnd: int, timeout: float
) -> Phase:
    prefix = f"bench{rnd}-{uuid.uuid4().hex[:6]}"
    # Build the records first, so the timed span is produce -> captioned, not JSON encoding.
    records = list(upload_records(prefix, pngs, events))
    t0 = time.time()
    for media_id, value, headers in records:
        # uploaded_at is stamped when the event is sent, like a platform publishing on upload.
        producer.send(topic, key=media_id.encode(), value=value, headers=headers)
    producer.flush()
    produced = time.time() - t0
    seen = reader.wait([m for m, _, _ in records], timeout)
    last = max(t for t, _ in seen.values())
    e2e, service = [], []
    for media_id, value, _ in records:
        uploaded = datetime.fromisoformat(json.loads(value)["uploaded_at"].replace("Z", "+00:00")).timestamp()
        arrived, data = seen[media_id]
        e2e.append(arrived - uploaded)
        service.append(data["timings"]["total_ms"] / 1000)
    return Phase("Kafka", rnd, len(seen), 0, last - t0, e2e, service, extra={"produce_s": produced})


# --- the run -----------------------------------------------------------------------------


def fmt(rows: list[Phase]) -> str:
    head = (
        f"| {'path':<16} | {'round':>5} | {'events':>6} | {'errors':>6} | {'wall s':>6} | {'captions/s':>10} | "
        f"{'e2e p50 s':>9} | {'e2e p90 s':>9} | {'svc p50 s':>9} | {'svc p90 s':>9} | {'batch':>5} | "
        f"{'CPU ms/caption svc+cons+bench+broker':>36} |"
    )
    lines = [head, "|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|"]
    for r in rows:
        lines.append(
            f"| {r.path:<16} | {r.round:>5} | {r.n:>6} | {r.errors:>6} | {r.wall_s:>6.1f} | "
            f"{r.throughput:>10.2f} | {pct(r.e2e, 0.5):>9.2f} | {pct(r.e2e, 0.9):>9.2f} | "
            f"{pct(r.service, 0.5):>9.2f} | {pct(r.service, 0.9):>9.2f} | {r.batch_mean:>5.1f} | "
            f"{cpu_cell(r):>36} |"
        )
    return "\n".join(lines)


def cpu_cell(r: Phase) -> str:
    c = r.extra.get("cpu_ms_per_caption")
    return f"{c['service']:.0f} + {c['consumer']:.0f} + {c['bench']:.0f} + {c['broker']:.0f}" if c else ""


def loadavg() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


@dataclass
class Pipeline:
    """One `snap2caption consume` process with its own topics and group, and a reader of its output."""

    name: str
    topics: dict
    env: dict
    proc: subprocess.Popen
    log: Path
    metrics_url: str
    reader: CaptionedReader | None = None


def start_pipeline(name: str, bootstrap: str, url: str, base_env: dict, extra: dict, work: Path) -> Pipeline:
    from stream.settings import StreamSettings
    from stream.topics import ensure_topics

    tag = f"bench-{name}-{uuid.uuid4().hex[:8]}"
    topics = {
        "SNAP2CAPTION_TOPIC_UPLOADED": f"{tag}.uploaded",
        "SNAP2CAPTION_TOPIC_CAPTIONED": f"{tag}.captioned",
        "SNAP2CAPTION_TOPIC_DLQ": f"{tag}.uploaded.dlq",
        "SNAP2CAPTION_TOPIC_FEEDBACK": f"{tag}.feedback",
    }
    ensure_topics(
        StreamSettings(kafka_bootstrap_servers=bootstrap, topic_partitions=3),
        [v for k, v in topics.items() if k != "SNAP2CAPTION_TOPIC_FEEDBACK"],
    )
    port = free_port()
    env = {
        **base_env,
        **topics,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "SNAP2CAPTION_SERVICE_URL": url,
        "SNAP2CAPTION_CONSUMER_GROUP": f"{tag}-group",
        "SNAP2CAPTION_INSTANCE_ID": f"bench-{name}-0",
        "SNAP2CAPTION_METRICS_PORT": str(port),
        "SNAP2CAPTION_METRICS_HOST": "127.0.0.1",
        **extra,
    }
    log = work / f"consumer-{name}.log"
    cwd = env.pop("CHECKOUT", None)
    if cwd:  # `python -m` puts the working directory first on sys.path; the rest from this checkout
        env["PYTHONPATH"] = f"{cwd}{os.pathsep}{REPO}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "snap2caption_service", "consume"],
        cwd=cwd or REPO,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    wait_http(metrics_url, proc, log, timeout=120)
    pipe = Pipeline(name, topics, env, proc, log, metrics_url)
    pipe.reader = CaptionedReader(bootstrap, topics["SNAP2CAPTION_TOPIC_CAPTIONED"])
    pipe.reader.start()
    return pipe


def parse_settings(items: list[str]) -> dict[str, str]:
    return dict(kv.strip().split("=", 1) for kv in items if kv.strip())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1000, help="upload events (and HTTP requests) per phase")
    ap.add_argument("--clients", type=int, default=64, help="HTTP clients (closed loop)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of HTTP + Kafka phases, alternating order")
    ap.add_argument(
        "--consumer-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="settings of the main consumer (repeatable; default: its own defaults)",
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:K=V,K=V",
        help="another consumer with these settings, measured in the same rounds (repeatable)",
    )
    ap.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="service settings (repeatable; default: its defaults), e.g. "
        "SNAP2CAPTION_MAX_NEW_TOKENS=8 for short answers and fast batches",
    )
    ap.add_argument("--model", help="model folder (default: the embedded demo model, built if needed)")
    ap.add_argument("--workdir", default="/tmp/snap2caption-bench-kafka")
    ap.add_argument("--json-out", help="also write every phase as JSON")
    args = ap.parse_args()

    from kafka import KafkaProducer

    from snap2caption_service.core.settings import Settings
    from training.build_demo import ensure_demo_model

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model_dir = args.model or str(ensure_demo_model(Settings().data_dir))
    pngs = scene_pngs(64)
    payloads = [base64.b64encode(p).decode() for p in pngs]
    bootstrap = ensure_broker()
    kafka_pid = broker_pid()
    variants = {"Kafka": parse_settings(args.consumer_env)}
    for v in args.variant:
        name, _, kvs = v.partition(":")
        variants[f"Kafka {name}"] = parse_settings(kvs.split(","))

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    base_env = {**os.environ, "PYTHONPATH": str(REPO), "SNAP2CAPTION_ENV_FILE": "/nonexistent"}
    svc_env = {
        **base_env,
        "SNAP2CAPTION_MODEL": model_dir,
        "SNAP2CAPTION_DATA_DIR": str(work / "data"),
        "BENTOML_HOME": str(work / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        **parse_settings(args.service_env),
    }
    svc_log = work / "service.log"
    print(f"broker {bootstrap}; service {url} on {Path(model_dir).name}; logs in {work}", file=sys.stderr)
    svc = start(
        [
            sys.executable,
            "-m",
            "bentoml",
            "serve",
            "snap2caption_service.service:Snap2Caption",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        svc_env,
        svc_log,
    )
    pipes: dict[str, Pipeline] = {}
    producer = None
    rows: list[Phase] = []
    loads = []
    try:
        wait_http(url + "/readyz", svc, svc_log)
        for name, extra in variants.items():
            pipes[name] = start_pipeline(
                name.replace("Kafka", "").strip() or "main", bootstrap, url, base_env, extra, work
            )
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=4 << 20)
        # Warm-up, kept out of the table: BentoML's batcher calibrates on its first ~25 batches,
        # and each consumer joins its group and opens its connections.
        print("warm-up ...", file=sys.stderr)
        http_phase(url, 8, 96, payloads, 0)
        for pipe in pipes.values():
            kafka_phase(producer, pipe.reader, pipe.topics["SNAP2CAPTION_TOPIC_UPLOADED"], 64, pngs, 0, 600)

        paths = ["HTTP", *pipes]
        for rnd in range(1, args.rounds + 1):
            for path in paths if rnd % 2 else paths[::-1]:
                loads.append(loadavg())
                b0 = histogram(url + "/metrics", "snap2caption_model_batch_size")
                # Where the 2 cores go: the service, the consumers, this process (HTTP clients,
                # or the producer and the readers).
                # (consumer: the one at work in a Kafka phase; all of them, idle, in an HTTP phase)
                busy = [pipes[path]] if path in pipes else list(pipes.values())
                cpu0 = {
                    "service": cpu_seconds(svc.pid),
                    "consumer": sum(cpu_seconds(q.proc.pid) for q in busy),
                    "bench": cpu_seconds(os.getpid(), descendants=False),
                    "broker": cpu_seconds(kafka_pid) if kafka_pid else 0.0,
                }
                if path == "HTTP":
                    row = http_phase(url, args.clients, args.events, payloads, rnd)
                else:
                    pipe = pipes[path]
                    t0 = counter(pipe.metrics_url, "snap2caption_consumer_transactions_total", 'outcome="committed"')
                    p0 = counter(pipe.metrics_url, "snap2caption_consumer_stage_seconds_sum", 'stage="produce"')
                    row = kafka_phase(
                        producer, pipe.reader, pipe.topics["SNAP2CAPTION_TOPIC_UPLOADED"], args.events, pngs, rnd, 1800
                    )
                    row.path = path
                    txns = (
                        counter(pipe.metrics_url, "snap2caption_consumer_transactions_total", 'outcome="committed"')
                        - t0
                    )
                    row.extra["transactions"] = txns
                    row.extra["txn_ms"] = round(
                        1000
                        * (counter(pipe.metrics_url, "snap2caption_consumer_stage_seconds_sum", 'stage="produce"') - p0)
                        / max(1.0, txns),
                        1,
                    )
                b1 = histogram(url + "/metrics", "snap2caption_model_batch_size")
                cpu1 = {
                    "service": cpu_seconds(svc.pid),
                    "consumer": sum(cpu_seconds(q.proc.pid) for q in busy),
                    "bench": cpu_seconds(os.getpid(), descendants=False),
                    "broker": cpu_seconds(kafka_pid) if kafka_pid else 0.0,
                }
                row.extra["cpu_ms_per_caption"] = {
                    k: round(1000 * (cpu1[k] - cpu0[k]) / max(1, row.n), 1) for k in cpu0
                }
                row.batch_mean = (b1[0] - b0[0]) / max(1.0, b1[1] - b0[1])
                row.extra["model_calls"] = b1[1] - b0[1]
                rows.append(row)
                print(fmt([row]).splitlines()[-1], f"{row.extra}", file=sys.stderr)
                for pipe in pipes.values():
                    if pipe.proc.poll() is not None:
                        raise SystemExit(f"consumer {pipe.name} exited:\n{pipe.log.read_text()[-3000:]}")
    finally:
        for pipe in pipes.values():
            if pipe.reader is not None:
                pipe.reader.stopping.set()
            stop(pipe.proc)
        if producer is not None:
            producer.close()
        stop(svc)

    consumers = ", ".join(f"{k}: {v or 'defaults'}" for k, v in variants.items())
    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"model {Path(model_dir).name}; service {parse_settings(args.service_env) or 'defaults'} "
        f"(max_batch_size {Settings().max_batch_size}); "
        f"{args.clients} HTTP clients; {args.events} requests/events per phase; 3 partitions; "
        f"consumers: {consumers}; "
        f"load average (1/5/15 min) at each phase start: {'; '.join(loads)}\n"
    )
    print(fmt(rows))
    http = [r for r in rows if r.path == "HTTP"]
    mean_http = statistics.mean(h.throughput for h in http)
    print()
    for path in pipes:
        kafka = [r for r in rows if r.path == path]
        per_round = ", ".join(
            f"{k.throughput / next(h for h in http if h.round == k.round).throughput:.0%}" for k in kafka
        )
        mean_k = statistics.mean(k.throughput for k in kafka)
        print(
            f"{path} / HTTP throughput: {mean_k:.1f} / {mean_http:.1f} captions/s = {mean_k / mean_http:.0%} "
            f"(per round: {per_round}; target >= 90%)"
        )
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps(
                [
                    {
                        **r.__dict__,
                        "e2e": None,
                        "service": None,
                        "throughput": r.throughput,
                        "e2e_p50": pct(r.e2e, 0.5),
                        "e2e_p90": pct(r.e2e, 0.9),
                        "svc_p50": pct(r.service, 0.5),
                        "svc_p90": pct(r.service, 0.9),
                    }
                    for r in rows
                ],
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
