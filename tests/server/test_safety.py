"""Safe by default, through the real tritonserver on the tiny exported models: a closed control API, TLS,
publishes that cannot brick a restart, bad input that fails alone (mixed batches and a seeded fuzz run),
and a clean shutdown of `llmrec serve` on SIGTERM, SIGINT, a crash and an interrupted start."""

import asyncio
import collections
import contextlib
import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from llmrec.loadtest import fuzz, machine
from llmrec.server import contract, ensembles, item_index, metrics, runtime, versions
from llmrec.server.client import RankingClient, ServingError
from llmrec.server.contract import CONTROL_HEADER, GRPC_CONTROL_HEADER, MODELS
from llmrec.server.launcher import PYTHON_ENV_DIR, PYTHON_ENV_PREFIX, TritonServer, free_ports

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def repo(tiny_repo, tmp_path_factory):
    path = tmp_path_factory.mktemp("safety") / "repo"
    shutil.copytree(tiny_repo["repo"], path)
    return path


@pytest.fixture(scope="module")
def server(repo):
    with TritonServer(repo, log_path=repo.parent / "tritonserver.log") as server:
        yield server


def catalogue(repo: Path) -> tuple[list[str], list[str]]:
    ids = json.loads((repo / "similar_core" / "1" / item_index.INDEX_IDS).read_text())
    texts = json.loads((repo / "rank_core" / "1" / runtime.RANK_CATALOGUE).read_text())
    return ids, texts


# --- the control API -----------------------------------------------------------------------------
def test_a_client_without_the_key_cannot_load_unload_or_read_configs(server):
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    http = httpclient.InferenceServerClient(server.http_url)
    calls = {
        "grpc load": lambda h: grpc.load_model("similar_core", headers=h),
        "grpc unload": lambda h: grpc.unload_model("rank", headers=h),
        "grpc config": lambda h: grpc.get_model_config("similar", headers=h),
        "grpc index": lambda h: grpc.get_model_repository_index(headers=h),
        "http load": lambda h: http.load_model("similar_core", headers=h),
        "http unload": lambda h: http.unload_model("rank", headers=h),
        "http config": lambda h: http.get_model_config("similar", headers=h),
        "http index": lambda h: http.get_model_repository_index(headers=h),
    }
    for name, call in calls.items():
        header = GRPC_CONTROL_HEADER if name.startswith("grpc") else CONTROL_HEADER
        for headers in (None, {header: "not-the-key"}):
            with pytest.raises(InferenceServerException, match="restricted"):
                call(headers)
    # nothing was unloaded; inference, health and metadata stay open
    client = RankingClient(server.grpc_url)
    assert all(client.health()["models"].values())
    assert client.similar(item_id="3", k=2)
    assert grpc.get_model_metadata("similar").name == "similar"
    # with the key
    assert grpc.get_model_config("similar", headers={GRPC_CONTROL_HEADER: server.control_key}).config.name
    assert http.get_model_repository_index(headers={CONTROL_HEADER: server.control_key})
    with pytest.raises(ServingError, match="restricted"):
        client.reload("similar")
    RankingClient(server.grpc_url, control_key=server.control_key).reload("similar")
    # the same from the command line: the key from the environment, a clear error without it
    from typer.testing import CliRunner

    from llmrec.cli import app
    from llmrec.server.client import CONTROL_KEY_ENV

    reload = ["reload", "similar", "--url", server.grpc_url]
    refused = CliRunner().invoke(app, reload, env={CONTROL_KEY_ENV: ""})
    assert refused.exit_code == 2 and "restricted" in refused.output
    done = CliRunner().invoke(app, reload, env={CONTROL_KEY_ENV: server.control_key})
    assert done.exit_code == 0 and "similar: reloaded; ready: True" in done.output, done.output
    assert CliRunner().invoke(app, ["reload", "simliar"]).exit_code == 2


