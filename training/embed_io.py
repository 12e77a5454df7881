"""Item vectors on disk: .npy (+ <name>.ids.json) or .parquet (item_id, vector)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd


def save_vectors(path: Path, item_ids: list[str], vectors: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        pd.DataFrame({"item_id": item_ids, "vector": list(vectors.astype(np.float32))}).to_parquet(path)
    elif path.suffix == ".npy":
        np.save(path, vectors.astype(np.float32))
        path.with_suffix(".ids.json").write_text(json.dumps(item_ids))
    else:
        raise ValueError(f"{path}: vectors are written as .npy or .parquet")
    return path


def load_vectors(path: Path) -> tuple[list[str], np.ndarray]:
    """(item_ids, vectors (N, d) float32); a malformed file fails with a message naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vector file {path} does not exist")
    if path.suffix == ".parquet":
        try:
            df = pd.read_parquet(path)
        except Exception as e:  # a truncated or foreign file: pyarrow raises many kinds
            raise ValueError(f"vector file {path} is not a readable parquet file: {e}") from None
        if not {"item_id", "vector"} <= set(df.columns):
            raise ValueError(f"{path}: needs columns item_id and vector, found {list(df.columns)}")
        ids = df["item_id"].astype(str).tolist()
        dims = {len(v) for v in df["vector"]}
        if len(dims) != 1:
            raise ValueError(f"{path}: vectors have mixed dimensions {sorted(dims)}")
        vectors = np.stack(df["vector"].to_numpy()).astype(np.float32)
    else:
        try:
            vectors = np.load(path, allow_pickle=False).astype(np.float32)
        except Exception as e:  # a truncated or foreign file: numpy raises many kinds
            raise ValueError(f"vector file {path} is not a readable .npy file: {e}") from None
        ids_path = path.with_suffix(".ids.json")
        if not ids_path.is_file():
            raise FileNotFoundError(f"{path} has no item ids next to it ({ids_path.name})")
        try:
            ids = [str(i) for i in json.loads(ids_path.read_text())]
        except (ValueError, TypeError) as e:
            raise ValueError(f"item ids {ids_path} are not a JSON list: {e}") from None
    if vectors.ndim != 2 or len(vectors) != len(ids):
        raise ValueError(f"{path}: {vectors.shape} vectors for {len(ids)} ids")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate item ids")
    if not np.isfinite(vectors).all():
        raise ValueError(f"{path}: vectors contain NaN or inf")
    return ids, vectors
