"""`similar` at catalogue scale: 10^4 .. 10^6 items through the embedded server, in-process and exact.

    python -m bench.scale [--sizes 10000,100000,1000000] [--requests 2000] [--out artifacts/bench/scale]

The catalogues are grown from a real one (bench.synthetic): the all-MiniLM-L6-v2 vectors of MovieLens-100k's
item texts, reduced to 128-d by PCA (the served dimension), as topics and items around them. Each size is
exported as a model repository holding only `similar` (llmrec.export.repository.export_index with the
automatic kind: exact up to 20,000 items, FAISS HNSW above, tuned and gated at recall@10 >= 0.95), then:

- in-process: `ItemIndex.search` (what the python model runs) by item id, k = 10, one thread, against exact
  cosine top-k over the same vectors (the kernels' PyTorch path);
- through the server: closed loop by item id, k = 10, at concurrency 1 and 8 (gRPC, the project's client),
  with the server's start-to-ready time and memory (RSS and PSS of tritonserver and its python stubs);
- rank by item ids (history 10, 100 candidates) in the same server and in-process: a rank version whose
  graph and head are those of an exported rank model (--rank-from, default the newest version in
  artifacts/model_repo) and whose item vectors by id are grown the same way from that model's vectors of
  the MovieLens items (scaled by norms drawn from theirs: rank scores by dot product); skipped, saying so,
  where no exported rank model exists;
- at the largest size, a hot swap under load: version 2 (the same index files, as a publish of an index
  built elsewhere) is placed and loaded while 4 threads call `similar`; every failed call is counted.

Writes <out>/scale.json, scale.csv and latency_vs_size.png, and prints the table docs/BENCHMARKS.md quotes.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from bench.serving import closed_loop
from bench.synthetic import describe, grow_catalogue
from llmrec.paths import artifacts_dir
from llmrec.runs import provenance, table
from llmrec.server import item_index, runtime, versions
from llmrec.server.client import RankingClient
from llmrec.server.launcher import TritonServer

K = 10
DIM = 128


def base_vectors(cache: Path) -> np.ndarray:
    """MiniLM vectors of MovieLens-100k's item texts, PCA-reduced to DIM (cached)."""
    if cache.is_file():
        return np.load(cache)
    from llmrec.training.datasets import load_movielens_100k
    from llmrec.training.encoders import encode_sentence_model

    vectors = encode_sentence_model(load_movielens_100k().items)
    vectors = np.asarray(vectors[1] if isinstance(vectors, tuple) else vectors, np.float32)
    centred = vectors - vectors.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    reduced = (vectors @ components[:DIM].T).astype(np.float32)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, reduced)
    return reduced


def newest_rank_version(repo: Path) -> Path | None:
    folder = repo / "rank_core"
    found = versions.versions(folder) if folder.is_dir() else []
    return folder / str(found[0]) if found else None


def rank_version(repo: Path, source: Path, n: int, seed: int) -> list[str]:
    """Version 1 of `rank` in `repo` for an n-item catalogue: `source`'s graph and head, item vectors by id
    grown from `source`'s vectors of its own catalogue. Returns the item ids."""
    from llmrec.export import repository

    scorer = runtime.RankScorer(source, warm=False)
    if scorer.id_vectors is not None:
        real = np.asarray(scorer.id_vectors)
    else:  # exported before rank had vectors by id: compute them for its catalogue
        texts = runtime.catalogue_texts(source / runtime.RANK_CATALOGUE)
        real = np.concatenate(
            [scorer.compute_item_vectors(texts[i : i + 64]).float().numpy() for i in range(0, len(texts), 64)]
        )
    rng = np.random.default_rng(seed)
    norms = rng.choice(np.linalg.norm(real, axis=1), n).astype(np.float32)
    vectors = grow_catalogue(real, n, topic_spread=1.0, item_spread=0.8, seed=seed) * norms[:, None]
    folder = repository.version_folder(repo, "rank", 1)  # warm-up texts: ensembles.warmup_inputs
    skip = {runtime.RANK_ITEMS, runtime.RANK_ITEM_IDS, runtime.RANK_CATALOGUE, versions.MANIFEST, "model.py"}
    for path in source.iterdir():
        if path.name not in skip:
            (shutil.copytree if path.is_dir() else shutil.copy2)(path, folder / path.name)
    ids = [f"item{i}" for i in range(n)]
    np.save(folder / runtime.RANK_ITEMS, vectors.astype(np.float32))
    (folder / runtime.RANK_ITEM_IDS).write_text(json.dumps(ids))
    (folder / runtime.RANK_CATALOGUE).write_text(json.dumps([f"synthetic item {i}" for i in range(n)]))
    repository.publish(folder)
    return ids


