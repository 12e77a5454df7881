"""Where a run's data comes from: recorded with the run, read back and checked by every later stage.

    source = DataSource.given(items, interactions, test_fraction)     # MovieLens-100k when both are None
    source = for_stage(run_dir, items, interactions, test_fraction, "llmrec embed")

A run records its source in config.json under "data": the dataset name, the user's files as absolute paths
with their sha256, and the split settings. A later stage (embed, eval, the EaaR runs, export) given no data
flags reads the data of the run it builds on; given flags, it refuses data other than that run's with a
message naming both, since vectors, pairs and splits of one catalogue mean nothing on another. A recorded
file whose content changed since is refused the same way.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd

from llmrec.training.schema import RecData, SchemaError
from llmrec.training.vector_job import file_digest as sha256

MOVIELENS = "movielens-100k"
USER = "user"
DEFAULT_TEST_FRACTION = 0.1


class DataMismatch(ValueError):
    """A stage was given other data than the run it builds on was trained on."""


@dataclass(frozen=True)
class DataSource:
    name: str  # MOVIELENS (from the recbole wheel) or USER (the files below)
    items: str | None = None  # absolute paths of the user's files
    interactions: str | None = None
    items_sha256: str | None = None
    interactions_sha256: str | None = None
    test_fraction: float = DEFAULT_TEST_FRACTION

    @classmethod
    def given(
        cls, items: Path | None, interactions: Path | None, test_fraction: float | None = None
    ) -> DataSource:
        """MovieLens-100k when no file is given; else the user's files (interactions may be left out by a
        stage that reads items only), hashed now."""
        fraction = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
        if items is None:
            if interactions is not None:
                raise ValueError("--interactions needs --items (the catalogue its item ids refer to)")
            return cls(MOVIELENS, test_fraction=fraction)
        for path in (p for p in (items, interactions) if p is not None):
            if not Path(path).is_file():
                raise SchemaError(f"{path}: no such file")
        return cls(
            USER,
            str(Path(items).resolve()),
            str(Path(interactions).resolve()) if interactions is not None else None,
            sha256(items),
            sha256(interactions) if interactions is not None else None,
            fraction,
        )

    def record(self) -> dict:
        return asdict(self)

    @classmethod
    def from_record(cls, record) -> DataSource | None:
        """The source a run's config.json recorded; None where it recorded none it can be read back from
        (runs written before sources were recorded name only "user")."""
        if isinstance(record, dict):
            return cls(**record)
        if record == MOVIELENS:
            return cls(MOVIELENS)
        return None

    def describe(self) -> str:
        if self.name == MOVIELENS:
            return "MovieLens-100k"
        parts = [f"items {self.items} (sha256 {self.items_sha256[:12]})"]
        if self.interactions:
            parts.append(f"interactions {self.interactions} (sha256 {self.interactions_sha256[:12]})")
        return " and ".join(parts)

    def differences(self, other: DataSource, items_only: bool = False) -> list[str]:
        """What `other` changes of this source's data (empty: the same data); with `items_only`, only the
        catalogue counts (a stage that reads no interactions)."""
        if self.name != other.name:
            return ["dataset"]
        if self.name == MOVIELENS:
            return [] if items_only or self.test_fraction == other.test_fraction else ["test fraction"]
        found = [] if self.items_sha256 == other.items_sha256 else ["items"]
        if not items_only:
            if other.interactions is not None and self.interactions_sha256 != other.interactions_sha256:
                found.append("interactions")
            if self.test_fraction != other.test_fraction:
                found.append("test fraction")
        return found

    def check_unchanged(self, items_only: bool = False) -> None:
        """The recorded files still hold what the run read (a DataMismatch naming the file otherwise)."""
        if self.name == MOVIELENS:
            return
        files = [(self.items, self.items_sha256)]
        if not items_only and self.interactions:
            files.append((self.interactions, self.interactions_sha256))
        for path, digest in files:
            if not Path(path).is_file():
                raise DataMismatch(f"{path}, the data this run was trained on, is gone: pass the data flags")
            if (now := sha256(path)) != digest:
                raise DataMismatch(
                    f"{path} changed since the run was trained on it (sha256 {digest[:12]} then, "
                    f"{now[:12]} now): train again on the new file, or restore it"
                )

    def load(self) -> RecData:
        from llmrec.training.datasets import load_movielens_100k, load_user_files

        if self.name == MOVIELENS:
            data = load_movielens_100k()
        elif self.interactions is None:
            raise ValueError("this stage needs the interactions file too: pass --interactions")
        else:
            data = load_user_files(self.items, self.interactions)
        return replace(data, source=self.record())

    def load_items(self) -> pd.DataFrame:
        """The catalogue alone (what `embed` and export need)."""
        from llmrec.training.datasets import load_movielens_100k, read_table
        from llmrec.training.schema import validate_items

        if self.name == MOVIELENS:
            return load_movielens_100k().items
        return validate_items(read_table(self.items), self.items)


def recorded(run_dir: Path) -> DataSource | None:
    """The data source a run folder's config.json recorded (None: no config, or none recorded)."""
    config = Path(run_dir) / "config.json"
    if not config.is_file():
        return None
    return DataSource.from_record(json.loads(config.read_text()).get("data"))


