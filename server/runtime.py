"""What the public models compute, as plain Python over onnxruntime sessions and the kernels' dispatch.

The python-backend models in model_repo/ are thin adapters around these classes (request tensors in,
responses out); the in-process benchmark runs the very same classes without a server. Each class loads
from one version folder of the model repository, whose file names are defined here (and written by
llmrec.export.repository).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llmrec.server import ensembles, versions
from llmrec.server.contract import BadRequest
from llmrec.server.item_index import ItemIndex  # noqa: F401 (where similar_core's model.py of repositories exported before llmrec.server.item_index imports it from)
from llmrec.server.prompts import PromptBuilder, PromptConfig, collate
from llmrec.server.rank_head import RankerConfig, RankHead
from llmrec.server.tokenizer import ServingTokenizer

NOTELLM_ONNX = "notellm.onnx"
NOTELLM_META = "notellm.json"  # emb_dim and the prompt config
ENCODER_ONNX = "encoder.onnx"
RANKER_META = "ranker.json"  # the RankerConfig
RANKER_HEAD = "head.pt"  # the head's parameters
TOKENIZER = "tokenizer"  # tokenizer.json + special_tokens.json (llmrec.server.tokenizer)
PRECISIONS = ("fp32", "fp16")  # fp16: `llmrec export --fp16` also writes <graph>.fp16.onnx (fp32 in and out)
RANK_CATALOGUE = "catalogue.json"  # the catalogue's item texts: rank warms its item-vector cache with them
RANK_ITEMS = "items.npy"  # the catalogue's rank item vectors (n, D), in catalogue.json's order (export's job)
RANK_ITEM_IDS = "items.ids.json"  # their item ids

# Items whose rank vectors stay cached per model instance (LLMREC_RANK_CACHE_ITEMS overrides; 0 turns it off).
RANK_CACHE_ITEMS = 20_000


def graph_path(folder: Path, name: str, precision: str = "fp32") -> Path:
    """<folder>/<name> for fp32, <folder>/<stem>.fp16.onnx for fp16."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return Path(folder) / (name if precision == "fp32" else name.replace(".onnx", f".{precision}.onnx"))


def _parameter(model_config: str | dict, key: str) -> str | None:
    """A string parameter of a Triton model config (the JSON that initialize() receives); None if unset."""
    config = json.loads(model_config) if isinstance(model_config, str) else model_config
    return config.get("parameters", {}).get(key, {}).get("string_value")


def model_precision(model_config: str | dict) -> str:
    """The `precision` parameter of a Triton model config; fp32 if unset."""
    value = _parameter(model_config, "precision") or "fp32"
    if value not in PRECISIONS:
        raise ValueError(f"config parameter precision must be one of {PRECISIONS}, got {value!r}")
    return value


def model_threads(model_config: str | dict) -> int | None:
    """The `threads` parameter of a Triton model config: the CPU threads one instance computes with (torch,
    FAISS, onnxruntime); None if unset (their defaults: every core)."""
    value = _parameter(model_config, "threads")
    if value is None:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"config parameter threads must be a positive integer, got {value!r}")
    return int(value)


def limit_threads(threads: int | None) -> None:
    """At most `threads` CPU threads for this process's torch work, and FAISS's if it is loaded already
    (None: leave their defaults). A model that runs one request per execution gets its parallelism from its
    instances: with the default, an idle instance's OpenMP threads spin on the cores a busy one needs."""
    if threads is None:
        return
    torch.set_num_threads(threads)
    faiss = sys.modules.get("faiss")  # not imported here: a model without an ANN index never loads it
    if faiss is not None:
        faiss.omp_set_num_threads(threads)


def instance_device(args: dict) -> str:
    """Where a Triton model instance computes: its instance group's kind and device id (the `args` of
    initialize()), never whatever devices the host happens to have. A KIND_GPU instance without CUDA is an
    error that names the instance."""
    if args.get("model_instance_kind", "CPU") != "GPU":
        return "cpu"
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"model instance {args.get('model_instance_name')!r} is KIND_GPU but this torch sees no CUDA device"
        )
    return f"cuda:{int(args.get('model_instance_device_id') or 0)}"


