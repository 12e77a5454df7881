"""The catalogue's item vectors and the top-k search that `similar` runs: exact, or a FAISS ANN index.

Files of a `similar` version folder (written by llmrec.export.repository.export_index, read by ItemIndex.load):

    index.npy        (n, d) float32 item vectors, L2-normalised (vectors by id; exact search)
    index.ids.json   the n item ids, in row order
    index.faiss      the ANN index over the same rows (absent for kind "exact")
    index.json       how the index was built and how well it does: {"kind", "build", "search", "recall"}

Kinds: "exact" (cosine top-k through the kernels' dispatch: the fused Triton kernel on CUDA, PyTorch on the
CPU), "hnsw" (faiss IndexHNSWFlat: best latency, vectors + graph in memory), "ivf_flat" (faiss IndexIVFFlat)
and "ivf_pq" (faiss IndexIVFPQ: compressed codes, for catalogues whose vectors do not fit in memory).
`choose_kind` picks one by catalogue size and memory; export may override it.

An ANN index is tuned and gated at export as a graph is by its parity check: its search depth (HNSW
efSearch, IVF nprobe) is the smallest whose recall@k against exact search reaches the floor on one sample
of catalogue queries, then recall is measured on a second, disjoint sample, and an index under the floor is
refused. A query counts a returned item as correct when its exact cosine reaches the k-th exact neighbour's
(items with equal vectors are interchangeable). The query item never comes back in its own results.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from llmrec.kernels import cosine_topk
from llmrec.server.contract import BadRequest

INDEX_VECTORS = "index.npy"
INDEX_IDS = "index.ids.json"
INDEX_ANN = "index.faiss"
INDEX_META = "index.json"
KINDS = ("exact", "hnsw", "ivf_flat", "ivf_pq")
EXACT_UP_TO = 20_000  # items; exact search over 20k 128-d vectors is about 2 ms on the 2-core machine
RECALL_K = 10
RECALL_QUERIES = 2_000  # catalogue items drawn as queries: half tune the search depth, half measure it
HNSW_EF = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
ADD_CHUNK = 50_000  # rows per faiss add() call: the build shows progress between them


@dataclass(frozen=True)
class IndexSpec:
    """How export builds the `similar` index. kind "auto": choose_kind."""

    kind: str = "auto"
    recall_floor: float = 0.95
    hnsw_m: int = 32
    # 80, not 40: a better-linked graph reaches the recall floor at a shallower search (1M items: efSearch
    # 24 instead of 64 for recall@10 0.98; served similar p50 ~3.0 -> ~2.1-2.7 ms) for 1.55x the build time
    ef_construction: int = 80
    nlist: int | None = None  # IVF lists; default 4 sqrt(n)
    pq_bytes: int | None = None  # IVF-PQ bytes per vector; default d / 4
    memory_bytes: int = 8 << 30  # what the auto choice lets the index hold in memory

    def __post_init__(self):
        if self.kind not in ("auto", *KINDS):
            raise ValueError(f"index kind must be one of auto, {', '.join(KINDS)}; got {self.kind!r}")
        if not 0 <= self.recall_floor <= 1:
            raise ValueError(f"recall floor must be within [0, 1], got {self.recall_floor}")


def choose_kind(n: int, d: int, memory_bytes: int = IndexSpec.memory_bytes, hnsw_m: int = 32) -> str:
    """exact up to EXACT_UP_TO items; HNSW while its vectors + graph fit in `memory_bytes`; IVF-PQ beyond."""
    if n <= EXACT_UP_TO:
        return "exact"
    hnsw_bytes = n * (4 * d + 2 * hnsw_m * 4 * 1.1)  # float32 vectors + level-0 links (+ upper levels)
    return "hnsw" if hnsw_bytes <= memory_bytes else "ivf_pq"


def _faiss():
    import faiss

    return faiss


def _search_params(kind: str, depth: int, k: int):
    faiss = _faiss()
    if kind == "hnsw":
        return faiss.SearchParametersHNSW(efSearch=max(depth, k))
    return faiss.SearchParametersIVF(nprobe=depth)


def _depths(kind: str, nlist: int) -> tuple[int, ...]:
    if kind == "hnsw":
        return HNSW_EF
    return tuple(p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if p < nlist) + (nlist,)


def build_ann(vectors: np.ndarray, kind: str, spec: IndexSpec, progress=None):
    """A trained, filled faiss index of `kind` over unit `vectors` (inner product = cosine), and its build
    parameters. `progress(done, total)` is called after each chunk of rows is added."""
    faiss = _faiss()
    n, d = vectors.shape
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec.ef_construction
        params = {"M": spec.hnsw_m, "efConstruction": spec.ef_construction}
    else:
        nlist = spec.nlist or max(1, min(int(4 * np.sqrt(n)), n // 39))  # faiss wants >= 39 points per list
        quantizer = faiss.IndexFlatIP(d)
        if kind == "ivf_flat":
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            params = {"nlist": nlist}
        else:
            pq_bytes = spec.pq_bytes or max(1, d // 4)
            if d % pq_bytes:
                raise ValueError(
                    f"IVF-PQ needs the dimension ({d}) to be a multiple of its bytes ({pq_bytes})"
                )
            index = faiss.IndexIVFPQ(quantizer, d, nlist, pq_bytes, 8, faiss.METRIC_INNER_PRODUCT)
            params = {"nlist": nlist, "pq_bytes": pq_bytes}
        rng = np.random.default_rng(0)
        train = vectors[np.sort(rng.choice(n, min(n, 256 * nlist), replace=False))]
        index.train(np.ascontiguousarray(train))
    for start in range(0, n, ADD_CHUNK):
        index.add(np.ascontiguousarray(vectors[start : start + ADD_CHUNK]))
        if progress:
            progress(min(start + ADD_CHUNK, n), n)
    return index, params


def _exact_neighbours(vectors: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (scores, rows) of catalogue rows `rows` over all the others."""
    faiss = _faiss()
    scores, found = faiss.knn(
        np.ascontiguousarray(vectors[rows]), vectors, k + 1, metric=faiss.METRIC_INNER_PRODUCT
    )
    keep = found != rows[:, None]
    out_s = np.stack([s[m][:k] for s, m in zip(scores, keep, strict=True)])
    out_r = np.stack([r[m][:k] for r, m in zip(found, keep, strict=True)])
    return out_s, out_r


