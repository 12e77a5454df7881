"""Start tritonserver on a model repository: the build that ships in the nvidia-pytriton wheel, or an
installed one named by $LLMREC_TRITONSERVER_HOME (NVIDIA's layout; the serving images set it).

    with TritonServer(repo) as server:      # free ports on 127.0.0.1, waits until ready
        client = RankingClient(server.grpc_url)

The python backend needs its stub next to it: a backend folder is assembled once under the artifacts
cache (the wheel's libtriton_python.so + the stub for this Python), so site-packages is never modified.
The stub runs Python in isolated mode (PYTHONPATH is ignored): this interpreter's bin/ goes first on PATH
so that the stub finds this environment. If the server dies while starting, the error carries the tail
of its log.

Safe by default:
- The control API (load/unload, repository index, model configs, shared memory, trace, logging) answers
  only calls that carry the header `llmrec-control-key` (llmrec.server.contract.CONTROL_HEADER) with this
  server's key (`control_key`, random unless given); health, metadata, inference and statistics stay open.
- gRPC can run TLS (`tls=(cert, key)`); HTTP then listens on 127.0.0.1 only (this build of Triton has
  no TLS for HTTP), for the launcher and local probes.
- Models load in explicit mode, by the launcher, one by one: each model serves the newest version that
  is intact (llmrec.server.versions) and loads; newer versions it skipped are in `skipped`, with why.
- `stop()` gives in-flight requests `exit_timeout` seconds, then kills what is left of the process
  group, and removes the python backend's shared-memory regions (/dev/shm/<prefix>*), the temporary
  folder the server was given and the backend's /tmp/python_env_* folder that a killed server leaves; a
  Ctrl-C or SIGTERM while starting stops what was started.
"""

from __future__ import annotations

import contextlib
import os
import secrets
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
from llmrec.server import versions
from llmrec.server.contract import CONTROL_HEADER, LOAD_ORDER

CPU_FLAGS = (
    "--allow-gpu-metrics=false",
    "--pinned-memory-pool-byte-size=0",
    "--cuda-memory-pool-byte-size=0:0",
)


TRITONSERVER_HOME_ENV = "LLMREC_TRITONSERVER_HOME"


def installed_home() -> Path | None:
    """An installed tritonserver laid out as NVIDIA's image lays it out (bin/tritonserver, backends/,
    lib/), named by $LLMREC_TRITONSERVER_HOME: the serving containers set it (deploy/Dockerfile). Unset:
    the build inside the nvidia-pytriton wheel."""
    home = os.environ.get(TRITONSERVER_HOME_ENV)
    if not home:
        return None
    home = Path(home)
    if not (home / "bin" / "tritonserver").is_file():
        raise FileNotFoundError(f"${TRITONSERVER_HOME_ENV}={home} has no bin/tritonserver")
    return home


def _wheel() -> Path:
    import pytriton

    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def _libs() -> Path:
    if home := installed_home():
        return home / "lib"
    return _wheel().parent.parent / "nvidia_pytriton.libs"


def binary() -> Path:
    return (installed_home() or _wheel()) / "bin" / "tritonserver"


def backend_dir() -> Path:
    """The backends folder: $LLMREC_TRITONSERVER_HOME/backends, or one assembled once under the artifacts
    cache from the wheel (its libtriton_python.so + the stub for this Python)."""
    if home := installed_home():
        return home / "backends"
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
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct free ports (all held open until each is chosen: one at a time, the OS may repeat one)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]


# Triton's APIs that change or reveal the deployment: a call needs the control key.
RESTRICTED = ("model-repository", "model-config", "shared-memory", "trace", "logging")
SHM_DIR = Path("/dev/shm")
# The python backend makes a folder here when it starts (mkdtemp of "/tmp/python_env_XXXXXX": the path is
# compiled into libtriton_python.so, TMPDIR is not read) and removes it only when it finalizes, so a server
# that was killed leaves it behind.
PYTHON_ENV_DIR, PYTHON_ENV_PREFIX = Path("/tmp"), "python_env_"


class ServerError(RuntimeError):
    """tritonserver did not start or died; the message holds the end of its log."""


