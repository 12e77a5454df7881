"""The serving contract, defined once: public models, their tensors, limits and request checks.

Every other part reads this module: export generates each model's tensor sections of config.pbtxt from it
(llmrec.server.ensembles), the python models in model_repo/ and the client take tensor names from it, and a
test holds the rest of the repository to spelling no tensor name itself (tests/server/test_contract.py).

    embed    TEXT [b, 1] BYTES                                  -> VECTOR [b, d] FP32 (L2-normalised)
    similar  ITEM_ID or TEXT [b, 1] BYTES or VECTOR [b, d] FP32,
             K [b, 1] INT32                                     -> ITEM_IDS [b, k] BYTES, SCORES [b, k] FP32
    rank     HISTORY or HISTORY_IDS [b, h] BYTES,
             CANDIDATES or CANDIDATE_IDS [b, c] BYTES           -> SCORES [b, c] FP32

A text is UTF-8: a plain string (the item's title and description) or a JSON object with the item fields
{"title", "topic", "content"} (what training saw). `similar` takes exactly one of ITEM_ID (a catalogue item,
excluded from its own results), TEXT and VECTOR (a query vector of the index's dimension, e.g. from `embed`
or a user model; normalised by the server); one K per request (all rows of a request share it). `rank`
takes each side as texts or as catalogue item ids (their vectors were computed at export, so scoring by
id encodes nothing); texts remain for items the catalogue lacks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

MAX_TEXT_BYTES = 16_384  # longer texts are refused: the encoders read 32-64 tokens of them anyway
MAX_K = 1_000
MAX_HISTORY = 200
MAX_CANDIDATES = 1_000


# The tensors' names on the wire, spelt here only (tests/server/test_contract.py holds the rest of the
# repository to that): the python models, the client, the load tests and the generated configs use these.
TEXT, ITEM_ID, VECTOR, K = "TEXT", "ITEM_ID", "VECTOR", "K"
HISTORY, HISTORY_IDS, CANDIDATES, CANDIDATE_IDS = "HISTORY", "HISTORY_IDS", "CANDIDATES", "CANDIDATE_IDS"
ITEM_IDS, SCORES = "ITEM_IDS", "SCORES"
# A tensor's data type: Triton's wire name -> its name in config.pbtxt, and the numpy type that carries it.
CONFIG_TYPES = {"BYTES": "TYPE_STRING", "FP32": "TYPE_FP32", "INT32": "TYPE_INT32", "UINT8": "TYPE_UINT8"}
NUMPY_TYPES = {"BYTES": np.object_, "FP32": np.float32, "INT32": np.int32, "UINT8": np.uint8}


def packed(name: str) -> tuple[str, str]:
    """The two tensors that carry text input `name` into a core that merges requests (`Model.core_inputs`):
    its elements' UTF-8 bytes, one row each, zero-padded to the longest ([b, L] UINT8), and their lengths
    ([b, 1] INT32)."""
    return f"{name}_UTF8", f"{name}_LENGTH"


TEXT_UTF8, TEXT_LENGTH = packed(TEXT)


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # Triton's wire name: BYTES, FP32, INT32, UINT8 (CONFIG_TYPES)
    dims: tuple[int, ...]  # without the batch dimension; -1 is variable
    optional: bool = False
    ragged: bool = False  # requests whose shapes differ may share a dynamic batch (allow_ragged_batch)


@dataclass(frozen=True)
class Model:
    name: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    max_batch_size: int
    # Whether the core merges several requests into one execution (Triton's dynamic batcher). Such a core
    # sits behind a gate that passes each request alone (llmrec.server.ensembles): this Triton build's python
    # backend fails a whole gathered batch for one request with malformed BYTES framing. A core that runs
    # one request per execution (preferred batch size 1, no delay) needs no gate: it checks its own inputs,
    # and each call saves a python-backend round trip (about 1 ms of a 3.4 ms `similar` call at 1M items).
    merges_requests: bool = True
    # The warm-up request Triton sends each instance at load: (BYTES input, number of catalogue texts).
    warmup: tuple[tuple[str, int], ...] = ()

    @property
    def core_inputs(self) -> tuple[Tensor, ...]:
        """What the model's core takes: its inputs, but a core that merges requests takes each text input
        `packed` (UTF-8 bytes and lengths) instead of as BYTES. This Triton build's python backend checks the
        framing of BYTES inputs for a whole gathered batch at once, and one request whose element claims more
        bytes than it carries fails every request in the batch (seen: a client calling `embed_core` by name
        with such a request failed 3,301 of 3,689 valid `embed` calls beside it). UINT8 and INT32 tensors
        have no framing: Triton checks their size per request, and the core checks the lengths per request
        (`unpack_texts`). The gate packs (llmrec.server.gate), as does `similar` for its text queries."""
        if not self.merges_requests:
            return self.inputs
        out: list[Tensor] = []
        for t in self.inputs:
            if t.dtype != "BYTES":
                out.append(t)
                continue
            if t.dims != (1,):
                raise ValueError(f"{self.name}: a core that merges requests takes one text per row, not {t}")
            utf8, length = packed(t.name)
            out += [
                Tensor(utf8, "UINT8", (-1,), t.optional, ragged=True),
                Tensor(length, "INT32", (1,), t.optional),
            ]
        return tuple(out)

    def input(self, name: str) -> Tensor:
        return _named(self.inputs, name, f"{self.name} input")

    def core_input(self, name: str) -> Tensor:
        return _named(self.core_inputs, name, f"{self.name} core input")

    def output(self, name: str) -> Tensor:
        return _named(self.outputs, name, f"{self.name} output")


def _named(tensors: tuple[Tensor, ...], name: str, what: str) -> Tensor:
    for tensor in tensors:
        if tensor.name == name:
            return tensor
    raise KeyError(f"no {what} named {name!r}: {[t.name for t in tensors]}")


EMBED = Model(
    "embed",
    inputs=(Tensor(TEXT, "BYTES", (1,)),),
    outputs=(Tensor(VECTOR, "FP32", (-1,)),),
    max_batch_size=64,
    warmup=((TEXT, 1),),
)
SIMILAR = Model(
    "similar",
    inputs=(
        Tensor(ITEM_ID, "BYTES", (1,), optional=True),
        Tensor(TEXT, "BYTES", (1,), optional=True),
        Tensor(VECTOR, "FP32", (-1,), optional=True),
        Tensor(K, "INT32", (1,)),
    ),
    outputs=(Tensor(ITEM_IDS, "BYTES", (-1,)), Tensor(SCORES, "FP32", (-1,))),
    max_batch_size=64,
    merges_requests=False,  # an index search costs less than the round trip a gate adds
)
RANK = Model(
    "rank",
    inputs=(
        Tensor(HISTORY, "BYTES", (-1,), optional=True),
        Tensor(HISTORY_IDS, "BYTES", (-1,), optional=True),
        Tensor(CANDIDATES, "BYTES", (-1,), optional=True),
        Tensor(CANDIDATE_IDS, "BYTES", (-1,), optional=True),
    ),
    outputs=(Tensor(SCORES, "FP32", (-1,)),),
    max_batch_size=16,
    merges_requests=False,  # rows of precomputed or cached vectors and a small head
    warmup=((HISTORY, 2), (CANDIDATES, 2)),
)
MODELS = {m.name: m for m in (EMBED, SIMILAR, RANK)}
LOAD_ORDER = (
    "embed",
    "similar",
    "rank",
)  # similar calls embed and checks its index against embed's dimension

# The header that carries the control key: Triton's model-repository, model-config, shared-memory, trace
# and logging APIs refuse calls without it (llmrec.server.launcher). gRPC metadata keys are lower case.
CONTROL_HEADER = "llmrec-control-key"  # over HTTP
GRPC_CONTROL_HEADER = f"triton-grpc-protocol-{CONTROL_HEADER}"  # over gRPC Triton expects this prefix


class BadRequest(ValueError):
    """A request the server refuses; the message names the input and the problem."""


def decode_text(raw: bytes | str, what: str) -> str:
    """One text from a BYTES element: valid UTF-8, not blank, at most MAX_TEXT_BYTES."""
    if isinstance(raw, str):
        raw = raw.encode()
    if len(raw) > MAX_TEXT_BYTES:
        raise BadRequest(f"{what} is {len(raw)} bytes; the limit is {MAX_TEXT_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(f"{what} is not valid UTF-8 (byte {e.start})") from None
    if not text.strip():
        raise BadRequest(f"{what} is empty")
    return text


def pack_texts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """BYTES elements (bytes or str, any shape: one text each) -> their UTF-8 bytes [b, L] uint8, zero-padded
    to the longest (L >= 1), and their lengths [b, 1] int32 (`packed`)."""
    raw = [
        v.encode() if isinstance(v, str) else bytes(v)
        for v in np.asarray(values, dtype=np.object_).reshape(-1)
    ]
    utf8 = np.zeros((len(raw), max([1, *map(len, raw)])), np.uint8)
    for row, value in zip(utf8, raw, strict=True):
        row[: len(value)] = np.frombuffer(value, np.uint8)
    return utf8, np.array([len(v) for v in raw], np.int32).reshape(-1, 1)


def unpack_texts(utf8: np.ndarray, lengths: np.ndarray, name: str) -> list[bytes]:
    """The texts that `pack_texts` packed, checked: BadRequest naming the tensor whose shape or length does
    not fit (what a client calling a core by name could send)."""
    utf8_name, length_name = packed(name)
    if utf8.ndim != 2 or lengths.shape != (utf8.shape[0], 1):
        raise BadRequest(
            f"{utf8_name} must be [b, L] and {length_name} [b, 1], "
            f"got {list(utf8.shape)} and {list(lengths.shape)}"
        )
    bad = np.flatnonzero((lengths[:, 0] < 0) | (lengths[:, 0] > utf8.shape[1]))
    if bad.size:
        row = int(bad[0])
        raise BadRequest(
            f"{length_name}[{row}] is {int(lengths[row, 0])}; {utf8_name} rows hold {utf8.shape[1]} bytes"
        )
    return [utf8[r, :n].tobytes() for r, n in enumerate(lengths[:, 0].tolist())]


def as_item(text: str, what: str = "the text") -> dict:
    """The item fields of a text: a JSON object {"title", "topic", "content"}, or a plain string (the title).

    A text that does not parse as JSON is a plain title; one that parses but nests too deeply or holds a
    number too long to convert is refused (BadRequest naming `what`), as is a field that is not text."""
    if text.lstrip().startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            obj = None
        except RecursionError:
            raise BadRequest(f"{what} is JSON nested too deeply") from None
        except ValueError as e:  # e.g. an integer of more than 4,300 digits
            raise BadRequest(f"{what} is JSON that cannot be read: {e}") from None
        if isinstance(obj, dict):
            fields = {}
            for field in ("title", "topic", "content"):
                value = obj.get(field)
                if value is not None and not isinstance(value, str | int | float):
                    raise BadRequest(f"{what}: field {field!r} must be a string, got {type(value).__name__}")
                fields[field] = "" if value is None else str(value).strip()
            if not fields["title"]:
                raise BadRequest(f"{what}: a JSON item text needs a non-empty 'title'")
            return {**fields, "category": "", "tags": []}
    return {"title": text, "topic": "", "content": "", "category": "", "tags": []}


def item_text(item: dict) -> str:
    """The plain text of a catalogue item: what the rank encoder and the sentence-encoder baselines read,
    and what a client sends as an item's text."""
    return " | ".join(p for p in (item["title"], item["topic"], item["content"]) if p)


