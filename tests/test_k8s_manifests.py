"""The Kubernetes manifests in k8s/: they render, they validate, and they say what we mean.

What this checks, and against what:
- Rendering: `kustomize build` (pinned by infra/install_k8s_tools.sh, which this test runs
  when the binary is missing; a failed install fails the test) of k8s/base, both overlays,
  and staging with the consumer-ingest component.
- Knative objects (Service, KafkaSource, KafkaSink) against the openAPIV3Schema of the
  served version in shared/schemas/knative/*.yaml (the CRDs as the Knative projects publish
  them). The structural OpenAPI schema is turned into JSON Schema the way the API server
  reads it with strict field validation (kubectl's default): unknown fields are errors
  unless the schema says x-kubernetes-preserve-unknown-fields; int-or-string and nullable
  are honoured. metadata is checked against Kubernetes' own ObjectMeta schema. CEL rules
  (x-kubernetes-validations) and Knative's admission webhook are not run.
- Sequence (flows.knative.dev/v1): no CRD in shared/schemas, so its shape is checked here
  and its destinations and delivery specs are validated against the Destination and
  DeliverySpec schemas of the KafkaSource CRD (the same Knative duck types).
- Core objects (Namespace, ConfigMap, Secret, Service, StatefulSet, CronJob, NetworkPolicy) against the
  Kubernetes JSON schemas shipped by the PyPI package kubernetes-validate (generated from
  the upstream OpenAPI spec; "strict" flavour, which rejects unknown fields), for
  Kubernetes K8S_VERSION.
- Then the requirements: scale to zero, GPU, probes, autoscaling consistent with the
  batcher, the event path and its dead-letter sink, the consumer and the CronJob, the
  placeholder Secrets, and the overlays differing where they are meant to.
- And the deployment defaults (k8s/README.md "Pod security", "NetworkPolicy"): every pod
  non-root with a read-only root filesystem, a volume wherever it writes, no capabilities,
  seccomp RuntimeDefault, no service-account token; a NetworkPolicy that admits only the
  Knative data plane (and Prometheus) to the service's pods; the consumer a StatefulSet whose
  instance id is its pod name, with a memory limit that holds its in-flight window; MLflow
  credentials from a Secret.
- Negative tests show each validator rejects a broken object.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import referencing
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
INSTALL_SCRIPT = REPO / "infra" / "install_k8s_tools.sh"
CACHE = Path(os.environ.get("SNAP2CAPTION_CACHE", Path.home() / ".cache" / "snap2caption"))


def _pinned(var: str) -> str:
    """A version pinned in infra/install_k8s_tools.sh (the one place it is written)."""
    m = re.search(rf'^{var}="\$\{{{var}:-([^}}]+)\}}"$', INSTALL_SCRIPT.read_text(), re.M)
    assert m, f"{var} not found in {INSTALL_SCRIPT}"
    return os.environ.get(var, m.group(1))


KUSTOMIZE_VERSION = _pinned("KUSTOMIZE_VERSION")
KUBERNETES_VALIDATE_VERSION = _pinned("KUBERNETES_VALIDATE_VERSION")
# Kubernetes release whose API the core objects are validated against (recent Knative
# Serving releases need >= 1.31).
K8S_VERSION = "1.33"

OVERLAYS = {"staging": "snap2caption-staging", "production": "snap2caption-prod"}

# Knative's config-defaults max-revision-timeout-seconds, unless a cluster raises it.
KNATIVE_MAX_REVISION_TIMEOUT_S = 600
# Time to download and load a 7B LLaVA checkpoint and the LoRA adapter.
MODEL_LOAD_BUDGET_S = 600

SERVICE_ENV = {
    "SNAP2CAPTION_MODEL",
    "SNAP2CAPTION_ADAPTER",
    "SNAP2CAPTION_DATA_DIR",
    "SNAP2CAPTION_API_KEYS",
    "SNAP2CAPTION_MAX_BATCH_SIZE",
    "SNAP2CAPTION_MAX_LATENCY_MS",
    "SNAP2CAPTION_DEVICE",
    "KAFKA_BOOTSTRAP_SERVERS",
    "SNAP2CAPTION_TOPIC_FEEDBACK",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "SNAP2CAPTION_S3_BUCKETS",
    "MLFLOW_TRACKING_URI",
    "SNAP2CAPTION_REGISTERED_MODEL",
    "SNAP2CAPTION_ARCHIVE",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
}
CONSUMER_ENV = {
    "KAFKA_BOOTSTRAP_SERVERS",
    "SNAP2CAPTION_TOPIC_UPLOADED",
    "SNAP2CAPTION_TOPIC_CAPTIONED",
    "SNAP2CAPTION_TOPIC_DLQ",
    "SNAP2CAPTION_SERVICE_URL",
    "SNAP2CAPTION_API_KEYS",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "SNAP2CAPTION_S3_BUCKETS",
}
RETRAIN_ENV = {
    "SNAP2CAPTION_MODEL",
    "SNAP2CAPTION_ADAPTER",
    "SNAP2CAPTION_DATA_DIR",
    "SNAP2CAPTION_DEVICE",
    "KAFKA_BOOTSTRAP_SERVERS",
    "SNAP2CAPTION_TOPIC_FEEDBACK",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "MLFLOW_TRACKING_URI",
    "SNAP2CAPTION_REGISTERED_MODEL",
    "SNAP2CAPTION_ARCHIVE",
    "SNAP2CAPTION_SNAPSHOTS",
    "SNAP2CAPTION_RETRAIN_CONFIG",
    "SNAP2CAPTION_RETRAIN_MIN_EVENTS",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
}
ALL_ENV = SERVICE_ENV | CONSUMER_ENV | RETRAIN_ENV
MLFLOW_CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
SECRET_ENV = {"SNAP2CAPTION_API_KEYS", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", *MLFLOW_CREDENTIALS}

CORE_KINDS = {
    ("v1", "Namespace"),
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("v1", "Service"),
    ("apps/v1", "StatefulSet"),
    ("batch/v1", "CronJob"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
}
KNATIVE_CRD_KINDS = {
    ("serving.knative.dev", "Service"),
    ("sources.knative.dev", "KafkaSource"),
    ("eventing.knative.dev", "KafkaSink"),
}
SEQUENCE = ("flows.knative.dev/v1", "Sequence")

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
ISO8601_DURATION = re.compile(r"^P(?!$)(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?$")


# --------------------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------------------


def _run_install_script() -> dict[str, str]:
    """Run infra/install_k8s_tools.sh; a failure fails the calling test (never a skip)."""
    env = dict(os.environ, PYTHON=sys.executable, SNAP2CAPTION_CACHE=str(CACHE))
    proc = subprocess.run(["bash", str(INSTALL_SCRIPT)], env=env, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        pytest.fail(f"infra/install_k8s_tools.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


@functools.cache
def kustomize_bin() -> str:
    """KUSTOMIZE from the environment, else the pinned build in the cache, else install it."""
    if os.environ.get("KUSTOMIZE"):
        return os.environ["KUSTOMIZE"]
    pinned = CACHE / "bin" / f"kustomize-{KUSTOMIZE_VERSION}"
    if not os.access(pinned, os.X_OK):
        paths = _run_install_script()
        pinned = Path(paths["KUSTOMIZE"])
    return str(pinned)


@functools.cache
def kubernetes_validate():
    """The kubernetes_validate module: importable already, or from the script's folder."""
    pydir = CACHE / "py" / f"kubernetes-validate-{KUBERNETES_VALIDATE_VERSION}"
    if not (pydir / ".complete").exists():
        pydir = Path(_run_install_script()["KUBERNETES_VALIDATE_PATH"])
    # Appended, not prepended: packages the running environment already has win.
    if str(pydir) not in sys.path:
        sys.path.append(str(pydir))
    import kubernetes_validate as kv  # noqa: PLC0415

    return kv


