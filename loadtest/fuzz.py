"""A seeded fuzz run against a live server: valid and malformed requests mixed, concurrently, over raw gRPC.

    summary = run(grpc_url, catalogue, n=10_000, threads=8, seed=0)

Each generated request carries what it must get: `ok` (a valid request, answered), `invalid` (refused with
INVALID_ARGUMENT), or `either` (random bytes that may or may not form a valid request: answered or
INVALID_ARGUMENT). Anything else breaks the promise: INTERNAL or UNKNOWN (an input no check foresaw), or
a lost connection (the server died). UNAVAILABLE (a full queue) is counted apart: it is overload, which
the caller sizes away. Requests go over raw tritonclient gRPC, not the project's client, so that they
can be wrong in ways the client would never send (bad dtypes and shapes, truncated raw BYTES tensors).
"""

from __future__ import annotations

import json
import random
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from llmrec.server import contract, ensembles
from llmrec.server.contract import MAX_CANDIDATES, MAX_TEXT_BYTES


@dataclass
class Case:
    kind: str  # what it is, for the report
    expect: str  # "ok", "invalid" or "either"
    model: str
    inputs: list


@dataclass
class Summary:
    requests: int = 0
    retries: int = 0  # calls answered UNAVAILABLE (overload) and sent again
    outcomes: Counter = field(default_factory=Counter)  # (expect, outcome) -> count
    broken: list = field(default_factory=list)  # (kind, expect, outcome, message) that broke the promise

    @property
    def ok(self) -> bool:
        return not self.broken

    def table(self) -> list[dict]:
        return [{"expected": e, "got": o, "requests": n} for (e, o), n in sorted(self.outcomes.items())]


def _bytes(name: str, rows: list[list]) -> grpcclient.InferInput:
    array = np.array(
        [[t.encode() if isinstance(t, str) else t for t in row] for row in rows], dtype=np.object_
    )
    tensor = grpcclient.InferInput(name, list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array)
    return tensor


def _raw(name: str, shape: list[int], dtype: str, content: bytes) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, shape, dtype)
    tensor._raw_content = content  # what a client that ignores the format could send
    return tensor


def _packed(utf8: bytes, shape: list[int], lengths: list[int]) -> list[grpcclient.InferInput]:
    """embed's core inputs as a client would send them by hand (contract `packed`): raw bytes and lengths."""
    return [
        _raw(contract.TEXT_UTF8, shape, "UINT8", utf8),
        _raw(contract.TEXT_LENGTH, [len(lengths), 1], "INT32", np.array(lengths, "<i4").tobytes()),
    ]


def _k(k: int, dtype: str = "INT32") -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(contract.K, [1, 1], dtype)
    tensor.set_data_from_numpy(np.array([[k]], dtype=np.int32 if dtype == "INT32" else np.float32))
    return tensor


def _vector(values: np.ndarray) -> grpcclient.InferInput:
    row = np.asarray(values, dtype=np.float32).reshape(1, -1)
    tensor = grpcclient.InferInput(contract.VECTOR, list(row.shape), "FP32")
    tensor.set_data_from_numpy(row)
    return tensor


