"""deploy/: the Kubernetes manifests against the Kubernetes schemas (offline, strict: an
unknown field fails), what a schema cannot check (a read-only root, probes, selectors that
match, a grace period that outlasts the shutdown), the Grafana dashboard's metric names, and
`serve` itself on a read-only working directory (README, *Deploying on Kubernetes*)."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]

from sso_broker.config import Settings
from tests.conftest import (
    POSTGRES_URL,
    TEST_KEY,
    _create_postgres_database,
    _drop_postgres_database,
)
from tests.e2e.stack import free_port, in_thread, stop, wait_for

REPO = Path(__file__).resolve().parents[1]
KUBERNETES = REPO / "deploy" / "kubernetes"
DASHBOARD = REPO / "deploy" / "grafana" / "sso-broker-dashboard.json"
# The oldest Kubernetes release still commonly run; the manifests use nothing newer.
KUBERNETES_VERSION = "1.30"
SECRET_EXAMPLE = "secret.example.yaml"
KUSTOMIZATION = "kustomization.yaml"
PORT = 8000  # the image's `serve --port` (Dockerfile)
TMP = "/tmp"  # noqa: S108 - the pods' one writable place, an emptyDir

# The metric families the service exposes (src/sso_broker/metrics.py) and their kinds.
FAMILIES = {
    "sso_broker_sign_ins": "counter",
    "sso_broker_http_request_duration_seconds": "histogram",
    "sso_broker_idp_request_duration_seconds": "histogram",
    "sso_broker_rate_limited": "counter",
    "sso_broker_cache_requests": "counter",
    "sso_broker_db_connections_in_use": "gauge",
    "sso_broker_idp_circuit_open": "counter",
    "sso_broker_idp_circuits_open": "gauge",
    "sso_broker_client_secret_expiry_seconds": "gauge",
    "sso_broker_certificate_expiry_seconds": "gauge",
}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
SERIES = {name + suffix for name, kind in FAMILIES.items() for suffix in SUFFIXES[kind]}

# --- loading ---------------------------------------------------------------------------------


def manifest_files() -> list[Path]:
    return sorted(p for p in KUBERNETES.glob("*.yaml") if p.name != KUSTOMIZATION)


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def objects() -> dict[str, dict[str, Any]]:
    """Every object kustomize applies, by kind (one of each)."""
    found: dict[str, dict[str, Any]] = {}
    for path in manifest_files():
        if path.name == SECRET_EXAMPLE:
            continue
        for obj in load(path):
            assert obj["kind"] not in found, f"a second {obj['kind']} in {path.name}"
            found[obj["kind"]] = obj
    return found


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for kind, obj in objects().items():
        template = obj.get("spec", {}).get("template")
        if template is not None:
            yield kind, template["spec"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


def server() -> tuple[dict[str, Any], dict[str, Any]]:
    """The Deployment's pod spec and its one container."""
    spec = objects()["Deployment"]["spec"]["template"]["spec"]
    assert len(spec["containers"]) == 1
    return spec, spec["containers"][0]


def dockerfile_instruction(name: str) -> list[str]:
    for line in (REPO / "Dockerfile").read_text(encoding="utf-8").splitlines():
        if line.startswith(f"{name} "):
            value: list[str] = json.loads(line.removeprefix(f"{name} "))
            return value
    raise AssertionError(f"no {name} in the Dockerfile")


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "k": 1e3 / 2**20, "M": 1e6 / 2**20}
    for unit, factor in units.items():
        if quantity.endswith(unit):
            return float(quantity.removesuffix(unit)) * factor
    return float(quantity) / 2**20