def kustomize_build(path: Path) -> list[dict]:
    proc = subprocess.run([kustomize_bin(), "build", str(path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"kustomize build {path} failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


# --------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------


def shared_dir() -> Path:
    env = os.environ.get("SNAP2CAPTION_SHARED_DIR")
    return Path(env) if env else REPO.parent / "shared"


@functools.cache
def k8s_definitions() -> dict:
    """kubernetes-validate's shared definitions for K8S_VERSION (ObjectMeta for CRs)."""
    utils = kubernetes_validate().utils
    version = [v for v in utils.all_versions() if utils.major_minor(v) == K8S_VERSION][-1]
    return utils.schema_contents(f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", K8S_VERSION)


OBJECT_META_REF = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


def openapi_to_jsonschema(node: dict) -> dict:
    """A CRD's structural OpenAPI v3 schema as JSON Schema, read the way the API server
    reads it under strict field validation."""
    out: dict = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {k: openapi_to_jsonschema(v) for k, v in value.items()}
        elif key in ("items", "not") or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = openapi_to_jsonschema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [openapi_to_jsonschema(v) for v in value]
        elif key.startswith("x-kubernetes-") or key in (
            "description",
            "default",
            "example",
            "nullable",
            "externalDocs",
        ):
            continue
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if node.get("x-kubernetes-embedded-resource"):
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    if (
        out.get("type") == "object"
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def knative_crds() -> dict[tuple[str, str], dict]:
    """(group, kind) -> CRD, from shared/schemas/knative."""
    folder = shared_dir() / "schemas" / "knative"
    files = sorted(folder.glob("*.yaml"))
    assert files, f"no Knative CRDs in {folder} (set SNAP2CAPTION_SHARED_DIR?)"
    crds = {}
    for f in files:
        for doc in yaml.safe_load_all(f.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                crds[(doc["spec"]["group"], doc["spec"]["names"]["kind"])] = doc
    return crds


def served_schema(api_version: str, kind: str) -> dict:
    group, version = api_version.split("/")
    crd = knative_crds()[(group, kind)]
    [ver] = [v for v in crd["spec"]["versions"] if v["name"] == version]
    assert ver["served"], f"{kind} {api_version} is not a served version"
    return ver["schema"]["openAPIV3Schema"]


def _registry():
    defs = k8s_definitions()
    return referencing.Registry().with_resource(defs["$id"], referencing.Resource.from_contents(defs))


@functools.cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Validator:
    schema = openapi_to_jsonschema(served_schema(api_version, kind))
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"const": api_version}
    props["kind"] = {"const": kind}
    props["metadata"] = {"$ref": OBJECT_META_REF}
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
    return jsonschema.Draft202012Validator(schema, registry=_registry())


@functools.cache
def kafka_source_part(path: str) -> jsonschema.Validator:
    """A sub-schema of the KafkaSource CRD: 'sink' (Destination) or 'delivery' (DeliverySpec)."""
    spec = served_schema("sources.knative.dev/v1beta1", "KafkaSource")["properties"]["spec"]
    return jsonschema.Draft202012Validator(openapi_to_jsonschema(spec["properties"][path]))


def errors_of(validator: jsonschema.Validator, obj) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(obj)]


def validate_sequence(obj: dict) -> list[str]:
    """Structure of a flows.knative.dev/v1 Sequence (no CRD available; see module doc)."""
    errs: list[str] = []
    meta = jsonschema.Draft202012Validator({"$ref": OBJECT_META_REF}, registry=_registry())
    errs += [f"metadata/{e}" for e in errors_of(meta, obj.get("metadata"))]
    if (obj.get("apiVersion"), obj.get("kind")) != SEQUENCE:
        errs.append(f"apiVersion/kind must be {SEQUENCE}")
    unknown = set(obj) - {"apiVersion", "kind", "metadata", "spec", "status"}
    errs += [f"unknown field {k}" for k in sorted(unknown)]
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return errs + ["spec must be an object"]
    errs += [f"spec: unknown field {k}" for k in sorted(set(spec) - {"channelTemplate", "steps", "reply"})]
    tmpl = spec.get("channelTemplate")
    if tmpl is not None:
        if not (
            isinstance(tmpl, dict)
            and isinstance(tmpl.get("apiVersion"), str)
            and isinstance(tmpl.get("kind"), str)
            and isinstance(tmpl.get("spec", {}), dict)
            and set(tmpl) <= {"apiVersion", "kind", "spec"}
        ):
            errs.append("spec.channelTemplate must be {apiVersion, kind, spec}")
    steps = spec.get("steps")
    if not isinstance(steps, list) or not steps:
        return errs + ["spec.steps must be a non-empty list"]
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            errs.append(f"spec.steps[{i}] must be an object")
            continue
        dest = {k: v for k, v in step.items() if k != "delivery"}
        errs += [f"spec.steps[{i}]/{e}" for e in errors_of(kafka_source_part("sink"), dest)]
        if "ref" not in dest and "uri" not in dest:
            errs.append(f"spec.steps[{i}] needs ref or uri")
        if "delivery" in step:
            errs += [
                f"spec.steps[{i}].delivery/{e}" for e in errors_of(kafka_source_part("delivery"), step["delivery"])
            ]
    if "reply" in spec:
        errs += [f"spec.reply/{e}" for e in errors_of(kafka_source_part("sink"), spec["reply"])]
    return errs


def validate_object(obj: dict) -> list[str]:
    """Errors for one rendered object ([] = valid); unknown kinds are errors too."""
    api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
    name = obj.get("metadata", {}).get("name", "")
    errs: list[str] = []
    pattern = (
        DNS_LABEL
        if (api_version, kind) in {("v1", "Namespace"), ("v1", "Service"), ("serving.knative.dev/v1", "Service")}
        else DNS_SUBDOMAIN
    )
    if not pattern.match(name or ""):
        errs.append(f"metadata.name {name!r} is not a valid DNS name for a {kind}")
    if (api_version, kind) in CORE_KINDS:
        kv = kubernetes_validate()
        try:
            kv.validate(obj, K8S_VERSION, strict=True)
        except kv.ValidationError as e:
            errs.append(f"{'/'.join(map(str, e.path)) or '<root>'}: {e.message}")
    elif (api_version.split("/")[0], kind) in KNATIVE_CRD_KINDS:
        errs += errors_of(crd_validator(api_version, kind), obj)
    elif (api_version, kind) == SEQUENCE:
        errs += validate_sequence(obj)
    else:
        errs.append(f"no schema for {api_version} {kind}; add one before using it")
    return errs


# --------------------------------------------------------------------------------------
# Renderings
# --------------------------------------------------------------------------------------


class Rendering:
    def __init__(self, name: str, docs: list[dict]):
        self.name, self.docs = name, docs

    def all(self, kind: str, api_group: str | None = None) -> list[dict]:
        return [
            d
            for d in self.docs
            if d["kind"] == kind and (api_group is None or d["apiVersion"].split("/")[0] == api_group)
        ]

    def one(self, kind: str, name: str, api_group: str | None = None) -> dict:
        found = [d for d in self.all(kind, api_group) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.name}: expected one {kind} {name}, found {len(found)}"
        return found[0]

    @property
    def ksvc(self) -> dict:
        return self.one("Service", "snap2caption", "serving.knative.dev")

    def configmap(self, prefix: str) -> dict:
        """A generated ConfigMap by its name before the hash suffix."""
        found = [
            c
            for c in self.all("ConfigMap")
            if re.fullmatch(re.escape(prefix) + r"(-[a-z0-9]{10})?", c["metadata"]["name"])
        ]
        assert len(found) == 1, f"{self.name}: ConfigMap {prefix}: {len(found)} found"
        return found[0]

    def config(self) -> dict[str, str]:
        data: dict[str, str] = {}
        for cm in self.all("ConfigMap"):
            data.update(cm.get("data", {}))
        return data


@pytest.fixture(scope="session")
def base_secrets() -> dict[str, set[str]]:
    """Secret name -> keys, as defined (with placeholders) in the base."""
    docs = kustomize_build(K8S / "base")
    return {
        d["metadata"]["name"]: set(d.get("stringData", {})) | set(d.get("data", {}))
        for d in docs
        if d["kind"] == "Secret"
    }


def _render_all(tmp_root: Path) -> dict[str, Rendering]:
    out = {"base": Rendering("base", kustomize_build(K8S / "base"))}
    for overlay in OVERLAYS:
        out[overlay] = Rendering(overlay, kustomize_build(K8S / "overlays" / overlay))
    # Staging switched to the consumer Deployment, as k8s/components/consumer-ingest says.
    variant = tmp_root / "staging-consumer-ingest"
    variant.mkdir()
    (variant / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                # kustomize wants relative paths; a temporary folder outside the repo is fine.
                "resources": [os.path.relpath(K8S / "overlays" / "staging", variant)],
                "components": [os.path.relpath(K8S / "components" / "consumer-ingest", variant)],
            }
        )
    )
    out["staging+consumer-ingest"] = Rendering("staging+consumer-ingest", kustomize_build(variant))
    return out


@pytest.fixture(scope="session")
def renderings(tmp_path_factory) -> dict[str, Rendering]:
    return _render_all(tmp_path_factory.mktemp("kustomize"))


MAIN = ["base", "staging", "production"]


# --------------------------------------------------------------------------------------
# Helpers for the checks
# --------------------------------------------------------------------------------------


def go_duration_s(text: str) -> float:
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    assert m and text, f"not a duration: {text!r}"
    h, mi, s = (int(x or 0) for x in m.groups())
    return h * 3600 + mi * 60 + s


def iso_duration_s(text: str) -> float:
    m = ISO8601_DURATION.fullmatch(text)
    assert m, f"not an ISO 8601 duration: {text!r}"
    d = re.fullmatch(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?", text)
    days, h, mi, s = d.groups()
    return int(days or 0) * 86400 + int(h or 0) * 3600 + int(mi or 0) * 60 + float(s or 0)


def pod_template(obj: dict) -> dict:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]
    return obj["spec"]["template"]


def pod_spec(obj: dict) -> dict:
    return pod_template(obj)["spec"]


def env_keys(r: Rendering, container: dict, base_secrets: dict[str, set[str]]) -> set[str]:
    keys = {e["name"] for e in container.get("env", [])}
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            name = src["configMapRef"]["name"]
            [cm] = [c for c in r.all("ConfigMap") if c["metadata"]["name"] == name] or [None]
            assert cm is not None, f"{r.name}: ConfigMap {name} is referenced but not rendered"
            keys |= set(cm.get("data", {}))
        if "secretRef" in src:
            name = src["secretRef"]["name"]
            assert name in base_secrets, f"{r.name}: Secret {name} is not defined in the base"
            keys |= base_secrets[name]
    return keys


def gpu_placement_ok(spec: dict) -> bool:
    tol = any(t.get("key") == "nvidia.com/gpu" and t.get("effect") == "NoSchedule" for t in spec.get("tolerations", []))
    return tol and bool(spec.get("nodeSelector"))


def resolve(r: Rendering, ref: dict) -> dict:
    group = ref["apiVersion"].split("/")[0]
    found = [
        d
        for d in r.all(ref["kind"], group)
        if d["metadata"]["name"] == ref["name"] and d["apiVersion"] == ref["apiVersion"]
    ]
    assert len(found) == 1, f"{r.name}: reference {ref} does not resolve to one rendered object"
    return found[0]


# --------------------------------------------------------------------------------------
# Rendering and schema validation
# --------------------------------------------------------------------------------------


def test_install_script_is_idempotent_and_pinned():
    first = _run_install_script()
    assert first["KUSTOMIZE"].startswith(str(CACHE))
    proc = subprocess.run([first["KUSTOMIZE"], "version"], capture_output=True, text=True)
    assert proc.stdout.strip() == KUSTOMIZE_VERSION
    assert _run_install_script() == first


@pytest.mark.parametrize("name", MAIN + ["staging+consumer-ingest"])
def test_every_object_validates_against_its_schema(renderings, name):
    r = renderings[name]
    assert r.docs, f"{name} rendered nothing"
    problems = {f"{d['kind']}/{d['metadata']['name']}": validate_object(d) for d in r.docs}
    problems = {k: v for k, v in problems.items() if v}
    assert not problems, yaml.safe_dump(problems, sort_keys=False)


def test_base_renders_every_object_we_ship(renderings):
    kinds = {(d["apiVersion"], d["kind"]) for d in renderings["base"].docs}
    assert kinds == CORE_KINDS | {
        SEQUENCE,
        ("serving.knative.dev/v1", "Service"),
        ("sources.knative.dev/v1beta1", "KafkaSource"),
        ("eventing.knative.dev/v1alpha1", "KafkaSink"),
    }


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("path", ["base", "overlays/staging", "overlays/production"])
def test_kubectl_kustomize_renders_the_same(path):
    """`kubectl apply -k` uses kubectl's own kustomize; it must agree with the pinned one."""
    proc = subprocess.run(["kubectl", "kustomize", str(K8S / path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert [d for d in yaml.safe_load_all(proc.stdout) if d] == kustomize_build(K8S / path)


# --------------------------------------------------------------------------------------
# Negative tests: the validators do reject broken objects
# --------------------------------------------------------------------------------------


def test_validator_rejects_container_concurrency_of_the_wrong_type(renderings):
    ksvc = copy.deepcopy(renderings["base"].ksvc)
    assert validate_object(ksvc) == []
    ksvc["spec"]["template"]["spec"]["containerConcurrency"] = "64"
    errs = validate_object(ksvc)
    assert any("containerConcurrency" in e and "integer" in e for e in errs), errs


def test_validator_rejects_unknown_fields_in_knative_objects(renderings):
    ksvc = copy.deepcopy(renderings["base"].ksvc)
    ksvc["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    assert any("gpus" in e for e in validate_object(ksvc))
    source = copy.deepcopy(renderings["base"].one("KafkaSource", "snap2caption-uploaded"))
    source["spec"]["delivery"]["retries"] = 5  # the field is `retry`
    assert any("retries" in e for e in validate_object(source))


def test_validator_rejects_missing_required_fields(renderings):
    sink = copy.deepcopy(renderings["base"].one("KafkaSink", "snap2caption-dlq"))
    del sink["spec"]["topic"]
    assert any("'topic' is a required property" in e for e in validate_object(sink))
    source = copy.deepcopy(renderings["base"].one("KafkaSource", "snap2caption-uploaded"))
    source["apiVersion"] = "sources.knative.dev/v1beta1"
    source["metadata"]["labels"] = {"tier": 3}  # label values are strings
    assert any("labels" in e for e in validate_object(source))


def test_validator_rejects_broken_core_objects(renderings):
    sts = copy.deepcopy(renderings["base"].one("StatefulSet", "snap2caption-consumer"))
    sts["spec"]["replicas"] = "two"
    assert any("replicas" in e for e in validate_object(sts))
    policy = copy.deepcopy(renderings["base"].one("NetworkPolicy", "snap2caption"))
    policy["spec"]["ingress"][0]["ports"][0]["port"] = {"number": 8012}
    assert any("port" in e for e in validate_object(policy))
    cron = copy.deepcopy(renderings["base"].one("CronJob", "snap2caption-retrain"))
    cron["spec"]["concurrencyPolicy"] = {"value": "Forbid"}
    assert validate_object(cron)
    cron = copy.deepcopy(renderings["base"].one("CronJob", "snap2caption-retrain"))
    cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containerz"] = []
    assert any("containerz" in e for e in validate_object(cron))


def test_validator_rejects_broken_sequences_and_unknown_kinds(renderings):
    seq = copy.deepcopy(renderings["base"].one("Sequence", "snap2caption-captioning"))
    assert validate_sequence(seq) == []
    broken = copy.deepcopy(seq)
    broken["spec"]["steps"][0] = {"delivery": {"retry": 5}}
    assert any("needs ref or uri" in e for e in validate_sequence(broken))
    broken = copy.deepcopy(seq)
    broken["spec"]["steps"][0]["delivery"]["retry"] = "5"
    assert any("retry" in e for e in validate_sequence(broken))
    broken = copy.deepcopy(seq)
    broken["spec"]["replyTo"] = broken["spec"].pop("reply")
    assert any("replyTo" in e for e in validate_sequence(broken))
    assert validate_object({"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger", "metadata": {"name": "t"}})


# --------------------------------------------------------------------------------------
# The caption service
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MAIN)
def test_service_scales_to_zero_with_bounds(renderings, name):
    ann = renderings[name].ksvc["spec"]["template"]["metadata"]["annotations"]
    assert ann["autoscaling.knative.dev/min-scale"] == "0"
    assert int(ann["autoscaling.knative.dev/max-scale"]) >= 1
    assert ann.get("autoscaling.knative.dev/class", "kpa.autoscaling.knative.dev") == "kpa.autoscaling.knative.dev", (
        "only the KPA scales to zero"
    )
    assert go_duration_s(ann["autoscaling.knative.dev/scale-to-zero-pod-retention-period"]) > 0


@pytest.mark.parametrize("name", MAIN)
def test_autoscaling_matches_the_batcher(renderings, name):
    r = renderings[name]
    tmpl = r.ksvc["spec"]["template"]
    ann = tmpl["metadata"]["annotations"]
    batch = int(r.configmap("snap2caption-model")["data"]["SNAP2CAPTION_MAX_BATCH_SIZE"])
    target = int(ann["autoscaling.knative.dev/target"])
    cc = tmpl["spec"]["containerConcurrency"]
    assert ann["autoscaling.knative.dev/metric"] == "concurrency"
    assert target == batch, "one full batch in flight per pod is the scaling target"
    assert cc >= target and cc % batch == 0, "containerConcurrency is whole batches, >= target"
    util = int(ann.get("autoscaling.knative.dev/target-utilization-percentage", "70"))
    assert 0 < util <= 100


@pytest.mark.parametrize("name", MAIN)
def test_service_runs_on_one_gpu(renderings, name):
    spec = renderings[name].ksvc["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert gpu_placement_ok(spec)
    assert container["ports"] == [{"name": "http1", "containerPort": 3000}]


@pytest.mark.parametrize("name", MAIN)
def test_service_probes_wait_for_the_model(renderings, name):
    tmpl = renderings[name].ksvc["spec"]["template"]
    [c] = tmpl["spec"]["containers"]
    for probe in ("startupProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["path"] == "/readyz", probe
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"].get("port", 3000) in (3000, "http1"), probe
    startup = c["startupProbe"]
    window = startup["failureThreshold"] * startup.get("periodSeconds", 10)
    assert window >= MODEL_LOAD_BUDGET_S, f"startup window {window}s < model load budget"
    deadline = go_duration_s(tmpl["metadata"]["annotations"]["serving.knative.dev/progress-deadline"])
    assert deadline > window, "progress deadline must outlast the startup probe"


@pytest.mark.parametrize("name", MAIN)
def test_service_timeout_and_environment(renderings, name, base_secrets):
    r = renderings[name]
    spec = r.ksvc["spec"]["template"]["spec"]
    assert 0 < spec["timeoutSeconds"] <= KNATIVE_MAX_REVISION_TIMEOUT_S
    [c] = spec["containers"]
    missing = SERVICE_ENV - env_keys(r, c, base_secrets)
    assert not missing, f"service lacks {sorted(missing)}"


# --------------------------------------------------------------------------------------
# Event path
# --------------------------------------------------------------------------------------


def _delivery_ok(r: Rendering, delivery: dict, dlq_topic: str) -> None:
    assert delivery["retry"] >= 1
    assert delivery["backoffPolicy"] == "exponential"
    assert iso_duration_s(delivery["backoffDelay"]) > 0
    dls = resolve(r, delivery["deadLetterSink"]["ref"])
    assert dls["kind"] == "KafkaSink" and dls["spec"]["topic"] == dlq_topic


@pytest.mark.parametrize("name", MAIN)
def test_kafka_source_routes_uploads_to_the_service_and_replies_to_captioned(renderings, name):
    r = renderings[name]
    cfg = r.configmap("snap2caption-common")["data"]
    bootstrap = cfg["KAFKA_BOOTSTRAP_SERVERS"].split(",")
    assert cfg["SNAP2CAPTION_TOPIC_UPLOADED"] == "media.uploaded"
    assert cfg["SNAP2CAPTION_TOPIC_CAPTIONED"] == "media.captioned"
    assert cfg["SNAP2CAPTION_TOPIC_FEEDBACK"] == "caption.feedback"
    assert cfg["SNAP2CAPTION_TOPIC_DLQ"] == "media.uploaded.dlq"

    [source] = r.all("KafkaSource")
    spec = source["spec"]
    assert spec["topics"] == ["media.uploaded"]
    assert spec["bootstrapServers"] == bootstrap
    assert spec["consumerGroup"]
    _delivery_ok(r, spec["delivery"], "media.uploaded.dlq")

    # The source's sink is a Sequence whose one step is the Service at /events and whose
    # reply goes to the media.captioned KafkaSink (see k8s/base/eventing.yaml for why).
    seq = resolve(r, spec["sink"]["ref"])
    assert seq["kind"] == "Sequence"
    [step] = seq["spec"]["steps"]
    assert resolve(r, step["ref"]) is r.ksvc
    assert step["uri"] == "/events"
    _delivery_ok(r, step["delivery"], "media.uploaded.dlq")
    timeout_s = r.ksvc["spec"]["template"]["spec"]["timeoutSeconds"]
    assert iso_duration_s(step["delivery"]["timeout"]) >= timeout_s, (
        "a delivery attempt must not time out before the service does"
    )
    reply = resolve(r, seq["spec"]["reply"]["ref"])
    assert reply["kind"] == "KafkaSink" and reply["spec"]["topic"] == "media.captioned"

    for sink in r.all("KafkaSink"):
        assert sink["spec"]["bootstrapServers"] == bootstrap
    assert {s["spec"]["topic"] for s in r.all("KafkaSink")} == {"media.captioned", "media.uploaded.dlq"}


def test_k8s_lets_knative_deliver_to_events_on_the_cluster_local_address():
    """The KafkaSource -> Sequence -> Service path cannot send a key: the base config must
    say so, with a value the service accepts."""
    from conftest import REPO

    env = dict(
        line.split("=", 1)
        for line in (REPO / "k8s/base/config/common.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert env["SNAP2CAPTION_EVENTS_AUTH"] == "cluster-local"
    from snap2caption_service.core.settings import Settings

    assert Settings(_env_file=None, events_auth=env["SNAP2CAPTION_EVENTS_AUTH"]).events_auth == "cluster-local"


@pytest.mark.parametrize("name", MAIN)
def test_the_service_knows_its_own_cluster_local_name(renderings, name):
    """events_auth=cluster-local accepts only <K_SERVICE>.<namespace>.svc...; the service refuses to
    start without the namespace, and the pod has no service-account mount to read it from."""
    from snap2caption_service.serving.auth import is_cluster_local_host

    r = renderings[name]
    data = r.configmap("snap2caption-common")["data"]
    namespace = r.ksvc["metadata"].get("namespace", "snap2caption")
    assert data["SNAP2CAPTION_NAMESPACE"] == namespace, name
    service = r.ksvc["metadata"]["name"]  # what Knative puts in K_SERVICE
    assert is_cluster_local_host(f"{service}.{namespace}.svc.cluster.local", service, data["SNAP2CAPTION_NAMESPACE"])


# --------------------------------------------------------------------------------------
# /events and Knative Eventing's sender identity (components/events-oidc)
# --------------------------------------------------------------------------------------


def knative_child_name(parent: str, suffix: str) -> str:
    """knative.dev/pkg kmeta.ChildName: parent + suffix, shortened with an md5 past 63 characters."""
    import hashlib

    longest, head = 63, 63 - 32
    if len(parent) <= longest - len(suffix):
        return parent + suffix
    if head - len(suffix) <= 0:
        name = parent[:head] + hashlib.md5((parent + suffix).encode()).hexdigest()
        name += suffix[: max(0, longest - len(name))]
        return re.sub(r"[^a-zA-Z0-9]+$", "", name)
    return parent[: head - len(suffix)] + hashlib.md5(parent.encode()).hexdigest() + suffix


def knative_oidc_service_account(group: str, kind: str, name: str) -> str:
    """knative/eventing pkg/auth/serviceaccount.go GetOIDCServiceAccountNameForResource."""
    return knative_child_name(name, f"-oidc-{group}-{kind}").lower()


def test_knative_oidc_service_account_names_match_knatives_own_tests():
    """The vectors of knative/eventing pkg/auth/serviceaccount_test.go."""
    assert knative_oidc_service_account("group", "kind", "name") == "name-oidc-group-kind"
    assert knative_oidc_service_account("eventing.knative.dev", "Broker", "my-Broker") == (
        "my-broker-oidc-eventing.knative.dev-broker"
    )
    assert knative_oidc_service_account(
        "eventing.knative.dev", "Broker", "my-loooooooooooooooooooooooooooooooooooooog-Broker"
    ) == ("my-looooooooooooooooooooooooooo2dfc2a3825b8d82077b0f25518b36884")


def _events_oidc_settings(data: dict[str, str]):
    from snap2caption_service.core.settings import Settings

    prefix = "SNAP2CAPTION_"
    fields = {k[len(prefix) :].lower(): v for k, v in data.items() if k.startswith(prefix + "EVENTS_")}
    return Settings(_env_file=None, **fields)


def test_production_authenticates_events_by_knative_sender_identity(renderings, tmp_path):
    """Production: /events takes Knative Eventing's OIDC tokens, for the audience the Sequence step
    asks them for, from the step Subscription's OIDC service account only, checked against the
    API server's JWKS fetched with the projected CA and token."""
    from snap2caption_service.serving.oidc import OidcConfig

    r = renderings["production"]
    namespace = OVERLAYS["production"]
    data = r.configmap("snap2caption-common")["data"]
    assert data["SNAP2CAPTION_EVENTS_AUTH"] == "oidc"
    ca_file, token_file = (
        data["SNAP2CAPTION_EVENTS_OIDC_JWKS_CA_FILE"],
        data["SNAP2CAPTION_EVENTS_OIDC_JWKS_TOKEN_FILE"],
    )
    # What the service does at start (ValueError if incomplete), with the pod's files stood in for.
    (tmp_path / "ca.crt").write_text("-")
    (tmp_path / "token").write_text("-")
    stand_ins = {
        "events_oidc_jwks_ca_file": str(tmp_path / "ca.crt"),
        "events_oidc_jwks_token_file": str(tmp_path / "token"),
    }
    config = OidcConfig.from_settings(_events_oidc_settings(data).model_copy(update=stand_ins))
    assert config.issuer.startswith("https://")
    assert config.jwks_url == "https://kubernetes.default.svc/openid/v1/jwks"  # https: the token may go there

    # The audience: Knative's <group>/<kind>/<namespace>/<name> for this Service, and exactly what
    # the Sequence step (the Subscription the dispatcher delivers for) requests tokens for.
    assert config.audience == f"serving.knative.dev/service/{namespace}/{r.ksvc['metadata']['name']}"
    seq = r.one("Sequence", "snap2caption-captioning")
    [step] = seq["spec"]["steps"]
    assert resolve(r, step["ref"]) is r.ksvc and step["audience"] == config.audience

    # The one sender: the OIDC service account Eventing creates for that step's Subscription
    # (pkg/reconciler/sequence/resources/subscription.go names it <sequence>-kn-sequence-<step>).
    subscription = f"{seq['metadata']['name']}-kn-sequence-0"
    account = knative_oidc_service_account("messaging.knative.dev", "Subscription", subscription)
    assert config.subjects == {f"system:serviceaccount:{namespace}:{account}"}

    # The JWKS fetch: CA and token from a read-only projected volume; the pod still has no
    # automounted token (Knative allows only false), and the token is for the API server.
    spec = pod_spec(r.ksvc)
    assert spec["automountServiceAccountToken"] is False
    [c] = spec["containers"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    for path in (ca_file, token_file):
        [mount] = [m for m in c["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
        assert mount["readOnly"] is True
        sources = volumes[mount["name"]]["projected"]["sources"]
        relative = path[len(mount["mountPath"].rstrip("/")) + 1 :]
        token = [s["serviceAccountToken"] for s in sources if s.get("serviceAccountToken", {}).get("path") == relative]
        ca = [
            s["configMap"]
            for s in sources
            if "configMap" in s and any(i["path"] == relative for i in s["configMap"].get("items", []))
        ]
        assert token or ca, f"{path} is not projected"
        for t in token:
            assert "audience" not in t, "the JWKS request authenticates to the API server: its default audience"
            assert 600 <= t["expirationSeconds"] <= 3600
        for cm in ca:
            assert cm["name"] == "kube-root-ca.crt" and cm["items"] == [{"key": "ca.crt", "path": "ca.crt"}]


@pytest.mark.parametrize("name", ["base", "staging"])
def test_other_renderings_keep_cluster_local_events_without_sender_tokens(renderings, name):
    r = renderings[name]
    assert r.configmap("snap2caption-common")["data"]["SNAP2CAPTION_EVENTS_AUTH"] == "cluster-local"
    [step] = r.one("Sequence", "snap2caption-captioning")["spec"]["steps"]
    assert "audience" not in step
    assert "jwks-auth" not in {v["name"] for v in pod_spec(r.ksvc)["volumes"]}


# --------------------------------------------------------------------------------------
# Consumer StatefulSet and its Services
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MAIN + ["staging+consumer-ingest"])
def test_consumer_workload(renderings, name, base_secrets):
    r = renderings[name]
    dep = r.one("StatefulSet", "snap2caption-consumer")
    spec = pod_spec(dep)
    [c] = spec["containers"]
    assert c["command"] == ["snap2caption", "consume"]
    assert spec["terminationGracePeriodSeconds"] >= 60
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    probe = c["livenessProbe"]["httpGet"]
    assert probe["path"] == "/metrics" and ports.get(probe["port"], probe["port"]) == 9400
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    missing = CONSUMER_ENV - env_keys(r, c, base_secrets)
    assert not missing, f"consumer lacks {sorted(missing)}"

    svc = r.one("Service", "snap2caption-consumer-metrics", "v1")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    [port] = svc["spec"]["ports"]
    assert port["port"] == 9400 and ports.get(port["targetPort"], port["targetPort"]) == 9400


def test_consumer_and_kafka_source_never_run_together(renderings):
    for name in MAIN:
        r = renderings[name]
        assert r.one("StatefulSet", "snap2caption-consumer")["spec"]["replicas"] == 0, name
        assert len(r.all("KafkaSource")) == 1
    switched = renderings["staging+consumer-ingest"]
    assert switched.one("StatefulSet", "snap2caption-consumer")["spec"]["replicas"] >= 1
    assert not switched.all("KafkaSource") and not switched.all("Sequence")
    assert not switched.all("KafkaSink")
    assert switched.ksvc  # the caption service itself stays


# --------------------------------------------------------------------------------------
# Retraining CronJob
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MAIN)
def test_retrain_cronjob(renderings, name, base_secrets):
    r = renderings[name]
    cron = r.one("CronJob", "snap2caption-retrain")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    fields = cron["spec"]["schedule"].split()
    assert len(fields) == 5 and fields[1] != "*", "runs once a day (or less), at a fixed hour"
    spec = pod_spec(cron)
    [c] = spec["containers"]
    assert c["command"] == ["snap2caption", "retrain"]
    assert str(c["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert gpu_placement_ok(spec)
    assert spec["restartPolicy"] in ("Never", "OnFailure")
    missing = RETRAIN_ENV - env_keys(r, c, base_secrets)
    assert not missing, f"retrain lacks {sorted(missing)}"


# --------------------------------------------------------------------------------------
# Configuration and Secrets
# --------------------------------------------------------------------------------------


def test_every_documented_variable_is_configured(renderings, base_secrets):
    r = renderings["base"]
    config = r.config()
    secret_keys = set().union(*base_secrets.values())
    assert ALL_ENV <= set(config) | secret_keys
    assert SECRET_ENV <= secret_keys
    assert not SECRET_ENV & set(config), "credentials belong in Secrets, not ConfigMaps"
    assert config["SNAP2CAPTION_REGISTERED_MODEL"] == "snap2caption"
    # The service serves the registry's champion: an explicit model would override it.
    assert config["SNAP2CAPTION_MODEL"] == ""
    assert config["SNAP2CAPTION_ARCHIVE"].startswith("s3://") and config["SNAP2CAPTION_SNAPSHOTS"].startswith("s3://")


def test_base_secrets_are_marked_placeholders(renderings):
    secrets = renderings["base"].all("Secret")
    assert {s["metadata"]["name"] for s in secrets} == {
        "snap2caption-api-keys",
        "snap2caption-s3",
        "snap2caption-mlflow",
    }
    for s in secrets:
        assert s["metadata"]["annotations"]["snap2caption.dev/placeholder"] == "true"
        assert all("PLACEHOLDER" in v for v in s["stringData"].values())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_never_ship_the_placeholder_secrets(renderings, overlay):
    assert renderings[overlay].all("Secret") == []


# --------------------------------------------------------------------------------------
# Overlays
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_namespace_is_applied_everywhere(renderings, overlay):
    r, ns = renderings[overlay], OVERLAYS[overlay]
    assert [n["metadata"]["name"] for n in r.all("Namespace")] == [ns]
    for d in r.docs:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == ns, f"{d['kind']}/{d['metadata']['name']}"
    url = r.configmap("snap2caption-consumer")["data"]["SNAP2CAPTION_SERVICE_URL"]
    assert url == f"http://snap2caption.{ns}.svc.cluster.local"


def _images(r: Rendering) -> set[str]:
    return {
        c["image"]
        for d in r.docs
        if d["kind"] in ("Service", "StatefulSet", "CronJob")
        and "spec" in d
        and ("template" in d["spec"] or "jobTemplate" in d["spec"])
        for c in pod_spec(d)["containers"]
    }


def test_overlays_differ_where_intended(renderings):
    stg, prod = renderings["staging"], renderings["production"]

    def ann(r):
        return r.ksvc["spec"]["template"]["metadata"]["annotations"]

    def res(r):
        return r.ksvc["spec"]["template"]["spec"]["containers"][0]["resources"]

    [stg_image], [prod_image] = _images(stg), _images(prod)
    assert stg_image.rsplit(":", 1)[0] == prod_image.rsplit(":", 1)[0]
    assert stg_image.rsplit(":", 1)[1] != prod_image.rsplit(":", 1)[1]
    assert OVERLAYS["staging"] != OVERLAYS["production"]
    assert int(ann(prod)["autoscaling.knative.dev/max-scale"]) > int(ann(stg)["autoscaling.knative.dev/max-scale"])
    assert res(prod) != res(stg)
    assert go_duration_s(ann(prod)["autoscaling.knative.dev/scale-to-zero-pod-retention-period"]) > go_duration_s(
        ann(stg)["autoscaling.knative.dev/scale-to-zero-pod-retention-period"]
    )
    # ... and agree where they must: scale to zero, one GPU, the batcher-coupled settings.
    for key in ("autoscaling.knative.dev/min-scale", "autoscaling.knative.dev/target"):
        assert ann(prod)[key] == ann(stg)[key]
    assert res(prod)["limits"]["nvidia.com/gpu"] == res(stg)["limits"]["nvidia.com/gpu"]


# --------------------------------------------------------------------------------------
# Deployment defaults: pod security, NetworkPolicy, consumer identity and memory, MLflow
# --------------------------------------------------------------------------------------

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}
# BentoML's image user `bentoml` (bentoml/_internal/container/generate.py, BENTO_UID_GID): the
# image names its USER, so the kubelet can check runAsNonRoot only against an explicit number.
BENTOML_UID = 1034
# Where the model-running pods write, as set in config/model.env: each must be on a volume.
WRITABLE_PATH_ENV = ("SNAP2CAPTION_DATA_DIR", "HF_HOME", "XDG_CACHE_HOME", "BENTOML_HOME")


def workloads(r: Rendering) -> list[tuple[str, dict, bool]]:
    """(kind/name, pod template, is a Knative Service) for every object that makes pods."""
    out = []
    for d in r.docs:
        knative = d["kind"] == "Service" and d["apiVersion"].startswith("serving.knative.dev/")
        if d["kind"] in WORKLOAD_KINDS or knative:
            out.append((f"{d['kind']}/{d['metadata']['name']}", pod_template(d), knative))
    return out


def consumer(r: Rendering) -> dict:
    """The consumer workload, whatever its kind (so that the checks on it say what is wrong)."""
    [found] = [d for d in r.docs if d["kind"] in WORKLOAD_KINDS and d["metadata"]["name"] == "snap2caption-consumer"]
    return found


def security_problems(spec: dict, knative: bool) -> list[str]:
    """What a pod spec lacks of the deployment defaults (k8s/README.md "Pod security")."""
    problems = []
    if spec.get("automountServiceAccountToken") is not False:
        problems.append("automountServiceAccountToken must be false")
    pod_sc = spec.get("securityContext") or {}
    if knative and pod_sc:
        problems.append(
            "a Knative Service takes a pod securityContext only with kubernetes.podspec-securitycontext; "
            "set it on the container"
        )
    for c in spec.get("initContainers", []) + spec.get("containers", []):
        sc = c.get("securityContext") or {}

        def effective(key, sc=sc):
            return sc.get(key, pod_sc.get(key))

        where = f"container {c['name']}"
        if effective("runAsNonRoot") is not True:
            problems.append(f"{where}: runAsNonRoot must be true")
        uid = effective("runAsUser")
        if not isinstance(uid, int) or uid == 0:
            problems.append(f"{where}: runAsUser must be a non-zero uid (got {uid!r})")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem must be true")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation must be false")
        if sc.get("privileged"):
            problems.append(f"{where}: privileged")
        caps = sc.get("capabilities") or {}
        if "ALL" not in caps.get("drop", []) or caps.get("add"):
            problems.append(f"{where}: capabilities must drop ALL and add none")
        if (effective("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{where}: seccompProfile must be RuntimeDefault")
    return problems


@pytest.mark.parametrize("name", MAIN + ["staging+consumer-ingest"])
def test_every_pod_runs_with_the_security_defaults(renderings, name):
    found = workloads(renderings[name])
    assert {w.split("/", 1)[1] for w, _, _ in found} >= {
        "snap2caption",
        "snap2caption-consumer",
        "snap2caption-retrain",
    }
    problems = {w: security_problems(tmpl["spec"], kn) for w, tmpl, kn in found}
    problems = {w: p for w, p in problems.items() if p}
    assert not problems, yaml.safe_dump(problems, sort_keys=False)
    for w, tmpl, _ in found:
        spec = tmpl["spec"]
        for c in spec["containers"]:
            uid = (c.get("securityContext") or {}).get(
                "runAsUser", (spec.get("securityContext") or {}).get("runAsUser")
            )
            assert uid == BENTOML_UID, f"{w}: the image's user is uid {BENTOML_UID}"


def test_security_check_catches_each_missing_default(renderings):
    """Proof the check above is live: each default removed is reported."""
    good = pod_spec(consumer(renderings["base"]))
    assert security_problems(good, knative=False) == []
    for path, value, expected in [
        (("automountServiceAccountToken",), True, "automountServiceAccountToken"),
        (("containers", 0, "securityContext", "readOnlyRootFilesystem"), False, "readOnlyRootFilesystem"),
        (("containers", 0, "securityContext", "allowPrivilegeEscalation"), True, "allowPrivilegeEscalation"),
        (("containers", 0, "securityContext", "capabilities"), {"add": ["NET_ADMIN"], "drop": ["ALL"]}, "capabilities"),
        (("containers", 0, "securityContext", "runAsNonRoot"), False, "runAsNonRoot"),
        (("containers", 0, "securityContext", "seccompProfile"), {"type": "Unconfined"}, "seccompProfile"),
    ]:
        spec = copy.deepcopy(good)
        node = spec
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        assert any(expected in p for p in security_problems(spec, knative=False)), path
    assert any("podspec-securitycontext" in p for p in security_problems(good, knative=True))


def _mounted(path: str, mounts: list[dict]) -> bool:
    return any(path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/") for m in mounts)


@pytest.mark.parametrize("name", MAIN)
def test_read_only_root_has_a_volume_wherever_the_app_writes(renderings, name):
    """The service and the retraining job write to the data dir, the Hub cache, BentoML's home,
    other caches and /tmp; with a read-only root each must be a writable mount."""
    r = renderings[name]
    model = r.configmap("snap2caption-model")["data"]
    for obj in (r.ksvc, r.one("CronJob", "snap2caption-retrain")):
        spec = pod_spec(obj)
        [c] = spec["containers"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounts = [m for m in c.get("volumeMounts", []) if not m.get("readOnly")]
        overridden = {e["name"] for e in c.get("env", [])} & set(WRITABLE_PATH_ENV)
        assert not overridden, f"{obj['kind']}: {overridden} set outside config/model.env"
        for key in WRITABLE_PATH_ENV:
            assert key in model, f"{key} is not set in config/model.env (the image's default is read-only)"
            assert _mounted(model[key], mounts), f"{obj['kind']}: {key}={model[key]} is on the read-only root"
        assert _mounted("/tmp", mounts), f"{obj['kind']}: /tmp is not writable"
        for m in mounts:
            assert "emptyDir" in volumes[m["name"]], f"{obj['kind']}: {m['name']} should be an emptyDir"
    [c] = pod_spec(consumer(r))["containers"]
    assert _mounted("/tmp", c.get("volumeMounts", [])), "consumer: /tmp is not writable"


# Who may reach the service's pods (k8s/base/network-policy.yaml).
QUEUE_PROXY_SERVING_PORTS = {8012, 8013, 8112}  # knative/serving pkg/networking/constants.go
AUTOSCALER_METRICS_PORT = 9090
KNATIVE_PEERS = {
    ("knative-serving", (("app", "activator"),)): QUEUE_PROXY_SERVING_PORTS,
    ("kourier-system", (("app", "3scale-kourier-gateway"),)): QUEUE_PROXY_SERVING_PORTS,
    ("istio-system", (("istio", "ingressgateway"),)): QUEUE_PROXY_SERVING_PORTS,
    ("knative-eventing", (("app.kubernetes.io/kind", "kafka-dispatcher"),)): QUEUE_PROXY_SERVING_PORTS,
    ("knative-serving", (("app", "autoscaler"),)): {AUTOSCALER_METRICS_PORT},
}
PROMETHEUS_PEER = ("monitoring", (("app.kubernetes.io/name", "prometheus"),))


def policy_peers(policy: dict) -> dict[tuple, set[int]]:
    """(namespace, pod labels) -> ports, for a NetworkPolicy whose every peer names both."""
    peers: dict[tuple, set[int]] = {}
    for rule in policy["spec"].get("ingress", []):
        assert rule.get("from"), "an ingress rule without `from` admits every source"
        assert rule.get("ports"), "an ingress rule without `ports` admits every port"
        ports = {p["port"] for p in rule["ports"]}
        assert all(isinstance(p, int) for p in ports), "numbered ports (Knative's pods do not name theirs)"
        for peer in rule["from"]:
            assert "ipBlock" not in peer, "no address ranges: pod IPs change"
            ns = (peer.get("namespaceSelector") or {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
            labels = (peer.get("podSelector") or {}).get("matchLabels")
            assert ns and labels, f"every peer names its namespace and its pods: {peer}"
            assert not peer["namespaceSelector"].get("matchExpressions") and not peer["podSelector"].get(
                "matchExpressions"
            )
            peers.setdefault((ns, tuple(sorted(labels.items()))), set()).update(ports)
    return peers


@pytest.mark.parametrize("name", MAIN + ["staging+consumer-ingest"])
def test_network_policy_admits_only_the_knative_data_plane_to_the_service(renderings, name):
    r = renderings[name]
    labels = r.ksvc["spec"]["template"]["metadata"]["labels"]
    selecting = [
        p
        for p in r.all("NetworkPolicy")
        if p["spec"]["podSelector"].get("matchLabels")
        and not p["spec"]["podSelector"].get("matchExpressions")
        and p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ]
    assert len(selecting) == 1, f"{name}: {len(selecting)} NetworkPolicies select the service's pods"
    [policy] = selecting
    assert policy["metadata"].get("namespace") == r.ksvc["metadata"].get("namespace")
    assert "Ingress" in policy["spec"]["policyTypes"]
    # It selects the service's pods only, not the consumer's or the retraining job's.
    selector = policy["spec"]["podSelector"]["matchLabels"].items()
    for w, tmpl, knative in workloads(r):
        assert knative or not selector <= tmpl["metadata"]["labels"].items(), w
    peers = policy_peers(policy)
    assert peers == {**KNATIVE_PEERS, PROMETHEUS_PEER: peers.get(PROMETHEUS_PEER, set())}, yaml.safe_dump(
        {f"{ns} {dict(lbl)}": sorted(p) for (ns, lbl), p in peers.items()}
    )
    # The user container's own port is open to Prometheus alone (its scrape annotation's port);
    # every request goes through the queue-proxy.
    scrape_port = int(r.ksvc["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"])
    [container] = r.ksvc["spec"]["template"]["spec"]["containers"]
    assert scrape_port == container["ports"][0]["containerPort"]
    assert peers[PROMETHEUS_PEER] == {scrape_port}
    assert all(scrape_port not in ports for peer, ports in peers.items() if peer != PROMETHEUS_PEER)


@pytest.mark.parametrize("name", MAIN + ["staging+consumer-ingest"])
def test_consumer_is_a_statefulset_named_after_its_pods(renderings, name, monkeypatch):
    r = renderings[name]
    assert not r.all("Deployment"), "the consumer's transactional ids assume stable pod names"
    sts = r.one("StatefulSet", "snap2caption-consumer")
    [c] = pod_spec(sts)["containers"]
    [instance] = [e for e in c.get("env", []) if e["name"] == "SNAP2CAPTION_INSTANCE_ID"]
    assert instance == {"name": "SNAP2CAPTION_INSTANCE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    assert "SNAP2CAPTION_INSTANCE_ID" not in r.config(), "a ConfigMap value would be shared by every pod"
    governing = r.one("Service", sts["spec"]["serviceName"], "v1")
    assert governing["spec"].get("clusterIP") == "None"
    assert governing["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    # What the consumer makes of it: the pod name is its static member id and transactional id.
    from stream.settings import StreamSettings

    monkeypatch.setenv("SNAP2CAPTION_INSTANCE_ID", "snap2caption-consumer-1")
    s = StreamSettings(_env_file=None)
    assert s.instance_id == "snap2caption-consumer-1"
    assert s.transactional_id.endswith("-snap2caption-consumer-1")


# The consumer's in-flight window, as k8s/base/consumer.yaml adds it up.
MIB = 1024**2
# Per event in flight, alive together while its request is sent (stream/service_client.py): the
# image, its base64 text, the JSON body and the body's bytes: 1 + 3 x 4/3.
CONSUMER_BYTES_PER_IMAGE_BYTE = 5
KAFKA_MAX_RECORD_BYTES = 1 * MIB  # broker message.max.bytes / producer max_request_size defaults
KAFKA_FETCH_BUFFER_BYTES = 50 * MIB  # kafka-python's fetch_max_bytes default
CONSUMER_PROCESS_BYTES = 256 * MIB  # interpreter, libraries, clients, threads (~80 MiB measured)


def quantity_bytes(q) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(q))
    assert m, f"not a memory quantity: {q!r}"
    scale = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    return float(m.group(1)) * scale[m.group(2)]


def container_config(r: Rendering, container: dict) -> dict[str, str]:
    """The container's plain environment: its ConfigMaps in envFrom order, then env values."""
    config: dict[str, str] = {}
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            [cm] = [c for c in r.all("ConfigMap") if c["metadata"]["name"] == src["configMapRef"]["name"]]
            config.update(cm.get("data", {}))
    config.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return config


def consumer_window_bytes(config: dict[str, str]) -> int:
    from stream.settings import StreamSettings

    def setting(field: str) -> int:
        return int(config.get(f"SNAP2CAPTION_{field.upper()}", StreamSettings.model_fields[field].default))

    in_flight, fetch_max = setting("max_in_flight"), setting("fetch_max_bytes")
    pending = max(setting("max_pending"), in_flight)  # as stream/consumer.py bounds it
    return (
        in_flight * CONSUMER_BYTES_PER_IMAGE_BYTE * fetch_max
        + pending * KAFKA_MAX_RECORD_BYTES
        + KAFKA_FETCH_BUFFER_BYTES
        + CONSUMER_PROCESS_BYTES
    )


@pytest.mark.parametrize("name", MAIN + ["staging+consumer-ingest"])
def test_consumer_memory_limit_holds_its_in_flight_window(renderings, name):
    r = renderings[name]
    [c] = pod_spec(consumer(r))["containers"]
    window = consumer_window_bytes(container_config(r, c))
    limit = quantity_bytes(c["resources"]["limits"]["memory"])
    assert limit >= window, f"memory limit {limit / MIB:.0f} MiB < in-flight window {window / MIB:.0f} MiB"
    assert quantity_bytes(c["resources"]["requests"]["memory"]) <= limit


def test_consumer_request_body_costs_what_the_window_assumes():
    """CONSUMER_BYTES_PER_IMAGE_BYTE measured on the real client: the peak Python allocation
    while one image is sent to the service, relative to the image's size."""
    import tracemalloc

    import httpx

    from snap2caption_service.core.contracts import CaptionOptions
    from stream.service_client import ServiceClient
    from stream.settings import StreamSettings

    answer = {
        "caption": "c",
        "hashtags": [],
        "alt_text": "a",
        "candidates": [],
        "model_version": "m",
        "request_id": "r",
        "latency_ms": 1.0,
    }
    client = ServiceClient(StreamSettings(_env_file=None))
    client.client = httpx.Client(
        base_url="http://svc", transport=httpx.MockTransport(lambda req: httpx.Response(200, json=answer))
    )
    image = os.urandom(4 * MIB)
    tracemalloc.start()
    try:
        client.caption(image, CaptionOptions())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        client.close()
    assert (len(image) + peak) / len(image) <= CONSUMER_BYTES_PER_IMAGE_BYTE * 1.02


@pytest.mark.parametrize("name", MAIN)
def test_mlflow_credentials_come_from_a_secret(renderings, name, base_secrets):
    r = renderings[name]
    assert not set(MLFLOW_CREDENTIALS) & set(r.config()), "credentials belong in Secrets, not ConfigMaps"
    # The two pods that talk to MLflow: the service (champion) and the retraining job.
    for obj in (r.ksvc, r.one("CronJob", "snap2caption-retrain")):
        [c] = pod_spec(obj)["containers"]
        env = {e["name"]: e for e in c.get("env", [])}
        for key in MLFLOW_CREDENTIALS:
            assert key in env, f"{obj['kind']}: {key} is not set"
            ref = env[key].get("valueFrom", {}).get("secretKeyRef")
            assert ref, f"{obj['kind']}: {key} must come from a Secret (secretKeyRef)"
            assert key in base_secrets.get(ref["name"], set()), f"Secret {ref['name']} has no key {key}"
            assert not ref.get("optional"), "a missing Secret must stop the pod, not run it unauthenticated"
    for w, tmpl, _ in workloads(r):
        for c in tmpl["spec"]["containers"]:
            for e in c.get("env", []):
                if e["name"].startswith("MLFLOW_TRACKING_") and e["name"] != "MLFLOW_TRACKING_URI":
                    assert "value" not in e, f"{w}: {e['name']} is written in the manifest"