class Generator:
    """Seeded requests for the three public models of a served catalogue (ids and texts of its items), and
    for `embed`'s core called by name, past its gate (Triton has no private models)."""

    def __init__(self, ids: list[str], texts: list[str], dim: int, seed: int = 0):
        self.ids, self.texts, self.dim = ids, texts, dim
        self.rng = random.Random(seed)
        self.makers: list[tuple[Callable[[], Case], int]] = [
            (self.valid_embed, 6),
            (self.valid_similar, 8),
            (self.valid_rank, 6),
            (self.malformed_text, 6),
            (self.malformed_similar, 5),
            (self.malformed_tensor, 4),
            (self.random_bytes, 3),
            (self.malformed_core, 3),
        ]

    def __call__(self) -> Case:
        makers, weights = zip(*self.makers, strict=True)
        return self.rng.choices(makers, weights)[0]()

    # --- valid ---------------------------------------------------------------------------------
    def text(self) -> str:
        r = self.rng
        choice = r.random()
        if choice < 0.5:
            return r.choice(self.texts)
        if choice < 0.8:
            return json.dumps(
                {"title": r.choice(self.texts)[:40], "topic": "1990s", "content": "x" * r.randint(0, 200)}
            )
        return "".join(chr(r.randint(32, 0x2FFF)) for _ in range(r.randint(1, 60))).strip() or "title"

    def valid_embed(self) -> Case:
        texts = [self.text() for _ in range(self.rng.randint(1, 4))]
        return Case("embed", "ok", "embed", [_bytes(contract.TEXT, [[t] for t in texts])])

    def valid_similar(self) -> Case:
        r = self.rng
        how = r.choice(("id", "text", "vector"))
        if how == "id":
            return Case(
                "similar by id",
                "ok",
                "similar",
                [_bytes(contract.ITEM_ID, [[r.choice(self.ids)]]), _k(r.randint(1, len(self.ids) - 1))],
            )
        if how == "text":
            return Case(
                "similar by text",
                "ok",
                "similar",
                [_bytes(contract.TEXT, [[self.text()]]), _k(r.randint(1, len(self.ids)))],
            )
        scale = 10.0 ** r.uniform(-30, 30)  # any scale: the server normalises in float64
        vector = np.random.default_rng(r.randint(0, 2**31)).normal(size=self.dim) * scale
        return Case("similar by vector", "ok", "similar", [_vector(vector), _k(r.randint(1, len(self.ids)))])

    def valid_rank(self) -> Case:
        r = self.rng
        history = [self.text() for _ in range(r.randint(1, 5))]
        candidates = [self.text() for _ in range(r.randint(1, 10))]
        return Case(
            "rank",
            "ok",
            "rank",
            [_bytes(contract.HISTORY, [history]), _bytes(contract.CANDIDATES, [candidates])],
        )

    # --- malformed -----------------------------------------------------------------------------
    def bad_text(self, json_items: bool = True) -> tuple[str, bytes]:
        """A text every model refuses; with json_items, also JSON item texts that embed and similar
        refuse (rank reads its texts as they are)."""
        r = self.rng
        depth = r.randint(1000, 5000)
        choices = [
            ("empty text", b""),
            ("blank text", b"   \t "),
            ("huge text", b"x" * r.randint(MAX_TEXT_BYTES + 1, 200_000)),
            ("invalid UTF-8", b"caf\xe9 " + bytes(r.randint(128, 255) for _ in range(8))),
        ]
        if json_items:
            choices += [
                ("nested JSON", ('{"title": ' + "[" * depth + "]" * depth + "}").encode()),
                (
                    "nested JSON object",
                    ('{"title": "x", "content": ' + '{"a":' * depth + "1" + "}" * depth + "}").encode(),
                ),
                ("5000-digit number", ('{"title": ' + "7" * 5000 + "}").encode()),
                ("non-text field", b'{"title": {"nested": true}}'),
                ("JSON without title", b'{"topic": "1990s"}'),
            ]
        return r.choice(choices)

    def malformed_text(self) -> Case:
        model = self.rng.choice(("embed", "similar", "rank", "rank"))
        kind, text = self.bad_text(json_items=model != "rank")
        if model == "embed":
            good = [[t] for t in self.rng.sample(self.texts, 2)]
            return Case(f"embed: {kind}", "invalid", "embed", [_bytes(contract.TEXT, [*good, [text]])])
        if model == "similar":
            return Case(f"similar: {kind}", "invalid", "similar", [_bytes(contract.TEXT, [[text]]), _k(3)])
        if self.rng.random() < 0.2:  # or too many of them
            kind, text, count = f"more than {MAX_CANDIDATES} candidates", self.texts[0], MAX_CANDIDATES + 1
        else:
            count = 3
        history = [*self.rng.sample(self.texts, 2)]
        candidates = [self.texts[i % len(self.texts)] for i in range(count - 1)] + [text]
        return Case(
            f"rank: {kind}",
            "invalid",
            "rank",
            [_bytes(contract.HISTORY, [history]), _bytes(contract.CANDIDATES, [candidates])],
        )

    def malformed_similar(self) -> Case:
        r = self.rng
        item = _bytes(contract.ITEM_ID, [[r.choice(self.ids)]])
        kind, inputs = r.choice(
            [
                ("K = 0", [item, _k(0)]),
                ("K < 0", [item, _k(-r.randint(1, 2**31 - 1))]),
                ("K > catalogue", [item, _k(len(self.ids) + r.randint(0, 10**6))]),
                ("no K", [item]),
                ("no query", [_k(3)]),
                ("two queries", [item, _bytes(contract.TEXT, [["Heat"]]), _k(3)]),
                ("unknown id", [_bytes(contract.ITEM_ID, [[f"no-such-{r.randint(0, 10**9)}"]]), _k(3)]),
                ("vector of wrong width", [_vector(np.ones(self.dim + r.randint(1, 5))), _k(3)]),
                ("zero vector", [_vector(np.zeros(self.dim)), _k(3)]),
                ("NaN vector", [_vector(np.full(self.dim, np.nan)), _k(3)]),
                ("infinite vector", [_vector(np.full(self.dim, np.inf)), _k(3)]),
                ("K as FP32", [item, _k(3, "FP32")]),
            ]
        )
        return Case(f"similar: {kind}", "invalid", "similar", inputs)

    def malformed_tensor(self) -> Case:
        r = self.rng
        model = r.choice(("embed", "similar"))
        name = contract.TEXT if model == "embed" else contract.ITEM_ID
        extra = [_k(3)] if model == "similar" else []
        claimed = r.randint(5, 10**6)
        kind, tensor = r.choice(
            [
                ("truncated BYTES element", _raw(name, [1, 1], "BYTES", struct.pack("<I", claimed) + b"abc")),
                ("BYTES without a length", _raw(name, [1, 1], "BYTES", b"ab")),
                (
                    "more BYTES elements than the shape",
                    _raw(name, [1, 1], "BYTES", (struct.pack("<I", 1) + b"a") * 3),
                ),
                ("wrong shape", _bytes(name, [["a", "b"]])),
                ("unknown input", _bytes("NOT_AN_INPUT", [["a"]])),
            ]
        )
        return Case(f"{model}: {kind}", "invalid", model, [tensor, *extra])

    def malformed_core(self) -> Case:
        """`embed_core` by name: it merges requests, so these must fail alone (contract `Model.core_inputs`)."""
        r = self.rng
        text = r.choice(self.texts).encode()
        width = len(text)
        huge = b"y" * r.randint(MAX_TEXT_BYTES + 1, 100_000)
        kind, inputs = r.choice(
            [
                (
                    "BYTES as the public model takes",
                    [_raw(contract.TEXT, [1, 1], "BYTES", b"\xff\x00\x00\x00ab")],
                ),
                ("length past the row", _packed(text, [1, width], [width + r.randint(1, 10**6)])),
                ("negative length", _packed(text, [1, width], [-r.randint(1, 2**31 - 1)])),
                ("fewer bytes than the shape", _packed(text[:-1], [1, width], [width - 1])),
                ("lengths for another batch size", _packed(text + text, [2, width], [width])),
                ("no lengths", _packed(text, [1, width], [width])[:1]),
                ("invalid UTF-8", _packed(b"caf\xe9", [1, 4], [4])),
                ("huge text", _packed(huge, [1, len(huge)], [len(huge)])),
            ]
        )
        return Case(f"embed_core: {kind}", "invalid", ensembles.core(contract.EMBED.name), inputs)

    def random_bytes(self) -> Case:
        r = self.rng
        model = r.choice(("embed", "rank"))
        blob = bytes(r.randint(0, 255) for _ in range(r.randint(0, 64)))
        if model == "embed":
            return Case(
                "embed: random bytes", "either", "embed", [_raw(contract.TEXT, [1, 1], "BYTES", blob)]
            )
        rows = [_raw(contract.HISTORY, [1, 1], "BYTES", blob), _bytes(contract.CANDIDATES, [[self.texts[0]]])]
        return Case("rank: random bytes", "either", "rank", rows)


