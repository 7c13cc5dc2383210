"""The Kubernetes manifests (deploy/k8s), checked offline: every overlay renders with kubectl's built-in
kustomize, every object validates strictly against Kubernetes 1.32's schemas (kubernetes-validate,
pinned), and the policies we promise hold: resources, probes, security contexts, selectors that
select, pinned images, the network policy and the GPU placement."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = ("cpu", "gpu", "gpu-multi")
KUBERNETES = "1.32.0"

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl (with built-in kustomize)")


def render(overlay: str) -> list[dict]:
    done = subprocess.run(["kubectl", "kustomize", str(ROOT / "deploy" / "k8s" / "overlays" / overlay)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.fixture(scope="module", params=OVERLAYS)
def objects(request) -> list[dict]:
    return render(request.param)


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def pod_specs(objects: list[dict], kinds: tuple[str, ...] = ("Deployment",)) -> list[tuple[str, dict]]:
    return [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for kind in kinds for d in by_kind(objects, kind)]


def test_every_object_validates_strictly(objects):
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)
    broken = copy.deepcopy(by_kind(objects, "Deployment")[0])
    broken["spec"]["template"]["spec"]["containers"][0]["resource"] = {}  # a typo strict mode must catch
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_containers_are_hardened_with_resources_and_probes(objects):
    for name, spec in pod_specs(objects, ("Deployment", "Job")):
        assert spec["automountServiceAccountToken"] is False and spec["serviceAccountName"] == "rerank"
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for container in spec["containers"] + spec.get("initContainers", []):
            where = f"{name}/{container['name']}"
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), where
            image = container["image"]
            assert ":" in image and not image.endswith(":latest"), f"{where}: image {image} is not pinned by tag"
    for name, spec in pod_specs(objects):
        for container in spec["containers"]:
            assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(container), name


def test_selectors_select_and_targets_exist(objects):
    pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in by_kind(objects, "Deployment")}

    def selects(selector: dict) -> bool:
        return any(all(labels.get(k) == v for k, v in selector.items()) for labels in pods.values())

    for service in by_kind(objects, "Service"):
        assert selects(service["spec"]["selector"]), service["metadata"]["name"]
    for budget in by_kind(objects, "PodDisruptionBudget"):
        assert selects(budget["spec"]["selector"]["matchLabels"]), budget["metadata"]["name"]
    for hpa in by_kind(objects, "HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] in pods, hpa["metadata"]["name"]
    for deployment in by_kind(objects, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert labels["app.kubernetes.io/part-of"] == "llama-rerankqa"
    assert all(o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "llama-rerankqa" for o in objects)
    assert all(o["metadata"].get("namespace") == "rerank" for o in objects if o["kind"] != "Namespace")


def test_only_the_gateway_reaches_triton_grpc_and_only_prometheus_its_metrics(objects):
    policy = next(p for p in by_kind(objects, "NetworkPolicy") if p["metadata"]["name"] == "triton")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    opened = {}
    for rule in policy["spec"]["ingress"]:
        for port in rule["ports"]:
            opened[port["port"]] = rule["from"]
    assert set(opened) == {8001, 8002}, "KServe HTTP (8003) and its admin APIs are reachable by nobody"
    assert opened[8001] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "gateway"}}}]
    assert opened[8002][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    config = next(c for c in by_kind(objects, "ConfigMap") if c["metadata"]["name"] == "rerank-gateway")
    assert config["data"]["RERANK_GATEWAY_TRITON"].startswith("dns:///triton-headless."), \
        "the gateway balances over every Triton pod through the headless Service"
    headless = next(s for s in by_kind(objects, "Service") if s["metadata"]["name"] == "triton-headless")
    assert headless["spec"]["clusterIP"] == "None"


def test_triton_scales_on_queue_time_and_the_gateway_on_cpu(objects):
    hpas = {h["metadata"]["name"]: h["spec"] for h in by_kind(objects, "HorizontalPodAutoscaler")}
    assert hpas["triton"]["metrics"][0]["pods"]["metric"]["name"] == "rerank_engine_queue_us_per_request"
    assert hpas["gateway"]["metrics"][0]["resource"]["name"] == "cpu"
    rules = next(c for c in by_kind(objects, "ConfigMap") if c["metadata"]["name"] == "rerank-prometheus-adapter-rules")
    assert "rerank_engine_queue_us_per_request" in rules["data"]["rules.yaml"]


@pytest.mark.parametrize("overlay,gpus", [("cpu", 0), ("gpu", 1), ("gpu-multi", 2)])
def test_placement_per_overlay(overlay, gpus):
    spec = dict(pod_specs(render(overlay)))["triton"]
    triton = spec["containers"][0]
    requested = triton["resources"]["limits"].get("nvidia.com/gpu")
    models = next(v for v in spec["volumes"] if v["name"] == "models")
    if gpus:
        assert requested == str(gpus) and "nvidia.com/gpu.product" in spec["nodeSelector"]
        assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
        assert models["persistentVolumeClaim"] == {"claimName": "rerank-engines", "readOnly": True}
        # The engine's directory is keyed by GPU product, TensorRT and precision, and checked first.
        check = spec["initContainers"][0]
        assert check["name"] == "check-engine" and check["command"][:2] == ["rerank-build", "check-engine"]
        assert check["resources"]["limits"]["nvidia.com/gpu"] == str(gpus)
        key = triton["volumeMounts"][0]["subPath"]
        assert key == check["volumeMounts"][0]["subPath"] == "NVIDIA-H100-80GB-HBM3/trt-10.11.0/fp16"
        from rerank_build.engine_meta import TRITON_TENSORRT, engine_key

        assert key == engine_key("NVIDIA H100 80GB HBM3", TRITON_TENSORRT["25.06"], "fp16")
    else:
        assert requested is None and "nodeSelector" not in spec
        assert spec["initContainers"][0]["name"] == "repository" and "emptyDir" in models


def test_the_engine_job_builds_aside_and_moves_into_place():
    job = next(j for j in render("gpu") if j["kind"] == "Job")
    script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert 'key="/engines/$(rerank-build engine-key --precision "${PRECISION}")"' in script, "the engine_key layout"
    assert script.index("rerank-build engine ") < script.index('mv -T "${work}" "${key}"'), "one rename, at the end"
    assert 'if [ -f "${key}/engine/model.plan" ]' in script.split("rerank-build export-onnx")[0], \
        "an engine that is there is kept"
    assert script.index("rerank-build repository") < script.index('mv -T "${part}" "${key}/${name}"')


def job_environment(overlay: str) -> dict[str, str]:
    job = next(j for j in render(overlay) if j["kind"] == "Job")
    return {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_the_job_and_the_pods_use_one_engine_key():
    """The Job's key comes from `rerank-build engine-key` (TensorRT cut to X.Y.Z, even when
    tensorrt.__version__ prints four fields); the pods mount the same key, and the repository the Job
    builds for their GPU count."""
    env = job_environment("gpu")
    done = subprocess.run([str(Path(sys.executable).with_name("rerank-build")), "engine-key", "--precision",
                           env["PRECISION"], "--tensorrt", "10.11.0.33", "--gpu-name", "NVIDIA H100 80GB HBM3"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for overlay, repository in (("gpu", "repository"), ("gpu-multi", "repository-x2")):
        spec = dict(pod_specs(render(overlay)))["triton"]
        for container in (spec["initContainers"][0], spec["containers"][0]):
            assert container["volumeMounts"][0]["subPath"] == done.stdout.strip()
        assert f"--model-repository=/models/{repository}" in spec["containers"][0]["args"]
        built = dict(item.split(":") for item in job_environment(overlay)["REPOSITORIES"].split())
        assert built[repository] == ("0,1" if overlay == "gpu-multi" else "0"), "a Job builds what the pods serve"
        assert f"/models/{repository}" in spec["initContainers"][0]["command"]


def test_rollouts_never_drop_below_the_asked_replicas():
    triton = next(d for d in render("cpu") if d["kind"] == "Deployment" and d["metadata"]["name"] == "triton")
    assert triton["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    doc = (ROOT / "docs" / "kubernetes.md").read_text()
    for overlay in OVERLAYS:
        assert f"overlays/{overlay}" in doc
