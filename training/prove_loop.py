"""Proof that the feedback loop works, end to end, on real services.

    python -m training.prove_loop [--events 240] [--keep]      (make prove-loop)

1. The service (demo model) captions ``events`` synthetic photos over HTTP; it archives each
   image and result.
2. Creators "edit every caption" the same way: ``Keep it simple: `` + the shown caption, sent as
   thumbs-down feedback over HTTP -> the caption.feedback topic (real Kafka).
3. ``retrain``: snapshot the topic, LoRA fine-tune, evaluate against the current champion
   (none yet: the demo model), gate, register in MLflow (real tracking server).
4. On held-out scenes the new champion must start its captions with the phrase in >= 80%
   of outputs while colour+shape accuracy drops by at most 2 points; the service restarted
   with MLflow configured must serve the champion.
5. A deliberately degraded round (edited captions shuffled between photos) must be refused
   by the gate, leaving the champion where it was.

``run_proof`` is what tests/test_retrain_loop.py calls with the test suite's services; the
command line starts Kafka, MLflow and the service itself (infra/kafka.sh, infra/mlflow.sh).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import os
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from training import synthetic

log = logging.getLogger(__name__)

# Words the demo model already writes (its tokenizer was trained on its own captions): a phrase of
# unseen word pieces such as "Studio pick:" also gets adopted, but needs 50% more steps and cost
# 1.7-3 points of colour+shape accuracy in our runs; this one 0.7.
PHRASE = "Keep it simple: "
FEEDBACK_SEED, HELD_OUT_SEED = 5150, 31337
REPO = Path(__file__).resolve().parent.parent


@dataclass
class ProofReport:
    events: int
    retrain: dict
    adoption: float
    accuracy_before: float
    accuracy_after: float
    degraded: dict
    champion_after_degraded: str | None
    served_version: str = ""
    served_caption: str = ""
    timings_s: dict = field(default_factory=dict)

    @property
    def accuracy_drop(self) -> float:
        # Rounded: both are shares of the same held-out scenes, and 0.96 - 0.94 is 0.020000000000000018
        # in floating point, which failed a "<= 0.02" bound it meets exactly (one scene in fifty).
        return round(self.accuracy_before - self.accuracy_after, 6)

    def passed(self) -> bool:
        return (
            self.retrain.get("status") == "promoted"
            and self.adoption >= 0.80
            and self.accuracy_drop <= 0.02
            and self.degraded.get("status") == "held"
            and self.champion_after_degraded == self.retrain.get("version")
            and self.served_caption.startswith(PHRASE.strip())
        )

    def table(self) -> str:
        r, d = self.retrain, self.degraded
        rows = [
            ("feedback events (edits to one phrasing)", f"{self.events}", ">= 200"),
            ("retrain: gate", f"{r.get('status')} (v{r.get('version')})", "promoted"),
            (
                "retrain: CIDEr-D candidate / champion",
                f"{r['candidate'].get('cider_d', 0):.3f} / {r['champion'].get('cider_d', 0):.3f}",
                "",
            ),
            ("retrain: train samples/s", f"{r.get('samples_per_s')}", ""),
            ("retrain: wall time (snapshot+train+eval+gate)", f"{r['timings_s']['total']:.0f} s", "<= 600 s"),
            ("held-out captions adopting the phrase", f"{self.adoption:.1%}", ">= 80%"),
            (
                "colour+shape accuracy before -> after",
                f"{self.accuracy_before:.1%} -> {self.accuracy_after:.1%}",
                "drop <= 2 pts",
            ),
            ("service serves", self.served_version, "the champion"),
            ("degraded round (shuffled edits): gate", f"{d.get('status')} (v{d.get('version')})", "held"),
            ("degraded round: reason", d.get("reason", "")[:70], ""),
            ("champion after the degraded round", f"v{self.champion_after_degraded}", f"v{r.get('version')}"),
        ]
        width = max(len(a) for a, _, _ in rows)
        lines = [f"{a:<{width}}  {b:<34} {c}" for a, b, c in rows]
        lines.append("PASS" if self.passed() else "FAIL")
        return "\n".join(lines)


def _png_b64(img) -> str:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def caption_and_correct(service_url: str, n: int, seed: int, shuffle: bool = False, headers: dict | None = None) -> int:
    """Caption n scenes through the service and send one edit per caption; returns feedback sent."""
    examples = synthetic.make_examples(n, seed)

    def caption(ex):
        body = {"image": _png_b64(synthetic.render_scene(ex.scene)), "tone": ex.tone, "audience": ex.audience}
        r = httpx.post(f"{service_url}/generate-caption", json=body, headers=headers, timeout=300)
        r.raise_for_status()
        return r.json()

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(caption, examples))
    edits = [PHRASE + r["caption"].removeprefix(PHRASE) for r in results]
    if shuffle:
        # The degraded round: each photo gets another photo's caption (wrong colour and shape).
        random.Random(seed).shuffle(edits)

    def send(pair):
        result, edit = pair
        r = httpx.post(
            f"{service_url}/feedback",
            headers=headers,
            timeout=60,
            json={
                "request_id": result["request_id"],
                "rating": "down",
                "edited_caption": edit,
                "reason": "house style" if not shuffle else "degraded drill",
            },
        )
        r.raise_for_status()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(send, zip(results, edits)))
    return len(results)


def wait_for_topic(snapshots: str, bootstrap: str, topic: str, at_least: int, timeout: float = 120) -> None:
    from training.feedback_snapshot import pending_events

    deadline = time.monotonic() + timeout
    while (waiting := pending_events(snapshots, bootstrap, topic)) < at_least:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {waiting} of {at_least} feedback events reached {topic}")
        time.sleep(1)


def held_out_check(adapter_dir: Path | None, base_dir: str, n: int = 300) -> tuple[float, float]:
    """(phrase adoption, colour+shape accuracy) on held-out scenes; adapter None = the base model."""
    from snap2caption_service.core.captioner import Captioner, CaptionJob
    from training.evaluate_demo import first_color_and_shape, first_pair

    captioner = Captioner.load(base_dir, str(adapter_dir) if adapter_dir else "")
    examples = synthetic.make_examples(n, HELD_OUT_SEED)
    adopted = correct = 0
    for start in range(0, n, 50):
        part = examples[start : start + 50]
        jobs = [CaptionJob(synthetic.render_scene(e.scene), e.tone, e.audience, 10, 1) for e in part]
        for ex, cands in zip(part, captioner.caption_batch(jobs)):
            best, main = cands[0], (ex.scene.main.color, ex.scene.main.shape)
            adopted += best.caption.startswith(PHRASE.strip())
            correct += first_color_and_shape(best.caption) == main and first_pair(best.alt_text) == main
    return adopted / n, correct / n


def run_proof(
    service_url: str,
    bootstrap: str,
    topic: str,
    workdir: Path,
    events: int = 240,
    restart_service=None,
    headers: dict | None = None,
) -> ProofReport:
    """The loop, on services that are already running. Environment: MLFLOW_TRACKING_URI,
    KAFKA_BOOTSTRAP_SERVERS, SNAP2CAPTION_TOPIC_FEEDBACK, SNAP2CAPTION_ARCHIVE (the service's).

    ``restart_service()`` -> new base URL: restarts the service with MLflow configured, to
    check it serves the champion (skipped when None).
    """
    from snap2caption_service.core.settings import get_settings
    from training.build_demo import ensure_demo_model
    from training.registry import Registry
    from training.retrain import RetrainSettings, retrain

    timings: dict[str, float] = {}
    snapshots = str(workdir / "snapshots")
    config = str(REPO / "training" / "configs" / "demo-retrain.yaml")
    rs = RetrainSettings(
        config=config,
        snapshots=snapshots,
        archive=os.environ["SNAP2CAPTION_ARCHIVE"],
        min_new_events=events,
        output_dir=str(workdir / "run-1"),
    )

    t0 = time.perf_counter()
    sent = caption_and_correct(service_url, events, FEEDBACK_SEED, headers=headers)
    wait_for_topic(snapshots, bootstrap, topic, sent)
    timings["caption_and_feedback"] = time.perf_counter() - t0

    report = retrain(rs)
    log.info("retrain: %s", json.dumps(report))
    if report.get("status") != "promoted":
        raise AssertionError(f"the corrective retrain was not promoted: {json.dumps(report, indent=2)}")

    t1 = time.perf_counter()
    base_dir = str(ensure_demo_model(get_settings().data_dir))
    registry = Registry()
    champion_dir = registry.download("champion", workdir / "champion-check")
    adoption, acc_after = held_out_check(champion_dir, base_dir)
    _, acc_before = held_out_check(None, base_dir)
    timings["held_out_check"] = time.perf_counter() - t1

    served_version = served_caption = ""
    if restart_service is not None:
        url = restart_service()
        ex = synthetic.make_examples(1, HELD_OUT_SEED + 1)[0]
        r = httpx.post(
            f"{url}/generate-caption",
            headers=headers,
            timeout=120,
            json={"image": _png_b64(synthetic.render_scene(ex.scene)), "tone": ex.tone},
        )
        r.raise_for_status()
        served_version, served_caption = r.json()["model_version"], r.json()["caption"]
        service_url = url

    t2 = time.perf_counter()
    sent2 = caption_and_correct(service_url, events, FEEDBACK_SEED + 1, shuffle=True, headers=headers)
    wait_for_topic(snapshots, bootstrap, topic, sent2)
    degraded = retrain(
        RetrainSettings(
            config=config,
            snapshots=snapshots,
            archive=rs.archive,
            min_new_events=sent2,
            output_dir=str(workdir / "run-2"),
        )
    )
    timings["degraded_round"] = time.perf_counter() - t2
    champion = registry.champion()
    return ProofReport(
        events=sent,
        retrain=report,
        adoption=adoption,
        accuracy_before=acc_before,
        accuracy_after=acc_after,
        degraded=degraded,
        champion_after_degraded=champion.version if champion else None,
        served_version=served_version,
        served_caption=served_caption,
        timings_s={k: round(v, 1) for k, v in timings.items()},
    )


# --- the command line: start everything, run, stop --------------------------------------------


def _start(script: str, pattern: str) -> str:
    out = subprocess.run(
        ["bash", str(REPO / "infra" / script), "start"],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    for line in out.stdout.splitlines():
        if line.startswith(pattern + "="):
            return line.split("=", 1)[1].strip()
    raise RuntimeError(f"infra/{script} start did not print {pattern}=...\n{out.stdout}\n{out.stderr}")


def _serve(port: int, env: dict, log_path: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "snap2caption_service", "serve", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    from snap2caption_service.core.process_tree import wait_until_up

    wait_until_up(f"http://127.0.0.1:{port}/readyz", proc, 300, log_path)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    from snap2caption_service.core.process_tree import stop_process_trees

    stop_process_trees([proc], 30)


def isolated_proof_env(name: str, workdir: Path | None) -> Path:
    """Start Kafka and MLflow (the project's scripts) and point this process at a feedback topic
    and registered model of the proof's own, so a proof never touches a real champion; returns
    its work folder (``workdir``, else a fresh one under <data_dir>/<name>)."""
    from snap2caption_service.core.settings import get_settings

    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = workdir or get_settings().data_dir / name / stamp
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": _start("kafka.sh", "KAFKA_BOOTSTRAP_SERVERS"),
            "MLFLOW_TRACKING_URI": _start("mlflow.sh", "MLFLOW_TRACKING_URI"),
            "SNAP2CAPTION_TOPIC_FEEDBACK": f"{name}-{stamp}.feedback",
            "SNAP2CAPTION_REGISTERED_MODEL": f"snap2caption-{name}-{stamp}",
        }
    )
    get_settings.cache_clear()
    return workdir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.prove_loop", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--events", type=int, default=240, help="feedback events per round (>= 200)")
    p.add_argument("--port", type=int, default=3077)
    p.add_argument("--workdir", type=Path, help="default: a fresh folder under <data_dir>/prove-loop")
    p.add_argument("--json-out", type=Path, help="also write the report as JSON")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per caption and feedback otherwise

    workdir = isolated_proof_env("prove-loop", args.workdir)
    os.environ.update({"SNAP2CAPTION_ARCHIVE": str(workdir / "archive"), "PYTHONPATH": str(REPO)})
    from snap2caption_service.core.settings import get_settings

    get_settings.cache_clear()
    service_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = _serve(args.port, service_env, workdir / "service.log")

    def restart():
        nonlocal proc
        _stop(proc)
        proc = _serve(args.port, dict(os.environ), workdir / "service-champion.log")
        return f"http://127.0.0.1:{args.port}"

    try:
        report = run_proof(
            f"http://127.0.0.1:{args.port}",
            os.environ["KAFKA_BOOTSTRAP_SERVERS"],
            os.environ["SNAP2CAPTION_TOPIC_FEEDBACK"],
            workdir,
            args.events,
            restart,
        )
    finally:
        _stop(proc)
    print(report.table())
    if args.json_out:
        args.json_out.write_text(json.dumps({**asdict(report), "passed": report.passed()}, indent=2))
    return 0 if report.passed() else 1


if __name__ == "__main__":
    sys.exit(main())
