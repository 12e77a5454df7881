"""The serving image's two targets: what may differ between them, and what must agree with a dev install.

deploy/Dockerfile has one serving stage for both targets; a target picks only its base image and its
requirements file. These tests hold the two requirement lists to differ only in the CUDA builds of torch and
onnxruntime, and the pins they share with pyproject.toml to agree with it (the image serves what the tests
here ran). tests/deploy/test_stack.py builds the cpu image and runs it.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "requirements"
# The only lines allowed to differ, cpu -> gpu.
CUDA_BUILDS = {"torch==2.13.0+cpu": "torch==2.13.0", "onnxruntime==1.31.1": "onnxruntime-gpu==1.31.1"}


def pins(path: Path) -> list[str]:
    return [
        line.split("#")[0].strip() for line in path.read_text().splitlines() if line.split("#")[0].strip()
    ]


def test_cpu_and_gpu_serving_lists_differ_only_in_the_cuda_builds():
    cpu, gpu = pins(REQUIREMENTS / "serving-cpu.txt"), pins(REQUIREMENTS / "serving-gpu.txt")
    assert [CUDA_BUILDS.get(p, p) for p in cpu] == gpu
    assert set(cpu) - set(gpu) == set(CUDA_BUILDS)


def test_the_images_pin_what_pyproject_pins():
    """Every package that pyproject.toml pins exactly and an image installs has the same version there,
    except onnxruntime: onnxruntime-gpu stops at 1.31.1, and both images use it (serving-cpu.txt says why)."""
    pyproject = dict(
        re.findall(r'"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    )
    for name in ("serving-cpu.txt", "serving-gpu.txt", "loadgen.txt"):
        for pin in pins(REQUIREMENTS / name):
            package, _, version = re.sub(r"\[[^\]]*\]", "", pin).partition("==")
            package = package.removesuffix("-gpu")
            if package in pyproject and package != "onnxruntime":
                assert version.removesuffix("+cpu") == pyproject[package], f"{name}: {pin} vs pyproject"


def test_the_serving_stage_is_the_same_for_both_targets():
    """Everything after FROM reads the target from build arguments: no line names cpu or gpu files."""
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", dockerfile, flags=re.M)[1:]
    assert [s.split()[0] for s in stages] == ["${BASE_IMAGE}", "${BASE_IMAGE}"]
    for stage in stages:
        body = "\n".join(line for line in stage.splitlines() if not line.lstrip().startswith("#"))
        assert not re.search(r"serving-(cpu|gpu)|wheelhouse/(cpu|gpu)", body), stage.splitlines()[0]
        assert "ARG TARGET" in body


def server_command(env: dict[str, str]) -> list[str]:
    """The arguments the serving image's CMD gives `llmrec serve` under `env` (its shell, run with llmrec
    replaced by printf)."""
    import json
    import subprocess

    line = next(
        line for line in (ROOT / "deploy" / "Dockerfile").read_text().splitlines() if line.startswith("CMD ")
    )
    shell, flag, script = json.loads(line.removeprefix("CMD "))
    assert (shell, flag) == ("sh", "-c") and script.startswith("exec llmrec serve ")
    script = script.replace("exec llmrec serve ", "exec printf '%s\\n' ", 1)
    result = subprocess.run(
        [shell, flag, script],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.splitlines()


def test_the_image_passes_the_admission_and_tls_settings_to_llmrec_serve():
    base = ["--repo", "/models", "--host", "0.0.0.0", "--target", "cpu"]
    assert server_command({"LLMREC_TARGET": "cpu", "LLMREC_MAX_IN_FLIGHT": ""}) == base
    with_all = server_command(
        {"LLMREC_TARGET": "cpu", "LLMREC_MAX_IN_FLIGHT": "4", "LLMREC_TLS_CERT": "/tls/a b.crt",
         "LLMREC_TLS_KEY": "/tls/tls.key"}
    )  # fmt: skip
    assert with_all == [
        *base,
        "--max-in-flight",
        "4",
        "--tls-cert",
        "/tls/a b.crt",
        "--tls-key",
        "/tls/tls.key",
    ]
