"""Serving latency: `rank` and `similar` through the embedded tritonserver vs the same work in-process.

    python -m bench.serving [--repo artifacts/model_repo] [--rank-requests 24] [--requests 300]

Workloads (held-out MovieLens users, llmrec.server.workloads): `rank` = history of 10 item texts and 100
candidate texts; `similar` = a catalogue item id, k = 100. Paths: in-process (the very runtime classes
the python models run, called from threads), and the server over gRPC with dynamic batching on (the
repository as exported) and off (a copy whose configs drop `dynamic_batching`). Each runs closed-loop at
concurrency 1 and 8 (one client per thread, each thread waits for its answer before sending the next).
`rank` runs with its item-vector cache warm (the model fills it with the catalogue's texts at load) and,
in-process and on the batching server, with the cache off
(LLMREC_RANK_CACHE_ITEMS=0: every request encodes its 110 texts, the cost of items never seen before).
`similar` by text (a catalogue title, k = 100) runs on the batching server two ways, to decide between a
single python model and an ensemble: fused (`similar` embeds its texts by a BLS call to `embed`) and an
ensemble `similar_text` (embed -> similar with a VECTOR query) that only this benchmark adds to a copy of
the repository.
Writes artifacts/bench/serving.{json,csv} and prints the table that docs/BENCHMARKS.md quotes.
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
import tritonclient.grpc as grpcclient

from llmrec.export.repository import without_batching
from llmrec.paths import artifacts_dir
from llmrec.runs import provenance, table
from llmrec.server import ensembles, item_index, metrics, runtime
from llmrec.server.client import RankingClient, similar_request
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


def text_ensemble() -> str:
    """bench only: `similar` by text as a Triton ensemble of the two cores, to compare with the fused BLS path."""
    from llmrec.server.contract import EMBED, ITEM_IDS, SCORES, SIMILAR, TEXT, VECTOR, K, Model

    front = Model(
        "similar_text", (EMBED.input(TEXT), SIMILAR.input(K)), SIMILAR.outputs, SIMILAR.max_batch_size
    )
    config = ensembles.ensemble_config(front)  # name and tensors; its comment and steps are replaced
    config = config[config.index("name:") : config.index("ensemble_scheduling")]
    steps = f"""ensemble_scheduling {{
  step [
    {{
      model_name: "{ensembles.core(EMBED.name)}"
      model_version: -1
      input_map {{ key: "{TEXT}" value: "{TEXT}" }}
      output_map {{ key: "{VECTOR}" value: "query_vector" }}
    }},
    {{
      model_name: "{ensembles.core(SIMILAR.name)}"
      model_version: -1
      input_map {{ key: "{VECTOR}" value: "query_vector" }}
      input_map {{ key: "{K}" value: "{K}" }}
      output_map {{ key: "{ITEM_IDS}" value: "{ITEM_IDS}" }}
      output_map {{ key: "{SCORES}" value: "{SCORES}" }}
    }}
  ]
}}
"""
    return (
        "# bench only: `similar` by text as an ensemble of the two cores (bench/serving.py)\n"
        + config
        + steps
    )


def with_text_ensemble(repo: Path, dest: Path) -> Path:
    """The repository (models linked, not copied) plus the `similar_text` ensemble."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for model_dir in repo.iterdir():
        if (model_dir / "config.pbtxt").is_file():
            (dest / model_dir.name).symlink_to(model_dir.resolve())
    (dest / "similar_text" / "1").mkdir(parents=True)
    (dest / "similar_text" / "config.pbtxt").write_text(text_ensemble())
    return dest


