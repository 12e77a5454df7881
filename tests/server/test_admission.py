"""The admission proxy (HAProxy) in front of the real tritonserver on the tiny exported models: calls pass
through with their control key, the excess over the in-flight bound and the queue is refused at once with
UNAVAILABLE naming the proxy, a dead server is named too, and the project's client retries a refusal."""

import asyncio
import shutil
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from llmrec.server import admission, contract
from llmrec.server.admission import AdmissionProxy, Limits
from llmrec.server.client import RankingClient, ServingError
from llmrec.server.contract import GRPC_CONTROL_HEADER
from llmrec.server.launcher import TritonServer, free_port


def test_limits_name_what_is_wrong():
    with pytest.raises(ValueError, match="max_in_flight must be at least 1"):
        Limits(max_in_flight=0)
    with pytest.raises(ValueError, match="max_queue must be 0 or more"):
        Limits(max_queue=-1)
    with pytest.raises(ValueError, match="overload_in_flight must be at least 1"):
        Limits(overload_in_flight=0)
    with pytest.raises(ValueError, match="overload_after_ms must be 0 or more"):
        Limits(overload_after_ms=-5)
    with pytest.raises(ValueError, match="overload_queue must be at least 1 while the overloaded mode is on"):
        Limits(overload_queue=0)
    assert Limits(overload_after_ms=0, overload_queue=0).overload_queue == 0  # the mode off: no exit to read


def test_a_missing_haproxy_says_how_to_install_it(monkeypatch):
    monkeypatch.setenv(admission.HAPROXY_ENV, "/nonexistent/haproxy")
    with pytest.raises(FileNotFoundError, match="make admission-tools"):
        AdmissionProxy("127.0.0.1:1").start()


@pytest.fixture(scope="module")
def server(tiny_repo, tmp_path_factory):
    repo = tmp_path_factory.mktemp("admission") / "repo"
    shutil.copytree(tiny_repo["repo"], repo)
    with TritonServer(repo, log_path=repo.parent / "tritonserver.log") as server:
        yield server


@pytest.mark.integration
@pytest.mark.slow
def test_calls_and_the_control_key_pass_through_the_proxy(server, tmp_path):
    with AdmissionProxy(server.grpc_url, Limits(max_in_flight=2), log_path=tmp_path / "proxy.log") as proxy:
        client = RankingClient(proxy.grpc_url, control_key=server.control_key)
        assert all(client.health()["models"].values())
        assert client.similar(item_id="3", k=2)
        assert len(client.rank(history=["a film"], candidates=["b film", "c film"])) == 2
        raw = grpcclient.InferenceServerClient(proxy.grpc_url)
        with pytest.raises(InferenceServerException, match="restricted"):
            raw.get_model_config("similar")
        assert raw.get_model_config("similar", headers={GRPC_CONTROL_HEADER: server.control_key}).config.name
        scraped = urllib.request.urlopen(proxy.metrics_url, timeout=5).read().decode()
        assert "haproxy_backend_current_queue" in scraped


@pytest.mark.integration
@pytest.mark.slow
def test_the_excess_is_refused_at_once_with_unavailable_and_the_server_keeps_serving(server, tmp_path):
    """One call at the server, none waiting: of 48 concurrent calls by text some are answered, every other
    one is refused by the proxy (UNAVAILABLE, its message), nothing else fails."""
    limits = Limits(max_in_flight=1, max_queue=0)
    with AdmissionProxy(server.grpc_url, limits, log_path=tmp_path / "proxy.log") as proxy:

        async def burst() -> list[str]:
            async with grpcaio.InferenceServerClient(proxy.grpc_url) as client:
                return await asyncio.gather(*(_similar_by_text(client, i) for i in range(48)))

        results = asyncio.run(burst())
        refused = [r for r in results if r != "ok"]
        assert results.count("ok") >= 1
        assert refused, "48 concurrent calls against one slot and no queue: some must be refused"
        for r in refused:
            status, message = r.split("|", 1)
            assert status == "StatusCode.UNAVAILABLE", r
            assert message.startswith(admission.REFUSAL_PREFIX), r
        # the project's client retries a refusal with backoff; the server answers as before
        assert RankingClient(proxy.grpc_url).similar(text="a film", k=3)


async def _similar_by_text(client, i: int) -> str:
    """'ok', or 'status|message' of the failure."""
    text = grpcaio.InferInput(contract.TEXT, [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[f"a film about {i}".encode()]], dtype=object))
    k = grpcaio.InferInput(contract.K, [1, 1], "INT32")
    k.set_data_from_numpy(np.array([[5]], dtype="int32"))
    try:
        await client.infer("similar", [text, k])
        return "ok"
    except InferenceServerException as e:
        return f"{e.status()}|{e.message()}"


