"""Canary analysis against a real Prometheus scraping real services under load.

Four `bentoml serve` instances on the demo model, labelled the way Prometheus labels Knative
pods (infra/observability/prometheus-kubernetes.yml): a stable revision, a healthy candidate,
one failing 20 % of requests (SNAP2CAPTION_FAULT_ERROR_RATE) and one 10 s slower
(SNAP2CAPTION_FAULT_LATENCY_MS). Prometheus (infra/prometheus.sh, Debian's package) scrapes
them every second and evaluates the shipped alert rules; `snap2caption canary analyze` must
promote the healthy candidate and roll back the two faulty ones. The same live data checks that
every alert rule evaluates and every dashboard query is valid PromQL that finds its series.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import time

import httpx
import pytest

from conftest import REPO, free_port, png_bytes, start_service, stop_services
from observability_support import knative_pod, kubernetes_config_as_static
from snap2caption_service.release.canary import EXIT_HOLD, EXIT_PROMOTE, EXIT_ROLLBACK

pytestmark = [pytest.mark.service, pytest.mark.prometheus]

OBSERVABILITY = REPO / "infra" / "observability"
NAMESPACE = "canary-test"
# Candidates are named the way the canary workflow names the revision it creates
# (<service>-canary-<run number>-<attempt>), so its steps can run against this lab too.
STABLE = "snap2caption-00001"
GOOD, ERRORS, SLOW = (f"snap2caption-canary-{n}-1" for n in (2, 3, 4))
FAULTS = {
    STABLE: {},
    GOOD: {},
    ERRORS: {"SNAP2CAPTION_FAULT_ERROR_RATE": "0.2"},
    SLOW: {"SNAP2CAPTION_FAULT_LATENCY_MS": "10000"},
}
# Four services share this machine's 2 cores: one torch thread each, not four fighting over two.
# The default generation length (conftest's 24 tokens cut the answer before the alt text,
# which the smoke test requires).
COMMON_ENV = {"OMP_NUM_THREADS": "1", "SNAP2CAPTION_MAX_NEW_TOKENS": "128"}
REQUESTS_PER_REVISION = 60
CLIENTS = {STABLE: 4, GOOD: 4, ERRORS: 4, SLOW: 30}  # the slow one mostly sleeps
# The shipped thresholds, except: fewer requests (a test, not an hour of traffic), and latency
# limits for four services loaded at once on 2 shared CPU cores rather than GPU pods: 8 s, and
# a candidate/stable p95 ratio of 2 (two identical services differ by up to ~1.4x here).
TEST_THRESHOLDS = ["--min-requests", "40", "--max-p95-seconds", "8", "--max-p95-ratio", "2"]


def prometheus_sh(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(REPO / "infra" / "prometheus.sh"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=timeout,
    )


def prometheus_config(targets: dict[str, str]) -> str:
    """Static targets with the labels the Kubernetes config's relabelling produces."""
    jobs = "\n".join(
        f"""      - targets: ["{url.removeprefix("http://")}"]
        labels: {{namespace: {NAMESPACE}, revision: {rev}, pod: {rev}-deployment-0, service: snap2caption}}"""
        for rev, url in targets.items()
    )
    return f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {OBSERVABILITY / "alert-rules.yml"}