def recall_per_query(
    vectors: np.ndarray, rows: np.ndarray, found: np.ndarray, kth_exact: np.ndarray, k: int
) -> np.ndarray:
    """Per query, the share of its first k results other than itself (`found`: (q, >= k) rows, -1 for
    none) whose cosine with the query reaches its k-th exact neighbour's (`kth_exact`, (q,)), less a
    float tolerance."""
    out = np.empty(len(rows))
    for i, (row, got, bar) in enumerate(zip(rows, found, kth_exact, strict=True)):
        got = got[(got >= 0) & (got != row)][:k]
        out[i] = (vectors[got] @ vectors[row] >= bar - 1e-5).sum() / k
    return out


def recall_at_k(
    vectors: np.ndarray, rows: np.ndarray, found: np.ndarray, kth_exact: np.ndarray, k: int
) -> float:
    """Mean of recall_per_query."""
    return float(recall_per_query(vectors, rows, found, kth_exact, k).mean())


def tune_and_measure(
    index, vectors: np.ndarray, kind: str, spec: IndexSpec, build: dict, seed: int = 0
) -> dict:
    """The smallest search depth whose recall on the tuning queries clears the floor by three standard
    errors (so that it holds on other queries too), and the recall it gives on the disjoint measuring
    queries: {"search": {...}, "recall": {...}}."""
    n = len(vectors)
    k = min(RECALL_K, n - 1)
    rng = np.random.default_rng(seed)
    rows = rng.choice(n, min(n, RECALL_QUERIES), replace=False)
    half = max(1, len(rows) // 2)
    tune, measure = rows[:half], rows[half:] if len(rows) > 1 else rows
    exact_scores, _ = _exact_neighbours(vectors, rows, k)
    kth = exact_scores[:, -1]
    kth_tune, kth_measure = kth[:half], kth[half:] if len(rows) > 1 else kth
    depths = _depths(kind, build.get("nlist", 0))
    chosen, tune_recall = depths[-1], 0.0
    for depth in depths:
        params = _search_params(kind, depth, k + 1)
        _, found = index.search(np.ascontiguousarray(vectors[tune]), k + 1, params=params)
        per_query = recall_per_query(vectors, tune, found, kth_tune, k)
        tune_recall = float(per_query.mean())
        margin = max(0.005, 3 * per_query.std() / np.sqrt(len(tune)))
        if tune_recall >= min(1.0, spec.recall_floor + margin):
            chosen = depth
            break
    params = _search_params(kind, chosen, k + 1)
    _, found = index.search(np.ascontiguousarray(vectors[measure]), k + 1, params=params)
    depth_name = "efSearch" if kind == "hnsw" else "nprobe"
    return {
        "search": {depth_name: int(chosen)},
        "recall": {
            "k": k,
            "recall": round(recall_at_k(vectors, measure, found, kth_measure, k), 4),
            "floor": spec.recall_floor,
            "queries": len(measure),
            "tuned_on": len(tune),
            "tune_recall": round(tune_recall, 4),
        },
    }


def write(
    folder: Path, ids: list[str], vectors: np.ndarray, spec: IndexSpec = IndexSpec(), log=print
) -> dict:
    """Normalised vectors, ids, and (for an ANN kind) the tuned, gated faiss index into `folder`; returns
    index.json's content. An index under its recall floor is a ValueError that says what to change."""
    folder = Path(folder)
    vectors = np.asarray(vectors, dtype=np.float32)
    check_vectors(vectors, "item index")
    if len(vectors) != len(ids):
        raise ValueError(f"item index has {len(vectors)} vectors for {len(ids)} ids")
    if len(set(ids)) != len(ids):
        raise ValueError("item index ids contain duplicates")
    vectors = _unit(vectors)
    np.save(folder / INDEX_VECTORS, vectors)
    (folder / INDEX_IDS).write_text(json.dumps(list(ids)))
    n, d = vectors.shape
    kind = spec.kind if spec.kind != "auto" else choose_kind(n, d, spec.memory_bytes, spec.hnsw_m)
    meta: dict = {"kind": kind, "items": n, "dim": d, "spec": asdict(spec)}
    if kind != "exact":
        if n < 2:
            raise ValueError(f"a {kind} index needs at least 2 items, got {n}")
        started = time.time()
        last = [0.0]

        def progress(done, total):
            if time.time() - last[0] > 10 or done == total:
                last[0] = time.time()
                log(f"  {kind} index: {done:,}/{total:,} items added ({time.time() - started:.0f} s)")

        index, build = build_ann(vectors, kind, spec, progress)
        meta["build"] = build | {"seconds": round(time.time() - started, 1)}
        meta |= tune_and_measure(index, vectors, kind, spec, build)
        recall = meta["recall"]
        log(
            f"  {kind} index: recall@{recall['k']} {recall['recall']:.4f} against exact search on "
            f"{recall['queries']} catalogue queries ({meta['search']}, floor {spec.recall_floor})"
        )
        if recall["recall"] < spec.recall_floor:
            raise ValueError(
                f"the {kind} index reaches recall@{recall['k']} {recall['recall']:.4f} against exact search, "
                f"under the floor {spec.recall_floor} (search {meta['search']}, build {build}): give it more "
                "links or lists, another kind (--index-kind exact or hnsw), or a lower --recall-floor"
            )
        _faiss().write_index(index, str(folder / INDEX_ANN))
    (folder / INDEX_META).write_text(json.dumps(meta, indent=1))
    return meta


def _unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def check_vectors(vectors: np.ndarray, what: str, chunk: int = 65_536) -> None:
    """Finite, non-zero float rows, checked in chunks (a memory-mapped million-row file stays on disk)."""
    if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.dtype.kind != "f":
        raise ValueError(
            f"{what} must be a non-empty (n, d) float array, got {vectors.dtype} {vectors.shape}"
        )
    for start in range(0, len(vectors), chunk):
        block = np.asarray(vectors[start : start + chunk], dtype=np.float32)
        if not np.isfinite(block).all():
            raise ValueError(f"{what} contains NaN or infinite values")
        zero = np.flatnonzero(np.linalg.norm(block, axis=1) == 0)
        if zero.size:
            raise ValueError(f"{what} has all-zero vectors (rows {(zero[:5] + start).tolist()})")


class ItemIndex:
    """The catalogue's ids and unit vectors; cosine top-k over them, exact or through a faiss index."""

    def __init__(
        self,
        ids: list[str],
        vectors: np.ndarray,
        ann=None,
        kind: str = "exact",
        search: dict | None = None,
        device: str | None = None,
    ):
        self.ids = ids
        self.row = {item_id: i for i, item_id in enumerate(ids)}
        self.kind = kind
        self.ann = ann
        self.depth = next(iter((search or {}).values()), 0)
        if ann is None:  # exact: the vectors take part in every search, on the kernels' device
            self.vectors = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
            if device is None:  # not a served instance: CUDA where torch has it
                device = "cuda" if torch.cuda.is_available() else "cpu"
            self.vectors = self.vectors.to(device)
        else:  # ANN: the vectors are only read by id (memory-mapped rows)
            self.vectors = vectors

    @classmethod
    def load(cls, folder: Path, device: str | None = None) -> ItemIndex:
        """Loads and checks a version folder's index files; any problem is a ValueError that names the file.
        An exact index searches on `device` (a served instance's, llmrec.server.runtime.instance_device;
        None: CUDA where torch has it); FAISS searches on the CPU."""
        folder = Path(folder)
        vec_path, ids_path, meta_path = folder / INDEX_VECTORS, folder / INDEX_IDS, folder / INDEX_META
        for path in (vec_path, ids_path):
            if not path.is_file():
                raise ValueError(f"item index {path} is missing")
        meta = {"kind": "exact"}
        if meta_path.is_file():  # a hand-made folder without it is an exact index
            try:
                meta = json.loads(meta_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"index description {meta_path} is not valid JSON: {e}") from None
        kind = meta.get("kind") if isinstance(meta, dict) else None
        if kind not in KINDS:
            raise ValueError(f"index description {meta_path} names kind {kind!r}; expected one of {KINDS}")
        try:  # an ANN index reads vectors only by id: leave them on disk
            vectors = np.load(vec_path, allow_pickle=False, mmap_mode=None if kind == "exact" else "r")
        except Exception as e:  # a truncated or foreign file: numpy raises many kinds
            raise ValueError(f"item index {vec_path} is not a readable .npy file: {e}") from None
        try:
            ids = json.loads(ids_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"item ids {ids_path} are not valid JSON: {e}") from None
        check_vectors(vectors, f"item index {vec_path}")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValueError(f"item ids {ids_path} must be a JSON list of strings")
        if len(ids) != vectors.shape[0]:
            raise ValueError(f"item index {vec_path} has {vectors.shape[0]} vectors for {len(ids)} ids")
        if len(set(ids)) != len(ids):
            raise ValueError(f"item ids {ids_path} contain duplicates")
        if kind == "exact":
            return cls(ids, _unit(vectors.astype(np.float32)), device=device)
        ann_path = folder / INDEX_ANN
        if not ann_path.is_file():
            raise ValueError(f"ANN index {ann_path} is missing ({meta_path} says kind {kind!r})")
        try:  # the stored vectors memory-mapped: instances (and versions) of one file share their pages
            faiss = _faiss()
            ann = faiss.read_index(str(ann_path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError as e:
            raise ValueError(f"ANN index {ann_path} is not a readable faiss index: {e}") from None
        if (ann.ntotal, ann.d) != vectors.shape:
            raise ValueError(
                f"ANN index {ann_path} holds {ann.ntotal} vectors of {ann.d}-d; {vec_path} has {vectors.shape}"
            )
        return cls(ids, vectors, ann, kind, meta.get("search"))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def vectors_of(self, item_ids: list[str]) -> np.ndarray:
        rows = []
        for item_id in item_ids:
            if item_id not in self.row:
                raise BadRequest(f"unknown item id {item_id!r}")
            rows.append(self.row[item_id])
        if self.ann is None:
            return self.vectors[rows].cpu().numpy()
        return np.asarray(self.vectors[rows], dtype=np.float32)

    def search(
        self, queries: np.ndarray, k: int, exclude: list[str | None]
    ) -> tuple[list[list[str]], np.ndarray]:
        """Top-k ids and cosine scores per query (n_q, d); `exclude` drops one item per query (its own)."""
        q = _unit(np.ascontiguousarray(queries, dtype=np.float32))
        drop = np.array([self.row[e] if e is not None else -1 for e in exclude])
        if self.ann is None:
            qt = torch.from_numpy(q).to(self.vectors.device)
            scores, rows = cosine_topk(qt, self.vectors, k, exclude=torch.from_numpy(drop).to(qt.device))
            rows, scores = rows.cpu().numpy(), scores.cpu().numpy()
        else:
            scores, rows = self._ann_search(q, k, drop)
        return [[self.ids[r] for r in row] for row in rows], scores

    def _ann_search(self, q: np.ndarray, k: int, drop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        extra = int((drop >= 0).any())
        found_s, found_r = self.ann.search(
            q, k + extra, params=_search_params(self.kind, self.depth, k + extra)
        )
        scores = np.empty((len(q), k), np.float32)
        rows = np.empty((len(q), k), np.int64)
        for i, (s, r) in enumerate(zip(found_s, found_r, strict=True)):
            keep = (r >= 0) & (r != drop[i])
            if keep.sum() < k:  # the graph ran out of candidates (rare): answer this query exactly
                s, r = _exact_row(self.vectors, q[i], k, drop[i])
                keep = np.ones(k, bool)
            scores[i], rows[i] = s[keep][:k], r[keep][:k]
        return scores, rows


def _exact_row(vectors: np.ndarray, query: np.ndarray, k: int, drop: int) -> tuple[np.ndarray, np.ndarray]:
    faiss = _faiss()
    s, r = faiss.knn(query[None], np.asarray(vectors), k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    keep = r[0] != drop
    return s[0][keep][:k], r[0][keep][:k]