@pytest.mark.integration
@pytest.mark.slow
def test_sustained_overload_stops_the_queueing_and_a_lighter_load_brings_it_back(server, tmp_path):
    """32 callers without pause against two slots and a queue of 4: the queue stands, the proxy switches to its
    overloaded mode (one call at the server, one waiting) and refuses with a message that says so; once calls
    come one at a time again it queues again. Every call is answered or refused, nothing else fails."""
    limits = Limits(
        max_in_flight=2, max_queue=4, queue_timeout_ms=2000, overload_after_ms=50, overload_queue=1
    )
    log = tmp_path / "proxy.log"

    def session_limit(proxy) -> float:
        scraped = urllib.request.urlopen(proxy.metrics_url, timeout=5).read().decode()
        (line,) = [
            line for line in scraped.splitlines()
            if line.startswith("haproxy_server_limit_sessions{") and 'proxy="triton"' in line
        ]  # fmt: skip
        return float(line.rsplit(" ", 1)[1])

    with AdmissionProxy(server.grpc_url, limits, log_path=log) as proxy:

        async def flood(seconds: float) -> list[str]:
            async with grpcaio.InferenceServerClient(proxy.grpc_url) as client:
                end = asyncio.get_running_loop().time() + seconds

                async def caller(c: int) -> list[str]:
                    got = []
                    while asyncio.get_running_loop().time() < end:
                        got.append(await _similar_by_text(client, c * 1000 + len(got)))
                    return got

                return [r for rs in await asyncio.gather(*(caller(c) for c in range(32))) for r in rs]

        async def one_at_a_time(seconds: float) -> list[str]:
            async with grpcaio.InferenceServerClient(proxy.grpc_url) as client:
                end, got = asyncio.get_running_loop().time() + seconds, []
                while asyncio.get_running_loop().time() < end:
                    got.append(await _similar_by_text(client, len(got)))
                return got

        assert session_limit(proxy) == 2
        flooded = asyncio.run(flood(2.0))
        assert session_limit(proxy) == 1, "overloaded: one call at the server (the mode shows in the metrics)"
        calm = asyncio.run(one_at_a_time(1.0))
        assert session_limit(proxy) == 2
    refusals = [r.split("|", 1) for r in flooded if r != "ok"]
    assert flooded.count("ok") > 0 and refusals
    assert {status for status, _ in refusals} == {"StatusCode.UNAVAILABLE"}
    assert all(message.startswith(admission.REFUSAL_PREFIX) for _, message in refusals)
    assert any("overloaded" in message for _, message in refusals), "the queue stood: the overloaded mode"
    assert calm and set(calm) == {"ok"}, "one call at a time is never refused"
    events = [line for line in log.read_text().splitlines() if line.startswith("[warning]")]
    entries = [i for i, line in enumerate(events) if "overloaded: 1 at the server, 1 waiting" in line]
    exits = [i for i, line in enumerate(events) if "queueing again" in line]
    # one waiting place: an arrival finds "no call waiting" whenever it is admitted, so that could not be the
    # exit (it flapped); a free server slot is, and the flood never leaves one free
    assert len(entries) == 1 and len(exits) == 1 and exits[0] > entries[0], events
    assert "found a server slot free" in events[exits[0]], events[exits[0]]
    assert "overloaded (the server answered" in events[exits[0]], "the exit gives the rate served in the mode"


@pytest.mark.integration
@pytest.mark.slow
def test_a_dead_server_behind_the_proxy_is_named(tmp_path):
    with AdmissionProxy(f"127.0.0.1:{free_port()}", log_path=tmp_path / "proxy.log") as proxy:
        with pytest.raises(ServingError, match="no server slot") as failed:
            RankingClient(proxy.grpc_url, retries=0, timeout=10).similar(item_id="3", k=2)
        assert "UNAVAILABLE" in str(failed.value)


def test_the_cli_defaults_are_the_limits_defaults():
    """`llmrec serve` and `llmrec loadtest` spell the defaults out (importing the proxy module at CLI start
    would import numpy); they must stay those of Limits."""
    import inspect

    from llmrec import cli

    for command in (cli.serve, cli.loadtest):
        params = inspect.signature(command).parameters
        assert params["max_queue"].default == Limits().max_queue, command.__name__
        for name in ("queue_timeout_ms", "overload_after_ms", "overload_in_flight", "overload_queue"):
            assert params[name].default == getattr(Limits(), name), (command.__name__, name)
