"""Alert rules, the Prometheus config and the Grafana dashboard (infra/observability/), checked with
promtool (Debian's prometheus package, via infra/prometheus.sh) and against a live /metrics scrape
so that neither can silently go stale. tests/test_canary_prometheus.py evaluates the same rules
and dashboard queries on a running Prometheus."""

from __future__ import annotations

import base64
import json
import re
import subprocess

import pytest

from conftest import REPO, png_bytes
from observability_support import consumer_pod, knative_pod, kubernetes_config_as_static

pytestmark = pytest.mark.service

OBS = REPO / "infra" / "observability"
RULES = OBS / "alert-rules.yml"
DASHBOARD = OBS / "grafana-dashboard.json"
METRIC_NAME = re.compile(r"\b((?:snap2caption|bentoml)_[a-zA-Z0-9_]+)\b")

# What the dashboard must show (the list) -> a metric that shows it.
REQUIRED_PANELS = {
    "request rate": "bentoml_service_request_total",
    "latency percentiles": "bentoml_service_request_duration_seconds_bucket",
    "batch sizes": "snap2caption_model_batch_size_bucket",
    "in-flight requests": "bentoml_service_request_in_progress",
    "Kafka lag": "snap2caption_consumer_lag",
    "DLQ rate": "snap2caption_consumer_dlq_total",
    "model version": "snap2caption_model_info",
    "cold starts": "snap2caption_model_load_seconds_count",
}


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """promtool through infra/prometheus.sh, which installs it when missing (a failure fails)."""
    return subprocess.run(
        [str(REPO / "infra" / "prometheus.sh"), "promtool", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=OBS,
    )


def metric_names(promql: str) -> set[str]:
    return set(METRIC_NAME.findall(re.sub(r'"(?:[^"\\]|\\.)*"', '""', promql)))


@pytest.fixture(scope="module")
def live_metrics(service) -> str:
    """A /metrics scrape of the real service after one caption, so every family has samples."""
    with service.client() as c:
        r = c.post("/generate-caption", json={"image": base64.b64encode(png_bytes()).decode()})
        assert r.status_code == 200, r.text
        text = c.get("/metrics").text
    return text


@pytest.fixture(scope="module")
def consumer_metric_names() -> set[str]:
    """Sample names the Kafka consumer exports, from its own metric definitions."""
    from prometheus_client import REGISTRY

    from stream.consumer import consumer_metrics

    consumer_metrics()
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("snap2caption_consumer_"):
            names.update(family.name + s for s in suffixes[family.type])
    assert "snap2caption_consumer_lag" in names and "snap2caption_consumer_dlq_total" in names
    return names


def exported_names(scrape: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in scrape.splitlines() if line and not line.startswith("#")}


def test_alert_rules_pass_promtool_check():
    r = promtool("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_alert_rules_unit_tests_pass():
    r = promtool("test", "rules", "alert-rules.test.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_kubernetes_scrape_config_passes_promtool(tmp_path):
    """promtool checks the relabelling and the rule files it loads; Debian's build lacks
    Kubernetes discovery, so that one block is swapped for static targets (observability_support)."""
    config = kubernetes_config_as_static(
        {
            "snap2caption": [knative_pod("127.0.0.1:3000", "snap2caption-prod", "p-1", "snap2caption-00001")],
            "snap2caption-consumer": [consumer_pod("127.0.0.1:9400", "snap2caption-prod", "c-1")],
        },
        tmp_path / "prometheus.yml",
    )
    r = promtool("check", "config", str(config))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 13 rules found" in r.stdout


def test_live_metrics_pass_promtool_check_metrics(live_metrics):
    r = promtool("check", "metrics", stdin=live_metrics)
    assert r.returncode == 0, f"promtool check metrics:\n{r.stdout}{r.stderr}"
    assert r.stdout.strip() == "" and r.stderr.strip() == "", r.stdout + r.stderr  # no lint warnings either


def test_live_scrape_has_the_new_metrics(live_metrics):
    names = exported_names(live_metrics)
    assert {
        "snap2caption_model_load_seconds_count",
        "bentoml_service_request_in_progress",
        "snap2caption_model_info",
    } <= names
    # Every outcome/source pair is exported from the start (canary increase() needs the zero).
    assert re.search(r'snap2caption_captions_total\{outcome="error",source="events"\} 0', live_metrics)


def dashboard_targets() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] if p["type"] != "row" for t in p["targets"]]


def test_dashboard_is_grafana_json_with_unique_panels():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "snap2caption" and dash["schemaVersion"] >= 30
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "namespace", "revision"} <= variables
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
            assert p["datasource"]["uid"] == "${datasource}", p["title"]


def test_dashboard_covers_what_an_operator_needs():
    used = set().union(*(metric_names(expr) for _, expr in dashboard_targets()))
    missing = {topic: metric for topic, metric in REQUIRED_PANELS.items() if metric not in used}
    assert missing == {}


def test_dashboard_and_rules_use_only_exported_metrics(live_metrics, consumer_metric_names):
    """A renamed or removed metric fails here, not silently on a blank panel or a dead alert."""
    exported = exported_names(live_metrics) | consumer_metric_names
    import yaml

    rules = yaml.safe_load(RULES.read_text())
    exprs = dashboard_targets() + [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]
    stale = {}
    for title, expr in exprs:
        names = metric_names(expr)
        assert names, f"{title}: no snap2caption_/bentoml_ metric in {expr}"
        if names - exported:
            stale[title] = sorted(names - exported)
    assert stale == {}