def resolve_device(device: str | None) -> torch.device:
    """`device` as torch names it; None (the in-process benchmarks, export's checks): CUDA where torch has it."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _session(path: Path, threads: int | None = None, device: torch.device | None = None):
    """An onnxruntime session on `device` (a served instance's: its CUDA provider is required for a GPU),
    or, with None, on CUDA where this onnxruntime build has it, else the CPU."""
    import onnxruntime as ort

    if not path.is_file():
        fp16 = ".fp16." in path.name
        how = "`llmrec export --fp16`" if fp16 else "`llmrec export`"
        raise FileNotFoundError(f"{path} is missing: run {how} to build the model repository")
    options = ort.SessionOptions()
    if threads is None:  # 0: onnxruntime's default (all cores)
        threads = int(os.environ.get("LLMREC_ORT_THREADS", "0"))
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    available = ort.get_available_providers()
    providers: list = ["CPUExecutionProvider"]
    if device is None:  # not a served instance: CUDA where this onnxruntime build has it, else the CPU
        if "CUDAExecutionProvider" in available:
            providers.insert(0, "CUDAExecutionProvider")
    elif device.type == "cuda":  # the instance's GPU, through this onnxruntime build's CUDA provider
        if "CUDAExecutionProvider" not in available:
            raise RuntimeError(
                f"{path.name} should run on {device} but this onnxruntime has no CUDA provider"
            )
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
    return ort.InferenceSession(str(path), options, providers=providers)


class NoteEmbedder:
    """Item texts -> NoteLLM vectors: the training prompt cut after [EMB], through the exported graph."""

    def __init__(self, folder: Path, precision: str = "fp32", device: str | None = None):
        folder = Path(folder)
        meta = json.loads((folder / NOTELLM_META).read_text())
        tokenizer = ServingTokenizer(folder / TOKENIZER)
        self.prompts = PromptBuilder(tokenizer, PromptConfig(**meta["prompt"]))
        self.pad_id = tokenizer.pad_token_id
        self.dim = int(meta["emb_dim"])
        self.session = _session(
            graph_path(folder, NOTELLM_ONNX, precision),
            device=None if device is None else torch.device(device),
        )

    def inputs(self, items: list[dict]) -> dict[str, np.ndarray]:
        batch = collate([self.prompts.embedding_prompt(item) for item in items], self.pad_id)
        return {"input_ids": batch["input_ids"].numpy(), "emb_index": batch["emb_index"].numpy()}

    def embed(self, items: list[dict]) -> np.ndarray:
        """(n, d) float32, L2-normalised."""
        if not items:
            return np.zeros((0, self.dim), np.float32)
        return self.session.run(None, self.inputs(items))[0]


def embed_dim(repo: Path) -> tuple[int, int] | None:
    """(version, vector dimension) of the newest `embed` version in a model repository that has its
    metadata; None where the repository has no `embed` model."""
    folder = Path(repo) / ensembles.core("embed")
    if not folder.is_dir():
        return None
    for version in versions.versions(folder):
        meta = folder / str(version) / NOTELLM_META
        try:
            return version, int(json.loads(meta.read_text())["emb_dim"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a broken version: the server skips it too
    return None


def check_index_matches_embed(dim: int, repo: Path) -> None:
    """An index must have the dimension of the vectors `embed` gives, or every text query would fail."""
    found = embed_dim(repo)
    if found is not None and found[1] != dim:
        raise ValueError(
            f"the item index is {dim}-d but the embed model (version {found[0]}) gives {found[1]}-d "
            "vectors: export the index from the NoteLLM run the embed model was exported from"
        )


class VectorCache:
    """Least-recently-used map of item text -> item vector, bounded in entries; counts hits and misses.

    Not an approximation: an item's vector depends only on its text and the version's weights (up to the
    float rounding of the batch it was computed in), and a cache lives in one model instance, which serves
    one version.
    """

    def __init__(self, capacity: int):
        if capacity < 0:
            raise ValueError(f"cache capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.lock = threading.Lock()  # the in-process benchmark shares one scorer between threads

    def lookup(self, texts: list[str]) -> tuple[dict[str, torch.Tensor], list[str]]:
        """(the cached vectors among `texts`, the texts still to compute); distinct texts in, counted once."""
        found, missing = {}, []
        with self.lock:
            for text in texts:
                vector = self.entries.get(text)
                if vector is None:
                    missing.append(text)
                else:
                    self.entries.move_to_end(text)
                    found[text] = vector
            self.hits += len(found)
            self.misses += len(missing)
        return found, missing

    def store(self, texts: list[str], vectors: torch.Tensor) -> None:
        if self.capacity == 0:
            return
        with self.lock:
            for text, vector in zip(texts[-self.capacity :], vectors[-self.capacity :], strict=True):
                self.entries[text] = vector.clone()  # a row view would keep its whole batch alive
                self.entries.move_to_end(text)
            while len(self.entries) > self.capacity:
                self.entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self.entries)


def catalogue_texts(path: Path) -> list[str]:
    """The item texts of catalogue.json; a malformed file is a ValueError that names it."""
    try:
        texts = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"catalogue {path} is not valid JSON: {e}") from None
    if not isinstance(texts, list) or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError(f"catalogue {path} must be a JSON list of non-empty item texts")
    return texts


@dataclass(frozen=True)
class ById:
    """One side of a rank query given as catalogue item ids (vectors computed at export) instead of texts."""

    ids: list[str]


def load_item_vectors(folder: Path) -> tuple[np.ndarray, list[str]] | None:
    """rank's item vectors by id (memory-mapped) and their ids; None where the version has none."""
    vec_path, ids_path = Path(folder) / RANK_ITEMS, Path(folder) / RANK_ITEM_IDS
    if not vec_path.is_file():
        return None
    try:
        vectors = np.load(vec_path, mmap_mode="r", allow_pickle=False)
        ids = json.loads(ids_path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"rank item vectors {vec_path} or {ids_path.name} cannot be read: {e}") from None
    if vectors.ndim != 2 or vectors.dtype != np.float32:
        raise ValueError(
            f"rank item vectors {vec_path} must be (n, D) float32, got {vectors.dtype} {vectors.shape}"
        )
    if not isinstance(ids, list) or len(ids) != len(vectors) or len(set(ids)) != len(ids):
        raise ValueError(
            f"{ids_path} must list {len(vectors)} distinct item ids, one per row of {vec_path.name}"
        )
    return vectors, [str(i) for i in ids]


class RankScorer:
    """EaaR online: item texts -> exported BERT encoder -> the trained head (pooling, user attention, dot).

    Item vectors are cached by text (VectorCache): a catalogue item is encoded once per model instance,
    so a request costs the user attention and the dot products, not a BERT pass per item. Catalogue items
    may also be named by id: export computed their vectors (items.npy, memory-mapped here), so a query by
    ids encodes nothing. With `warm`, the cache is filled at load with the catalogue's texts
    (catalogue.json), up to its capacity: from items.npy where the version has it, else by encoding them,
    so that the first requests after a (re)load are as fast as the rest.
    """

    def __init__(
        self,
        folder: Path,
        cache_items: int | None = None,
        warm: bool = True,
        precision: str = "fp32",
        threads: int | None = None,
        device: str | None = None,
    ):
        folder = Path(folder)
        self.config = RankerConfig(**json.loads((folder / RANKER_META).read_text()))
        self.tokenize = ServingTokenizer(folder / TOKENIZER).padded(self.config.max_tokens)
        self.device = resolve_device(device)
        self.session = _session(
            graph_path(folder, ENCODER_ONNX, precision), threads, None if device is None else self.device
        )
        state = torch.load(folder / RANKER_HEAD, map_location="cpu")
        hidden = int(state["hidden"])
        self.head = RankHead(self.config, hidden)
        self.head.load_state_dict(state["params"], strict=True)
        self.head.eval().to(self.device)
        self.input_names = {i.name for i in self.session.get_inputs()}
        if cache_items is None:
            cache_items = int(os.environ.get("LLMREC_RANK_CACHE_ITEMS", RANK_CACHE_ITEMS))
        self.cache = VectorCache(cache_items)
        by_id = load_item_vectors(folder)
        self.id_vectors, ids = by_id if by_id else (None, [])
        self.id_row = {item_id: row for row, item_id in enumerate(ids)}
        if warm and (folder / RANK_CATALOGUE).is_file():
            self.warm(catalogue_texts(folder / RANK_CATALOGUE))

    def warm(self, texts: list[str], batch: int = 64) -> None:
        """Fill the cache with `texts` (the first `capacity` of them): copied from the item vectors by id
        when `texts` is the catalogue they were computed from, else encoded; lookups stay uncounted."""
        if self.id_vectors is not None and len(texts) == len(self.id_vectors):
            first: dict[str, int] = {}
            for row, text in enumerate(texts[: self.cache.capacity]):
                first.setdefault(text, row)
            rows = np.fromiter(first.values(), dtype=np.int64, count=len(first))
            self.cache.store(list(first), torch.from_numpy(np.asarray(self.id_vectors[rows])).to(self.device))
            return
        texts = list(dict.fromkeys(texts))[: self.cache.capacity]
        for start in range(0, len(texts), batch):
            self.item_vectors(texts[start : start + batch])
        self.cache.hits = self.cache.misses = 0

    def check_ids(self, item_ids: list[str], what: str) -> None:
        """A BadRequest naming `what` unless every id has a vector in this version."""
        if self.id_vectors is None:
            raise BadRequest(f"{what}: this rank version has no item vectors by id (export it again)")
        for item_id in item_ids:
            if item_id not in self.id_row:
                raise BadRequest(f"{what}: unknown item id {item_id!r}")

    def vectors_by_id(self, item_ids: list[str]) -> torch.Tensor:
        """(n, D) vectors of catalogue items by id (rows of items.npy; check_ids first)."""
        rows = np.array([self.id_row[i] for i in item_ids], dtype=np.int64)
        return torch.from_numpy(np.asarray(self.id_vectors[rows])).to(self.device)

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states (n, T, H) and mask (n, T) of item texts, from the exported encoder."""
        enc = self.tokenize(texts)
        feeds = {k: v for k, v in enc.items() if k in self.input_names}
        states = self.session.run(None, feeds)[0]
        return torch.from_numpy(states).to(self.device), torch.from_numpy(enc["attention_mask"]).to(
            self.device
        )

    @torch.no_grad()
    def item_vectors(self, texts: list[str]) -> torch.Tensor:
        """(n, D) vectors of distinct item texts: cached ones looked up, the rest in one encoder pass."""
        found, missing = self.cache.lookup(texts)
        if missing:
            computed = self.compute_item_vectors(missing)
            self.cache.store(missing, computed)
            found.update(zip(missing, computed, strict=True))
        return torch.stack([found[t] for t in texts])

    @torch.no_grad()
    def compute_item_vectors(self, texts: list[str]) -> torch.Tensor:
        """(n, D) item vectors of texts: the exported encoder, then the head's item pooling (no cache)."""
        tokens, mask = self.encode(texts)
        return self.head.pool_items(tokens, mask)[0]

    @torch.no_grad()
    def score(self, users: list[tuple[list[str] | ById, list[str] | ById]]) -> list[np.ndarray]:
        """One score per candidate for each (history, candidates), each side texts or ById; the distinct
        texts of all users go through the cache (uncached ones in one encoder pass), ids to items.npy."""
        if not users:
            return []
        sides = [side for user in users for side in user]
        texts = sorted({t for side in sides if not isinstance(side, ById) for t in side})
        ids = sorted({i for side in sides if isinstance(side, ById) for i in side.ids})
        parts = [self.item_vectors(texts)] if texts else []
        if ids:
            parts.append(self.vectors_by_id(ids).to(parts[0].dtype if parts else torch.float32))
        vectors = torch.cat(parts)  # (n, D): texts first, then ids
        where = {("text", t): i for i, t in enumerate(texts)} | {
            ("id", x): len(texts) + j for j, x in enumerate(ids)
        }

        def rows(side) -> list[int]:
            return (
                [where["id", x] for x in side.ids]
                if isinstance(side, ById)
                else [where["text", t] for t in side]
            )

        width = max(len(rows(hist)) for hist, _ in users)
        index = torch.zeros(len(users), width, dtype=torch.long, device=self.device)
        valid = torch.zeros(len(users), width, dtype=torch.bool, device=self.device)
        for b, (hist, _) in enumerate(users):
            hist_rows = rows(hist)
            index[b, : len(hist_rows)] = torch.tensor(hist_rows, device=self.device)
            valid[b, : len(hist_rows)] = True
        user = self.head.user_vectors(vectors[index], valid)  # (B, D)
        out = []
        for b, (_, cands) in enumerate(users):
            cand = vectors[torch.tensor(rows(cands), device=self.device)]
            out.append((cand @ user[b]).float().cpu().numpy())
        return out