def main() -> None:
    run_started = time.time()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repo", type=Path, default=artifacts_dir() / "model_repo")
    parser.add_argument("--rank-requests", type=int, default=24, help="rank calls per row with the cache off")
    parser.add_argument("--requests", type=int, default=300, help="calls per row of every other path")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--out", type=Path, default=artifacts_dir() / "bench")
    args = parser.parse_args()

    from llmrec.training.data_source import load_split, of_pipeline

    source = of_pipeline()  # what the repository's models were trained on
    data, split = load_split(source)
    users = user_requests(data.items, split.train_interactions, split.test_interactions, 40, 10, 100, seed=2)
    rank_payloads = [(u["history"], u["candidate_texts"]) for u in users]
    rng = np.random.default_rng(0)
    similar_payloads = rng.choice(data.items["item_id"].to_numpy(), size=500).tolist()
    text_payloads = rng.choice(data.items["title"].to_numpy(), size=500).tolist()
    levels = [int(c) for c in args.concurrency.split(",")]
    workloads = {
        "rank": (rank_payloads, args.requests),
        "similar": (similar_payloads, args.requests),
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
    index = item_index.ItemIndex.load(args.repo / "similar_core" / "1")
    for cache in (False, True):
        scorer = runtime.RankScorer(args.repo / "rank_core" / "1", cache_items=None if cache else 0)
        local = {
            "rank": lambda scorer=scorer: lambda p: scorer.score([p]),
            "similar": lambda: lambda item: index.search(index.vectors_of([item]), 100, [item]),
        }
        for model, (payloads, n) in workloads.items():
            if model != "rank" and not cache:
                continue  # only rank has a cache
            closed_loop(local[model], payloads, 1, 2)  # warm-up (rank's cache is warm from load)
            for c in levels:
                path = "in-process" if cache else "in-process, cache off"
                n_calls = n if cache else args.rank_requests
                record(model, path, c, closed_loop(local[model], payloads, c, n_calls))

    no_batching = without_batching(args.repo, args.out / "repo-no-batching")
    with_ensemble = with_text_ensemble(args.repo, args.out / "repo-text-ensemble")
    for label, repo, cache in (
        ("server, batching on, cache off", args.repo, False),
        ("server, batching on", with_ensemble, True),
        ("server, batching off", no_batching, True),
    ):
        os.environ["LLMREC_RANK_CACHE_ITEMS"] = str(runtime.RANK_CACHE_ITEMS if cache else 0)  # to the stubs
        with TritonServer(repo) as server:

            def client_call(model, url=server.grpc_url):
                def make():
                    client = RankingClient(url, timeout=120.0)
                    if model == "rank":
                        return lambda p: client.rank(*p)
                    return lambda item: client.similar(item_id=item, k=100)

                return make

            for model, (payloads, n) in workloads.items():
                if model != "rank" and not cache:
                    continue
                closed_loop(client_call(model), payloads, 1, 2)  # warm-up
                for c in levels:
                    before = metrics.scrape(server.metrics_url)
                    result = closed_loop(client_call(model), payloads, c, n if cache else args.rank_requests)
                    split_row = metrics.server_split(before, metrics.scrape(server.metrics_url)).get(model)
                    record(model, label, c, result, split_row)

            if repo != with_ensemble:
                continue

            def text_call(model: str, url=server.grpc_url):
                def make():  # the same request to either model, through the bare tritonclient
                    grpc = grpcclient.InferenceServerClient(url)
                    _, inputs, _ = similar_request(None, "-", 100)

                    def call(text):
                        inputs[0].set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
                        return grpc.infer(model, inputs, client_timeout=120.0)

                    return call

                return make

            for model, path in (
                ("similar", "server, text, fused (BLS)"),
                ("similar_text", "server, text, ensemble"),
            ):
                closed_loop(text_call(model), text_payloads, 1, 2)
                for c in levels:
                    before = metrics.scrape(server.metrics_url)
                    result = closed_loop(text_call(model), text_payloads, c, args.requests)
                    split_row = metrics.server_split(before, metrics.scrape(server.metrics_url)).get(model)
                    record("similar (text)", path, c, result, split_row)
    os.environ.pop("LLMREC_RANK_CACHE_ITEMS")

    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python -m bench.serving",
        "data": source.describe(),
        **provenance(run_started),
    }
    (args.out / "serving.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    with (args.out / "serving.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\n{meta}\n{table(rows)}")


if __name__ == "__main__":
    main()
