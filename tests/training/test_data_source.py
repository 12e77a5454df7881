"""A run records its data; later stages read it back and refuse other data, naming both."""

import json

import pytest

from llmrec.training.data_source import MOVIELENS, DataMismatch, DataSource, for_stage
from tests.conftest import write_user_files


@pytest.fixture
def run(tmp_path):
    _, items, log = write_user_files(tmp_path, n_items=12, n_users=5, per_user=4)
    source = DataSource.given(items, log, 0.2)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"data": source.record()}))
    return run_dir, source, items, log


def test_a_stage_without_flags_gets_the_runs_data(run):
    run_dir, source, _, _ = run
    assert for_stage(run_dir, None, None, None, "embed") == source
    assert for_stage(run_dir, None, None, None, "embed").test_fraction == 0.2


def test_the_same_files_pass_and_other_files_are_refused_by_name(run, tmp_path):
    run_dir, source, items, log = run
    assert for_stage(run_dir, items, log, None, "eval") == source
    assert (
        for_stage(run_dir, items, None, None, "embed", items_only=True) == source
    )  # interactions come along
    other = tmp_path / "other"
    other.mkdir()
    _, other_items, other_log = write_user_files(other, n_items=10, n_users=5, per_user=4)
    with pytest.raises(DataMismatch, match="items, interactions differ") as e:
        for_stage(run_dir, other_items, other_log, None, "eval")
    assert str(items) in str(e.value) and str(other_items) in str(e.value)
    with pytest.raises(DataMismatch, match="test fraction differ"):
        for_stage(run_dir, items, log, 0.1, "eval")
    movielens = tmp_path / "movielens_run"
    movielens.mkdir()
    (movielens / "config.json").write_text(json.dumps({"data": DataSource(MOVIELENS).record()}))
    with pytest.raises(DataMismatch, match="dataset differ"):
        for_stage(movielens, items, log, None, "eval")


def test_a_changed_file_and_an_unrecorded_run_are_refused(run, tmp_path):
    run_dir, _, items, _ = run
    items.write_bytes(items.read_bytes() + b"\0")
    with pytest.raises(DataMismatch, match="changed since the run was trained on it"):
        for_stage(run_dir, None, None, None, "embed")
    old = tmp_path / "old_run"
    old.mkdir()
    (old / "config.json").write_text(json.dumps({"data": "user"}))
    with pytest.raises(DataMismatch, match="did not record"):
        for_stage(old, None, None, None, "embed")
    (old / "config.json").write_text(json.dumps({"data": MOVIELENS}))
    assert for_stage(old, None, None, None, "embed").name == MOVIELENS
