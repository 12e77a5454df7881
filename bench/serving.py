"""Serving latency: `rank` and `similar` through the embedded tritonserver vs the same work in-process.

    python -m bench.serving [--repo artifacts/model_repo] [--rank-requests 24] [--similar-requests 300]

Workloads (held-out MovieLens users, llmrec.server.workloads): `rank` = history of 10 item texts and 100
candidate texts; `similar` = a catalogue item id, k = 100. Paths: in-process (the very runtime classes
the python models run, called from threads), and the server over gRPC with dynamic batching on (the
repository as exported) and off (a copy whose configs drop `dynamic_batching`). Each runs closed-loop at
concurrency 1 and 8 (one client per thread, each thread waits for its answer before sending the next).
Writes artifacts/bench/serving.{json,csv} and prints the table that docs/BENCHMARKS.md quotes.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import threading
import time
from pathlib import Path

import numpy as np

from llmrec.export.repository import without_batching
from llmrec.paths import artifacts_dir
from llmrec.runs import git_commit, table
from llmrec.server import metrics, runtime
from llmrec.server.client import RankingClient
from llmrec.server.launcher import TritonServer
from llmrec.server.workloads import user_requests


def closed_loop(make_call, payloads: list, concurrency: int, requests: int) -> dict:
    """`requests` calls spread over `concurrency` threads; each thread's `make_call()` gives its callable."""
    latencies: list[float] = []
    errors = [0]
    first_error: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker():
        call = make_call()
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t = time.perf_counter()
            try:
                call(payloads[i % len(payloads)])
            except Exception as e:  # counted and named in the output, never hidden
                with lock:
                    errors[0] += 1
                    first_error.append(f"{type(e).__name__}: {e}")
                continue
            with lock:
                latencies.append(time.perf_counter() - t)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ms = np.asarray(latencies) * 1e3
    return {
        "requests": requests,
        "errors": errors[0],
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "throughput_rps": len(latencies) / wall,
        **({"first_error": first_error[0][:200]} if first_error else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repo", type=Path, default=artifacts_dir() / "model_repo")
    parser.add_argument("--rank-requests", type=int, default=24)
    parser.add_argument("--similar-requests", type=int, default=300)
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--out", type=Path, default=artifacts_dir() / "bench")
    args = parser.parse_args()

    from llmrec.training.datasets import load_movielens_100k
    from llmrec.training.split import SplitConfig, time_split

    data = load_movielens_100k()
    split = time_split(data, SplitConfig())
    users = user_requests(data.items, split.train_interactions, split.test_interactions, 40, 10, 100, seed=2)
    rank_payloads = [(u["history"], u["candidate_texts"]) for u in users]
    rng = np.random.default_rng(0)
    similar_payloads = rng.choice(data.items["item_id"].to_numpy(), size=500).tolist()
    levels = [int(c) for c in args.concurrency.split(",")]
    workloads = {
        "rank": (rank_payloads, args.rank_requests),
        "similar": (similar_payloads, args.similar_requests),
    }
    rows: list[dict] = []

    def record(model, path, concurrency, result, split_row=None):
        rows.append(
            {
                "model": model,
                "path": path,
                "concurrency": concurrency,
                **{k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()},
                "mean_batch": round(split_row["mean_batch"], 2) if split_row else "",
                "queue_ms": round(split_row["queue_ms"], 2) if split_row else "",
            }
        )
        print(table(rows[-1:]), flush=True)

    # In-process: the runtime classes the python models use, shared by the threads (as in one model instance).
    scorer = runtime.RankScorer(args.repo / "rank" / "1")
    index = runtime.ItemIndex.load(args.repo / "similar" / "1")
    local = {
        "rank": lambda: lambda p: scorer.score([p]),
        "similar": lambda: lambda item: index.search(index.vectors_of([item]), 100, [item]),
    }
    for model, (payloads, n) in workloads.items():
        closed_loop(local[model], payloads, 1, 2)  # warm-up
        for c in levels:
            record(model, "in-process", c, closed_loop(local[model], payloads, c, n))

    for label, repo in (
        ("server, batching on", args.repo),
        ("server, batching off", without_batching(args.repo, args.out / "repo-no-batching")),
    ):
        with TritonServer(repo) as server:

            def client_call(model, url=server.grpc_url):
                def make():
                    client = RankingClient(url, timeout=120.0)
                    if model == "rank":
                        return lambda p: client.rank(*p)
                    return lambda item: client.similar(item_id=item, k=100)

                return make

            for model, (payloads, n) in workloads.items():
                closed_loop(client_call(model), payloads, 1, 2)  # warm-up
                for c in levels:
                    before = metrics.scrape(server.metrics_url)
                    result = closed_loop(client_call(model), payloads, c, n)
                    split_row = metrics.server_split(before, metrics.scrape(server.metrics_url)).get(model)
                    record(model, label, c, result, split_row)

    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python -m bench.serving",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "date": time.strftime("%Y-%m-%d"),
        "commit": git_commit(),
    }
    (args.out / "serving.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    with (args.out / "serving.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\n{meta}\n{table(rows)}")


if __name__ == "__main__":
    main()