def rank_payloads(ids: list[str], count: int = 500, seed: int = 2) -> list[tuple[list[str], list[str]]]:
    rng = np.random.default_rng(seed)
    return [
        (
            [ids[i] for i in rng.choice(len(ids), 10)],
            [ids[i] for i in rng.choice(len(ids), 100, replace=False)],
        )
        for _ in range(count)
    ]


def rank_in_process(folder: Path, payloads: list, requests: int) -> dict:
    scorer = runtime.RankScorer(folder)

    def make():
        return lambda p: scorer.score([(runtime.ById(p[0]), runtime.ById(p[1]))])

    closed_loop(make, payloads, 1, 20)
    return closed_loop(make, payloads, 1, requests)


def rank_served(server: TritonServer, payloads: list, concurrency: int, requests: int) -> dict:
    def make():
        client = RankingClient(server.grpc_url, timeout=60.0)
        return lambda p: client.rank(history_ids=p[0], candidate_ids=p[1])

    closed_loop(make, payloads, 1, 20)
    return closed_loop(make, payloads, concurrency, requests)


def server_memory_mib(server: TritonServer) -> dict[str, float]:
    """Memory of tritonserver and every process below it (the python backend's stubs): summed RSS, which
    counts a page that several processes map (the memory-mapped index of two instances) once per process,
    and summed PSS, which splits such a page among them (what the group really holds)."""
    root = psutil.Process(server.process.pid)
    rss = pss = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            info = proc.memory_full_info()
        except psutil.NoSuchProcess:
            continue
        rss, pss = rss + info.rss, pss + info.pss
    return {"rss_mib": round(rss / 2**20), "pss_mib": round(pss / 2**20)}


def in_process(index: item_index.ItemIndex, queries: list[str], requests: int) -> dict:
    def make():
        return lambda item: index.search(index.vectors_of([item]), K, [item])

    closed_loop(make, queries, 1, 20)  # warm-up
    return closed_loop(make, queries, 1, requests)


def exact_in_process(vectors: np.ndarray, ids: list[str], queries: list[str], requests: int) -> dict:
    exact = item_index.ItemIndex(ids, vectors)
    return in_process(exact, queries, requests)


def served(server: TritonServer, queries: list[str], concurrency: int, requests: int) -> dict:
    def make():
        client = RankingClient(server.grpc_url, timeout=60.0)
        return lambda item: client.similar(item_id=item, k=K)

    closed_loop(make, queries, 1, 20)  # warm-up
    return closed_loop(make, queries, concurrency, requests)


