import os

import pytest
from typer.testing import CliRunner

from llmrec.cli import app

runner = CliRunner()


def test_data_stats_on_movielens():
    result = runner.invoke(app, ["data", "stats"])
    assert result.exit_code == 0, result.output
    lines = {
        line.split("|")[1].strip(): line.split("|")[2].strip()
        for line in result.output.splitlines()
        if line.startswith("| ")
    }
    assert lines["users"] == "943" and lines["items"] == "1682" and lines["interactions"] == "100000"
    assert int(lines["train_pairs"]) > 0 and int(lines["test_pairs"]) > 0


def test_bad_user_file_is_one_clear_error(tmp_path):
    items = tmp_path / "items.jsonl"
    items.write_text('{"item_id": 1, "title": "a"}\n{"item_id": 1, "title": "b"}\n')
    log = tmp_path / "log.jsonl"
    log.write_text('{"user_id": "u", "item_id": 1, "timestamp": 1}\n')
    result = runner.invoke(app, ["data", "stats", "--items", str(items), "--interactions", str(log)])
    assert result.exit_code == 2
    assert "items.jsonl, row 2: duplicate item_id '1'" in result.output


def test_items_without_interactions_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["data", "stats", "--items", str(tmp_path / "x.jsonl")])
    assert result.exit_code != 0


def test_cpu_lists_for_pinning_the_load_test_are_parsed_and_checked():
    from llmrec.cli import _cpu_set

    mine = sorted(os.sched_getaffinity(0))
    assert _cpu_set(str(mine[0])) == {mine[0]}
    if mine == list(range(mine[0], mine[-1] + 1)):  # a range, where this process may use one
        assert _cpu_set(f"{mine[0]}-{mine[-1]}") == set(mine)
    with pytest.raises(ValueError, match="expected numbers and ranges"):
        _cpu_set("one")
    with pytest.raises(ValueError, match=r"cannot run on CPU\(s\) \[4096\]"):
        _cpu_set("4096")