def check_vectors(vectors, dim: int) -> np.ndarray:
    """Query vectors of `similar`: (n, dim), finite, not all zero; returned L2-normalised (float32).

    Normalised in float64 after dividing each row by its largest magnitude, so that a row scaled by
    1e30 (whose squares overflow float32) or by 1e-44 (subnormal) keeps its direction."""
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise BadRequest(
            f"VECTOR must have {dim} values per row (the index's dimension), got shape {vectors.shape}"
        )
    if not np.isfinite(vectors).all():
        raise BadRequest("VECTOR contains NaN or infinite values")
    rows = vectors.astype(np.float64)
    scale = np.abs(rows).max(axis=1, keepdims=True)
    zero = np.flatnonzero(scale[:, 0] == 0)
    if zero.size:
        raise BadRequest(f"VECTOR row {zero[0]} is all zeros: it has no direction to compare")
    rows /= scale
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows.astype(np.float32)


def check_k(k: int, available: int) -> int:
    """K of a `similar` request against the items it can return (the catalogue, less the query item)."""
    if k <= 0:
        raise BadRequest(f"K must be positive, got {k}")
    if k > available:
        raise BadRequest(f"K={k} but only {available} catalogue items can be returned")
    if k > MAX_K:
        raise BadRequest(f"K={k} exceeds the limit of {MAX_K}")
    return k