def pinned_to(cpus: set[int] | None):
    """A `preexec_fn` for subprocess that runs the child (and what it starts) on `cpus`; None for no pin."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def tls_files(tls: tuple[Path, Path] | None) -> tuple[Path, Path] | None:
    """(certificate, key) as absolute paths, FileNotFoundError naming one that is missing; None stays None."""
    if not tls:
        return None
    paths = tuple(Path(p).resolve() for p in tls)
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"TLS file {path} does not exist")
    return paths


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
        control_key: str | None = None,
        tls: tuple[Path, Path] | None = None,
        exit_timeout: int = 5,
        cpus: set[int] | None = None,
        grpc_host: str | None = None,
        http_host: str | None = None,
    ):
        if target not in ("cpu", "gpu"):
            raise ValueError(f"target must be 'cpu' or 'gpu', got {target!r}")
        self.target = target
        self.repo = Path(repo).resolve()
        if not self.repo.is_dir():
            raise FileNotFoundError(f"model repository {self.repo} does not exist: run `llmrec export` first")
        self.host = host
        self.tls = tls_files(tls)
        # TLS covers gRPC only (this build has none for HTTP), so with TLS here or at the proxy HTTP stays local
        self.http_host = http_host or ("127.0.0.1" if self.tls else host)
        self.grpc_host = grpc_host or host  # 127.0.0.1 behind the admission proxy (llmrec.server.admission)
        ports = iter(free_ports(3, host))
        self.http_port = http_port or next(ports)
        self.grpc_port = grpc_port or next(ports)
        self.metrics_port = metrics_port or next(ports)
        self.log_path = Path(log_path or artifacts_dir() / "server" / f"tritonserver-{self.grpc_port}.log")
        self.startup_timeout = startup_timeout
        self.extra_args = tuple(extra_args)
        self.control_key = control_key or secrets.token_urlsafe(24)
        self.exit_timeout = exit_timeout
        self.cpus = set(cpus) if cpus else None  # pin the server (and its python stubs) to these CPUs
        self.shm_prefix = f"llmrec_{os.getpid()}_{self.grpc_port}_"
        self.tmp_dir = self.log_path.parent / f"tmp-{self.grpc_port}"
        self.process: subprocess.Popen | None = None
        self.started_at: float | None = None  # the span in which this server's python backend started
        self.loaded_at: float | None = None
        self.serving = False  # every model loaded: only then are there callers' requests worth draining
        self.served: dict[str, int] = {}  # model -> the version it serves
        self.skipped: dict[str, list[tuple[int, str]]] = {}  # model -> [(newer version, why not)]

    # --- addresses -------------------------------------------------------------------------------
    @property
    def grpc_url(self) -> str:
        return f"{self.grpc_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.http_host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def control_headers(self) -> dict[str, str]:
        return {CONTROL_HEADER: self.control_key}

    # --- lifecycle -------------------------------------------------------------------------------
    def command(self) -> list[str]:
        restricted = f"{','.join(RESTRICTED)}:{CONTROL_HEADER}={self.control_key}"
        tls = (
            ("--grpc-use-ssl=true", f"--grpc-server-cert={self.tls[0]}", f"--grpc-server-key={self.tls[1]}")
            if self.tls
            else ()
        )
        return [
            str(binary()),
            f"--model-repository={self.repo}",
            f"--backend-directory={backend_dir()}",
            "--model-control-mode=explicit",  # the launcher loads each model (load_models)
            f"--http-address={self.http_host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.grpc_host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            f"--http-restricted-api={restricted}",
            f"--grpc-restricted-protocol={restricted}",
            *tls,
            "--metrics-config=summary_latencies=true",
            "--backend-config=python,shm-default-byte-size=4194304",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            f"--exit-timeout-secs={self.exit_timeout}",
            "--exit-on-error=true",
            "--strict-readiness=true",
            *(CPU_FLAGS if self.target == "cpu" else ("--model-config-name=gpu",)),
            *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["LD_LIBRARY_PATH"] = f"{_libs()}{os.pathsep}{env.get('LD_LIBRARY_PATH', '')}".rstrip(os.pathsep)
        env["TMPDIR"] = str(self.tmp_dir)  # the python backend unpacks its environments here; removed at stop
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.pop("TRITON_INTERPRET", None)  # the server runs compiled kernels on CUDA or the reference on CPU
        return env

    def start(self) -> TritonServer:
        """Start tritonserver, wait until it listens, load every model; on any failure or interrupt
        (Ctrl-C, SIGTERM turned into KeyboardInterrupt) stop what was started and re-raise."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        try:
            with self.log_path.open("wb") as log:
                self.started_at = time.time()
                self.process = subprocess.Popen(
                    self.command(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.environment(),
                    start_new_session=True,  # its own process group: the python stubs go down with it
                    preexec_fn=pinned_to(self.cpus),
                )
            self.wait_ready()
            self.load_models()
            self.loaded_at = time.time()
            self.serving = True
        except BaseException:
            self.stop()
            raise
        return self

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def is_ready(self) -> bool:
        """Ready and every endpoint listening: Triton starts its metrics service after answering ready
        on HTTP (tens of ms later), so a scrape right after readiness could be refused."""
        for url in (f"http://{self.http_url}/v2/health/ready", self.metrics_url):
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status != 200:
                        return False
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return False
        return True

    def _check_alive(self) -> None:
        if self.process.poll() is not None:
            raise ServerError(
                f"tritonserver exited with status {self.process.returncode} while starting "
                f"(log: {self.log_path}):\n{self.log_tail()}"
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if self.is_ready():
                return
            time.sleep(0.25)
        raise ServerError(
            f"tritonserver was not ready after {self.startup_timeout:.0f} s (log: {self.log_path}):\n{self.log_tail()}"
        )

    # --- models ----------------------------------------------------------------------------------
    def models(self) -> list[str]:
        """The repository's models (folders with a config) in load order: the cores (`embed_core` before
        its callers), then the gates, then the public ensembles (llmrec.server.ensembles)."""

        def order(name: str) -> tuple[int, int, str]:
            base = name.removesuffix("_core").removesuffix("_gate")
            stage = 2 if "ensemble" in self._config(name).platform else int(name.endswith("_gate"))
            return stage, LOAD_ORDER.index(base) if base in LOAD_ORDER else len(LOAD_ORDER), name

        return sorted((p.parent.name for p in self.repo.glob("*/config.pbtxt")), key=order)

    def _config(self, model: str):
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2

        folder = self.repo / model
        path = folder / "configs" / "gpu.pbtxt" if self.target == "gpu" else folder / "config.pbtxt"
        if not path.is_file():
            path = folder / "config.pbtxt"
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())

    def _load(self, client, model: str, version: int | None) -> None:
        """Load `model` as its config says (version None), or pinned to one version."""
        config = None
        if version is not None:
            from google.protobuf import json_format

            pinned = self._config(model)
            pinned.version_policy.Clear()
            pinned.version_policy.specific.versions.append(version)
            config = json_format.MessageToJson(pinned, preserving_proto_field_name=True)
        client.load_model(model, headers=self.control_headers, config=config)

    def load_models(self) -> None:
        """Each model serves its newest version that is intact and loads; skipped versions are reported
        (`skipped`, `report()`, which `llmrec serve` prints). A model with no version that loads stops
        the start."""
        import tritonclient.http as httpclient
        from tritonclient.utils import InferenceServerException

        client = httpclient.InferenceServerClient(
            self.http_url, connection_timeout=self.startup_timeout, network_timeout=self.startup_timeout
        )
        try:
            for model in self.models():
                candidates = versions.versions(self.repo / model)
                skipped: list[tuple[int, str]] = []
                for i, version in enumerate(candidates):
                    self._check_alive()
                    if why := versions.problem(self.repo / model / str(version)):
                        skipped.append((version, why))
                        continue
                    try:
                        self._load(client, model, None if i == 0 else version)
                    except InferenceServerException as e:
                        skipped.append((version, e.message() or str(e)))
                        continue
                    self.served[model] = version
                    break
                if skipped:
                    self.skipped[model] = skipped
                if model not in self.served:
                    reasons = "; ".join(f"version {v}: {why}" for v, why in skipped) or "no version folder"
                    raise ServerError(f"model {model!r} has no version that loads ({reasons})")
        finally:
            client.close()

    def report(self) -> list[str]:
        """One line per model: the version it serves, and each newer version skipped with the reason."""
        lines = []
        for model, version in self.served.items():
            lines.append(f"{model}: serving version {version}")
            lines += [f"  skipped version {v}: {why}" for v, why in self.skipped.get(model, [])]
        return lines

    # --- stopping --------------------------------------------------------------------------------
    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is empty already
            os.killpg(self.process.pid, signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM, up to exit_timeout + 3 s for in-flight requests, then SIGKILL to the whole group; then
        the shared-memory regions and temporary folders of this server are removed. Safe to call twice.
        A server stopped while it was still starting gets 1 s: it has no callers' requests to drain, and
        tritonserver would otherwise wait out its exit timeout for the launcher's own load call and then
        for the model being loaded (8 s in all, seen on a 2-core machine)."""
        if self.process is not None:
            if self.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(self.exit_timeout + 3 if self.serving else 1)
                except subprocess.TimeoutExpired:
                    self._kill_group()
                    self.process.wait()
            self._kill_group()  # python stubs that outlived the server
            _wait_group_gone(self.process.pid)
            remove_python_envs(self.started_at, self.loaded_at or time.time())
        for region in SHM_DIR.glob(f"{self.shm_prefix}*"):
            with contextlib.suppress(FileNotFoundError):
                region.unlink()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _wait_group_gone(pgid: int, timeout: float = 5.0) -> None:
    """Killed processes take a moment to go; shared memory is removed only once none maps it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.05)


def remove_python_envs(t0: float, t1: float) -> list[Path]:
    """Remove the empty /tmp/python_env_* folders made between `t0` and `t1` (a server's start, while its python
    backend started): a killed server leaves its own (PYTHON_ENV_DIR). Only empty ones go, so a folder that
    another server's backend uses (it unpacks EXECUTION_ENV_PATH archives into it) is never touched."""
    removed = []
    for folder in PYTHON_ENV_DIR.glob(f"{PYTHON_ENV_PREFIX}*"):
        with contextlib.suppress(OSError):  # gone already, not empty, or not ours to remove
            if t0 <= folder.stat().st_mtime <= t1 + 1.0:
                folder.rmdir()
                removed.append(folder)
    return removed
