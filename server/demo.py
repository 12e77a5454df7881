"""The serving half of `make demo`: an embedded tritonserver, real gRPC calls, tables, a latency summary.

Runs against a built model repository: `similar` for a few catalogue items and a free-text query,
`rank` for held-out users (their next item among random ones), then a short closed loop of calls
whose client percentiles sit next to Triton's own queue / compute split for the same window.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from llmrec.runs import table
from llmrec.server import metrics
from llmrec.server.client import RankingClient
from llmrec.server.launcher import TritonServer
from llmrec.server.workloads import user_requests


def _show(title: str, rows: list[dict]) -> None:
    print(f"\n{title}\n{table(rows)}", flush=True)


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {f"p{q}": float(np.percentile(ms, q)) for q in (50, 95, 99)}


def run(repo: Path, items: pd.DataFrame, train: pd.DataFrame, test: pd.DataFrame, calls: int = 100) -> dict:
    title = dict(zip(items["item_id"], items["title"], strict=True))
    started = time.time()
    with TritonServer(repo) as server:
        print(
            f"tritonserver ready in {time.time() - started:.1f} s (gRPC {server.grpc_url}, metrics {server.metrics_url})"
        )
        client = RankingClient(server.grpc_url, timeout=30.0)
        _show("Models", [{"model": m, "ready": r} for m, r in client.health()["models"].items()])

        for item_id in ("1", "50", "181"):
            rows = [
                {
                    "rank": r + 1,
                    "item": n.item_id,
                    "title": title.get(n.item_id, "?"),
                    "cosine": f"{n.score:.4f}",
                }
                for r, n in enumerate(client.similar(item_id=item_id, k=5))
            ]
            _show(f"similar(item {item_id}: {title[item_id]}, k=5)", rows)
        query = "A space adventure with robots and a rebellion"
        rows = [
            {"rank": r + 1, "item": n.item_id, "title": title.get(n.item_id, "?"), "cosine": f"{n.score:.4f}"}
            for r, n in enumerate(client.similar(text=query, k=5))
        ]
        _show(f"similar(text {query!r}, k=5)", rows)

        users = user_requests(items, train, test, n_users=2, history=10, candidates=10)
        for u in users:
            scores = client.rank(u["history"], u["candidate_texts"])
            order = np.argsort(-scores)
            rows = [
                {
                    "rank": r + 1,
                    "title": title[u["candidates"][j]],
                    "score": f"{scores[j]:.3f}",
                    "next watched": "<-" if u["candidates"][j] == u["target"] else "",
                }
                for r, j in enumerate(order)
            ]
            _show(f"rank(user {u['user']}: history {', '.join(u['history_titles'][-3:])} ...)", rows)

        # Latency: a closed loop, one request at a time, client and server measured over the same window.
        load = user_requests(items, train, test, n_users=20, history=10, candidates=100, seed=1)
        ids = items["item_id"].tolist()
        before = metrics.scrape(server.metrics_url)
        timings: dict[str, list[float]] = {"rank": [], "similar": []}
        for i in range(calls):
            u = load[i % len(load)]
            t = time.perf_counter()
            client.rank(u["history"], u["candidate_texts"])
            timings["rank"].append(time.perf_counter() - t)
            t = time.perf_counter()
            client.similar(item_id=ids[(i * 37) % len(ids)], k=100)
            timings["similar"].append(time.perf_counter() - t)
        split = metrics.server_split(before, metrics.scrape(server.metrics_url))
        rows = []
        for method, seconds in timings.items():
            server_side = split.get(method, {})
            rows.append(
                {
                    "model": method,
                    "calls": len(seconds),
                    **{k: f"{v:.2f}" for k, v in _percentiles(seconds).items()},
                    "server ms": f"{server_side.get('request_ms', 0):.2f}",
                    "queue ms": f"{server_side.get('queue_ms', 0):.2f}",
                    "compute ms": f"{sum(server_side.get(k, 0) for k in ('compute_input_ms', 'compute_infer_ms', 'compute_output_ms')):.2f}",
                }
            )
        _show(
            "Latency (client p50/p95/p99 in ms; Triton's mean split) — rank: history 10, 100 candidates; similar: k=100",
            rows,
        )
        client.close()
    print("tritonserver stopped")
    return {"latency": rows, "server_split": split}
