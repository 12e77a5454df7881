"""The teacher-helps sweep: every row is judged against the base row with the same non-teacher settings."""

import json
import os

import numpy as np
import pytest

from llmrec.training.eaar.runs import EAAR_SWEEP, Setting, baseline_of, run_one, sweep_settings
from tests.conftest import write_user_files


def test_every_sweep_row_has_its_base_row():
    for setting in EAAR_SWEEP:
        base = baseline_of(setting, list(EAAR_SWEEP))
        if setting.strategy == "base":
            continue
        assert base is not None, setting.name
        assert base.overrides == {k: v for k, v in setting.overrides.items() if k != "reg_weight"}
    longer = next(s for s in EAAR_SWEEP if s.name == "eaar w_r=0.3 steps=600")
    assert baseline_of(longer, list(EAAR_SWEEP)).name == "base steps=600"


@pytest.fixture
def tiny_data(tmp_path):
    from llmrec.training.datasets import load_user_files
    from llmrec.training.embed_io import save_vectors
    from llmrec.training.split import SplitConfig, time_split

    items, items_file, log_file = write_user_files(tmp_path, n_items=30, n_users=20, per_user=8)
    data = load_user_files(items_file, log_file)
    rng = np.random.default_rng(1)
    teacher = save_vectors(
        tmp_path / "teacher.npy", items["item_id"].tolist(), rng.normal(size=(30, 6)).astype("float32")
    )
    return data, time_split(data, SplitConfig()), str(teacher)


def test_sweep_table_and_reuse(tmp_path, tiny_bert_dir, tiny_data, capsys):
    data, split, teacher = tiny_data
    enc = {"encoder": str(tiny_bert_dir)}
    settings = [
        Setting("base", "base", None, enc),
        Setting("eaar w_r=0.5", teacher=teacher, overrides={**enc, "reg_weight": 0.5}),
        Setting("base h=2", "base", None, {**enc, "history_len": 2}),
        Setting("eaar w_r=0.5 h=2", teacher=teacher, overrides={**enc, "reg_weight": 0.5, "history_len": 2}),
    ]
    rows = sweep_settings(data, split, settings, 2, "tiny", tmp_path / "runs", tmp_path / "summary.json")
    assert [r["setting"] for r in rows] == [s.name for s in settings]
    assert rows[0]["AUC - base"] == "-" and rows[1]["AUC - base"].startswith(("+", "-"))
    config = json.loads((tmp_path / "runs" / "eaar_w_r=0.5_h=2" / "seed1" / "config.json").read_text())
    assert config["model"]["history_len"] == 2 and config["model"]["reg_weight"] == 0.5
    assert config["train"]["seed"] == 1
    assert json.loads((tmp_path / "summary.json").read_text())["rows"] == rows

    capsys.readouterr()
    again = sweep_settings(data, split, settings, 2, "tiny", tmp_path / "runs", tmp_path / "summary.json")
    assert again == rows and "seed 0 (" not in capsys.readouterr().out  # finished runs are reused

    # New teacher vectors make the teacher rows stale, not the base rows.
    later = (tmp_path / "runs" / "base" / "seed0" / "report.json").stat().st_mtime + 10
    os.utime(teacher, (later, later))
    sweep_settings(data, split, settings[:2], 1, "tiny", tmp_path / "runs", tmp_path / "summary.json")
    out = capsys.readouterr().out
    assert "eaar w_r=0.5 seed 0 (the teacher vectors" in out and "base seed 0 (" not in out

    # A run made with other settings is not reused for this one.
    settings[0] = Setting("base", "base", None, {**enc, "negatives": 2})
    settings[1] = Setting(
        "eaar w_r=0.5", teacher=teacher, overrides={**enc, "reg_weight": 0.5, "negatives": 2}
    )
    sweep_settings(data, split, settings[:2], 1, "tiny", tmp_path / "runs", tmp_path / "summary.json")
    assert "base seed 0 (its settings differ)" in capsys.readouterr().out


def test_sweep_refuses_a_row_without_its_base(tmp_path, tiny_data):
    data, split, teacher = tiny_data
    settings = [Setting("base", "base", None), Setting("eaar h=2", overrides={"history_len": 2})]
    with pytest.raises(ValueError, match=r"\['eaar h=2'\] have no base row"):
        sweep_settings(data, split, settings, 1, "tiny", tmp_path, tmp_path / "s.json")


def test_run_one_refuses_unknown_settings(tmp_path, tiny_data):
    data, split, teacher = tiny_data
    with pytest.raises(ValueError, match="unknown ranker setting 'w_r'"):
        run_one(data, split, "eaar", "tiny", teacher, 0, tmp_path, {"w_r": 0.3})
    with pytest.raises(ValueError, match="pooling must be"):
        run_one(data, split, "eaar", "tiny", teacher, 0, tmp_path, {"pooling": "max"})


def test_sweep_cli_names_unknown_settings_and_keeps_data_apart(tmp_path):
    from typer.testing import CliRunner

    from llmrec.cli import _data_key, app
    from llmrec.training.data_source import DataSource

    result = CliRunner().invoke(app, ["eval", "eaar-sweep", "--only", "eaar w_r=0.3,w_r=9"])
    assert result.exit_code == 2 and "unknown settings ['w_r=9']" in result.output

    items, log = tmp_path / "items.parquet", tmp_path / "log.jsonl"
    items.write_text("x")
    log.write_text("y")
    assert _data_key(DataSource.given(None, None)) == "ml-100k"
    assert _data_key(DataSource.given(None, None, 0.2)) == "ml-100k-test0.2"
    key = _data_key(DataSource.given(items, log))
    assert key.startswith("log-") and key == _data_key(DataSource.given(items, log))
    log.write_text("other data")
    assert _data_key(DataSource.given(items, log)) != key  # other data, another folder: never reused here
