"""gRPC clients for the public models (tritonclient underneath): sync `RankingClient`, asyncio `AsyncRankingClient`.

    client = RankingClient("127.0.0.1:8001")
    client.similar(item_id="1", k=10)            # [Neighbour(item_id, score), ...], best first
    client.similar(text="Heat (1995)", k=10)     # or a text, or vector=np.ndarray of the index's dimension
    client.rank(history=[...], candidates=[...]) # one score per candidate
    client.embed(["Toy Story (1995)"])           # (n, d) L2-normalised

Every call has a deadline (`timeout` seconds), is retried with exponential backoff (with jitter) while the
server answers UNAVAILABLE (starting, restarting, or overloaded: a model's queue is full or its queue
timeout passed), and raises `ServingError` naming the model, the gRPC status and the server's message
otherwise. `reload` is a control call: it needs the server's control key (`control_key=`, else the
environment variable LLMREC_CONTROL_KEY). `ssl=True` (with `root_certificates=` a PEM file for a private
CA or a self-signed server) talks TLS to a server started with `llmrec serve --tls-cert ... --tls-key ...`. Latency goes to the `llmrec_client_request_seconds`
histogram (per method and status) of llmrec.server.metrics.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from llmrec.server import contract, ensembles
from llmrec.server.metrics import observe

RETRYABLE = ("StatusCode.UNAVAILABLE",)
CONTROL_KEY_ENV = "LLMREC_CONTROL_KEY"


def _delay(backoff: float, attempt: int) -> float:
    """Exponential backoff with jitter, so that refused callers do not come back in lockstep."""
    return backoff * 2**attempt * random.uniform(0.5, 1.5)


def _channel(ssl: bool, root_certificates: str | os.PathLike | None) -> dict:
    if root_certificates is not None and not ssl:
        raise ValueError("root_certificates is for TLS: pass ssl=True too")
    return {"ssl": ssl, "root_certificates": None if root_certificates is None else str(root_certificates)}


class ServingError(RuntimeError):
    """A request failed: `status` is the gRPC status (e.g. StatusCode.INVALID_ARGUMENT)."""

    def __init__(self, method: str, status: str, message: str):
        super().__init__(f"{method} failed ({status}): {message}")
        self.method, self.status, self.message = method, status, message


@dataclass(frozen=True)
class Neighbour:
    item_id: str
    score: float


def _bytes_input(name: str, rows: list[list[str]]) -> grpcclient.InferInput:
    array = np.array(
        [[t.encode() if isinstance(t, str) else t for t in row] for row in rows], dtype=np.object_
    )
    tensor = grpcclient.InferInput(name, list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array)
    return tensor


def embed_request(texts: list[str]) -> tuple[str, list, list[str]]:
    if not texts:
        raise ValueError("embed needs at least one text")
    return contract.EMBED.name, [_bytes_input(contract.TEXT, [[t] for t in texts])], [contract.VECTOR]


def similar_request(
    item_id: str | None, text: str | None, k: int, vector: np.ndarray | None = None
) -> tuple[str, list, list[str]]:
    if sum(q is not None for q in (item_id, text, vector)) != 1:
        raise ValueError("give exactly one of item_id, text and vector")
    k_input = grpcclient.InferInput(contract.K, [1, 1], contract.SIMILAR.input(contract.K).dtype)
    k_input.set_data_from_numpy(np.array([[k]], dtype=np.int32))
    if vector is not None:
        row = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        query = grpcclient.InferInput(
            contract.VECTOR, list(row.shape), contract.SIMILAR.input(contract.VECTOR).dtype
        )
        query.set_data_from_numpy(row)
    elif item_id is not None:
        query = _bytes_input(contract.ITEM_ID, [[item_id]])
    else:
        query = _bytes_input(contract.TEXT, [[text]])
    return contract.SIMILAR.name, [query, k_input], [contract.ITEM_IDS, contract.SCORES]


def rank_request(
    history: list[str] | None = None,
    candidates: list[str] | None = None,
    history_ids: list[str] | None = None,
    candidate_ids: list[str] | None = None,
) -> tuple[str, list, list[str]]:
    """Each side as texts or as catalogue item ids (exactly one of the two)."""
    inputs = []
    for texts, ids, texts_name, ids_name in (
        (history, history_ids, contract.HISTORY, contract.HISTORY_IDS),
        (candidates, candidate_ids, contract.CANDIDATES, contract.CANDIDATE_IDS),
    ):
        if (texts is None) == (ids is None):
            raise ValueError(f"rank needs exactly one of {texts_name.lower()} and {ids_name.lower()}")
        values, name = (texts, texts_name) if ids is None else (ids, ids_name)
        if not values:
            raise ValueError(f"rank needs at least one item in {name.lower()}")
        inputs.append(_bytes_input(name, [list(values)]))
    return contract.RANK.name, inputs, [contract.SCORES]


def _outputs(result, names: list[str]) -> list[np.ndarray]:
    return [result.as_numpy(n) for n in names]


def _neighbours(ids: np.ndarray, scores: np.ndarray) -> list[Neighbour]:
    return [Neighbour(i.decode(), float(s)) for i, s in zip(ids[0], scores[0], strict=True)]


def _status(e: InferenceServerException) -> str:
    return str(e.status() or "StatusCode.UNKNOWN")


class RankingClient:
    def __init__(
        self,
        url: str = "127.0.0.1:8001",
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.1,
        control_key: str | None = None,
        ssl: bool = False,
        root_certificates: str | os.PathLike | None = None,
    ):
        self.url, self.timeout, self.retries, self.backoff = url, timeout, retries, backoff
        self.control_key = control_key or os.environ.get(CONTROL_KEY_ENV)
        self.grpc = grpcclient.InferenceServerClient(url, **_channel(ssl, root_certificates))

    def _call(self, method: str, fn: Callable, retry: bool = True):
        retries = self.retries if retry else 0
        for attempt in range(retries + 1):
            started = time.perf_counter()
            try:
                out = fn()
            except InferenceServerException as e:
                status = _status(e)
                observe(method, status, time.perf_counter() - started)
                if status in RETRYABLE and attempt < retries:
                    time.sleep(_delay(self.backoff, attempt))
                    continue
                raise ServingError(method, status, e.message()) from None
            observe(method, "OK", time.perf_counter() - started)
            return out
        raise AssertionError("unreachable")

    def _infer(self, method: str, request: tuple[str, list, list[str]]) -> list[np.ndarray]:
        model, inputs, outputs = request
        requested = [grpcclient.InferRequestedOutput(n) for n in outputs]
        result = self._call(
            method, lambda: self.grpc.infer(model, inputs, outputs=requested, client_timeout=self.timeout)
        )
        return _outputs(result, outputs)

    def embed(self, texts: list[str]) -> np.ndarray:
        return self._infer("embed", embed_request(texts))[0]

    def similar(
        self,
        item_id: str | None = None,
        text: str | None = None,
        k: int = 10,
        vector: np.ndarray | None = None,
    ) -> list[Neighbour]:
        """The k catalogue items nearest to one query: a catalogue item id (never returned itself), an item
        text, or a vector of the index's dimension."""
        return _neighbours(*self._infer("similar", similar_request(item_id, text, k, vector)))

    def rank(
        self,
        history: list[str] | None = None,
        candidates: list[str] | None = None,
        *,
        history_ids: list[str] | None = None,
        candidate_ids: list[str] | None = None,
    ) -> np.ndarray:
        """One score per candidate for one user; each side as texts or as catalogue item ids."""
        return self._infer("rank", rank_request(history, candidates, history_ids, candidate_ids))[0][0]

    def reload(self, model: str) -> None:
        """Re-read a public model's versions from the repository (a new index version replaces the served
        one); what is versioned, and reloaded, is the model's core (llmrec.server.ensembles).

        If the new version fails to load, the server keeps serving the old one and this raises with why.
        Without the server's control key the server refuses (ServingError, StatusCode.UNAVAILABLE is not
        retried here: the key will not appear by waiting)."""
        headers = {contract.GRPC_CONTROL_HEADER: self.control_key} if self.control_key else None
        self._call(
            "reload",
            lambda: self.grpc.load_model(
                ensembles.core(model), headers=headers, client_timeout=max(self.timeout, 120.0)
            ),
            retry=False,
        )

    def health(self) -> dict:
        """live, ready, and each public model's readiness (False where the server cannot be reached)."""
        try:
            models = {m: self.grpc.is_model_ready(m, client_timeout=self.timeout) for m in contract.MODELS}
            return {
                "live": self.grpc.is_server_live(client_timeout=self.timeout),
                "ready": self.grpc.is_server_ready(client_timeout=self.timeout),
                "models": models,
            }
        except InferenceServerException:
            return {"live": False, "ready": False, "models": dict.fromkeys(contract.MODELS, False)}

    def close(self) -> None:
        self.grpc.close()

    def __enter__(self) -> RankingClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncRankingClient:
    """The same calls for asyncio code: `await client.rank(...)`."""

    def __init__(
        self,
        url: str = "127.0.0.1:8001",
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.1,
        ssl: bool = False,
        root_certificates: str | os.PathLike | None = None,
    ):
        import tritonclient.grpc.aio as aio

        self.url, self.timeout, self.retries, self.backoff = url, timeout, retries, backoff
        self.grpc = aio.InferenceServerClient(url, **_channel(ssl, root_certificates))

    async def _infer(self, method: str, request: tuple[str, list, list[str]]) -> list[np.ndarray]:
        model, inputs, outputs = request
        requested = [grpcclient.InferRequestedOutput(n) for n in outputs]
        for attempt in range(self.retries + 1):
            started = time.perf_counter()
            try:
                result = await self.grpc.infer(model, inputs, outputs=requested, client_timeout=self.timeout)
            except InferenceServerException as e:
                status = _status(e)
                observe(method, status, time.perf_counter() - started)
                if status in RETRYABLE and attempt < self.retries:
                    await asyncio.sleep(_delay(self.backoff, attempt))
                    continue
                raise ServingError(method, status, e.message()) from None
            observe(method, "OK", time.perf_counter() - started)
            return _outputs(result, outputs)
        raise AssertionError("unreachable")

    async def embed(self, texts: list[str]) -> np.ndarray:
        return (await self._infer("embed", embed_request(texts)))[0]

    async def similar(
        self,
        item_id: str | None = None,
        text: str | None = None,
        k: int = 10,
        vector: np.ndarray | None = None,
    ) -> list[Neighbour]:
        return _neighbours(*await self._infer("similar", similar_request(item_id, text, k, vector)))

    async def rank(
        self,
        history: list[str] | None = None,
        candidates: list[str] | None = None,
        *,
        history_ids: list[str] | None = None,
        candidate_ids: list[str] | None = None,
    ) -> np.ndarray:
        """One score per candidate for one user; each side as texts or as catalogue item ids."""
        result = await self._infer("rank", rank_request(history, candidates, history_ids, candidate_ids))
        return result[0][0]

    async def close(self) -> None:
        await self.grpc.close()

    async def __aenter__(self) -> AsyncRankingClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
