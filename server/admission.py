"""The admission proxy: HAProxy in front of tritonserver's gRPC port, bounding the calls in flight.

    with TritonServer(repo) as server, AdmissionProxy(server.grpc_url, Limits(max_in_flight=8)) as proxy:
        RankingClient(proxy.grpc_url).similar(item_id="1", k=10)

Triton's gRPC front accepts every call it is sent; under overload they all wait for the same CPUs and the
latency of every call grows with the offered rate (docs/BENCHMARKS.md, "Overload"). A refusal inside the
model repository comes after that wait. The proxy keeps at most `max_in_flight` calls at the server, lets at
most `max_queue` more wait (each for at most `queue_timeout_ms`), and answers the rest at once, before they
cost the server anything, with gRPC status UNAVAILABLE and a message that says so; the project's clients
retry UNAVAILABLE with backoff. Under sustained overload the queue stops absorbing bursts and only adds its
length to every admitted call, so the proxy then holds fewer calls and lets fewer wait until the load falls
(`Limits.overload_*`, admission/overload.lua). Its configuration (admission/haproxy.cfg) is the one the compose stack and
`llmrec serve --max-in-flight` run; it also serves HAProxy's Prometheus metrics (queue, refusals).

`tls=(cert, key)` makes the public port speak TLS (HAProxy terminates it; Triton's gRPC behind it stays plain
on 127.0.0.1): the two PEM files are joined into one private file (mode 0600) for HAProxy, removed at stop.

HAProxy is a system package (`apt-get install haproxy`, `make admission-tools`); LLMREC_HAPROXY names another
binary.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from llmrec.paths import artifacts_dir
from llmrec.server.launcher import ServerError, free_ports, pinned_to, tls_files

CONFIG_DIR = Path(__file__).resolve().parent / "admission"
CONFIG = CONFIG_DIR / "haproxy.cfg"
HAPROXY_ENV = "LLMREC_HAPROXY"
# The refusals' messages (CONFIG_DIR/*.http) start with this; tests and the load reports look for it.
REFUSAL_PREFIX = "llmrec admission:"


@dataclass(frozen=True)
class Limits:
    """How many calls the server holds at once, how many more may wait, and for how long."""

    # Defaults from the 3x spike and the 70% soak on `similar` (2-core box, docs/BENCHMARKS.md): 4 calls at the
    # server keep its batches full; a queue of 32 for up to 100 ms absorbs the bursts of real traffic and the
    # box's own slow spells (16 / 50 ms refused 0.12% of a 70% soak while the box ran slower for 4 minutes).
    max_in_flight: int = 4
    max_queue: int = 32
    queue_timeout_ms: int = 100
    # Sustained overload: when three quarters of a full queue have been waiting at every arrival for
    # `overload_after_ms`, the proxy holds `overload_in_flight` calls at the server and lets
    # `overload_queue` wait, refusing the rest, until a quarter of the calls find a server slot free again
    # (admission/overload.lua). A full queue at 3x the saturation rate made the admitted p99 7x its
    # half-load value; one call at the server and two waiting, 1.5-2.4x on a quiet box (one waiting: a
    # similar p99, a third fewer answered). overload_after_ms 0: never switch.
    overload_after_ms: int = 100
    overload_in_flight: int = 1
    overload_queue: int = 2
    call_timeout_s: int = 60

    def __post_init__(self):
        for name in ("max_in_flight", "queue_timeout_ms", "overload_in_flight", "call_timeout_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"admission {name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_queue", "overload_after_ms", "overload_queue"):
            if getattr(self, name) < 0:
                raise ValueError(f"admission {name} must be 0 or more, got {getattr(self, name)}")
        if self.overload_after_ms and self.overload_queue < 1:
            # with no waiting place every admitted call found a slot free, and that is the mode's exit signal
            raise ValueError(
                "admission overload_queue must be at least 1 while the overloaded mode is on "
                "(overload_after_ms > 0): the mode leaves when calls find a server slot free, which every "
                "admitted call does when none may wait"
            )


def haproxy_binary() -> Path:
    found = (
        os.environ.get(HAPROXY_ENV) or shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
    )
    if not found or not Path(found).is_file():
        raise FileNotFoundError(
            "the admission proxy needs HAProxy: install it with `make admission-tools` (apt-get install haproxy) "
            f"or name the binary in {HAPROXY_ENV}"
        )
    return Path(found)


class AdmissionProxy:
    """HAProxy on `host:port` (free ports by default) in front of the gRPC server at `server`."""

    def __init__(
        self,
        server: str,
        limits: Limits = Limits(),
        host: str = "127.0.0.1",
        port: int | None = None,
        metrics_port: int | None = None,
        cpus: set[int] | None = None,
        log_path: Path | None = None,
        startup_timeout: float = 10.0,
        tls: tuple[Path, Path] | None = None,
    ):
        self.server = server
        self.limits = limits
        self.host = host
        ports = iter(free_ports(2, host))
        self.port = port or next(ports)
        self.metrics_port = metrics_port or next(ports)
        self.cpus = set(cpus) if cpus else None
        self.log_path = Path(log_path or artifacts_dir() / "server" / f"admission-{self.port}.log")
        self.startup_timeout = startup_timeout
        self.tls = tls_files(tls)
        self.tls_pem = self.log_path.with_suffix(".pem") if self.tls else None
        self.process: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        # -db: stay in the foreground; -W: master-worker, so SIGTERM/SIGUSR1 reach the worker cleanly
        return [str(haproxy_binary()), "-W", "-db", "-f", str(CONFIG)]

    def environment(self) -> dict[str, str]:
        """This process's environment plus the settings haproxy.cfg reads."""
        return {
            **os.environ,
            "LLMREC_ADMISSION_SERVER": self.server,
            "LLMREC_ADMISSION_BIND": self.grpc_url,
            "LLMREC_ADMISSION_METRICS_BIND": f"{self.host}:{self.metrics_port}",
            "LLMREC_ADMISSION_DIR": str(CONFIG_DIR),
            "LLMREC_ADMISSION_MAX_IN_FLIGHT": str(self.limits.max_in_flight),
            "LLMREC_ADMISSION_MAX_QUEUE": str(self.limits.max_queue),
            "LLMREC_ADMISSION_QUEUE_TIMEOUT_MS": str(self.limits.queue_timeout_ms),
            "LLMREC_ADMISSION_OVERLOAD_AFTER_MS": str(self.limits.overload_after_ms),
            "LLMREC_ADMISSION_OVERLOAD_IN_FLIGHT": str(self.limits.overload_in_flight),
            "LLMREC_ADMISSION_OVERLOAD_QUEUE": str(self.limits.overload_queue),
            "LLMREC_ADMISSION_CALL_TIMEOUT_S": str(self.limits.call_timeout_s),
            "LLMREC_ADMISSION_THREADS": "1",
        } | ({"LLMREC_ADMISSION_TLS_PEM": str(self.tls_pem)} if self.tls else {})

    def _write_tls_pem(self) -> None:
        """Certificate then key in one file, readable by this user only (HAProxy's `crt` wants both)."""
        cert, key = (p.read_text() for p in self.tls)
        self.tls_pem.parent.mkdir(parents=True, exist_ok=True)
        self.tls_pem.unlink(missing_ok=True)
        fd = os.open(self.tls_pem, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(cert.rstrip("\n") + "\n" + key)

    def check(self) -> None:
        """Validate the configuration with these settings (haproxy -c); ServerError naming the problem."""
        result = subprocess.run(
            [*self.command(), "-c"], env=self.environment(), capture_output=True, text=True, timeout=30
        )
        if result.returncode != 0:
            raise ServerError(f"HAProxy refused {CONFIG}:\n{result.stdout}{result.stderr}")

    def start(self) -> AdmissionProxy:
        if self.tls:
            self._write_tls_pem()
        try:
            return self._start()
        except BaseException:
            self.stop()  # removes the joined PEM too
            raise

    def _start(self) -> AdmissionProxy:
        self.check()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                start_new_session=True,
                preexec_fn=pinned_to(self.cpus),
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(
                    f"HAProxy exited with status {self.process.returncode} (log: {self.log_path}):\n"
                    f"{self.log_path.read_text(errors='replace')[-2000:]}"
                )
            if _listening(self.host, self.port) and _listening(self.host, self.metrics_port):
                return self
            time.sleep(0.05)
        self.stop()
        raise ServerError(f"HAProxy did not listen on {self.grpc_url} within {self.startup_timeout:.0f} s")

    def stop(self, timeout: float = 3.0) -> None:
        """SIGUSR1 (soft stop: finish the calls in flight, accept no new ones), then SIGKILL after `timeout`."""
        if self.tls_pem is not None:
            self.tls_pem.unlink(missing_ok=True)  # HAProxy read it at start
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGUSR1)
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass

    def __enter__(self) -> AdmissionProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
