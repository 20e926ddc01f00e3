"""The Kubernetes manifests (deploy/k8s) and the Milvus Helm values (deploy/milvus), offline.

No cluster runs in this project, so nothing here is applied anywhere. Built-in kinds are
validated against Kubernetes' own OpenAPI schemas by `kubernetes-validate` (strict: an
unknown field such as a misspelt probe fails). `kubernetes-validate` carries no schemas for
custom resources (KEDA's ScaledObject, the Prometheus Operator's ServiceMonitor, Kustomize's
Kustomization), so their structure and required fields are checked here by hand, and so are the
references between objects that no schema sees (selectors, port names, the scale target, the
settings and metric names the manifests use).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="the 'scale' extra has kubernetes-validate")

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.30.0"  # the oldest minor the manifests promise: native preStop sleep is beta there
CUSTOM = {("keda.sh/v1alpha1", "ScaledObject"), ("monitoring.coreos.com/v1", "ServiceMonitor"),
          ("kustomize.config.k8s.io/v1beta1", "Kustomization")}


def load_all() -> dict[tuple[str, str], dict]:
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                key = (doc["kind"], doc.get("metadata", {}).get("name", path.stem))
                assert key not in docs, f"{key} defined twice"
                docs[key] = doc
    return docs


DOCS = load_all()


def one(kind: str) -> dict:
    found = [doc for (k, _), doc in DOCS.items() if k == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.mark.parametrize("key", sorted(k for k, d in DOCS.items() if (d["apiVersion"], d["kind"]) not in CUSTOM))
def test_builtin_kinds_validate_against_the_kubernetes_schema(key):
    kubernetes_validate.validate(DOCS[key], K8S_VERSION, strict=True)


def test_the_validator_is_not_a_rubber_stamp():
    broken = copy.deepcopy(one("Deployment"))
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_every_expected_kind_is_there():
    kinds = {kind for kind, _ in DOCS}
    assert {"Deployment", "Service", "PodDisruptionBudget", "ScaledObject", "ServiceMonitor", "ConfigMap"} <= kinds
    kustomization = one("Kustomization")
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_deployment_probes_resources_and_artifact():
    deployment = one("Deployment")
    spec = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    (container,) = spec["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    # memory sized from the measured ~830-890 MB RSS with the demo artifact, with headroom
    res = container["resources"]
    assert res["requests"] == res["limits"], "Guaranteed QoS: no CPU throttling, no eviction first"
    assert _bytes(res["requests"]["memory"]) >= 900 * 2**20
    # the artifact comes from the init container through a shared volume, read-only for the service
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    (init,) = spec["initContainers"]
    assert {m["name"] for m in init["volumeMounts"]} & set(mounts) == {"artifact"}
    assert mounts["artifact"].get("readOnly") is True


def test_the_routes_the_probes_use_exist():
    from service.main import create_app
    from service.settings import Settings

    paths = set(create_app(Settings()).openapi()["paths"])
    assert {"/readyz", "/healthz", "/metrics"} <= paths


def test_configmap_names_only_real_settings():
    from service.settings import Settings

    config = one("ConfigMap")["data"]
    fields = set(Settings.model_fields)
    for name, value in config.items():
        assert name.startswith("HLM_") and name[4:].lower() in fields, f"{name} is not a setting"
    settings = Settings(**{name[4:].lower(): value for name, value in config.items()})
    assert settings.index_backend == "milvus" and str(settings.artifact_dir) == "/artifact"


def test_service_pdb_and_servicemonitor_select_the_pods():
    labels = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    service = one("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    pdb = one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    monitor = one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"
    assert re.fullmatch(r"\d+s", endpoint["interval"])


def test_scaledobject_targets_the_deployment_on_p99_and_throughput():
    scaled = one("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    deployment = one("Deployment")
    assert target["name"] == deployment["metadata"]["name"] and target.get("kind", "Deployment") == "Deployment"
    assert scaled["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["minReplicaCount"] >= 2, "one replica cannot be drained without an outage"
    triggers = {t["name"]: t for t in spec["triggers"]}
    assert set(triggers) == {"p99-latency", "throughput"}
    for trigger in triggers.values():
        assert trigger["type"] == "prometheus"
        assert trigger["metricType"] in ("Value", "AverageValue", "Utilization")
        meta = trigger["metadata"]
        assert {"serverAddress", "query", "threshold"} <= set(meta)
        assert meta["serverAddress"].startswith("http")
        float(meta["threshold"])  # KEDA takes it as a string holding a number
        assert meta["query"].count("(") == meta["query"].count(")")
    # the p99 trigger: a ratio to its target (Value), below the 15 ms SLO
    assert triggers["p99-latency"]["metricType"] == "Value"
    assert "histogram_quantile(0.99" in triggers["p99-latency"]["metadata"]["query"]
    assert float(triggers["p99-latency"]["metadata"]["threshold"]) < 0.015
    assert triggers["throughput"]["metricType"] == "AverageValue"


def test_the_queries_use_metrics_the_service_exports():
    from service.metrics import Metrics

    exported = {family.name for family in Metrics().registry.collect()}
    for trigger in one("ScaledObject")["spec"]["triggers"]:
        for name in re.findall(r"\b(hlm_[a-z_]+?)(?:_bucket|_count|_sum)?\{", trigger["metadata"]["query"]):
            assert name in exported, f"{name} is not a metric of service/metrics.py"


def test_milvus_values_for_the_helm_chart():
    values = yaml.safe_load((ROOT / "deploy" / "milvus" / "values.yaml").read_text())
    assert values["cluster"]["enabled"] is True
    assert values["service"]["port"] == 19530
    for component in ("proxy", "queryNode", "indexNode", "dataNode"):
        part = values[component]
        assert isinstance(part["replicas"], int) and part["replicas"] >= 1
        requests = part["resources"]["requests"]
        assert _bytes(requests["memory"]) > 0 and float(str(requests["cpu"])) > 0
    # the Milvus config the chart merges into milvus.yaml must itself be YAML
    user = yaml.safe_load(values["extraConfigFiles"]["user.yaml"])
    assert user["dataCoord"]["segment"]["maxSize"] >= 1024
    # the service's URI points at this release's Service
    uri = one("ConfigMap")["data"]["HLM_MILVUS_URI"]
    assert uri.endswith(f":{values['service']['port']}") and "milvus.milvus.svc" in uri


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 10**3, "M": 10**6, "G": 10**9}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i?)?", str(quantity))
    assert match, f"not a quantity: {quantity}"
    return int(float(match.group(1)) * units.get(match.group(2) or "", 1))