def outcome(error: InferenceServerException | None) -> str:
    if error is None:
        return "ok"
    status = str(error.status() or "")
    for name in ("INVALID_ARGUMENT", "UNAVAILABLE", "INTERNAL", "UNKNOWN"):
        if name in status:
            return "invalid" if name == "INVALID_ARGUMENT" else name.lower()
    return f"other ({status or 'no status'})"


def run(
    url: str,
    ids: list[str],
    texts: list[str],
    dim: int,
    n: int = 10_000,
    threads: int = 8,
    seed: int = 0,
    timeout: float = 60.0,
    retries: int = 10,
    progress: Callable[[int], None] | None = None,
) -> Summary:
    """n seeded requests from `threads` concurrent callers; what each got, and every broken promise."""
    generator = Generator(ids, texts, dim, seed)
    cases = [generator() for _ in range(n)]  # generated up front: the same seed gives the same requests
    summary, lock, position = Summary(), threading.Lock(), iter(range(n))

    def call() -> None:
        client = grpcclient.InferenceServerClient(url)
        try:
            while True:
                with lock:
                    i = next(position, None)
                if i is None:
                    return
                case = cases[i]
                for attempt in range(retries + 1):
                    error = None
                    try:
                        client.infer(case.model, case.inputs, client_timeout=timeout)
                    except InferenceServerException as e:
                        error = e
                    got = outcome(error)
                    if got != "unavailable" or attempt == retries:
                        break
                    with lock:
                        summary.retries += 1
                    time.sleep(min(1.0, 0.02 * 2**attempt) * random.uniform(0.5, 1.5))
                fine = got == case.expect or (case.expect == "either" and got in ("ok", "invalid"))
                with lock:
                    summary.requests += 1
                    summary.outcomes[case.expect, got] += 1
                    if not fine:
                        summary.broken.append((case.kind, case.expect, got, str(error)[:300]))
                    if progress is not None:
                        progress(summary.requests)
        finally:
            client.close()

    workers = [threading.Thread(target=call, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return summary