def self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_with_tls_a_plain_text_client_is_refused_and_the_tls_client_works(repo, tmp_path):
    cert, key = self_signed(tmp_path)
    with TritonServer(repo, log_path=tmp_path / "tls.log", tls=(cert, key)) as server:
        plain = RankingClient(server.grpc_url, timeout=5.0, retries=0)
        assert plain.health()["live"] is False
        with pytest.raises(ServingError):
            plain.similar(item_id="3", k=2)
        secure = RankingClient(server.grpc_url, ssl=True, root_certificates=cert)
        assert secure.health()["ready"]
        assert len(secure.similar(item_id="3", k=2)) == 2
        assert server.http_host == "127.0.0.1"  # no TLS for HTTP in this build: it stays local


# --- publishing --------------------------------------------------------------------------------
def test_a_restart_serves_the_last_good_version_and_says_what_it_skipped(repo, tmp_path):
    broken = tmp_path / "repo"
    shutil.copytree(repo, broken)
    similar = broken / "similar_core"
    shutil.copytree(similar / "1", similar / "2")  # v2: a copy whose index was cut short after sealing
    index = similar / "2" / item_index.INDEX_VECTORS
    index.write_bytes(index.read_bytes()[:100])
    shutil.copytree(similar / "1", similar / "3")  # v3: sealed and intact, but 8-d while embed gives 16-d
    np.save(
        similar / "3" / item_index.INDEX_VECTORS,
        np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32),
    )
    versions.seal(similar / "3", "similar_core", 3)

    with TritonServer(broken, log_path=tmp_path / "restart.log") as server:
        assert server.served["similar_core"] == 1
        skipped = dict(server.skipped["similar_core"])
        assert set(skipped) == {2, 3}
        assert "index.npy has" in skipped[2] and "truncated" in skipped[2]
        assert "the item index is 8-d but the embed model (version 1) gives 16-d" in skipped[3]
        assert "similar_core: serving version 1" in server.report()
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        assert grpc.is_model_ready("similar_core", "1") and not grpc.is_model_ready("similar_core", "3")
        assert len(RankingClient(server.grpc_url).similar(item_id="3", k=3)) == 3


def test_a_new_index_of_the_wrong_dimension_fails_its_load_and_the_old_one_keeps_serving(server, repo):
    similar = repo / "similar_core"
    shutil.copytree(similar / "1", similar / "2")
    np.save(
        similar / "2" / item_index.INDEX_VECTORS,
        np.random.default_rng(0).normal(size=(40, 64)).astype(np.float32),
    )
    versions.seal(similar / "2", "similar_core", 2)
    client = RankingClient(server.grpc_url, control_key=server.control_key)
    try:
        with pytest.raises(ServingError, match="the item index is 64-d but the embed model"):
            client.reload("similar")
        assert len(client.similar(text="Movie 3", k=3)) == 3  # version 1, by text too
    finally:
        shutil.rmtree(similar / "2")
        client.reload("similar")


# --- bad input fails alone ------------------------------------------------------------------------
def _bytes(name, rows):
    return fuzz._bytes(name, rows)


def _raw(name, content):
    return fuzz._raw(name, [1, 1], "BYTES", content)


def _k(k):
    return fuzz._k(k)


