"""What the load test sends: held-out users for `rank`, catalogue items and k values for `similar`, texts
for `embed`. Built once from the data by the runner and saved as JSON, so that every locust process reads
the same requests in milliseconds (LLMREC_LOAD_WORKLOAD names the file)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

KS = (10, 20, 50, 100)


@dataclass
class Workload:
    users: list[dict]  # {"history": [texts], "candidate_texts": [texts], "history_ids", "candidate_ids"}
    item_ids: list[str]
    texts: list[str]
    ks: list[int]

    @classmethod
    def from_data(
        cls,
        items: pd.DataFrame,
        train: pd.DataFrame,
        test: pd.DataFrame,
        history: int = 10,
        candidates: int = 100,
        n_users: int = 200,
        ks: tuple[int, ...] = KS,
    ) -> Workload:
        from llmrec.server.contract import item_text
        from llmrec.server.workloads import user_requests

        users = user_requests(items, train, test, n_users, history, min(candidates, len(items) - history))
        if not users:
            raise ValueError(f"no held-out user has {history} training items: lower the history length")
        records = items.to_dict("records")
        ks = [k for k in ks if k < len(items)] or [max(1, len(items) // 2)]
        return cls(
            users=[
                {
                    "history": u["history"],
                    "candidate_texts": u["candidate_texts"],
                    "history_ids": u["history_ids"],
                    "candidate_ids": u["candidates"],
                }
                for u in users
            ],
            item_ids=items["item_id"].tolist(),
            texts=[item_text(r) for r in records],
            ks=ks,
        )

    @classmethod
    def of_pipeline(cls) -> Workload:
        """Requests drawn from the data the served models were trained on (the NoteLLM run's, else
        MovieLens-100k: llmrec.training.data_source.of_pipeline)."""
        from llmrec.training.data_source import load_split, of_pipeline

        data, split = load_split(of_pipeline())
        return cls.from_data(data.items, split.train_interactions, split.test_interactions)

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self)))
        return path

    @classmethod
    def load(cls, path: Path | None = None) -> Workload:
        path = path or os.environ.get("LLMREC_LOAD_WORKLOAD")
        return cls(**json.loads(Path(path).read_text())) if path else cls.of_pipeline()
