"""Canary policy (decide), thresholds loading, PromQL building and the traffic patches, without
Prometheus. tests/test_canary_cli.py runs the command; tests/test_canary_prometheus.py runs it
against a real Prometheus."""

from __future__ import annotations

import pytest

from conftest import REPO
from snap2caption_service.release.canary import (
    EXIT_HOLD,
    EXIT_PROMOTE,
    EXIT_ROLLBACK,
    RevisionStats,
    Thresholds,
    build_queries,
    check_window,
    decide,
    load_thresholds,
    revision_selector,
    traffic_patch,
)

T = Thresholds()


def stats(rev="snap2caption-00002", requests=500, success=1.0, p95=0.3, cer=0.0):
    return RevisionStats(rev, requests, success, p95, cer, captions=requests)


STABLE = stats("snap2caption-00001", requests=5000, success=0.999, p95=0.3, cer=0.001)


def test_healthy_candidate_is_promoted_with_every_check_listed():
    v = decide(stats(success=0.998, p95=0.32, cer=0.002), STABLE, T)
    assert v.action == "promote" and v.exit_code == EXIT_PROMOTE
    assert len(v.reasons) == 6  # 3 absolute + 3 relative checks, all passed
    assert v.notes == []


def test_too_little_traffic_holds_whatever_the_figures():
    v = decide(stats(requests=99, success=0.0, p95=30.0, cer=1.0), STABLE, T)
    assert v.action == "hold" and v.exit_code == EXIT_HOLD
    assert "99" in v.reasons[0] and "100" in v.reasons[0]


@pytest.mark.parametrize(
    "candidate, expected",
    [
        (stats(success=0.95), "success rate 95.00% vs minimum 99.00%"),
        (stats(p95=2.5), "p95 2.500s vs maximum 2.000s"),
        (stats(cer=0.02), "caption-error rate 2.00% vs maximum 1.00%"),
        # Within the absolute limits but clearly worse than stable:
        (stats(success=0.992), "vs stable 99.90% - 0.50% allowed drop"),
        (stats(p95=0.6), "p95 0.600s vs stable 0.300s x 1.5"),
        (stats(cer=0.008), "vs stable 0.10% + 0.50% allowed increase"),
    ],
)
def test_each_failed_check_rolls_back_and_says_which(candidate, expected):
    v = decide(candidate, STABLE, T)
    assert v.action == "rollback" and v.exit_code == EXIT_ROLLBACK
    assert any(expected in r for r in v.reasons), v.reasons


def test_p95_differences_below_the_slack_are_noise():
    fast_stable = stats("snap2caption-00001", requests=5000, p95=0.02)
    assert decide(stats(p95=0.1), fast_stable, T).action == "promote"  # 5x, but only 80 ms
    assert decide(stats(p95=0.15), fast_stable, T).action == "rollback"  # 7.5x and 130 ms


def test_stable_without_traffic_leaves_absolute_limits_only():
    idle_stable = stats("snap2caption-00001", requests=3, success=1.0, p95=0.01, cer=0.0)
    v = decide(stats(success=0.995, p95=0.5, cer=0.005), idle_stable, T)
    assert v.action == "promote"
    assert len(v.reasons) == 3 and "absolute limits only" in v.notes[0]
    assert decide(stats(success=0.995), None, T).action == "promote"


def test_no_successful_request_rolls_back_without_latency():
    v = decide(stats(success=0.0, p95=None, cer=1.0), STABLE, T)
    assert v.action == "rollback"
    assert any("no latency" in n for n in v.notes)


def test_unknown_caption_error_rate_is_noted_not_failed():
    v = decide(stats(cer=None), STABLE, T)
    assert v.action == "promote" and any("caption-error rate not judged" in n for n in v.notes)


def test_queries_select_the_revision_and_the_public_api_only():
    q = build_queries(revision_selector("snap2caption-00002", "revision", 'namespace="prod"'), "5m")
    assert q["requests"] == (
        'sum(increase(bentoml_service_request_total{runner_name="snap2caption",'
        'endpoint=~"/generate-caption|/generate-caption/upload|/events",'
        'revision="snap2caption-00002",namespace="prod"}[5m]))'
    )
    assert 'http_response_code=~"5.."' in q["server_errors"]
    assert q["p95_seconds"] == (
        "histogram_quantile(0.95, sum by (le) (increase(snap2caption_caption_latency_seconds_bucket"
        '{revision="snap2caption-00002",namespace="prod"}[5m])))'
    )
    assert 'outcome="error"' in q["caption_errors"] and 'outcome=~"ok|error"' in q["captions"]


