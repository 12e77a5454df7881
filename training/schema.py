"""The data contract every loader produces and every stage consumes (docs/ARCHITECTURE.md).

items:        item_id (str), title (str), topic (str), content (str), category (str), tags (list[str])
interactions: user_id (str), item_id (str), timestamp (float, seconds), optional label (0/1 click)
pairs:        src (str), dst (str), score (float)

Validation errors name the file, the row (1-based, as a person counts lines of data) and the
problem, so a bad row in a million-line log is found in one look; every bad row of a check is counted and
the first MAX_LISTED of them are listed, so one run shows the extent of a problem.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

ITEM_COLUMNS = ("item_id", "title", "topic", "content", "category", "tags")
INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")
PAIR_COLUMNS = ("src", "dst", "score")


class SchemaError(ValueError):
    """Input data does not follow the schema; the message names the file, row and problem."""


def _fail(source: str, row: int | None, problem: str) -> SchemaError:
    where = f"{source}, row {row + 1}" if row is not None else source
    return SchemaError(f"{where}: {problem}")


def _require_columns(df: pd.DataFrame, columns: tuple[str, ...], source: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise _fail(source, None, f"missing column(s) {missing}; found {list(df.columns)}")


MAX_LISTED = 10  # bad rows named in one error; the rest are counted


class _Problems:
    """The bad rows of a table, gathered over several checks and raised as one SchemaError."""

    def __init__(self, source: str):
        self.source, self.listed, self.count = source, [], 0

    def add(self, mask, describe) -> np.ndarray:
        """Record the rows where `mask` holds (`describe(row)` says what is wrong); returns them."""
        rows = np.flatnonzero(np.asarray(mask, dtype=bool))
        self.count += len(rows)
        for row in rows[: max(0, MAX_LISTED - len(self.listed))]:
            self.listed.append((int(row), describe(int(row))))
        return rows

    def raise_any(self) -> None:
        if not self.count:
            return
        if self.count == 1:
            raise _fail(self.source, *self.listed[0])
        lines = [f"  row {row + 1}: {problem}" for row, problem in sorted(self.listed)]
        if self.count > len(self.listed):
            lines.append(f"  ... and {self.count - len(self.listed)} more")
        raise SchemaError(f"{self.source}: {self.count} bad rows\n" + "\n".join(lines))


def validate_items(df: pd.DataFrame, source: str = "items") -> pd.DataFrame:
    """Check and normalise an items table; returns a copy with canonical dtypes."""
    _require_columns(df, ("item_id", "title"), source)
    out = df.reset_index(drop=True).copy()
    for column in ("topic", "content", "category"):
        if column not in out.columns:
            out[column] = ""
    if "tags" not in out.columns:
        out["tags"] = [[] for _ in range(len(out))]
    problems = _Problems(source)
    missing = out["item_id"].isna()
    problems.add(missing, lambda row: "item_id is missing")
    out["item_id"] = out["item_id"].astype(str)
    title_ok = out["title"].map(lambda t: isinstance(t, str) and t.strip() != "")
    problems.add(~title_ok, lambda row: f"empty title for item {out['item_id'][row]!r}")
    problems.add(
        out["item_id"].duplicated() & ~missing, lambda row: f"duplicate item_id {out['item_id'][row]!r}"
    )
    problems.raise_any()
    for column in ("topic", "content", "category"):
        out[column] = out[column].fillna("").astype(str)
    out["tags"] = [_as_tags(t, source, i) for i, t in enumerate(out["tags"])]
    return out[list(ITEM_COLUMNS)]


def _as_tags(value, source: str, row: int) -> list[str]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, str):
        return [t.strip() for t in value.split("|") if t.strip()]
    if isinstance(value, list | tuple | np.ndarray):
        return [str(t) for t in value]
    raise _fail(
        source, row, f"tags must be a list of strings or a '|'-separated string, got {type(value).__name__}"
    )


def validate_interactions(
    df: pd.DataFrame, item_ids: pd.Series, source: str = "interactions"
) -> pd.DataFrame:
    """Check an interaction log against the catalogue; returns a copy with canonical dtypes.

    Timestamps need not be monotonic per user (loaders sort), but must be present and numeric.
    """
    _require_columns(df, INTERACTION_COLUMNS, source)
    out = df.reset_index(drop=True).copy()
    problems = _Problems(source)
    missing = out["item_id"].isna()
    for column in ("user_id", "item_id"):
        problems.add(out[column].isna(), lambda row, column=column: f"{column} is missing")
        out[column] = out[column].astype(str)
    ts = pd.to_numeric(out["timestamp"], errors="coerce")
    problems.add(ts.isna(), lambda row: f"timestamp {out['timestamp'][row]!r} is missing or not a number")
    out["timestamp"] = ts.astype("float64")
    known = out["item_id"].isin(set(item_ids))
    problems.add(~known & ~missing, lambda row: f"item_id {out['item_id'][row]!r} is not in the items table")
    columns = list(INTERACTION_COLUMNS)
    if "label" in out.columns:
        label = pd.to_numeric(out["label"], errors="coerce")
        problems.add(
            label.isna() | ~label.isin([0, 1]), lambda row: f"label {out['label'][row]!r} must be 0 or 1"
        )
    problems.raise_any()
    if "label" in out.columns:
        out["label"] = label.astype("int8")
        columns.append("label")
    return out[columns]


@dataclass(frozen=True)
class RecData:
    """A catalogue and its interaction log, validated."""

    name: str
    items: pd.DataFrame
    interactions: pd.DataFrame
    source: dict | None = None  # where it was read from (llmrec.training.data_source), recorded by runs

    @property
    def n_users(self) -> int:
        return int(self.interactions["user_id"].nunique())

    def item_index(self) -> dict[str, int]:
        """item_id -> row position in `items` (the order of every item matrix)."""
        return {item_id: i for i, item_id in enumerate(self.items["item_id"])}
