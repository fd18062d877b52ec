"""deploy/kubernetes renders offline (kubectl kustomize, pinned from PyPI), validates with
`kubernetes-validate --strict`, and the rendered objects say what docs/kubernetes.md promises."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common.config import Settings
from tests.helpers import ROOT

BIN = Path(sys.executable).parent
OVERLAYS = ("base", "overlays/production")


def render(layer: str) -> str:
    done = subprocess.run(
        [str(BIN / "kubectl"), "kustomize", str(ROOT / "deploy" / "kubernetes" / layer)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Any]]:
    text = render(request.param)
    path = tmp_path_factory.mktemp("manifests") / "rendered.yaml"
    path.write_text(text)
    return path, [doc for doc in yaml.safe_load_all(text) if doc]


def find(objects: list[Any], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name)]
    assert len(matches) == 1, f"{kind} {name}: {[o['metadata']['name'] for o in objects if o['kind'] == kind]}"
    return matches[0]


def test_every_object_passes_strict_validation(rendered: tuple[Path, list[Any]]) -> None:
    path, objects = rendered
    done = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    passed = re.findall(r"passed for resource (\S+)", done.stdout + done.stderr)
    core = [o for o in objects if o["kind"] != "ServiceMonitor"]
    assert len(passed) == len(core), done.stdout + done.stderr
    # The one kind without a schema offline is the Prometheus Operator's CRD; its fields are checked below.
    unknown = re.findall(r"Couldn't find schema for kind (\S+)", done.stdout + done.stderr)
    assert unknown == ["ServiceMonitor"], done.stdout + done.stderr
    print("\nrendered:", ", ".join(f"{o['kind']}/{o['metadata']['name']}" for o in objects))


def config(objects: list[Any]) -> dict[str, str]:
    return dict(find(objects, "ConfigMap", "scribe-config")["data"])


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(only)


def port(address: str) -> int:
    return int(address.rpartition(":")[2])


def test_the_configuration_is_one_scribe_accepts(rendered: tuple[Path, list[Any]], tmp_path: Path) -> None:
    data = config(rendered[1])
    # The *_FILE paths exist only in the pods (Secrets); everything else goes through the settings model.
    env = {k: v for k, v in data.items() if not k.endswith("_FILE")}
    settings = Settings.from_env({**env, "SCRIBE_ENV_FILE": str(tmp_path / "none"), "ALLOW_INSECURE": "false"})
    assert settings.dns_workers_per_host == settings.gpu_scale_workers
    assert settings.max_connection_age_s > 0
    for name in ("TLS_CERT_FILE", "TLS_KEY_FILE", "WORKER_TLS_CA_FILE", "AUTH_TOKENS_FILE"):
        assert data[name], name


def test_worker_pods_hold_one_gpu_each_with_their_workers_behind_a_headless_service(
    rendered: tuple[Path, list[Any]],
) -> None:
    objects = rendered[1]
    data = config(objects)
    worker = find(objects, "Deployment", "scribe-worker")
    c = container(worker)
    assert c["args"] == ["worker-host"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    workers = int(data["GPU_SCALE_WORKERS"])
    base = port(data["WORKER_LISTEN"])
    worker_ports = {p["name"]: p["containerPort"] for p in c["ports"] if p["name"].startswith("worker-")}
    assert worker_ports == {f"worker-{n}": base + n for n in range(workers)}

    service = find(objects, "Service", "scribe-worker")
    assert service["spec"]["clusterIP"] == "None"
    labels = worker["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == worker_ports
    # The gateways resolve exactly this Service, on worker 00's port.
    assert data["STATIC_WORKERS"] == f"dns:///{service['metadata']['name']}:{base}"

    # Native gRPC probes on the plaintext health port; the startup probe waits out model loading.
    probe_port = port(data["HEALTH_PROBE_ADDRESS"])
    assert {"name": "probe", "containerPort": probe_port} in c["ports"]
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[kind]["grpc"]["port"] == probe_port, kind
    assert c["livenessProbe"]["grpc"]["service"] == "liveness"
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 180
    # Draining: supervisord waits stopwaitsecs for each worker's 25 s drain; the pod must outlast that.
    conf = configparser.RawConfigParser()
    conf.read(ROOT / "deploy" / "worker-host.conf")
    stopwait = conf.getint("program:gpu_worker", "stopwaitsecs")
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > stopwait


def test_gateways_are_replicated_budgeted_and_reconnect_their_clients(rendered: tuple[Path, list[Any]]) -> None:
    objects = rendered[1]
    gateway = find(objects, "Deployment", "scribe-gateway")
    assert gateway["spec"]["replicas"] >= 2
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    service = find(objects, "Service", "scribe-gateway")
    assert service["spec"].get("clusterIP") != "None" and service["spec"]["selector"].items() <= labels.items()
    assert port(config(objects)["GATEWAY_ADDRESS"]) in [p["containerPort"] for p in container(gateway)["ports"]]
    pdb = find(objects, "PodDisruptionBudget", "scribe-gateway")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items() and pdb["spec"]["minAvailable"] >= 1
    c = container(gateway)
    assert c["args"] == ["gateway"]
    assert c["readinessProbe"]["grpc"]["port"] == port(config(objects)["HEALTH_PROBE_ADDRESS"])
    assert c["livenessProbe"]["grpc"]["service"] == "liveness"


def test_tls_and_tokens_come_from_secrets(rendered: tuple[Path, list[Any]]) -> None:
    objects = rendered[1]
    data = config(objects)
    for name in ("scribe-worker", "scribe-gateway"):
        deployment = find(objects, "Deployment", name)
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        mounts = {m["mountPath"]: m["name"] for m in container(deployment)["volumeMounts"]}
        for variable, secret in (
            ("TLS_CERT_FILE", "scribe-tls"),
            ("TLS_KEY_FILE", "scribe-tls"),
            ("WORKER_TLS_CA_FILE", "scribe-tls"),
            ("AUTH_TOKENS_FILE", "scribe-tokens"),
        ):
            folder = str(Path(data[variable]).parent)
            assert secrets.get(mounts.get(folder, "")) == secret, (name, variable)


def test_gateway_replicas_share_one_job_store_and_one_audio_volume(rendered: tuple[Path, list[Any]]) -> None:
    objects = rendered[1]
    data = config(objects)
    gateway = find(objects, "Deployment", "scribe-gateway")
    c = container(gateway)
    # The jobs: PostgreSQL, its URL (with a password) from a Secret, never in the ConfigMap.
    assert "JOBS_DATABASE_URL" not in data
    (database,) = [e for e in c.get("env", []) if e["name"] == "JOBS_DATABASE_URL"]
    assert database["valueFrom"]["secretKeyRef"] == {"name": "scribe-jobs-db", "key": "url"}
    # Their audio: JOB_SPOOL_DIR on a volume every replica mounts read-write at once.
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in gateway["spec"]["template"]["spec"]["volumes"]}
    claim = volumes[mounts[data["JOB_SPOOL_DIR"]]]["persistentVolumeClaim"]["claimName"]
    pvc = find(objects, "PersistentVolumeClaim", claim)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"] and gateway["spec"]["replicas"] >= 2


def test_metrics_are_scraped_and_the_workers_scale_on_the_queue(rendered: tuple[Path, list[Any]]) -> None:
    objects = rendered[1]
    monitor = find(objects, "ServiceMonitor", "scribe-gateway")
    service = find(objects, "Service", "scribe-gateway")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    hpa = find(objects, "HorizontalPodAutoscaler", "scribe-worker")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "scribe-worker"}
    (metric,) = hpa["spec"]["metrics"]
    name = metric["external"]["metric"]["name"]
    # The gauge the gateway exports under that name.
    assert f'"{name}"' in (ROOT / "services" / "gateway" / "metrics.py").read_text()