def hot_swap(server: TritonServer, repo: Path, queries: list[str], threads: int = 4) -> dict:
    """Publish version 2 (version 1's files) and reload `similar` while `threads` clients call it."""
    stop = threading.Event()
    counts = {"ok": 0, "failed": 0}
    errors: list[str] = []
    lock = threading.Lock()

    def worker(seed: int):
        client = RankingClient(server.grpc_url, timeout=60.0)
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            try:
                client.similar(item_id=queries[rng.integers(len(queries))], k=K)
                key = "ok"
            except Exception as e:  # counted and named, never hidden
                key = "failed"
                with lock:
                    errors.append(f"{type(e).__name__}: {e}"[:200])
            with lock:
                counts[key] += 1

    workers = [threading.Thread(target=worker, args=(s,)) for s in range(threads)]
    for w in workers:
        w.start()
    time.sleep(3)
    core = repo / "similar_core"
    tmp = core / ".2.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(core / "1", tmp)
    versions.seal(tmp, "similar_core", 2)
    tmp.rename(core / "2")
    started = time.perf_counter()
    RankingClient(server.grpc_url, control_key=server.control_key, timeout=600.0).reload("similar")
    swap_s = time.perf_counter() - started
    time.sleep(3)
    stop.set()
    for w in workers:
        w.join()
    return {"swap_s": round(swap_s, 1), **counts, **({"first_error": errors[0]} if errors else {})}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for path_name, style in (
        ("server c=1", "o-"),
        ("in-process", "s--"),
        ("exact in-process", "^:"),
        ("rank server c=1", "d-."),
    ):
        points = sorted((r["items"], r["p50_ms"], r["p99_ms"]) for r in rows if r["path"] == path_name)
        if points:
            n, p50, p99 = zip(*points, strict=True)
            ax.plot(n, p50, style, label=f"{path_name} p50")
            if path_name == "server c=1":
                ax.plot(n, p99, "o-", alpha=0.4, label=f"{path_name} p99")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("catalogue items")
    ax.set_ylabel("similar by item id, k = 10; rank by ids, 10 + 100 (ms)")
    ax.set_title("similar latency against catalogue size (2-core CPU)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    run_started = time.time()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--requests", type=int, default=2000, help="calls per served row")
    parser.add_argument("--exact-requests", type=int, default=50, help="calls per exact in-process row")
    parser.add_argument("--out", type=Path, default=artifacts_dir() / "bench" / "scale")
    parser.add_argument(
        "--rank-from",
        type=Path,
        default=newest_rank_version(artifacts_dir() / "model_repo"),
        help="an exported rank version folder whose graph and head the rank rows use",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.rank_from:
        print("no exported rank model (run `llmrec export`): the rank rows are skipped", flush=True)
    torch.set_num_threads(os.cpu_count() or 1)

    from llmrec.export.repository import export_index

    base = base_vectors(args.out / "base-minilm-pca128.npy")
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: list[dict] = []
    builds: list[dict] = []
    catalogues: list[dict] = [{"catalogue": "MovieLens-100k MiniLM PCA-128 (the base)", **describe(base)}]
    swap: dict = {}

    def record(n: int, path: str, result: dict, **extra) -> None:
        rows.append(
            {
                "items": n,
                "path": path,
                **{k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()},
                **extra,
            }
        )
        print(table(rows[-1:]), flush=True)

    for n in sizes:
        print(f"\n== {n:,} items", flush=True)
        vectors = grow_catalogue(base, n, topic_spread=1.0, item_spread=0.8, seed=n)
        catalogues.append({"catalogue": f"grown, {n:,} items", **describe(vectors)})
        ids = [f"item{i}" for i in range(n)]
        rng = np.random.default_rng(1)
        queries = [ids[i] for i in rng.choice(n, 5_000, replace=False)]
        repo = args.out / f"repo-{n}"
        shutil.rmtree(repo, ignore_errors=True)
        started = time.perf_counter()
        meta = export_index(repo, ids, vectors, 1)
        export_s = time.perf_counter() - started
        rank_ids = rank_version(repo, args.rank_from, n, seed=n) if args.rank_from else None
        builds.append(
            {
                "items": n,
                "kind": meta["kind"],
                "export_s": round(export_s, 1),
                "build_s": meta.get("build", {}).get("seconds", ""),
                "search": json.dumps(meta.get("search", {})),
                f"recall@{K}": meta.get("recall", {}).get("recall", 1.0),
                "recall_queries": meta.get("recall", {}).get("queries", ""),
            }
        )
        print(table(builds[-1:]), flush=True)
        index = item_index.ItemIndex.load(repo / "similar_core" / "1")
        record(n, "in-process", in_process(index, queries, args.requests), kind=index.kind)
        if index.kind != "exact":
            record(
                n,
                "exact in-process",
                exact_in_process(vectors, ids, queries, args.exact_requests),
                kind="exact",
            )
        del index
        if rank_ids:
            payloads = rank_payloads(rank_ids)
            record(
                n, "rank in-process", rank_in_process(repo / "rank_core" / "1", payloads, args.requests // 4)
            )
        started = time.perf_counter()
        with TritonServer(repo, startup_timeout=600) as server:
            ready_s = time.perf_counter() - started
            memory = server_memory_mib(server)
            for c in (1, 8):
                result = served(server, queries, c, args.requests)
                record(
                    n,
                    f"server c={c}",
                    result,
                    kind=meta["kind"],
                    ready_s=round(ready_s, 1),
                    **memory,
                )
            for c in (1, 8) if rank_ids else ():
                result = rank_served(server, payloads, c, args.requests // 4)
                record(n, f"rank server c={c}", result, ready_s=round(ready_s, 1), **memory)
            if n == max(sizes):
                swap = {"items": n, **hot_swap(server, repo, queries)}
                print(table([swap]), flush=True)
        del vectors

    meta = {
        "command": "python -m bench.scale --sizes " + args.sizes,
        **provenance(run_started),
    }
    out = {**meta, "catalogues": catalogues, "builds": builds, "rows": rows, "hot_swap": swap}
    (args.out / "scale.json").write_text(json.dumps(out, indent=2) + "\n")
    with (args.out / "scale.csv").open("w", newline="") as f:
        fields = sorted(
            {k for r in rows for k in r}, key=lambda k: list(rows[0]).index(k) if k in rows[0] else 99
        )
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args.out / "latency_vs_size.png")
    print(f"\n{meta}\n{table(catalogues)}\n\n{table(builds)}\n\n{table(rows)}\n\nhot swap: {swap}")
    print(f"plot: {args.out / 'latency_vs_size.png'}")


if __name__ == "__main__":
    main()
