"""Loaders that map a data source into the schema of `schema.py`."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from llmrec.assets import movielens_100k_dir
from llmrec.training.schema import RecData, SchemaError, validate_interactions, validate_items


def _read_atomic(path: Path) -> pd.DataFrame:
    """Read a RecBole atomic file (tab-separated, `name:type` headers)."""
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    df.columns = [c.split(":")[0] for c in df.columns]
    return df


def load_movielens_100k() -> RecData:
    """MovieLens-100k from the recbole wheel, as items and interactions.

    title = movie title; topic = release decade ("1990s"); category = the first listed genre;
    tags = all genres; content = a sentence built from title, year and genres (the only text
    fields ML-100k has, so the content necessarily repeats the genres).
    """
    folder = movielens_100k_dir()
    raw = _read_atomic(folder / "ml-100k.item")
    genres = raw["class"].str.split()
    year = raw["release_year"].where(raw["release_year"].str.isdigit(), "")
    decade = year.map(lambda y: f"{y[:3]}0s" if y else "unknown")
    content = [
        f"{title}{f' ({y})' if y else ''}. Genres: {', '.join(g)}."
        for title, y, g in zip(raw["movie_title"], year, genres, strict=True)
    ]
    items = pd.DataFrame(
        {
            "item_id": raw["item_id"],
            "title": raw["movie_title"],
            "topic": decade,
            "content": content,
            "category": [g[0] if g else "unknown" for g in genres],
            "tags": [list(g) for g in genres],
        }
    )
    items = validate_items(items, str(folder / "ml-100k.item"))
    inter = _read_atomic(folder / "ml-100k.inter")[["user_id", "item_id", "timestamp"]]
    inter = validate_interactions(inter, items["item_id"], str(folder / "ml-100k.inter"))
    return RecData("movielens-100k", items, inter)


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a parquet or JSONL file; a malformed JSON line is reported with its line number."""
    path = Path(path)
    if not path.exists():
        raise SchemaError(f"{path}: no such file")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix in (".jsonl", ".ndjson"):
        rows = []
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SchemaError(f"{path}, row {lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise SchemaError(
                        f"{path}, row {lineno}: expected a JSON object, got {type(row).__name__}"
                    )
                rows.append(row)
        return pd.DataFrame(rows)
    raise SchemaError(f"{path}: unsupported format {path.suffix!r} (use .parquet or .jsonl)")


def load_user_files(items_path: str | Path, interactions_path: str | Path, name: str = "user") -> RecData:
    """Items and interactions from the user's own parquet/JSONL files, validated."""
    items = validate_items(read_table(items_path), str(items_path))
    inter = validate_interactions(read_table(interactions_path), items["item_id"], str(interactions_path))
    return RecData(name, items, inter)
