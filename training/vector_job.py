"""A batch job that writes one vector per item into a .npy, batch by batch, and resumes where it stopped.

    <path>                     the finished (n, d) float32 vectors, in item order
    <path stem>.ids.json       the item ids, in the same order
    <path>.partial.npy + .json the job under way: rows written so far, and what they belong to

Memory stays bounded (one batch in flight; the output is a memory-mapped file), progress is shown per
batch, and after an interruption (Ctrl-C, a crash, a killed machine) the same call continues from the
last finished batch instead of starting over. A partial file is reused only for the very same job: the same
ids in the same order, the same dimension and the same `key` (e.g. a digest of the model's weights), so a
changed model or catalogue starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm


def _fingerprint(ids: list[str], dim: int, key: str) -> str:
    sha = hashlib.sha256(f"{dim}\0{key}\0".encode())
    for item_id in ids:
        sha.update(item_id.encode() + b"\0")
    return sha.hexdigest()


def file_digest(*paths: Path) -> str:
    """sha256 over files' bytes: a `key` that changes when a model's weights do."""
    sha = hashlib.sha256()
    for path in paths:
        with Path(path).open("rb") as f:
            while block := f.read(1 << 20):
                sha.update(block)
    return sha.hexdigest()


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)  # atomic: a crash leaves the old state or the new one


def run(
    path: Path,
    ids: list[str],
    dim: int,
    encode: Callable[[int, int], np.ndarray],
    batch: int = 256,
    key: str = "",
    desc: str = "vectors",
) -> np.ndarray:
    """Vectors of items [0, n) into `path`: `encode(start, stop)` gives rows start..stop-1 as (stop-start, dim).
    Returns the finished file, memory-mapped read-only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial, state_path = Path(f"{path}.partial.npy"), Path(f"{path}.partial.json")
    n = len(ids)
    fingerprint = _fingerprint(ids, dim, key)
    done = 0
    if partial.is_file() and state_path.is_file():
        try:
            state = json.loads(state_path.read_text())
            if state.get("fingerprint") == fingerprint:
                done = int(state["done"])
        except (ValueError, KeyError, TypeError):
            done = 0
    if done:
        out = np.load(partial, mmap_mode="r+")
        if out.shape != (n, dim):
            done = 0
    if not done:
        out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(n, dim))
        _write_json(state_path, {"fingerprint": fingerprint, "done": 0, "n": n})
    with tqdm(total=n, initial=done, desc=desc, unit="item", dynamic_ncols=True) as bar:
        for start in range(done, n, batch):
            stop = min(start + batch, n)
            vectors = np.asarray(encode(start, stop), dtype=np.float32)
            if vectors.shape != (stop - start, dim):
                raise ValueError(
                    f"{desc}: encode({start}, {stop}) gave shape {vectors.shape}, want {(stop - start, dim)}"
                )
            out[start:stop] = vectors
            out.flush()  # the rows are on disk before the state says so
            _write_json(state_path, {"fingerprint": fingerprint, "done": stop, "n": n})
            bar.update(stop - start)
    del out
    os.replace(partial, path)
    path.with_suffix(".ids.json").write_text(json.dumps(list(ids)))
    state_path.unlink()
    return np.load(path, mmap_mode="r")
