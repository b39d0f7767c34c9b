"""The Kubernetes manifests under serving/deploy/: valid for a pinned Kubernetes release, consistent, locked down.

Schemas come from the kubernetes-validate package (no network, no cluster).
Beyond the schemas, the pieces must fit: the Services reach the Deployment's
gRPC port and nothing else, the probes and the scrape annotation name Triton's
real ports, the autoscaler scales the Deployment on the adapter rule's queue
time metric, the Job's arguments are a valid ddn-generate command line whose
shard count is the Job's completions, and the init container's script links
exactly the entries a real export's targets.txt gives the GPU server.

The policy check for a shared cluster reads the manifests (kustomize is not
needed: they are applied as written, with only images rewritten): every
container is non-root with a read-only root, no privilege escalation, no
capabilities and RuntimeDefault seccomp; the NetworkPolicy admits gRPC from the
client label and metrics from the monitoring Prometheus only; a drain keeps
pods serving. The Deployment's Triton arguments are also run on the real
Triton 2.51 binary: it must start with them, answer the kubelet's gRPC probe
and listen on gRPC and metrics only.
"""
from __future__ import annotations

import copy
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import kubernetes_validate
import numpy as np
import pytest
import yaml

from ddn.deployment_targets import TARGETS_FILE, Served, read_targets, render_targets
from ddn.export.repository import record_targets
from ddn.serving.admin_apis import restriction_flags
from ddn.serving.generate_cli import main as generate_main
from ddn.serving.shards import Shard

KUBERNETES_VERSION = "1.33"
DEPLOY = Path(__file__).resolve().parent.parent / "serving" / "deploy"
MANIFESTS = sorted(p for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")
ADAPTER_VALUES = DEPLOY / "prometheus-adapter" / "values.yaml"
CLIENT_LABEL = {"ddn-serve/client": "true"}


@pytest.fixture(scope="module")
def resources() -> dict[tuple[str, str], dict]:
    """(kind, name) -> document, over every manifest."""
    found = {}
    for path in MANIFESTS:
        for document in yaml.safe_load_all(path.read_text()):
            found[(document["kind"], document["metadata"]["name"])] = document
    return found


def pod_templates(resources: dict) -> dict[str, dict]:
    """Workload name -> its pod template, for every workload in the manifests."""
    return {name: doc["spec"]["template"] for (kind, name), doc in resources.items() if kind in ("Deployment", "Job")}


def triton_pod(resources: dict) -> dict:
    return resources[("Deployment", "ddn-triton")]["spec"]["template"]


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


def test_kustomization_lists_every_manifest_and_every_image(resources: dict) -> None:
    """One place rewrites every image (to a registry, and to a digest: the README's pinning step)."""
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in MANIFESTS]
    listed = {entry["name"]: entry for entry in kustomization["images"]}
    for pod in pod_templates(resources).values():
        for container in containers(pod["spec"]):
            name, tag = container["image"].rsplit(":", 1)
            assert listed[name]["newTag"] == tag, container["name"]


def containers(pod_spec: dict) -> list[dict]:
    return pod_spec.get("initContainers", []) + pod_spec["containers"]


def container_ports(pod_spec: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for c in pod_spec["containers"] for p in c.get("ports", [])}


def flags(args: list[str]) -> dict[str, str]:
    return dict(a.removeprefix("--").split("=", 1) for a in args if a.startswith("--") and "=" in a)