MIXED = [  # (model, inputs, None for a valid request or a fragment of the error message)
    ("embed", lambda: [_bytes(contract.TEXT, [["Movie 1"], ["Heat"], ['{"title": ' + "[" * 4000 + "]" * 4000 + "}"]])],
     "TEXT[2] is JSON nested too deeply"),
    ("embed", lambda: [_bytes(contract.TEXT, [['{"title": ' + "9" * 5000 + "}"]])], "TEXT[0] is JSON that cannot be read"),
    ("embed", lambda: [_bytes(contract.TEXT, [["x" * 300_000]])], "TEXT[0] is 300000 bytes; the limit is 16384"),
    ("embed", lambda: [_raw(contract.TEXT, b"\x40\x42\x0f\x00abc")], "incomplete string data for inference input 'TEXT'"),
    ("embed", lambda: [_bytes(contract.TEXT, [["a", "b"]])], "'TEXT'"),
    ("similar", lambda: [_raw(contract.ITEM_ID, b"\xff\xff\x00\x00ab"), _k(3)], "incomplete string data for inference input 'ITEM_ID'"),
    ("similar", lambda: [_bytes(contract.TEXT, [["{\"title\": {\"a\": 1}}"]]), _k(3)], "field 'title' must be a string"),
    ("similar", lambda: [_bytes(contract.ITEM_ID, [["3"]])], "'K'"),
    ("similar", lambda: [fuzz._vector(np.full(16, 1e30)), _k(40)], None),
    ("similar", lambda: [fuzz._vector(np.ones(9)), _k(3)], "VECTOR must have 16 values per row"),
    ("rank", lambda: [_bytes(contract.HISTORY, [[""]]), _bytes(contract.CANDIDATES, [["Movie 1"]])], "HISTORY[0][0] is empty"),
    ("rank", lambda: [_bytes(contract.HISTORY, [["Movie 1"]]), _bytes(contract.CANDIDATES, [["Movie 2", "y" * 20_000]])],
     "CANDIDATES[0][1] is 20000 bytes; the limit is 16384"),
    ("rank", lambda: [_bytes(contract.HISTORY, [["h" * 17_000]]), _bytes(contract.CANDIDATES, [["Movie 2"]])],
     "HISTORY[0][0] is 17000 bytes; the limit is 16384"),
    ("rank", lambda: [_raw(contract.HISTORY, b"\x10\x00\x00\x00a"), _bytes(contract.CANDIDATES, [["Movie 1"]])],
     "incomplete string data for inference input 'HISTORY'"),
]  # fmt: skip
VALID = [
    ("embed", lambda: [_bytes(contract.TEXT, [["Movie 2"]])]),
    ("similar", lambda: [_bytes(contract.ITEM_ID, [["5"]]), _k(4)]),
    ("similar", lambda: [_bytes(contract.TEXT, [["Movie 7"]]), _k(4)]),
    (
        "rank",
        lambda: [
            _bytes(contract.HISTORY, [["Movie 1", "Movie 2"]]),
            _bytes(contract.CANDIDATES, [["Movie 3"]]),
        ],
    ),
]


def test_in_concurrent_mixed_batches_every_valid_request_succeeds_and_every_bad_one_is_named(server):
    async def call(client, model, inputs):  # a burst meets full queues on 2 cores: retried, as clients do
        for attempt in range(12):
            try:
                return await client.infer(model, inputs)
            except InferenceServerException as e:
                if "UNAVAILABLE" not in str(e.status()) or attempt == 11:
                    raise
                await asyncio.sleep(min(1.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.5))

    async def burst():
        client = grpcaio.InferenceServerClient(server.grpc_url)
        calls, expected = [], []
        for round_ in range(4):  # valid and malformed interleaved: they share dynamic batches
            for i, (model, inputs, message) in enumerate(MIXED):
                valid_model, valid_inputs = VALID[(round_ + i) % len(VALID)]
                calls += [call(client, valid_model, valid_inputs()), call(client, model, inputs())]
                expected += [None, message]
        results = await asyncio.gather(*calls, return_exceptions=True)
        await client.close()
        return results, expected

    results, expected = asyncio.run(burst())
    for result, message in zip(results, expected, strict=True):
        if message is None:
            assert not isinstance(result, Exception), f"a valid request failed: {result}"
        else:
            assert isinstance(result, InferenceServerException), (
                f"accepted a request that should fail: {message}"
            )
            assert "INVALID_ARGUMENT" in str(result.status()), result
            assert message in result.message(), (message, result.message())
    assert server.process.poll() is None


def _packed(utf8: bytes, shape: list[int], lengths: list[int]) -> list:
    return fuzz._packed(utf8, shape, lengths)


CORE_CALLS = [  # embed's core called by name, past its gate: (inputs, a fragment of the error)
    (lambda: [_raw(contract.TEXT, b"\x40\x42\x0f\x00abc")], "'TEXT'"),  # what once failed a whole batch
    (lambda: _packed(b"abcd", [1, 4], [99]), "TEXT_LENGTH[0] is 99; TEXT_UTF8 rows hold 4 bytes"),
    (lambda: _packed(b"abcd", [1, 4], [-3]), "TEXT_LENGTH[0] is -3"),
    (lambda: _packed(b"abc", [1, 4], [3]), "'TEXT_UTF8'"),  # 3 bytes for a [1, 4] tensor
    (lambda: _packed(b"\xff\xfe", [1, 2], [2]), "TEXT[0] is not valid UTF-8"),
    (lambda: _packed(b"ab", [1, 2], [2])[:1], "'TEXT_LENGTH'"),  # Triton names the missing input
]


