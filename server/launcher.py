"""Start the tritonserver binary that ships in the nvidia-pytriton wheel on a model repository.

    with TritonServer(repo) as server:      # free ports on 127.0.0.1, waits until ready
        client = RankingClient(server.grpc_url)

The python backend needs its stub next to it: a backend folder is assembled once under the artifacts
cache (the wheel's libtriton_python.so + the stub for this Python), so site-packages is never modified.
The stub runs Python in isolated mode (PYTHONPATH is ignored): this interpreter's bin/ goes first on PATH
so that the stub finds this environment. If the server dies while starting, the error carries the tail
of its log. Models load in explicit mode (all at start); `load_model` re-reads a model's versions.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from llmrec.paths import artifacts_dir, cache_dir

CPU_FLAGS = (
    "--allow-gpu-metrics=false",
    "--pinned-memory-pool-byte-size=0",
    "--cuda-memory-pool-byte-size=0:0",
)


def _wheel() -> Path:
    import pytriton

    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def _libs() -> Path:
    return _wheel().parent.parent / "nvidia_pytriton.libs"


def backend_dir() -> Path:
    """<cache>/tritonserver-backends/python: the wheel's python backend plus the stub for this Python."""
    wheel = _wheel()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = wheel / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise FileNotFoundError(f"nvidia-pytriton has no python backend stub for Python {version} ({stub})")
    root = cache_dir() / "tritonserver-backends"
    target = root / "python"
    if not (target / "triton_python_backend_stub").is_file():
        tmp = root / ".python.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(wheel / "backends" / "python", tmp, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(stub, tmp / "triton_python_backend_stub")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return root


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerError(RuntimeError):
    """tritonserver did not start or died; the message holds the end of its log."""


class TritonServer:
    def __init__(
        self,
        repo: Path,
        host: str = "127.0.0.1",
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        log_path: Path | None = None,
        startup_timeout: float = 180.0,
        target: str = "cpu",
        extra_args: tuple[str, ...] = (),
    ):
        if target not in ("cpu", "gpu"):
            raise ValueError(f"target must be 'cpu' or 'gpu', got {target!r}")
        self.target = target
        self.repo = Path(repo).resolve()
        if not self.repo.is_dir():
            raise FileNotFoundError(f"model repository {self.repo} does not exist: run `llmrec export` first")
        self.host = host
        self.http_port = http_port or free_port(host)
        self.grpc_port = grpc_port or free_port(host)
        self.metrics_port = metrics_port or free_port(host)
        self.log_path = Path(log_path or artifacts_dir() / "server" / f"tritonserver-{self.grpc_port}.log")
        self.startup_timeout = startup_timeout
        self.extra_args = tuple(extra_args)
        self.process: subprocess.Popen | None = None

    # --- addresses -------------------------------------------------------------------------------
    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    # --- lifecycle -------------------------------------------------------------------------------
    def command(self) -> list[str]:
        return [
            str(_wheel() / "bin" / "tritonserver"),
            f"--model-repository={self.repo}",
            f"--backend-directory={backend_dir()}",
            "--model-control-mode=explicit",
            "--load-model=*",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--metrics-config=summary_latencies=true",
            "--backend-config=python,shm-default-byte-size=4194304",
            "--exit-on-error=true",
            "--strict-readiness=true",
            *(CPU_FLAGS if self.target == "cpu" else ("--model-config-name=gpu",)),
            *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["LD_LIBRARY_PATH"] = f"{_libs()}{os.pathsep}{env.get('LD_LIBRARY_PATH', '')}".rstrip(os.pathsep)
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.pop("TRITON_INTERPRET", None)  # the server runs compiled kernels on CUDA or the reference on CPU
        return env

    def start(self) -> TritonServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.environment(),
            start_new_session=True,  # its own process group: the python stubs go down with it
        )
        log.close()
        self.wait_ready()
        return self

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def is_ready(self) -> bool:
        """Models ready and every endpoint listening: Triton starts its metrics service after
        answering ready on HTTP (tens of ms later), so a scrape right after readiness could be refused."""
        for url in (f"http://{self.http_url}/v2/health/ready", self.metrics_url):
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status != 200:
                        return False
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return False
        return True

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._kill_group()  # python stubs it started would outlive it
                raise ServerError(
                    f"tritonserver exited with status {self.process.returncode} while starting "
                    f"(log: {self.log_path}):\n{self.log_tail()}"
                )
            if self.is_ready():
                return
            time.sleep(0.25)
        self.stop()
        raise ServerError(
            f"tritonserver was not ready after {self.startup_timeout:.0f} s (log: {self.log_path}):\n{self.log_tail()}"
        )

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # the group is empty already
            os.killpg(self.process.pid, signal.SIGKILL)

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is not None:
            self._kill_group()  # the server died on its own: its stubs may not have
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