def peak_rss_per_worker() -> float:
    """The highest "peak RSS/worker MiB" of the README's latest benchmark run."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("#### Service processes", 1)[1].split("\n#### ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    column = header.index("peak RSS/worker MiB")
    peaks = [
        float(value) for row in rows[2:] for value in row.strip("|").split("|")[column].split(",")
    ]
    assert peaks, "no peak RSS in README's Performance section"
    return max(peaks)


# --- schemas ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", manifest_files(), ids=lambda path: path.name)
def test_every_manifest_is_valid_for_kubernetes_strictly(path: Path) -> None:
    documents = load(path)
    assert documents, f"{path.name} holds no object"
    for document in documents:
        validated = kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        assert validated == KUBERNETES_VERSION


def test_a_manifest_with_an_unknown_field_fails_validation() -> None:
    """The check bites: strict mode refuses a misspelt field a lenient one would drop."""
    deployment = objects()["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_the_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    kustomization = load(KUBERNETES / KUSTOMIZATION)[0]
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    # The example holds placeholders: applying it would overwrite the real Secret.
    assert SECRET_EXAMPLE not in listed
    assert set(listed) == {p.name for p in manifest_files()} - {SECRET_EXAMPLE}
    assert set(objects()) == {"Deployment", "Service", "PodDisruptionBudget", "Job"}


# --- the pods --------------------------------------------------------------------------------


def test_every_container_runs_unprivileged_on_a_read_only_root_with_a_writable_tmp() -> None:
    for kind, spec in pod_specs():
        pod = spec.get("securityContext", {})
        assert spec.get("automountServiceAccountToken") is False, kind
        volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
        for container in containers(spec):
            where = f"{kind} {container['name']}"
            own = container.get("securityContext", {})
            effective = {**pod, **own}  # the container's own settings win
            assert effective.get("runAsNonRoot") is True, where
            assert effective.get("runAsUser") == 10001, where  # the image's `sso` user
            assert effective.get("runAsGroup") == 10001, where
            assert effective.get("seccompProfile") == {"type": "RuntimeDefault"}, where
            assert own.get("readOnlyRootFilesystem") is True, where
            assert own.get("allowPrivilegeEscalation") is False, where
            assert own.get("privileged", False) is False, where
            assert own.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not own.get("capabilities", {}).get("add"), where
            mounts = [m for m in container.get("volumeMounts", []) if m["mountPath"] == TMP]
            assert len(mounts) == 1, f"{where}: nothing writable at /tmp"
            assert mounts[0].get("readOnly", False) is False, where
            assert "emptyDir" in volumes[mounts[0]["name"]], where
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), where
            assert "memory" in resources.get("limits", {}), where


def test_no_service_link_variables_reach_the_settings() -> None:
    """The Service `sso-broker` would give every pod SSO_BROKER_PORT=tcp://… and friends,
    which share the prefix of the service's own settings."""
    for kind, spec in pod_specs():
        assert spec.get("enableServiceLinks") is False, kind


def test_every_sso_broker_variable_is_a_setting() -> None:
    """Settings ignore unknown variables, so a misspelt one would be silently dropped."""
    known = set(Settings.model_fields)
    for kind, spec in pod_specs():
        for container in containers(spec):
            for name in env(container):
                if name.startswith("SSO_BROKER_"):
                    assert name.removeprefix("SSO_BROKER_").lower() in known, f"{kind}: {name}"


def test_every_secret_reference_names_a_key_of_the_secret_example() -> None:
    secret = load(KUBERNETES / SECRET_EXAMPLE)[0]
    assert secret["kind"] == "Secret"
    keys = set(secret["stringData"])
    for kind, spec in pod_specs():
        referenced: set[str] = set()
        for container in containers(spec):
            assert "envFrom" not in container, kind
            for item in env(container).values():
                reference = item.get("valueFrom", {}).get("secretKeyRef")
                if reference is not None:
                    assert reference["name"] == secret["metadata"]["name"], kind
                    assert reference["key"] in keys, f"{kind}: {reference['key']}"
                    assert not reference.get("optional", False), kind
                    referenced.add(item["name"])
        # The server and the migration both need the database and the keys.
        assert {"SSO_BROKER_DATABASE_URL", "SSO_BROKER_ENCRYPTION_KEYS"} <= referenced, kind
    for key in keys:
        value = secret["stringData"][key]
        assert "CHANGE-ME" in value, f"{key}: an example must not look like a real secret"


def test_the_deployment_serves_the_image_default_with_probes_on_healthz_and_readyz() -> None:
    deployment = objects()["Deployment"]
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    _, container = server()
    # The image's entrypoint and command: `sso-broker serve --host 0.0.0.0 --port 8000`.
    assert "command" not in container
    assert "args" not in container
    assert dockerfile_instruction("ENTRYPOINT") == ["sso-broker"]
    command = dockerfile_instruction("CMD")
    assert command[0] == "serve"
    assert command[command.index("--port") + 1] == str(PORT)
    assert command[command.index("--host") + 1] == "0.0.0.0"  # noqa: S104 - in a pod, yes
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert list(ports.values()) == [PORT]

    def probe(name: str) -> str:
        get = container[name]["httpGet"]
        assert ports.get(get["port"], get["port"]) == PORT, name
        path: str = get["path"]
        return path

    assert probe("livenessProbe") == "/healthz"
    assert probe("readinessProbe") == "/readyz"
    assert probe("startupProbe") == "/healthz"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(PORT)
    assert annotations["prometheus.io/path"] == "/metrics"
    assert "PROMETHEUS_MULTIPROC_DIR" not in env(container)  # one worker per pod