def test_a_client_calling_embeds_core_by_name_fails_alone(server):
    """The core merges requests and is callable by name, past the gate. When it took BYTES, one request
    whose element claimed more bytes than it carried failed its whole batch in the python backend (a
    3-thread `embed` load beside one thread of such calls: 3,301 of 3,689 valid calls failed). It takes
    texts packed as UINT8 and INT32 now, whose sizes Triton checks per request and whose lengths the core
    checks per request: every valid call is answered, every bad one named."""
    stop, lock = time.monotonic() + 4.0, threading.Lock()
    valid, bad = collections.Counter(), collections.Counter()

    def embed_calls():
        client = grpcclient.InferenceServerClient(server.grpc_url)
        while time.monotonic() < stop:
            try:
                client.infer("embed", [_bytes(contract.TEXT, [["Movie 2"], ["Heat"]])])
                outcome = "ok"
            except InferenceServerException as e:
                outcome = f"{e.status()}: {e.message()}"
            with lock:
                valid[outcome] += 1

    def core_calls(seed):
        client, rng = grpcclient.InferenceServerClient(server.grpc_url), random.Random(seed)
        while time.monotonic() < stop:
            inputs, message = rng.choice(CORE_CALLS)
            try:
                client.infer(ensembles.core("embed"), inputs())
                outcome = f"accepted, expected {message}"
            except InferenceServerException as e:
                named = "INVALID_ARGUMENT" in str(e.status()) and message in e.message()
                outcome = "named" if named else f"{e.status()}: {e.message()} (expected {message})"
            with lock:
                bad[outcome] += 1

    threads = [threading.Thread(target=embed_calls) for _ in range(3)]
    threads += [threading.Thread(target=core_calls, args=(seed,)) for seed in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(valid) == {"ok"} and valid["ok"] > 50, valid.most_common(3)
    assert set(bad) == {"named"} and bad["named"] > 50, bad.most_common(3)
    assert server.process.poll() is None


def test_an_oversized_text_is_refused_at_the_gate_and_never_reaches_the_core(server):
    # passed on, a 50 MB text grew the core's shared memory too, for good
    before = metrics.settled_scrape(server.metrics_url)  # a python model books a request late
    with pytest.raises(InferenceServerException, match=r"TEXT\[0\] is 5000000 bytes; the limit is 16384"):
        grpcclient.InferenceServerClient(server.grpc_url).infer(
            "embed", [_bytes(contract.TEXT, [["z" * 5_000_000]])]
        )
    after = metrics.settled_scrape(server.metrics_url)
    seen = {m: after.get(("nv_inference_request_success", m), 0) - before.get(("nv_inference_request_success", m), 0)
            for m in ("embed_gate", "embed_core")}  # fmt: skip
    assert seen == {"embed_gate": 1, "embed_core": 0}


def test_a_seeded_fuzz_run_crashes_nothing_and_fails_no_valid_request(repo, tmp_path):
    ids, texts = catalogue(repo)
    with TritonServer(repo, log_path=tmp_path / "fuzz.log") as server:
        warm = fuzz.run(server.grpc_url, ids, texts, dim=16, n=1_000, threads=8, seed=1)
        assert warm.ok, warm.broken[:5]
        before, counters = machine.tree_usage(server.process.pid)[0], metrics.scrape(server.metrics_url)
        summary = fuzz.run(server.grpc_url, ids, texts, dim=16, n=10_000, threads=8, seed=2)
        after = machine.tree_usage(server.process.pid)[0]
        assert server.process.poll() is None, "the server died"
        delta = {k: v - counters.get(k, 0.0) for k, v in metrics.scrape(server.metrics_url).items()}
    # what gathers BYTES inputs from callers never puts two requests in one execution: a gate, or a core
    # without one (contract `merges_requests`)
    first_hops = [
        ensembles.gate(m.name) if m.merges_requests else ensembles.core(m.name) for m in MODELS.values()
    ]
    assert first_hops == ["embed_gate", "similar_core", "rank_core"]
    for hop in first_hops:
        answered = delta[("nv_inference_request_success", hop)]
        assert answered > 500 and delta[("nv_inference_exec_count", hop)] >= answered, hop
    outcomes = dict(summary.outcomes)
    print(f"fuzz: {summary.requests} requests, {summary.retries} retried (overload), {outcomes}")
    print(f"server RSS {before / 2**20:.0f} -> {after / 2**20:.0f} MiB")
    assert summary.requests == 10_000
    assert summary.ok, summary.broken[:10]
    assert outcomes.get(("ok", "ok"), 0) > 3_000 and outcomes.get(("invalid", "invalid"), 0) > 2_000
    assert after < 1.10 * before, f"server RSS grew from {before / 2**20:.0f} to {after / 2**20:.0f} MiB"


# --- shutdown ----------------------------------------------------------------------------------
def serve(repo: Path, artifacts: Path, *extra: str) -> tuple[subprocess.Popen, list[int]]:
    http, grpc, metrics = free_ports(3)
    # A shell that starts jobs in the background (nohup, `&`) ignores SIGINT, and children inherit that: the
    # server restores Python's handler first, so that SIGINT means Ctrl-C here however the tests were launched.
    # Not with preexec_fn: that forces a fork() of this process, whose gRPC clients' threads can make the child
    # abort before exec (seen: "llmrec serve exited with -6 before serving", no output, in a full run).
    start = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); from llmrec.cli import app; app()"
    command = [sys.executable, "-c", start, "serve", "--repo", str(repo),
               "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics), *extra]  # fmt: skip
    env = {**os.environ, "LLMREC_ARTIFACTS": str(artifacts)}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    return process, [http, grpc, metrics]


def wait_serving(process: subprocess.Popen) -> list[psutil.Process]:
    """Read `llmrec serve`'s output until it says it is serving; its descendants (tritonserver, stubs)."""
    for line in process.stdout:  # ends (and fails below) if the process dies first
        if "serving" in line:
            return descendants(process.pid)
    raise AssertionError(f"llmrec serve exited with {process.wait()} before serving")


def loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback  # ::ffff:127.0.0.1 too


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def kill_tree(process: subprocess.Popen) -> None:
    """However a test ends, nothing it started keeps running: SIGKILL llmrec serve and its descendants
    (tritonserver, HAProxy, the python stubs), which would otherwise outlive it as orphans."""
    for child in descendants(process.pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    process.kill()


def command(process: psutil.Process) -> str:
    """Its command line, or "" once it has exited (a start-up helper can exit between listing and reading:
    a clean-clone run failed on that)."""
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def triton_pids(processes: list[psutil.Process]) -> list[int]:
    """tritonserver among processes seen while it ran (psutil keeps a name once read)."""
    pids = []
    for p in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            if p.name() == "tritonserver":
                pids.append(p.pid)
    return pids


def gone(processes: list[psutil.Process]) -> bool:
    for p in processes:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def assert_clean(
    process: subprocess.Popen, children: list[psutil.Process], artifacts: Path, grpc_port: int, since: float
):
    """Nothing of a server started after `since` is left: processes, shared memory, temporary folders (the
    python backend's /tmp/python_env_* among them, which it removes only when it finalizes)."""
    wait_for(lambda: gone(children), 5, "the server's processes to go")
    for pid in triton_pids(children):  # its python stubs share its process group
        wait_for(lambda pid=pid: group_gone(pid), 5, "tritonserver's process group to go")
    assert not list(Path("/dev/shm").glob(f"llmrec_{process.pid}_*")), "shared memory left behind"
    assert not (artifacts / "server" / f"tmp-{grpc_port}").exists(), "temporary folder left behind"
    envs = [p for p in PYTHON_ENV_DIR.glob(f"{PYTHON_ENV_PREFIX}*") if p.stat().st_mtime >= since]
    assert not envs, f"the python backend's folders left behind: {envs}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_stops_within_seconds_and_leaves_nothing_behind(repo, tmp_path, sig):
    since = time.time()
    process, (_, grpc_port, _) = serve(repo, tmp_path)
    try:
        children = wait_serving(process)
        assert triton_pids(children)
        assert list(Path("/dev/shm").glob(f"llmrec_{process.pid}_*")), (
            "the prefix names this server's regions"
        )
        RankingClient(f"127.0.0.1:{grpc_port}").similar(item_id="3", k=2)
        started = time.monotonic()
        process.send_signal(sig)
        assert process.wait(timeout=10) == 0
        assert time.monotonic() - started < 10
        assert_clean(process, children, tmp_path, grpc_port, since)
    finally:
        kill_tree(process)


def test_serve_behind_the_admission_proxy_answers_on_its_port_and_stops_clean(repo, tmp_path):
    """`llmrec serve --max-in-flight 2`: HAProxy holds the public gRPC port, Triton's own listens on
    127.0.0.1 elsewhere; SIGTERM stops both within seconds."""
    process, (_, grpc_port, _) = serve(repo, tmp_path, "--max-in-flight", "2")
    try:
        children = wait_serving(process)
        assert {"haproxy", "tritonserver"} <= {p.name() for p in children}
        client = RankingClient(f"127.0.0.1:{grpc_port}", control_key=None)
        assert client.similar(item_id="3", k=2) and all(client.health()["models"].values())
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert time.monotonic() - started < 10
        wait_for(lambda: gone(children), 5, "the proxy and the server to go")
        assert not list(Path("/dev/shm").glob(f"llmrec_{process.pid}_*")), "shared memory left behind"
    finally:
        kill_tree(process)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_serve_with_tls_behind_the_admission_proxy_refuses_plain_text_and_serves_tls(repo, tmp_path):
    """With --tls-cert/--tls-key and --max-in-flight the proxy speaks TLS on the public port (Triton's gRPC
    stays plain on 127.0.0.1 behind it); the key's joined copy for HAProxy is private and gone at stop."""
    cert, key = self_signed(tmp_path)
    artifacts = tmp_path / "artifacts"
    process, (http_port, grpc_port, metrics_port) = serve(
        repo,
        artifacts,
        "--host",
        "0.0.0.0",
        "--max-in-flight",
        "2",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
    )
    try:
        children = wait_serving(process)
        public = f"127.0.0.1:{grpc_port}"
        plain = RankingClient(public, timeout=5.0, retries=0)
        assert plain.health()["live"] is False
        with pytest.raises(ServingError):
            plain.similar(item_id="3", k=2)
        secure = RankingClient(public, ssl=True, root_certificates=cert)
        assert secure.health()["ready"] and len(secure.similar(item_id="3", k=2)) == 2
        (joined,) = (artifacts / "server").glob("admission-*.pem")
        assert joined.stat().st_mode & 0o777 == 0o600
        triton = next(p for p in children if p.name() == "tritonserver")
        listening = {c.laddr for c in triton.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
        plain_text = {addr for addr in listening if addr.port != metrics_port}  # metrics are plain by design
        assert http_port in {addr.port for addr in plain_text}
        assert all(loopback(addr.ip) for addr in plain_text), listening  # gRPC and HTTP stay local
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        wait_for(lambda: gone(children), 5, "the proxy and the server to go")
        assert not joined.exists()
    finally:
        kill_tree(process)


def test_serve_exits_non_zero_when_tritonserver_dies_and_cleans_up(repo, tmp_path):
    since = time.time()
    process, (_, grpc_port, _) = serve(repo, tmp_path)
    try:
        children = wait_serving(process)
        os.kill(triton_pids(children)[0], signal.SIGKILL)
        assert process.wait(timeout=15) == 1
        assert "exited on its own with status -9" in process.stdout.read()
        assert_clean(process, children, tmp_path, grpc_port, since)
    finally:
        kill_tree(process)


def test_ctrl_c_while_starting_leaves_no_server_behind(repo, tmp_path):
    since = time.time()
    process, (_, grpc_port, _) = serve(repo, tmp_path)
    try:
        seen: list[psutil.Process] = []

        def triton_started() -> bool:
            seen[:] = descendants(process.pid)
            triton_pids(seen)  # read the names while they run
            return any("triton_python_backend_stub" in command(p) for p in seen)  # loading models

        wait_for(triton_started, 120, "tritonserver to start loading models")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
        assert "serving" not in process.stdout.read()
        assert_clean(process, seen, tmp_path, grpc_port, since)
    finally:
        kill_tree(process)
