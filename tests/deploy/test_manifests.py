"""The Kubernetes manifests, without a cluster.

They are checked against Kubernetes' own schemas (kubernetes-validate) as files and as
kustomize renders them, and read the way `kubectl apply -f` and `-k` read them (kubectl's
`--local` mode); then what they say of the pods is held to the image and the settings.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from notifyworker.config import Settings
from tests.deploy.containerfile import image_uid, runtime_stage
from tests.deploy.tools import ROOT, run_tool, tool
from tests.manifests import (
    MANIFESTS,
    Doc,
    applied,
    applied_files,
    container,
    deployment,
    load,
    load_text,
    migrate_job,
    one,
    settings_data,
)

EXAMPLES = MANIFESTS / "examples"
# Applied on their own, never by `kubectl apply -f manifests/` or the Kustomization.
OPTIONAL = MANIFESTS / "optional"
DEV_OVERLAY = ROOT / "manifests-dev"

# The newest Kubernetes that kubernetes-validate (pinned 1.37.x in the dev extra) ships.
KUBERNETES_VERSION = "1.37.0"
# The image's WORKDIR, its one writable place (an emptyDir in the pods).
SCRATCH = "/tmp"  # noqa: S108 - a path inside the image, not a temporary file here
# What the worker needs after its grace for cancelling, handing jobs back and final writes.
FINAL_WRITES_SECONDS = 10


def kustomization(folder: Path) -> Doc:
    docs = load(folder / "Kustomization")
    assert len(docs) == 1
    return docs[0]


def test_manifests_validate_against_kubernetes() -> None:
    files = [
        *applied_files(),
        *sorted(EXAMPLES.glob("*.yaml")),
        *sorted(DEV_OVERLAY.glob("*.yaml")),
        *sorted(OPTIONAL.glob("*.yaml")),
    ]
    result = run_tool(tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, *files)
    assert result.returncode == 0, result.stdout + result.stderr
    passed = [line for line in result.stdout.splitlines() if " passed for resource " in line]
    assert len(passed) == sum(len(load(path)) for path in files), result.stdout
    assert "WARN" not in result.stdout + result.stderr


@pytest.mark.parametrize("folder", [MANIFESTS, DEV_OVERLAY], ids=lambda p: p.name)
def test_kustomize_renders_valid_objects(folder: Path) -> None:
    rendered = run_tool(tool("kubectl"), "kustomize", folder)
    assert rendered.returncode == 0, rendered.stderr
    docs = load_text(rendered.stdout)
    expected = {(d["kind"], d["metadata"]["name"]) for d in applied()}
    if folder == DEV_OVERLAY:
        expected |= {
            (d["kind"], d["metadata"]["name"]) for p in folder.glob("*.yaml") for d in load(p)
        }
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} == expected
    result = run_tool(
        tool("kubernetes-validate"),
        "--strict",
        "-k",
        KUBERNETES_VERSION,
        "-",
        stdin=rendered.stdout,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed for resource ") == len(docs), result.stdout


def test_apply_f_and_apply_k_read_the_same_objects() -> None:
    """kubectl's --local mode reads files exactly as `apply` does, without a server."""
    kubectl = tool("kubectl")
    by_file = run_tool(kubectl, "label", "--local", "-o", "name", "-f", MANIFESTS, "probe=1")
    by_kustomize = run_tool(kubectl, "label", "--local", "-o", "name", "-k", MANIFESTS, "probe=1")
    assert by_file.returncode == 0, by_file.stderr
    assert by_kustomize.returncode == 0, by_kustomize.stderr
    names = set(by_file.stdout.split())
    assert names == set(by_kustomize.stdout.split())
    assert len(names) == len(applied())
    assert not any(name.startswith("kustomization.") for name in names)


def test_kustomizations_list_every_file() -> None:
    # Named `Kustomization`, which kustomize reads and `kubectl apply -f` skips; a
    # kustomization.yaml would be read by -f too, and fail as an object of no known kind.
    assert not list(MANIFESTS.glob("kustomization.*"))
    assert kustomization(MANIFESTS)["resources"] == [p.name for p in applied_files()]
    # An overlay cannot live inside its base (kustomize refuses the cycle).
    assert kustomization(DEV_OVERLAY)["resources"] == [
        "../manifests",
        *sorted(p.name for p in DEV_OVERLAY.glob("*.yaml")),
    ]
    optional = [*OPTIONAL.glob("*.yaml")]
    for path in [
        *applied_files(),
        *DEV_OVERLAY.glob("*.yaml"),
        *EXAMPLES.glob("*.yaml"),
        *optional,
    ]:
        assert path.read_text().startswith("#"), f"{path.name}: start with what it is, what to edit"