def test_a_stopping_pod_gets_longer_than_its_shutdown_grace() -> None:
    spec, container = server()
    variables = env(container)
    assert variables["SSO_BROKER_LOG_FORMAT"]["value"] == "json"
    grace = float(variables["SSO_BROKER_SHUTDOWN_GRACE"]["value"])
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # Kubernetes' clock runs from the preStop hook: the sleep, then the graceful shutdown.
    assert spec["terminationGracePeriodSeconds"] > float(pre_stop[1]) + grace


def test_the_resources_cover_the_benchmarked_peak_memory() -> None:
    """A rerun of the benchmark whose workers outgrow the sizing fails here (README,
    *Performance*): the request must hold a worker's peak, the limit twice it."""
    _, container = server()
    resources = container["resources"]
    peak = peak_rss_per_worker()
    assert mebibytes(resources["requests"]["memory"]) > peak
    assert mebibytes(resources["limits"]["memory"]) >= 2 * peak


_COLUMNS_PROBE = (
    "import json; from sso_broker.cli import main; "
    "print(json.dumps([column for _, _, column, _ in main.__code__.co_positions()]))"
)


@pytest.mark.parametrize(("setting", "columns"), [("1", False), (None, True)])
def test_the_image_keeps_no_column_tables_in_code_objects(
    setting: str | None, columns: bool
) -> None:
    """The image sets PYTHONNODEBUGRANGES (README, *Performance*): code objects keep each
    instruction's line but not its columns, even when loaded from bytecode compiled with
    them, as the image's is; 0.6 MB of every worker."""
    runtime = (REPO / "Dockerfile").read_text(encoding="utf-8").split(" AS runtime", 1)[1]
    assert "PYTHONNODEBUGRANGES=1" in runtime
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONNODEBUGRANGES"}
    if setting is not None:
        environment["PYTHONNODEBUGRANGES"] = setting
    result = subprocess.run(  # noqa: S603 - this interpreter, a fixed probe
        [sys.executable, "-c", _COLUMNS_PROBE],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    found = json.loads(result.stdout)
    assert found
    assert any(column is not None for column in found) is columns


@pytest.mark.usefixtures("no_env")
def test_the_pod_environment_makes_valid_settings() -> None:
    """The plain values (and the example Secret's) pass the service's own validation."""
    secret = load(KUBERNETES / SECRET_EXAMPLE)[0]["stringData"]
    values: dict[str, str] = {}
    for name, item in env(server()[1]).items():
        if not name.startswith("SSO_BROKER_"):
            continue
        reference = item.get("valueFrom", {}).get("secretKeyRef")
        values[name.removeprefix("SSO_BROKER_").lower()] = (
            secret[reference["key"]] if reference else item["value"]
        )
    settings = Settings(_env_file=None, **values)  # type: ignore[arg-type]
    assert settings.is_postgres
    assert settings.log_format == "json"
    assert settings.secure_cookies  # an https:// public URL


async def test_the_probe_paths_answer_on_the_app(client: httpx.AsyncClient) -> None:
    """Every path the pods are probed on is a route of the app, and answers 200."""
    _, container = server()
    paths = {
        container[probe]["httpGet"]["path"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    for path in sorted(paths):
        response = await client.get(path)
        assert response.status_code == 200, path


def test_the_service_and_the_budget_select_the_server_pods_only() -> None:
    found = objects()
    deployment = found["Deployment"]
    server_labels = deployment["spec"]["template"]["metadata"]["labels"]
    migrate_labels = found["Job"]["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= server_labels.items()

    def selects(match: dict[str, str], labels: dict[str, str]) -> bool:
        return bool(match) and match.items() <= labels.items()

    service = found["Service"]["spec"]
    assert service["type"] == "ClusterIP"
    assert selects(service["selector"], server_labels)
    assert not selects(service["selector"], migrate_labels)
    [port] = service["ports"]
    assert (port["name"], port["port"]) == ("http", 80)
    _, container = server()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports.get(port["targetPort"], port["targetPort"]) == PORT

    budget = found["PodDisruptionBudget"]["spec"]
    assert set(budget["selector"]) == {"matchLabels"}
    assert selects(budget["selector"]["matchLabels"], server_labels)
    assert not selects(budget["selector"]["matchLabels"], migrate_labels)
    assert budget["minAvailable"] == 1 < deployment["spec"]["replicas"]


def test_the_job_runs_migrate_once_with_the_image_entrypoint() -> None:
    job = objects()["Job"]
    assert job["metadata"]["name"] == "sso-broker-migrate"
    spec = job["spec"]
    assert spec["backoffLimit"] <= 3
    assert spec["ttlSecondsAfterFinished"] > 0
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    [container] = pod["containers"]
    assert "command" not in container  # the image's entrypoint, `sso-broker`
    assert container["args"] == ["migrate"]
    assert container["image"] == server()[1]["image"]


# --- the Grafana dashboard -------------------------------------------------------------------


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    queries: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            queries.extend(target["expr"] for target in panel.get("targets", []))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if variable["type"] == "query":
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def test_the_dashboard_uses_only_the_services_metric_names() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
    used: set[str] = set()
    for query in dashboard_queries(dashboard):
        names = set(re.findall(r"\bsso_broker_\w+", query))
        assert names, f"a query on no metric of ours: {query}"
        assert names <= SERIES, f"unknown series {sorted(names - SERIES)} in {query}"
        used |= names
    # Every family has a panel.
    for name, kind in FAMILIES.items():
        assert any(name + suffix in used for suffix in SUFFIXES[kind]), name


def test_the_expiry_panels_turn_orange_at_30_days_and_red_at_7() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    expiry = [
        panel
        for panel in dashboard["panels"]
        if any("expiry_seconds" in target["expr"] for target in panel.get("targets", []))
    ]
    assert len(expiry) == 2
    for panel in expiry:
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert [step["value"] for step in steps] == [None, 7, 30], panel["title"]
        assert all("/ 86400" in target["expr"] for target in panel["targets"])


def test_the_metric_families_are_the_ones_the_service_defines() -> None:
    """A metric renamed in the service fails here until the dashboard follows."""
    metrics = pytest.importorskip("sso_broker.metrics")
    from prometheus_client.metrics import MetricWrapperBase

    defined = {
        family.name: family.type
        for value in vars(metrics).values()
        if isinstance(value, MetricWrapperBase)
        for family in value.describe()
    }
    source = inspect.getsource(metrics)
    for name, kind in FAMILIES.items():
        if name in defined:
            assert defined[name] == kind, name
        else:  # read at scrape time by a collector of the module's own
            assert f'"{name}"' in source, f"{name} is not defined in sso_broker.metrics"


# --- a read-only root ------------------------------------------------------------------------


@pytest.mark.skipif(not POSTGRES_URL, reason="needs SSO_BROKER_TEST_POSTGRES_URL")
def test_serve_writes_nothing_outside_tmp(tmp_path: Path) -> None:
    """`serve` as the pod runs it: PostgreSQL, bytecode never written, a working directory
    and home it must not write to (0555, and checked empty afterwards, since root ignores
    the mode), and TMPDIR the only writable place."""
    url = in_thread(_create_postgres_database)
    root = tmp_path / "root"
    temporary = tmp_path / "tmp"
    root.mkdir()
    temporary.mkdir()
    root.chmod(0o555)
    port = free_port()
    log = tmp_path / "serve.log"
    process = None
    try:
        with log.open("ab") as handle:
            process = subprocess.Popen(  # noqa: S603 - our own console script
                [str(Path(sys.executable).parent / "sso-broker"), "serve", "--port", str(port)],
                env={
                    "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
                    "HOME": str(root),
                    "TMPDIR": str(temporary),
                    "PYTHONDONTWRITEBYTECODE": "1",
                    "SSO_BROKER_DATABASE_URL": url,
                    "SSO_BROKER_ENCRYPTION_KEYS": TEST_KEY,
                    "SSO_BROKER_PUBLIC_URL": "https://sso.example.com",
                    "SSO_BROKER_LOG_FORMAT": "json",
                },
                cwd=root,
                stdout=handle,
                stderr=handle,
            )
            base = f"http://127.0.0.1:{port}"
            wait_for(f"{base}/readyz", process=process)
            assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200
            assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
            assert httpx.get(f"{base}/openapi.json", timeout=5).status_code == 200
            unknown = f"{base}/sso/00000000-0000-0000-0000-000000000000/initiate"
            assert httpx.get(unknown, timeout=5).status_code < 500
            stop(process)
        assert list(root.iterdir()) == []
        text = log.read_text(encoding="utf-8")
        assert not re.search(r"Read-only file system|Permission denied|Traceback", text), text
        levels = [json.loads(line)["level"] for line in text.splitlines() if line.strip()]
        assert "info" in levels, text
        assert not {"error", "critical"} & set(levels), text
    finally:
        if process is not None:
            stop(process)
        root.chmod(0o755)
        in_thread(lambda: _drop_postgres_database(url))