def test_triton_runs_with_the_restrictions_ddn_serve_uses(resources: dict) -> None:
    pod = triton_pod(resources)
    (triton,) = pod["spec"]["containers"]
    args, ports = flags(triton["args"]), container_ports(pod["spec"])
    assert args["model-control-mode"] == "none" and args["strict-readiness"] == "true"
    assert args["exit-on-error"] == "true"
    assert set(restriction_flags()) <= set(triton["args"])  # shared-memory, logging and trace APIs closed
    # No HTTP frontend at all: the probes use gRPC, and the scraper the metrics port.
    assert args["allow-http"] == "false" and "http-port" not in args
    assert ports == {"grpc": int(args["grpc-port"]), "metrics": int(args["metrics-port"])}
    assert triton["resources"]["requests"]["nvidia.com/gpu"] == triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert triton[probe]["grpc"] == {"port": ports["grpc"]}, probe  # grpc.health.v1, checked below
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    # The pod keeps serving while it leaves the endpoints, and the grace period covers that and the drain.
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace > triton["lifecycle"]["preStop"]["sleep"]["seconds"] + int(args["exit-timeout-secs"])
    # Triton reads the folder of links; the links point into the repository volume, mounted at the same path.
    mounts = {m["name"]: m["mountPath"] for m in triton["volumeMounts"]}
    assert args["model-repository"] == mounts["models"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    claim = volumes["model-repository"]["persistentVolumeClaim"]["claimName"]
    assert ("PersistentVolumeClaim", claim) in resources
    assert "replicas" not in resources[("Deployment", "ddn-triton")]["spec"]  # the autoscaler owns the count


def run_init_container(pod: dict, repository: Path, models: Path) -> subprocess.CompletedProcess:
    """The init container's script, run by this host's sh on ``repository`` into the empty folder ``models``."""
    (init,) = pod["initContainers"]
    mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    (triton,) = pod["containers"]
    assert mounts == {m["name"]: m["mountPath"] for m in triton["volumeMounts"] if m["name"] in mounts}
    models.mkdir()
    shell, flag, script = init["command"]
    script = script.replace(mounts["model-repository"], str(repository)).replace(mounts["models"], str(models))
    return subprocess.run([shell, flag, script], capture_output=True, text=True)


def test_init_container_links_the_entries_the_export_states_for_the_gpu(resources: dict, tiny_repository: Path,
                                                                       tmp_path: Path) -> None:
    """A real export's targets.txt decides: production entries, seed step and ensembles; no python twin."""
    repository, models = tmp_path / "repository", tmp_path / "models"
    shutil.copytree(tiny_repository, repository, symlinks=True)
    # What --trt would add (no engine can be built here): the statement's gpu lines for the engine entries.
    trt = ["tiny_trt", "tiny_seeds_trt"]
    for entry in trt:
        (repository / entry / "1").mkdir(parents=True)
    record_targets(repository, [Served("gpu", entry, entry) for entry in trt], trt)
    # A python-backend entry the statement does not give the gpu target, whatever its name.
    shutil.copytree(repository / "tiny_python", repository / "tiny_denoise_py", symlinks=True)
    result = run_init_container(triton_pod(resources)["spec"], repository, models)
    assert result.returncode == 0, result.stderr
    served = ["tiny", "tiny_seed_codes", "tiny_seeds", "tiny_seeds_trt", "tiny_trt"]
    assert sorted(p.name for p in models.iterdir()) == served
    assert all((models / name).resolve() == repository / name for name in served)
    assert sorted(s.name for s in read_targets(repository) if s.target == "gpu") == served


def test_init_container_stops_on_a_repository_without_a_statement(resources: dict, tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    (repository / "mnist" / "1").mkdir(parents=True)
    result = run_init_container(triton_pod(resources)["spec"], repository, tmp_path / "models")
    assert result.returncode == 1 and not any((tmp_path / "models").iterdir())
    assert result.stderr == f"{repository}/targets.txt not found: export the models again with ddn-export\n"
    (repository / TARGETS_FILE).write_text(render_targets([Served("gpu", "mnist", "mnist"),
                                                           Served("gpu", "gone", "gone")]))
    shutil.rmtree(tmp_path / "models")
    result = run_init_container(triton_pod(resources)["spec"], repository, tmp_path / "models")
    assert result.returncode == 1 and "lists " + str(repository / "gone") + ", which is not there" in result.stderr


def test_services_expose_grpc_only_and_the_headless_one_lists_ready_pods(resources: dict) -> None:
    pod = triton_pod(resources)
    grpc_port = container_ports(pod["spec"])["grpc"]
    services = {name: doc["spec"] for (kind, name), doc in resources.items() if kind == "Service"}
    assert set(services) == {"ddn-triton", "ddn-triton-headless"}
    for name, service in services.items():
        assert service["selector"].items() <= pod["metadata"]["labels"].items(), name
        assert [(p["name"], p["port"], p["targetPort"]) for p in service["ports"]] == [
            ("grpc", grpc_port, "grpc")], name
    headless = services["ddn-triton-headless"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is False


def test_autoscaler_scales_the_deployment_on_the_adapters_queue_time(resources: dict) -> None:
    hpa = resources[("HorizontalPodAutoscaler", "ddn-triton")]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ddn-triton"}
    assert 2 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    (metric,) = hpa["metrics"]  # the queue time alone: no CPU utilisation
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    (rule,) = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    # The name the adapter gives the series (its regex rename), as the HPA asks for it.
    series = re.fullmatch(r"(\w+)\{.*\}", rule["seriesQuery"]).group(1)
    assert re.sub(rule["name"]["matches"], rule["name"]["as"], series) == metric["pods"]["metric"]["name"]
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    # Per pod: queue time accumulated over requests served, both over the same window.
    numerator, denominator = rule["metricsQuery"].split(" / ")
    window = re.search(r"\[(\w+)\]", numerator).group(1)
    assert re.fullmatch(rf"sum\(rate\(nv_inference_queue_duration_us\{{<<.LabelMatchers>>}}\[{window}\]\)\) "
                        r"by \(<<.GroupBy>>\)", numerator)
    assert re.fullmatch(rf"clamp_min\(sum\(rate\(nv_inference_request_success\{{<<.LabelMatchers>>}}"
                        rf"\[{window}\]\)\) by \(<<.GroupBy>>\), [0-9.]+\)", denominator)


def test_a_drain_keeps_triton_pods_serving(resources: dict) -> None:
    pdb = resources[("PodDisruptionBudget", "ddn-triton")]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= triton_pod(resources)["metadata"]["labels"].items()
    hpa = resources[("HorizontalPodAutoscaler", "ddn-triton")]["spec"]
    assert 1 <= pdb["maxUnavailable"] < hpa["minReplicas"]  # at least one pod serves through a drain
    rollout = resources[("Deployment", "ddn-triton")]["spec"]["strategy"]["rollingUpdate"]
    assert rollout["maxUnavailable"] == 0  # and through a rollout


def test_indexed_job_runs_one_shard_per_index_against_every_triton_pod(resources: dict) -> None:
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
    headless = resources[("Service", "ddn-triton-headless")]
    grpc_port = next(p["port"] for p in headless["spec"]["ports"] if p["name"] == "grpc")
    assert context.params["urls"] == (f"dns:///{headless['metadata']['name']}:{grpc_port}",)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert str(context.params["out_dir"]) == mounts["samples"]
    volumes = {v["name"]: v for v in job["template"]["spec"]["volumes"]}
    assert ("PersistentVolumeClaim", volumes["samples"]["persistentVolumeClaim"]["claimName"]) in resources
    (rule,) = job["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailIndex" and rule["onExitCodes"]["values"] == [2]  # usage errors: no retry


# --- policy: what a shared cluster asks of every pod -------------------------------------------------------

def security_findings(resources: dict) -> list[str]:
    """Every departure from the shared-cluster rules, one line each ("workload/container: what")."""
    findings = []
    policies = [doc["spec"] for (kind, _), doc in resources.items() if kind == "NetworkPolicy"]
    for workload, pod in pod_templates(resources).items():
        spec = pod["spec"]
        if not any(policy["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
                   and set(policy["policyTypes"]) == {"Ingress", "Egress"} for policy in policies):
            findings.append(f"{workload}: no NetworkPolicy limits its connections both ways")
        if spec.get("automountServiceAccountToken") is not False:
            findings.append(f"{workload}: mounts a service account token it does not use")
        if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
            findings.append(f"{workload}: shares a host namespace")
        if any("hostPath" in v for v in spec.get("volumes", [])):
            findings.append(f"{workload}: mounts a host path")
        for container in containers(spec):
            where = f"{workload}/{container['name']}"
            context = container.get("securityContext", {})
            user = context.get("runAsUser")
            if context.get("runAsNonRoot") is not True or not isinstance(user, int) or user == 0:
                findings.append(f"{where}: not a numeric non-root user")
            if context.get("readOnlyRootFilesystem") is not True:
                findings.append(f"{where}: writable root filesystem")
            if context.get("allowPrivilegeEscalation") is not False:
                findings.append(f"{where}: privilege escalation allowed")
            if context.get("privileged"):
                findings.append(f"{where}: privileged")
            capabilities = context.get("capabilities", {})
            if capabilities.get("drop") != ["ALL"] or capabilities.get("add"):
                findings.append(f"{where}: capabilities not all dropped")
            if context.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                findings.append(f"{where}: seccomp profile not RuntimeDefault")
    return findings


def test_every_container_runs_locked_down(resources: dict) -> None:
    assert security_findings(resources) == []
    # Triton's writable places with a read-only root: /tmp, and /dev/shm in memory for the python backend.
    pod = triton_pod(resources)["spec"]
    (triton,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = {m["mountPath"]: volumes[m["name"]] for m in triton["volumeMounts"] if not m.get("readOnly")}
    assert set(writable) == {"/tmp", "/dev/shm"}
    assert writable["/dev/shm"]["emptyDir"]["medium"] == "Memory" and "emptyDir" in writable["/tmp"]


@pytest.mark.parametrize("weaken, finding", [
    (lambda c: c["securityContext"].pop("runAsUser"), "not a numeric non-root user"),
    (lambda c: c["securityContext"].update(runAsUser=0), "not a numeric non-root user"),
    (lambda c: c["securityContext"].update(readOnlyRootFilesystem=False), "writable root filesystem"),
    (lambda c: c["securityContext"].pop("allowPrivilegeEscalation"), "privilege escalation allowed"),
    (lambda c: c["securityContext"]["capabilities"].update(add=["NET_ADMIN"]), "capabilities not all dropped"),
    (lambda c: c["securityContext"].pop("seccompProfile"), "seccomp profile not RuntimeDefault"),
    (lambda c: c.pop("securityContext"), "writable root filesystem"),
], ids=["no-user", "root", "writable-root", "escalation", "capability", "seccomp", "no-context"])
def test_the_policy_check_names_a_weakened_container(resources: dict, weaken, finding: str) -> None:
    for kind, name, where in (("Deployment", "ddn-triton", "ddn-triton/production-entries"),
                              ("Job", "ddn-generate", "ddn-generate/generate")):
        weakened = copy.deepcopy(resources)
        spec = weakened[(kind, name)]["spec"]["template"]["spec"]
        weaken(next(c for c in containers(spec) if where.endswith("/" + c["name"])))
        assert f"{where}: {finding}" in security_findings(weakened)


def test_the_policy_check_names_a_pod_no_network_policy_covers(resources: dict) -> None:
    unguarded = {key: doc for key, doc in resources.items() if key != ("NetworkPolicy", "ddn-generate")}
    assert security_findings(unguarded) == ["ddn-generate: no NetworkPolicy limits its connections both ways"]


def admitted(policy: dict, port: str, pod_labels: dict, namespace_labels: dict, same_namespace: bool) -> bool:
    """Whether the NetworkPolicy admits a connection to ``port`` (a named port) from this pod."""
    def matches(selector: dict, labels: dict) -> bool:
        assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are modelled"
        return selector.get("matchLabels", {}).items() <= labels.items()

    def peer_admits(peer: dict) -> bool:
        assert "ipBlock" not in peer, "an ipBlock admits by address, not by who the client is"
        if "namespaceSelector" in peer:  # in a namespace so labelled (and, if given, a pod so labelled)
            return matches(peer["namespaceSelector"], namespace_labels) and \
                matches(peer.get("podSelector", {}), pod_labels)
        return same_namespace and matches(peer["podSelector"], pod_labels)

    return any(any(p["port"] == port for p in rule["ports"]) and any(map(peer_admits, rule["from"]))
               for rule in policy["spec"]["ingress"])


def test_network_policy_admits_clients_to_grpc_and_the_scraper_to_metrics_only(resources: dict) -> None:
    policy = resources[("NetworkPolicy", "ddn-triton")]
    triton = triton_pod(resources)
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= triton["metadata"]["labels"].items()
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"} and policy["spec"]["egress"] == []
    assert {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]} == set(
        container_ports(triton["spec"]))
    job_pod = resources[("Job", "ddn-generate")]["spec"]["template"]["metadata"]["labels"]
    prometheus, monitoring = {"app.kubernetes.io/name": "prometheus"}, {"kubernetes.io/metadata.name": "monitoring"}
    cases = [  # (who, pod labels, namespace labels, same namespace) -> admitted to grpc, to metrics
        ("the Job's pods", job_pod, {}, True, True, False),
        ("a client-labelled pod of a client namespace", CLIENT_LABEL, CLIENT_LABEL, False, True, False),
        ("a client-labelled pod of another namespace", CLIENT_LABEL, {}, False, False, False),
        ("an unlabelled pod of a client namespace", {}, CLIENT_LABEL, False, False, False),
        ("an unlabelled pod of this namespace", {"app": "other"}, {}, True, False, False),
        ("the monitoring Prometheus", prometheus, monitoring, False, False, True),
        ("another pod of the monitoring namespace", {"app": "grafana"}, monitoring, False, False, False),
        ("a Prometheus elsewhere", prometheus, {}, True, False, False),
    ]
    for who, pod_labels, namespace_labels, same_namespace, to_grpc, to_metrics in cases:
        assert (admitted(policy, "grpc", pod_labels, namespace_labels, same_namespace),
                admitted(policy, "metrics", pod_labels, namespace_labels, same_namespace)) == (to_grpc, to_metrics), who


def test_job_pods_talk_to_triton_and_dns_only(resources: dict) -> None:
    policy = resources[("NetworkPolicy", "ddn-generate")]["spec"]
    job_pod = resources[("Job", "ddn-generate")]["spec"]["template"]
    assert policy["podSelector"]["matchLabels"].items() <= job_pod["metadata"]["labels"].items()
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"} and policy["ingress"] == []
    to_triton, to_dns = policy["egress"]
    (triton_peer,) = to_triton["to"]
    assert set(triton_peer) == {"podSelector"}  # this namespace's Triton pods
    assert triton_peer["podSelector"]["matchLabels"].items() <= triton_pod(resources)["metadata"]["labels"].items()
    assert to_triton["ports"] == [{"port": container_ports(triton_pod(resources)["spec"])["grpc"], "protocol": "TCP"}]
    assert sorted((p["port"], p["protocol"]) for p in to_dns["ports"]) == [(53, "TCP"), (53, "UDP")]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of serving/deploy/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_client_image_is_the_torch_free_client_install_run_by_the_jobs_user(resources: dict) -> None:
    instructions = dockerfile_instructions()
    commands = [shlex.split(command) for what, arguments in instructions if what == "RUN"
                for command in arguments.split("&&")]
    assert [words for words in commands if words[:2] == ["pip", "install"]] == [
        ["pip", "install", "--no-cache-dir", ".[client]"]]  # the project's client extra, nothing beside it
    # The build's guard: run here, where torch is installed, it fails naming it.
    (guard,) = [words for words in commands if words[:2] == ["python", "-c"]]
    refused = subprocess.run([sys.executable, *guard[1:]], capture_output=True, text=True)
    assert (refused.returncode, refused.stderr) == (1, "torch is in the client image\n")
    (user,) = [arguments for what, arguments in instructions if what == "USER"]
    assert instructions[-1] == ("USER", user)  # nothing after it runs as root
    uid, gid = map(int, user.split(":"))
    (generate,) = resources[("Job", "ddn-generate")]["spec"]["template"]["spec"]["containers"]
    assert (generate["securityContext"]["runAsUser"], generate["securityContext"]["runAsGroup"]) == (uid, gid) != (0, 0)


# --- the Deployment's Triton arguments on the real Triton 2.51 -------------------------------------------

def listening_ports(pid: int) -> set[int]:
    """TCP ports the process ``pid`` listens on."""
    from serve_helpers import listening_sockets

    return {port for _, port in listening_sockets([pid])}


@pytest.fixture(scope="module")
def deployed_triton(resources: dict, tmp_path_factory: pytest.TempPathFactory):
    """The wheel's tritonserver run with the Deployment's arguments, on a tiny python-backend model."""
    pytest.importorskip("pytriton", reason="needs the nvidia-pytriton wheel (pip install 'ddn-serve[serving]')")
    health = pytest.importorskip("grpc_health.v1.health_pb2", reason="needs grpcio-health-checking (dev extra)")
    from grpc_health.v1 import health_pb2_grpc

    import grpc
    from ddn.serving.triton_server import TritonServer

    (triton,) = triton_pod(resources)["spec"]["containers"]

    class DeployedTriton(TritonServer):
        """The container's arguments with this machine's repository, loopback addresses and free ports."""

        def command(self, backend_directory: Path) -> list[str]:
            local = {"model-repository": self.repository, "grpc-address": "127.0.0.1", "grpc-port": self.grpc_port,
                     "metrics-address": "127.0.0.1", "metrics-port": self.metrics_port}
            args = [f"--{name}={local[name]}" if (name := a.removeprefix("--").split("=", 1)[0]) in local else a
                    for a in triton["args"]]
            return [str(self.binary), *args, f"--backend-directory={backend_directory}",
                    f"--cache-directory={self.binary.parent.parent / 'caches'}",
                    "--allow-gpu-metrics=false",  # this build is the CPU server
                    f"--backend-config=python,shm-region-prefix-name={self._shared_memory_prefix}"]

        def _start_gateways(self) -> None:
            """None: in the pod Triton serves its own metrics port (only Prometheus may reach it)."""

        def health(self) -> str:
            """What the kubelet's gRPC probe gets: grpc.health.v1.Health/Check's status, or the call's error."""
            with grpc.insecure_channel(self.grpc_url) as channel:
                try:
                    reply = health_pb2_grpc.HealthStub(channel).Check(health.HealthCheckRequest(), timeout=5)
                except grpc.RpcError as error:
                    return error.code().name
            return health.HealthCheckResponse.ServingStatus.Name(reply.status)

        def _wait_ready(self) -> None:
            """Until the kubelet's probe passes and the metrics port (Triton's last to open) listens."""
            deadline = time.monotonic() + self.startup_timeout
            while self.health() != "SERVING" or self.metrics_port not in listening_ports(self.pid):
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"tritonserver with the Deployment's arguments never served{self.log_report()}")
                time.sleep(0.2)

    import test_triton_server
    repository = tmp_path_factory.mktemp("deployed")
    test_triton_server.write_model(repository, "double", test_triton_server.DOUBLE)
    with DeployedTriton(repository) as server:
        yield server


def test_triton_answers_the_kubelets_grpc_probe_and_listens_on_grpc_and_metrics_only(deployed_triton) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    assert deployed_triton.health() == "SERVING"
    assert listening_ports(deployed_triton.pid) == {deployed_triton.grpc_port, deployed_triton.metrics_port}
    client = grpcclient.InferenceServerClient(deployed_triton.grpc_url)
    x = grpcclient.InferInput("x", [2, 3], "FP32")
    x.set_data_from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(client.infer("double", [x]).as_numpy("y"), np.arange(6).reshape(2, 3) * 2)
    with pytest.raises(InferenceServerException, match="This protocol is restricted"):
        client.get_system_shared_memory_status()
    # The counters the adapter rule divides, per model, as Prometheus scrapes them.
    with urllib.request.urlopen(deployed_triton.metrics_url, timeout=10) as reply:
        metrics = reply.read().decode()
    (rule,) = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    for counter in re.findall(r"\((nv_inference_\w+)\{", rule["metricsQuery"]):
        assert re.search(rf'^{counter}\{{model="double",version="1"\}} \d+', metrics, re.M), counter
