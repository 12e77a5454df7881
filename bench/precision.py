"""fp16 graphs against fp32 in the terms a user sees: neighbours, ranking, and time on this machine.

    python -m bench.precision [--repo artifacts/model_repo] [--users 100]

Needs a repository exported with `llmrec export --fp16`. `embed`: the whole catalogue through both NoteLLM
graphs; cosine between each item's two vectors, and the overlap of its top-10 neighbours (catalogue-wide,
itself excluded). `rank`: held-out users (10 history items, 100 candidates, llmrec.server.workloads)
scored through both EaaR encoders with the item cache off; largest score difference, overlap of the
top-10 candidates, and whether the held-out item's rank changes. Times: median seconds of one encoder
pass (embed: 16 items; rank: one user's 110 texts) over 5 calls, onnxruntime on this machine's providers.
Writes artifacts/bench/precision.json and prints the table that docs/BENCHMARKS.md quotes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from llmrec.paths import artifacts_dir
from llmrec.runs import provenance, table
from llmrec.server import runtime
from llmrec.server.workloads import user_requests


def top10_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean share of shared ids between the rows' top-10 of two score matrices."""
    ta, tb = np.argsort(-a, axis=1)[:, :10], np.argsort(-b, axis=1)[:, :10]
    return float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(ta, tb, strict=True)]))


def median_s(call, repeats: int = 5) -> float:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def main() -> None:
    run_started = time.time()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repo", type=Path, default=artifacts_dir() / "model_repo")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--out", type=Path, default=artifacts_dir() / "bench")
    args = parser.parse_args()

    from llmrec.training.data_source import load_split, of_pipeline

    source = of_pipeline()  # what the repository's models were trained on
    data, split = load_split(source)
    items = data.items.to_dict("records")
    rows = []

    embedders = {p: runtime.NoteEmbedder(args.repo / "embed_core" / "1", p) for p in runtime.PRECISIONS}
    vectors = {}
    for precision, embedder in embedders.items():
        vectors[precision] = np.concatenate(
            [embedder.embed(items[i : i + 64]) for i in range(0, len(items), 64)]
        )
        print(f"embed {precision}: {len(items)} items", flush=True)
    v32, v16 = vectors["fp32"], vectors["fp16"]
    cosine = (v32 * v16).sum(1) / np.linalg.norm(v16, axis=1)
    s32, s16 = v32 @ v32.T, v16 @ v16.T
    np.fill_diagonal(s32, -np.inf)
    np.fill_diagonal(s16, -np.inf)
    times = {p: median_s(lambda e=e: e.embed(items[:16])) for p, e in embedders.items()}
    rows.append(
        {
            "model": "embed",
            "compared": f"{len(items)} catalogue items",
            "agreement": f"cosine fp16 vs fp32: min {cosine.min():.5f}, mean {cosine.mean():.6f}",
            "top10_overlap": round(top10_overlap(s32, s16), 4),
            "fp32_s": round(times["fp32"], 3),
            "fp16_s": round(times["fp16"], 3),
        }
    )

    users = user_requests(data.items, split.train_interactions, split.test_interactions, args.users, 10, 100)
    scorers = {
        p: runtime.RankScorer(args.repo / "rank_core" / "1", cache_items=0, precision=p)
        for p in runtime.PRECISIONS
    }
    scores = {}
    for precision, scorer in scorers.items():
        with torch.no_grad():
            scores[precision] = np.stack(
                [scorer.score([(u["history"], u["candidate_texts"])])[0] for u in users]
            )
        print(f"rank {precision}: {len(users)} users", flush=True)
    r32, r16 = scores["fp32"], scores["fp16"]
    target_rank = {p: (s > s[:, :1]).sum(1) for p, s in scores.items()}  # candidates[0] is the held-out item
    one_user = (users[0]["history"], users[0]["candidate_texts"])
    times = {p: median_s(lambda s=s: s.score([one_user])) for p, s in scorers.items()}
    rows.append(
        {
            "model": "rank",
            "compared": f"{len(users)} users x 100 candidates",
            "agreement": f"max |score diff| {np.abs(r32 - r16).max():.2e} (scores span {r32.min():.2f}..{r32.max():.2f}); "
            f"held-out item's rank changed for {(target_rank['fp32'] != target_rank['fp16']).sum()} users",
            "top10_overlap": round(top10_overlap(r32, r16), 4),
            "fp32_s": round(times["fp32"], 3),
            "fp16_s": round(times["fp16"], 3),
        }
    )

    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python -m bench.precision",
        "providers": embedders["fp32"].session.get_providers(),
        "data": source.describe(),
        **provenance(run_started),
    }
    (args.out / "precision.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    print(f"\n{meta}\n{table(rows)}")


if __name__ == "__main__":
    main()
