"""The Kubernetes manifests under serving/deploy/: valid for a pinned Kubernetes release, and consistent.

Schemas come from the kubernetes-validate package (no network, no cluster).
Beyond the schemas, the pieces must fit: the Service reaches the Deployment's
ports, the probes and the scrape annotation name Triton's real ports, the
HorizontalPodAutoscaler scales the Deployment, the Job's arguments are a
valid ddn-generate command line whose shard count is the Job's completions,
and the init container's script links exactly the production entries.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from ddn.serving.generate_cli import main as generate_main
from ddn.serving.shards import Shard

KUBERNETES_VERSION = "1.33"
DEPLOY = Path(__file__).resolve().parent.parent / "serving" / "deploy"
MANIFESTS = sorted(p for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.fixture(scope="module")
def resources() -> dict[tuple[str, str], dict]:
    """(kind, name) -> document, over every manifest."""
    found = {}
    for path in MANIFESTS:
        for document in yaml.safe_load_all(path.read_text()):
            found[(document["kind"], document["metadata"]["name"])] = document
    return found


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_for_the_pinned_kubernetes(path: Path) -> None:
    documents = list(yaml.safe_load_all(path.read_text()))
    assert documents
    for document in documents:
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name}: {document['kind']} {document['metadata']['name']}: {exc.message} "
                        f"at {'.'.join(map(str, exc.path))}")


def test_validation_catches_a_broken_manifest(resources: dict) -> None:
    """The check above can fail: a misspelt field and a wrong type are refused."""
    deployment = resources[("Deployment", "ddn-triton")]
    misspelt = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError, match="replica"):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSION, strict=True)
    job = resources[("Job", "ddn-generate")]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({**job, "spec": {**job["spec"], "completions": "four"}}, KUBERNETES_VERSION)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in MANIFESTS]


def container_ports(pod_spec: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for c in pod_spec["containers"] for p in c.get("ports", [])}


def flags(args: list[str]) -> dict[str, str]:
    return dict(a.removeprefix("--").split("=", 1) for a in args if a.startswith("--") and "=" in a)


def test_triton_deployment_serves_the_repository_the_way_the_project_does(resources: dict) -> None:
    deployment = resources[("Deployment", "ddn-triton")]
    pod = deployment["spec"]["template"]
    (triton,) = pod["spec"]["containers"]
    args, ports = flags(triton["args"]), container_ports(pod["spec"])
    assert args["model-control-mode"] == "none" and args["strict-readiness"] == "true"
    assert ports == {"http": int(args["http-port"]), "grpc": int(args["grpc-port"]),
                     "metrics": int(args["metrics-port"])}
    assert triton["resources"]["requests"]["nvidia.com/gpu"] == triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert triton["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert triton["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert triton["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    # Triton reads the folder of links; the links point into the repository volume, mounted at the same path.
    mounts = {m["name"]: m["mountPath"] for m in triton["volumeMounts"]}
    assert args["model-repository"] == mounts["models"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    claim = volumes["model-repository"]["persistentVolumeClaim"]["claimName"]
    assert ("PersistentVolumeClaim", claim) in resources
    assert "replicas" not in deployment["spec"]  # the autoscaler owns the count


def test_init_container_links_every_entry_but_the_python_twins(resources: dict, tmp_path: Path) -> None:
    pod = resources[("Deployment", "ddn-triton")]["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    (triton,) = pod["containers"]
    assert mounts == {m["name"]: m["mountPath"] for m in triton["volumeMounts"] if m["name"] in mounts}
    repository, models = tmp_path / "repository", tmp_path / "models"
    for entry in ("mnist", "mnist_python", "mnist_encode", "mnist_encode_python", "mnist_trt"):
        (repository / entry / "1").mkdir(parents=True)
    models.mkdir()
    shell, flag, script = init["command"]
    script = script.replace(mounts["model-repository"], str(repository)).replace(mounts["models"], str(models))
    subprocess.run([shell, flag, script], check=True, capture_output=True)
    assert sorted(p.name for p in models.iterdir()) == ["mnist", "mnist_encode", "mnist_trt"]
    assert all((models / name).resolve() == repository / name for name in ("mnist", "mnist_encode", "mnist_trt"))


def test_service_reaches_the_triton_pods(resources: dict) -> None:
    service = resources[("Service", "ddn-triton")]
    pod = resources[("Deployment", "ddn-triton")]["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    ports = container_ports(pod["spec"])
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        name: (number, name) for name, number in ports.items()}


def test_autoscaler_scales_the_deployment_on_a_requested_resource(resources: dict) -> None:
    hpa = resources[("HorizontalPodAutoscaler", "ddn-triton")]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ddn-triton"}
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    (triton,) = resources[("Deployment", "ddn-triton")]["spec"]["template"]["spec"]["containers"]
    for metric in hpa["metrics"]:  # utilisation is relative to the request, which must exist
        assert metric["resource"]["name"] in triton["resources"]["requests"]


def test_indexed_job_runs_one_shard_per_index_against_the_service(resources: dict) -> None:
    job = resources[("Job", "ddn-generate")]["spec"]
    assert job["completionMode"] == "Indexed" and job["completions"] == job["parallelism"]
    (container,) = job["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    index_variable = "SHARD_INDEX"
    assert env[index_variable]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert container["command"] == ["ddn-generate"]
    for index in (0, job["completions"] - 1):
        args = [a.replace(f"$({index_variable})", str(index)) for a in container["args"]]
        context = generate_main.make_context("ddn-generate", args)  # ddn-generate's own option parsing
        assert context.params["shard"] == Shard(index, job["completions"])
    service = resources[("Service", "ddn-triton")]
    grpc_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert context.params["urls"] == (f"{service['metadata']['name']}:{grpc_port}",)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert str(context.params["out_dir"]) == mounts["samples"]
    volumes = {v["name"]: v for v in job["template"]["spec"]["volumes"]}
    assert ("PersistentVolumeClaim", volumes["samples"]["persistentVolumeClaim"]["claimName"]) in resources
    (rule,) = job["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailIndex" and rule["onExitCodes"]["values"] == [2]  # usage errors: no retry