def test_selector_quotes_values_and_refuses_bad_label_names():
    assert revision_selector('a"b\\c') == 'revision="a\\"b\\\\c"'
    with pytest.raises(ValueError, match="label name"):
        revision_selector("x", "serving.knative.dev/revision")
    for good in ("5m", "90s", "1h30m"):
        assert check_window(good) == good
    for bad in ("5", "five minutes", "5m]"):
        with pytest.raises(ValueError, match="PromQL duration"):
            check_window(bad)


def test_thresholds_file_then_env_then_flags(tmp_path, monkeypatch):
    f = tmp_path / "t.yaml"
    f.write_text("min_requests: 7\nmin-success-rate: 0.9\nmax_p95_seconds: 9\n")
    monkeypatch.setenv("SNAP2CAPTION_CANARY_MIN_SUCCESS_RATE", "0.95")
    monkeypatch.setenv("SNAP2CAPTION_CANARY_MAX_P95_SECONDS", "4")
    t = load_thresholds(f, {"max_p95_seconds": 3.0, "max_p95_ratio": None})
    assert (t.min_requests, t.min_success_rate, t.max_p95_seconds, t.max_p95_ratio) == (7, 0.95, 3.0, 1.5)


def test_bad_thresholds_are_named(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("min_sucess_rate: 0.9\n")
    with pytest.raises(ValueError, match="min_sucess_rate"):
        load_thresholds(f)
    with pytest.raises(ValueError, match="min_success_rate"):
        load_thresholds(None, {"min_success_rate": 1.5})
    with pytest.raises(ValueError, match="cannot read"):
        load_thresholds(tmp_path / "missing.yaml")


def test_shipped_thresholds_file_is_valid():
    t = load_thresholds(REPO / "infra" / "observability" / "canary-thresholds.yaml")
    assert t.model_dump().keys() == Thresholds().model_dump().keys()


DIGEST_IMAGE = "ghcr.io/acme/snap2caption@sha256:" + "0a" * 32


def test_traffic_patch_deploys_steps_and_promotes():
    deploy = traffic_patch("snap2caption", "snap2caption-00006", "snap2caption-canary-7-1", 0, image=DIGEST_IMAGE)
    assert deploy[0] == {"op": "test", "path": "/spec/template/spec/containers/0/name", "value": "snap2caption"}
    assert {"op": "add", "path": "/spec/template/metadata/name", "value": "snap2caption-canary-7-1"} in deploy
    assert deploy[-1]["value"] == [
        {"revisionName": "snap2caption-00006", "percent": 100, "tag": "stable"},
        {"revisionName": "snap2caption-canary-7-1", "percent": 0, "tag": "candidate"},
    ]
    step = traffic_patch("snap2caption", "snap2caption-00006", "snap2caption-canary-7-1", 25)
    assert [op["path"] for op in step] == ["/spec/traffic"]  # a step never touches the template
    assert [t["percent"] for t in step[0]["value"]] == [75, 25]
    promote = traffic_patch("snap2caption", "snap2caption-00006", "snap2caption-canary-7-1", 100, promote=True)
    assert promote[0]["value"] == [
        {"revisionName": "snap2caption-canary-7-1", "percent": 100, "tag": "stable"},
        {"revisionName": "snap2caption-00006", "percent": 0, "tag": "previous"},
    ]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"candidate": "other-00007"}, "must be a DNS label starting with 'snap2caption-'"),
        ({"candidate": "snap2caption-Canary"}, "DNS label"),
        ({"candidate": "snap2caption-00006"}, "the same revision"),
        ({"percent": 101}, "0-100"),
        ({"percent": 50, "promote": True}, "only at 100"),
        ({"image": "ghcr.io/acme/snap2caption:0.2.0"}, "pinned by digest"),
    ],
)
def test_traffic_patch_refuses_what_knative_or_the_rollout_would_regret(kwargs, message):
    args = {
        "service": "snap2caption",
        "stable": "snap2caption-00006",
        "candidate": "snap2caption-canary-7-1",
        "percent": 10,
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        traffic_patch(**args)