def _records_unreadable_data(run_dir: Path) -> bool:
    config = Path(run_dir) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("data") not in (None, MOVIELENS)


def for_stage(
    run_dir: Path,
    items: Path | None,
    interactions: Path | None,
    test_fraction: float | None,
    stage: str,
    items_only: bool = False,
) -> DataSource:
    """The data `stage` uses when it builds on the run in `run_dir`: the run's own when no data flag is
    given; the flags' data when the run recorded none (or does not exist); else the flags' data only if it
    is the run's (a DataMismatch naming both otherwise)."""
    run = recorded(run_dir)
    if items is None and interactions is None:
        if run is None:
            if _records_unreadable_data(run_dir):
                raise DataMismatch(
                    f"{run_dir} was trained on data it did not record (a run from before data sources were "
                    "recorded): pass --items and --interactions"
                )
            return DataSource.given(None, None, test_fraction)
        run.check_unchanged(items_only)
        if test_fraction is not None and test_fraction != run.test_fraction:
            raise DataMismatch(
                f"{run_dir} was split with test fraction {run.test_fraction}; {stage} was given {test_fraction}"
            )
        return run
    given = DataSource.given(items, interactions, test_fraction)
    if run is not None:
        if test_fraction is None:  # the flags name files; the split stays the run's
            given = DataSource(**{**given.record(), "test_fraction": run.test_fraction})
        if changed := run.differences(given, items_only):
            raise DataMismatch(
                f"{stage} was given other data than {run_dir} was trained on ({', '.join(changed)} differ): "
                f"the run read {run.describe()} (test fraction {run.test_fraction}); {stage} was given "
                f"{given.describe()} (test fraction {given.test_fraction}). Leave out the data flags to use "
                "the run's data, or train a run on the new data"
            )
        if given.interactions is None and run.interactions is not None:
            given = run  # the same catalogue: the run's interactions come with it
    return given


def of_pipeline(run_dir: Path | None = None) -> DataSource:
    """The data the pipeline's models were trained on: what the NoteLLM run (default <artifacts>/notellm)
    recorded, else MovieLens-100k. The benchmarks and load tests draw their requests from it."""
    from llmrec.paths import artifacts_dir

    return for_stage(run_dir or artifacts_dir() / "notellm", None, None, None, "this benchmark")


def load_split(source: DataSource):
    """(data, split) of a source: the time split with the source's test fraction (llmrec.training.split)."""
    from llmrec.training.split import SplitConfig, time_split

    data = source.load()
    return data, time_split(data, SplitConfig(test_fraction=source.test_fraction))
