"""The Kubernetes scrape config (infra/observability/prometheus-kubernetes.yml) made runnable here.

Debian's Prometheus is built without Kubernetes service discovery, and there is no cluster
anyway. Each job's ``kubernetes_sd_configs`` is replaced by static targets that carry the
``__meta_kubernetes_*`` labels Kubernetes discovery would attach to a pod; everything else
(the keep filters and the relabelling that yields namespace / pod / revision) runs unchanged.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from conftest import REPO

KUBERNETES_CONFIG = REPO / "infra" / "observability" / "prometheus-kubernetes.yml"


def knative_pod(
    address: str, namespace: str, pod: str, revision: str, component: str = "caption-service", port: int | None = None
) -> dict:
    """The labels Kubernetes SD attaches to a Knative revision's pod (labels and annotations
    as in k8s/base/knative-service.yaml)."""
    return {
        "targets": [address],
        "labels": {
            "__meta_kubernetes_namespace": namespace,
            "__meta_kubernetes_pod_name": pod,
            "__meta_kubernetes_pod_label_app_kubernetes_io_component": component,
            "__meta_kubernetes_pod_label_serving_knative_dev_revision": revision,
            "__meta_kubernetes_pod_label_serving_knative_dev_service": "snap2caption",
            "__meta_kubernetes_pod_annotation_prometheus_io_scrape": "true",
            "__meta_kubernetes_pod_annotation_prometheus_io_port": str(port or address.rsplit(":", 1)[1]),
            "__meta_kubernetes_pod_annotation_prometheus_io_path": "/metrics",
        },
    }


def consumer_pod(address: str, namespace: str, pod: str) -> dict:
    return {
        "targets": [address],
        "labels": {
            "__meta_kubernetes_namespace": namespace,
            "__meta_kubernetes_pod_name": pod,
            "__meta_kubernetes_pod_label_app_kubernetes_io_name": "snap2caption-consumer",
            "__meta_kubernetes_pod_annotation_prometheus_io_port": address.rsplit(":", 1)[1],
        },
    }


def kubernetes_config_as_static(targets: dict[str, list[dict]], out: Path, scrape_interval: str | None = None) -> Path:
    """Write the shipped config with each job's Kubernetes discovery replaced by ``targets[job]``."""
    config = yaml.safe_load(KUBERNETES_CONFIG.read_text())
    config["rule_files"] = [str(KUBERNETES_CONFIG.parent / f) for f in config.get("rule_files", [])]
    if scrape_interval:
        config["global"].update(scrape_interval=scrape_interval, evaluation_interval=scrape_interval)
    for job in config["scrape_configs"]:
        assert "kubernetes_sd_configs" in job, job["job_name"]
        del job["kubernetes_sd_configs"]
        job["static_configs"] = targets.get(job["job_name"], [])
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out