def test_everything_is_in_the_namespace() -> None:
    docs = applied()
    namespace = one(docs, "Namespace")["metadata"]["name"]
    others = [*EXAMPLES.glob("*.yaml"), *OPTIONAL.glob("*.yaml")]
    for doc in [*docs, *(d for p in others for d in load(p))]:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, doc["metadata"]
    # Pod Security Admission holds every pod to what the next test checks.
    assert (
        one(docs, "Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
        == "restricted"
    )


def test_the_database_secret_is_referenced_and_only_an_example() -> None:
    # Re-applying the folder must never reset a real Secret to a placeholder.
    assert not [doc for doc in applied() if doc["kind"] == "Secret"]
    references = set()
    for workload in (deployment(), migrate_job()):
        (variable,) = [e for e in container(workload)["env"] if e["name"] == "DATABASE_URL"]
        ref = variable["valueFrom"]["secretKeyRef"]
        references.add((ref["name"], ref["key"]))
    assert references == {("notifyworker-database", "DATABASE_URL")}
    example = one(load(EXAMPLES / "database-secret.yaml"), "Secret", "notifyworker-database")
    assert "CHANGE-ME" in example["stringData"]["DATABASE_URL"]
    dev = one(load(DEV_OVERLAY / "secrets.yaml"), "Secret", "notifyworker-database")
    assert set(dev["stringData"]) == set(example["stringData"]) == {"DATABASE_URL"}


def pod_specs() -> Iterator[tuple[str, Doc]]:
    for doc in [*applied(), *(d for p in OPTIONAL.glob("*.yaml") for d in load(p))]:
        if doc["kind"] in {"Deployment", "Job"}:
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def test_pods_run_locked_down_as_the_image_user() -> None:
    uid = image_uid()
    for name, pod in pod_specs():
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True, name
        assert context["runAsUser"] == uid, name
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["enableServiceLinks"] is False, name
        for box in pod["containers"]:
            sc = box["securityContext"]
            assert sc["runAsNonRoot"] is True, name
            assert sc["runAsUser"] == uid, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
            assert not sc.get("privileged"), name
            limits, requests = box["resources"]["limits"], box["resources"]["requests"]
            assert {"cpu", "memory"} <= set(limits) & set(requests), name
            tmp = [m for m in box["volumeMounts"] if m["mountPath"] == SCRATCH]
            assert len(tmp) == 1, name
            (volume,) = [v for v in pod["volumes"] if v["name"] == tmp[0]["name"]]
            assert "emptyDir" in volume, name
    assert runtime_stage().last("WORKDIR").args == SCRATCH


def test_worker_deployment_rolls_and_probes() -> None:
    workers = deployment()
    spec = workers["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    worker = container(workers)
    assert [e["configMapRef"]["name"] for e in worker["envFrom"]] == ["notifyworker"]
    (port,) = worker["ports"]
    health_port = int(settings_data()["NOTIFYWORKER_HEALTH_PORT"])
    assert port == {"name": "http", "containerPort": health_port, "protocol": "TCP"}
    assert runtime_stage().last("EXPOSE").args == str(health_port)
    for probe, path in (
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/livez"),
    ):
        assert worker[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(health_port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_termination_grace_outlasts_the_shutdown_grace() -> None:
    grace = float(settings_data()["NOTIFYWORKER_SHUTDOWN_GRACE"])
    termination = deployment()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert termination >= grace + FINAL_WRITES_SECONDS, (
        f"SIGKILL after {termination}s would cut a {grace}s shutdown grace and its final writes"
    )


def test_disruption_budget_covers_the_workers_only() -> None:
    budget = one(applied(), "PodDisruptionBudget")
    selector = budget["spec"]["selector"]["matchLabels"]
    assert selector == deployment()["spec"]["selector"]["matchLabels"]
    assert budget["spec"]["minAvailable"] == 1 < deployment()["spec"]["replicas"]
    job_labels = migrate_job()["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= job_labels.items()


def test_migration_job_is_bounded() -> None:
    spec = migrate_job()["spec"]
    assert spec["backoffLimit"] >= 1
    assert spec["ttlSecondsAfterFinished"] > 0
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert container(migrate_job())["envFrom"] == container(deployment())["envFrom"]


def test_configmap_holds_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    data = settings_data()
    known = {f"NOTIFYWORKER_{name.upper()}" for name in Settings.model_fields}
    unknown = set(data) - known
    assert not unknown, f"no such settings: {sorted(unknown)}"
    assert "NOTIFYWORKER_DATABASE_URL" not in data
    assert data["NOTIFYWORKER_LOG_FORMAT"] in {"auto", "json", "text"}
    for name in os.environ:
        if name.startswith("NOTIFYWORKER_"):
            monkeypatch.delenv(name)
    for name, value in data.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.shutdown_grace == float(data["NOTIFYWORKER_SHUTDOWN_GRACE"])


def test_the_dashboard_is_optional_and_reachable_only_inside_the_cluster() -> None:
    docs = load(OPTIONAL / "dashboard.yaml")
    board, service = one(docs, "Deployment"), one(docs, "Service")
    assert {(d["kind"], d["metadata"]["name"]) for d in applied()}.isdisjoint(
        {(d["kind"], d["metadata"]["name"]) for d in docs}
    )
    assert service["spec"]["type"] == "ClusterIP"
    box = container(board)
    assert box["args"][0] == "dashboard"
    (port,) = box["ports"]
    # Its own port, never the workers' probe port.
    worker_ports = {p["containerPort"] for p in container(deployment())["ports"]}
    assert port["containerPort"] == 8000
    assert port["containerPort"] not in worker_ports
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    assert service["spec"]["selector"] == board["spec"]["selector"]["matchLabels"]
    assert (
        not service["spec"]["selector"].items()
        <= deployment()["spec"]["selector"]["matchLabels"].items()
    )
    env = {e["name"]: e for e in box["env"]}
    token = env["NOTIFYWORKER_DASHBOARD_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token["optional"] is True  # no Secret: read-only
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "notifyworker-database"