scrape_configs:
  - job_name: snap2caption
    static_configs:
{jobs}
"""


def load(url: str, n: int, clients: int) -> dict[int, int]:
    body = {"image": base64.b64encode(png_bytes((40, 160, 60))).decode(), "tone": "casual"}
    codes: dict[int, int] = {}
    with httpx.Client(base_url=url, timeout=120) as c:

        def one(_):
            return c.post("/generate-caption", json=body).status_code

        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            for code in pool.map(one, range(n)):
                codes[code] = codes.get(code, 0) + 1
    return codes


def promql(prom: str, expr: str) -> list:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{expr}\n{body}"
    return body["data"]["result"]


def stop_all(procs: list[subprocess.Popen], grace: float = 10) -> None:
    stop_services(procs, grace)


def wait_for(prom: str, expr: str, expected: float, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = promql(prom, expr)
        if result and float(result[0]["value"][1]) >= expected:
            return
        if time.monotonic() > deadline:
            scrapes = promql(prom, "up or scrape_duration_seconds")
            pytest.fail(
                f"Prometheus: not {what} after {timeout}s ({expr} = {result}); "
                f"up / scrape durations: {[(s['metric'], s['value'][1]) for s in scrapes]}"
            )
        time.sleep(0.5)


@pytest.fixture(scope="module")
def lab(tmp_path_factory, demo_model_dir):
    """Services started, Prometheus scraping them, load sent and scraped."""
    tmp = tmp_path_factory.mktemp("canary")
    t0 = time.monotonic()
    services = {}
    try:
        for rev in FAULTS:
            (tmp / rev).mkdir()
        failures = []
        with concurrent.futures.ThreadPoolExecutor(len(FAULTS)) as pool:
            futures = {
                rev: pool.submit(start_service, tmp / rev, demo_model_dir, {**COMMON_ENV, **env})
                for rev, env in FAULTS.items()
            }
            for rev, fut in futures.items():
                try:
                    services[rev] = fut.result()
                except Exception as exc:  # noqa: BLE001 - reported below, after every start has ended
                    failures.append(f"{rev}: {exc}")
        if failures:
            pytest.fail("could not start the services:\n" + "\n".join(failures))
        started = time.monotonic() - t0

        config = tmp / "prometheus.yml"
        config.write_text(prometheus_config({rev: s.url for rev, s in services.items()}))
        port = free_port()
        prom_env = {"PROMETHEUS_DATA_DIR": str(tmp / "prometheus-data")}
        r = prometheus_sh("start", str(config), str(port), env=prom_env)
        if r.returncode != 0:
            pytest.fail(f"infra/prometheus.sh start failed ({r.returncode}):\n{r.stderr[-4000:]}")
        prom = f"http://127.0.0.1:{port}"
        try:
            # Load only once every target has been scraped: increase() needs a sample from
            # before the first request (a real canary's stable revision always has one).
            wait_for(prom, 'count(up{job="snap2caption"} == 1)', len(services), "every target scraped")
            t1 = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(len(services)) as pool:
                futures = {
                    rev: pool.submit(load, s.url, REQUESTS_PER_REVISION, CLIENTS[rev]) for rev, s in services.items()
                }
                codes = {rev: f.result() for rev, f in futures.items()}
            loaded = time.monotonic() - t1
            # Wait until Prometheus has scraped the last request of every revision.
            wait_for(
                prom,
                'count(sum by (revision) (bentoml_service_request_total{runner_name="snap2caption",'
                f'endpoint="/generate-caption"}}) >= {REQUESTS_PER_REVISION})',
                len(services),
                "every request scraped",
            )
            print(
                f"\ncanary lab: 4 services ready in {started:.1f}s; {4 * REQUESTS_PER_REVISION} requests "
                f"in {loaded:.1f}s; status codes {codes}"
            )
            yield {"prometheus": prom, "codes": codes, "services": services}
        finally:
            prometheus_sh("stop", str(port), env=prom_env, timeout=60)
    finally:
        stop_all([s.proc for s in services.values()])


def analyze(lab, candidate, *extra):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "snap2caption_service",
            "canary",
            "analyze",
            "--prometheus-url",
            lab["prometheus"],
            "--candidate",
            candidate,
            "--stable",
            STABLE,
            "--window",
            "5m",
            "--selector",
            f'namespace="{NAMESPACE}"',
            "--config",
            str(OBSERVABILITY / "canary-thresholds.yaml"),
            "--json",
            *TEST_THRESHOLDS,
            *extra,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("SNAP2CAPTION_")}, "PYTHONPATH": str(REPO)},
    )
    assert r.stdout, f"no output (exit {r.returncode}):\n{r.stderr}"
    return r.returncode, json.loads(r.stdout)


def test_load_reached_every_revision_as_configured(lab):
    codes = lab["codes"]
    for rev in (STABLE, GOOD, SLOW):
        assert codes[rev] == {200: REQUESTS_PER_REVISION}, (rev, codes[rev])
    assert 4 <= codes[ERRORS].get(500, 0) <= 24 and sum(codes[ERRORS].values()) == REQUESTS_PER_REVISION


def test_healthy_candidate_is_promoted(lab):
    rc, out = analyze(lab, GOOD)
    assert rc == EXIT_PROMOTE, out
    assert out["action"] == "promote"
    cand, stable = out["candidate"], out["stable"]
    assert abs(cand["requests"] - REQUESTS_PER_REVISION) <= 5, cand
    assert abs(stable["requests"] - REQUESTS_PER_REVISION) <= 5, stable
    assert cand["success_rate"] == 1.0 and cand["caption_error_rate"] == 0.0
    assert 0 < cand["p95_seconds"] < 8.0
    print(f"\np95: candidate {cand['p95_seconds']:.3f}s, stable {stable['p95_seconds']:.3f}s")


def test_candidate_with_injected_errors_is_rolled_back(lab):
    rc, out = analyze(lab, ERRORS)
    assert rc == EXIT_ROLLBACK, out
    cand = out["candidate"]
    expected = lab["codes"][ERRORS].get(500, 0) / REQUESTS_PER_REVISION
    assert cand["success_rate"] == pytest.approx(1 - expected, abs=0.03)
    assert cand["caption_error_rate"] == pytest.approx(expected, abs=0.03)
    reasons = " | ".join(out["reasons"])
    # (Its p95 may fail too: four services share two cores, and the latency of each varies.)
    assert f"success rate {cand['success_rate'] * 100:.2f}% vs minimum 99.00%" in reasons, reasons
    assert "caption-error rate" in reasons


def test_slow_candidate_is_rolled_back_on_latency(lab):
    rc, out = analyze(lab, SLOW)
    assert rc == EXIT_ROLLBACK, out
    assert out["candidate"]["p95_seconds"] > 10.0
    assert all("p95" in r for r in out["reasons"]) and len(out["reasons"]) == 2  # absolute and vs stable


def test_hold_until_enough_requests(lab):
    rc, out = analyze(lab, GOOD, "--min-requests", "100000")
    assert rc == EXIT_HOLD and out["action"] == "hold", out


def test_unscraped_revision_holds_and_says_why(lab):
    rc, out = analyze(lab, "snap2caption-09999")
    assert rc == EXIT_HOLD, out
    assert any("no bentoml_service_request_total series" in n for n in out["notes"])


def test_human_output_names_the_verdict_and_reasons(lab):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "snap2caption_service",
            "canary",
            "analyze",
            "--prometheus-url",
            lab["prometheus"],
            "--candidate",
            ERRORS,
            "--stable",
            STABLE,
            "--window",
            "5m",
            *TEST_THRESHOLDS,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == EXIT_ROLLBACK, r.stderr
    assert "verdict: ROLLBACK (exit 1)" in r.stdout and "failed: success rate" in r.stdout
    assert ERRORS in r.stdout and STABLE in r.stdout


def test_alert_rules_evaluate_on_live_data(lab):
    prom = lab["prometheus"]
    deadline = time.monotonic() + 20
    while True:
        groups = httpx.get(f"{prom}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules):
            break
        assert time.monotonic() < deadline, "alert rules were not evaluated"
        time.sleep(0.5)
    assert len(rules) >= 10
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    alerts = httpx.get(f"{prom}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    by_name = {}
    for a in alerts:
        by_name.setdefault(a["labels"]["alertname"], set()).add((a["labels"].get("revision"), a["state"]))
    # No `for:` on the fault-injection alert: it fires at once, for the faulty revision only.
    assert by_name.get("Snap2CaptionFaultInjectionOn") == {(ERRORS, "firing")}, by_name
    # 20 % 5xx: pending (the rule waits 5 minutes before firing), and only for that revision.
    assert by_name.get("Snap2CaptionHighErrorRate") == {(ERRORS, "pending")}, by_name


def dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads((OBSERVABILITY / "grafana-dashboard.json").read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]


def test_dashboard_queries_find_live_series(lab):
    """Every panel query is valid PromQL; every service panel finds data (consumer panels need a
    consumer, which this test does not run; their metric names are checked in test_observability)."""
    empty = []
    for title, expr in dashboard_queries():
        q = expr.replace("$namespace", NAMESPACE).replace("$revision", ".*").replace("$__rate_interval", "1m")
        assert "$" not in re.sub(r'"[^"]*"', "", q), f"unreplaced variable in {title}: {q}"
        result = promql(lab["prometheus"], q)
        if not result and "snap2caption_consumer_" not in q:
            empty.append((title, q))
    assert empty == []


def test_kubernetes_relabelling_yields_the_labels_the_analysis_selects(lab, tmp_path):
    """The shipped Kubernetes scrape config, run by a second real Prometheus on pod-like targets:
    a Knative pod is scraped with namespace/pod/revision labels; other pods are dropped."""
    good, stable = (lab["services"][r].url.removeprefix("http://") for r in (GOOD, STABLE))
    config = kubernetes_config_as_static(
        {
            "snap2caption": [
                knative_pod(good, "snap2caption-prod", f"{GOOD}-deployment-7d9f-abcde", GOOD),
                knative_pod(stable, "snap2caption-prod", "not-ours", "x-00001", component="something-else"),
            ]
        },
        tmp_path / "prometheus.yml",
        scrape_interval="1s",
    )
    port = free_port()
    env = {"PROMETHEUS_DATA_DIR": str(tmp_path / "data")}
    r = prometheus_sh("start", str(config), str(port), env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    prom = f"http://127.0.0.1:{port}"
    try:
        wait_for(prom, 'count(snap2caption_model_info{job="snap2caption"})', 1, "the Knative pod scraped", timeout=30)
        [series] = promql(prom, "snap2caption_model_info")
        labels = series["metric"]
        assert {k: labels[k] for k in ("namespace", "pod", "revision", "service")} == {
            "namespace": "snap2caption-prod",
            "pod": f"{GOOD}-deployment-7d9f-abcde",
            "revision": GOOD,
            "service": "snap2caption",
        }
        assert [k for k in labels if k.startswith("__") and k != "__name__"] == []  # no __meta_* left
        targets = httpx.get(f"{prom}/api/v1/targets", timeout=10).json()["data"]
        assert len(targets["activeTargets"]) == 1 and len(targets["droppedTargets"]) == 1
    finally:
        prometheus_sh("stop", str(port), env=env, timeout=60)


def test_smoke_test_script_passes_a_healthy_service_and_fails_a_broken_one(lab):
    """infra/smoke_test.sh is what the canary workflow runs on the candidate's tag URL."""
    script = str(REPO / "infra" / "smoke_test.sh")
    r = subprocess.run([script, lab["services"][GOOD].url], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "smoke_test: PASS" in r.stdout and "/generate-caption/upload:" in r.stdout
    # Something else answering at the URL (Prometheus: /readyz is 404 there).
    r = subprocess.run([script, lab["prometheus"]], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "/readyz answered 404" in r.stderr, r.stderr
    r = subprocess.run([script, f"http://127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "readyz unreachable" in r.stderr, r.stderr


# -- the canary workflow's own steps, run here -------------------------------------------------

CANARY_WORKFLOW = REPO / ".github" / "workflows" / "canary.yml"
ROLLBACK_IF = "(failure() || cancelled()) && steps.deploy.outcome != 'skipped' && env.STABLE != ''"
IMAGE = "ghcr.io/acme/snap2caption@sha256:" + "4f" * 32


def run_canary_workflow(lab, tmp, run_number: int, steps: str = "10 25 50 100", max_retries: str = "6"):
    """Run the `canary` job's shell steps in order, the way GitHub runs them (bash -eo pipefail,
    GITHUB_ENV carried between steps, the rollback step only after a failure), against this
    lab's Prometheus and services. kubectl is tests/fake_knative_kubectl.py: the real kubectl
    applies every patch to the production overlay's Knative Service held in a file."""
    import yaml

    from test_k8s_manifests import K8S, kustomize_build

    job = yaml.safe_load(CANARY_WORKFLOW.read_text())["jobs"]["canary"]
    real_kubectl = shutil.which("kubectl")
    assert real_kubectl, "kubectl is needed to apply the workflow's JSON patches (kubectl patch --local)"
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    (bin_dir / "kubectl").write_text(
        f'#!/bin/sh\nexec "{sys.executable}" "{REPO / "tests" / "fake_knative_kubectl.py"}" "$@"\n'
    )
    (bin_dir / "kubectl").chmod(0o755)
    # A wrapper, not a symlink: a venv's python finds its packages only when run by its own path.
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    [ksvc] = [
        d
        for d in kustomize_build(K8S / "overlays" / "production")
        if d["kind"] == "Service" and d["apiVersion"] == "serving.knative.dev/v1"
    ]
    ksvc["metadata"]["namespace"] = NAMESPACE
    state = tmp / "ksvc.json"
    state.write_text(json.dumps(ksvc))
    for name in ("github_env", "summary", "kubectl.log"):
        (tmp / name).write_text("")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SNAP2CAPTION_", "GITHUB_"))},
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
        # The job's env block, with its expressions evaluated for this run:
        "KSVC": "snap2caption",
        "NAMESPACE": NAMESPACE,
        "IMAGE": IMAGE,
        "STEPS": steps,
        "WAIT_SECONDS": "0",
        "MAX_RETRIES": max_retries,
        "RETRY_SECONDS": "0",
        "SNAP2CAPTION_PROMETHEUS_URL": lab["prometheus"],
        "SNAP2CAPTION_PROMETHEUS_TOKEN": "",
        "SNAP2CAPTION_API_KEY": "",
        "SNAP2CAPTION_CANARY_WINDOW": "5m",
        "SNAP2CAPTION_CANARY_CONFIG": job["env"]["SNAP2CAPTION_CANARY_CONFIG"],
        # Step-level env (secrets), and GitHub's own:
        "KUBE_CONFIG": "apiVersion: v1\nkind: Config\n",
        "ENVIRONMENT": "production",
        "GITHUB_ENV": str(tmp / "github_env"),
        "GITHUB_STEP_SUMMARY": str(tmp / "summary"),
        "RUNNER_TEMP": str(tmp),
        "GITHUB_RUN_NUMBER": str(run_number),
        "GITHUB_RUN_ATTEMPT": "1",
        # The lab's thresholds on top of the shipped file (env beats the file):
        "SNAP2CAPTION_CANARY_MIN_REQUESTS": "40",
        "SNAP2CAPTION_CANARY_MAX_P95_SECONDS": "8",
        "SNAP2CAPTION_CANARY_MAX_P95_RATIO": "2",
        # The fake cluster: the candidate's tag URL is the healthy service (the smoke test must
        # pass for every scenario; the analysis judges the candidate's own metrics).
        "REAL_KUBECTL": real_kubectl,
        "FAKE_KSVC_STATE": str(state),
        "FAKE_KUBECTL_LOG": str(tmp / "kubectl.log"),
        "FAKE_INITIAL_REVISION": STABLE,
        "FAKE_TAG_URLS": json.dumps({"candidate": lab["services"][GOOD].url}),
    }
    assert set(job["env"]) <= set(env), f"job env not provided by the test: {set(job['env']) - set(env)}"
    ran, failed = [], False
    for step in job["steps"]:
        if "run" not in step or step["name"].startswith("Install"):
            continue  # actions, and pip install of what this venv already has
        assert "${{" not in step["run"], f"{step['name']}: inputs reach scripts through env, never inline"
        if "if" in step:
            assert step["if"] == ROLLBACK_IF, step["if"]
            deployed = any(name.startswith("Deploy") for name, _, _ in ran)
            if not (failed and deployed):
                continue
        elif failed:
            continue
        for line in (tmp / "github_env").read_text().splitlines():
            key, _, value = line.partition("=")
            env[key] = value
        r = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        ran.append((step["name"], r.returncode, r.stdout + r.stderr))
        failed = failed or r.returncode != 0
    patches = [
        json.loads(c[c.index("-p") + 1])
        for c in map(json.loads, (tmp / "kubectl.log").read_text().splitlines())
        if c[2] == "patch"
    ]
    return ran, json.loads(state.read_text()), (tmp / "summary").read_text(), patches


def _percents(patches):
    return [
        [(t["revisionName"], t["percent"], t["tag"]) for op in p if op["path"] == "/spec/traffic" for t in op["value"]]
        for p in patches
    ]


def test_canary_workflow_promotes_the_healthy_candidate(lab, tmp_path):
    from test_k8s_manifests import validate_object

    ran, ksvc, summary, patches = run_canary_workflow(lab, tmp_path, run_number=2)
    assert [(name, rc) for name, rc, _ in ran if rc != 0] == [], "\n\n".join(out for _, _, out in ran)
    assert [name for name, _, _ in ran][-1] == "Promote the candidate to stable"  # no rollback ran
    assert "smoke_test: PASS" in dict((n, o) for n, _, o in ran)["Smoke-test the candidate on its tag URL"]
    assert _percents(patches) == [
        [(STABLE, 100 - p, "stable"), (GOOD, p, "candidate")] for p in (0, 10, 25, 50, 100)
    ] + [[(GOOD, 100, "stable"), (STABLE, 0, "previous")]]
    assert ksvc["spec"]["template"]["metadata"]["name"] == GOOD
    assert ksvc["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE
    assert validate_object(ksvc) == []  # still a valid Knative Service after every patch
    assert summary.count(" %: promote\n") == 4 and f"promoted {GOOD}" in summary


def test_canary_workflow_rolls_back_a_failing_candidate_and_fails(lab, tmp_path):
    ran, ksvc, summary, patches = run_canary_workflow(lab, tmp_path, run_number=3)
    results = {name: (rc, out) for name, rc, out in ran}
    rc, out = results["Shift traffic step by step, with analysis at each step"]
    assert rc == 1 and "verdict: ROLLBACK" in out and "10 %: analysis says roll back" in out, out
    assert results["Roll back to the stable revision"][0] == 1  # the job fails
    assert "Promote the candidate to stable" not in results
    assert _percents(patches)[-2:] == [
        [(STABLE, 90, "stable"), (ERRORS, 10, "candidate")],
        [(STABLE, 100, "stable"), (ERRORS, 0, "candidate")],
    ]
    assert ksvc["spec"]["traffic"][0] == {"revisionName": STABLE, "percent": 100, "tag": "stable"}
    assert "ROLLED BACK" in summary


def test_canary_workflow_gives_up_on_a_candidate_without_traffic(lab, tmp_path):
    """Run 9's revision is never scraped: hold (exit 3) until the retries run out, then roll back."""
    ran, ksvc, summary, _ = run_canary_workflow(lab, tmp_path, run_number=9, steps="10 100", max_retries="2")
    results = {name: (rc, out) for name, rc, out in ran}
    rc, out = results["Shift traffic step by step, with analysis at each step"]
    assert rc == 1 and out.count("verdict: HOLD") == 3 and "no verdict after 2 retries" in out, out
    assert results["Roll back to the stable revision"][0] == 1
    assert ksvc["spec"]["traffic"][0]["revisionName"] == STABLE and ksvc["spec"]["traffic"][0]["percent"] == 100
