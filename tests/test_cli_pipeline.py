"""The CLI stages end to end on a tiny random-weight LLaMA and the user-file loader."""

import json

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from llmrec.cli import app
from llmrec.training.embed_io import load_vectors
from tests.conftest import write_user_files

runner = CliRunner()


def test_train_eval_embed_on_user_files(tmp_path, tiny_llama_dir):
    items, _, _ = write_user_files(tmp_path, n_items=40, n_users=60, per_user=12)
    data = ["--items", str(tmp_path / "items.parquet"), "--interactions", str(tmp_path / "log.jsonl")]
    run = ["--run-dir", str(tmp_path / "run")]

    result = runner.invoke(
        app, ["train", "notellm", "--preset", "tiny", "--backbone", str(tiny_llama_dir), *run, *data]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["steps"] == 4 and report["peak_rss_mib"] > 0

    result = runner.invoke(app, ["eval", "notellm", "--no-minilm-finetuned", *run, *data])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "eval" / "report.json").read_text())
    rows = report["rows"]
    assert [r["model"].split()[0] for r in rows] == [
        "popularity",
        "all-MiniLM-L6-v2",
        tiny_llama_dir.name,
        "NoteLLM",
    ]
    assert rows[2]["model"] == f"{tiny_llama_dir.name} 2L zero-shot"
    assert rows[3]["model"] == f"NoteLLM ({tiny_llama_dir.name} 2L, trained)"
    assert all(0 <= r["R@10"] <= 100 for r in rows)
    assert report["category_generation"] is True
    assert [r["model"] for r in report["by_exposure"]] == [r["model"] for r in rows]
    sizes = report["bucket_pairs"]
    assert sizes["low"] + sizes["high"] == sizes["all"] == report["test_pairs"]
    assert "by the target's exposure" in result.output

    result = runner.invoke(app, ["eval", "notellm", "--no-minilm-finetuned", "--no-generation", *run, *data])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "eval" / "report.json").read_text())
    assert report["category_generation"] is False
    assert all(r["category acc %"] != r["category acc %"] for r in report["rows"])  # NaN: not generated

    # later stages read the run's data: no data flags (embed reads the items alone)
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["data"]
    assert (
        recorded["items"] == str((tmp_path / "items.parquet").resolve())
        and len(recorded["items_sha256"]) == 64
    )
    out = tmp_path / "vectors.parquet"
    result = runner.invoke(app, ["embed", *run, "--out", str(out)])
    assert result.exit_code == 0, result.output
    ids, vectors = load_vectors(out)
    assert ids == items["item_id"].tolist() and vectors.shape == (40, 32)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    result = runner.invoke(app, ["eval", "notellm", "--no-minilm-finetuned", "--no-generation", *run])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "eval" / "report.json").read_text())["test_pairs"] == sizes["all"]

    # other data than the run's is refused, naming both
    other = tmp_path / "other"
    other.mkdir()
    write_user_files(other, n_items=30, n_users=60, per_user=12)
    for stage in (["embed"], ["eval", "notellm", "--no-minilm-finetuned"]):
        flags = ["--items", str(other / "items.parquet")]
        if stage[0] == "eval":
            flags += ["--interactions", str(other / "log.jsonl")]
        result = runner.invoke(app, [*stage, *run, *flags])
        assert result.exit_code == 2, result.output
        assert (
            str(tmp_path / "items.parquet") in result.output and str(other / "items.parquet") in result.output
        )
    # and so is a file changed since the run read it
    pd.read_parquet(tmp_path / "items.parquet").head(39).to_parquet(tmp_path / "items.parquet")
    result = runner.invoke(app, ["embed", *run])
    assert result.exit_code == 2 and "changed since the run was trained on it" in result.output


def test_eval_without_a_run_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["eval", "notellm", "--run-dir", str(tmp_path / "nothing")])
    assert result.exit_code != 0
    assert "run `llmrec train notellm` first" in str(result.exception) + result.output


def test_vector_file_errors(tmp_path):
    import pytest

    from llmrec.training.embed_io import save_vectors

    path = save_vectors(tmp_path / "v.npy", ["a", "b"], np.eye(2, dtype=np.float32))
    assert load_vectors(path)[0] == ["a", "b"]
    (tmp_path / "v.ids.json").write_text('["a"]')
    with pytest.raises(ValueError, match=r"\(2, 2\) vectors for 1 ids"):
        load_vectors(path)
    pd.DataFrame({"item_id": ["a"], "vec": [[1.0]]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="needs columns item_id and vector"):
        load_vectors(tmp_path / "bad.parquet")


def test_train_eaar_on_user_files_with_a_teacher_file(tmp_path, tiny_bert_dir):
    from llmrec.training.embed_io import save_vectors

    items, _, _ = write_user_files(tmp_path, n_items=30, n_users=20, per_user=8)
    rng = np.random.default_rng(1)
    teacher = save_vectors(
        tmp_path / "teacher.npy", items["item_id"].tolist(), rng.normal(size=(30, 6)).astype("float32")
    )
    data = ["--items", str(tmp_path / "items.parquet"), "--interactions", str(tmp_path / "log.jsonl")]
    args = [
        "train",
        "eaar",
        "--strategy",
        "eaar",
        "--preset",
        "tiny",
        "--encoder",
        str(tiny_bert_dir),
        "--teacher",
        str(teacher),
        "--run-dir",
        str(tmp_path / "run"),
        *data,
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert 0.0 <= report["AUC"] <= 1.0 and report["steps"] == 4

    result = runner.invoke(
        app, [*args[: -len(data) - 2], "--teacher-dim", "7", "--run-dir", str(tmp_path / "r2"), *data]
    )
    assert result.exit_code == 2 and "has 6-d vectors but the ranker expects 7" in result.output


def test_train_eaar_after_an_own_data_notellm_run_needs_no_data_flags(
    tmp_path, tiny_llama_dir, tiny_bert_dir
):
    """The pipeline on the default run folders: NoteLLM on the user's files, then embed and the EaaR run with
    the notellm teacher and no data flags; the EaaR run records the same data; other files are refused."""
    from llmrec.paths import artifacts_dir

    _, items, log = write_user_files(tmp_path, n_items=40, n_users=60, per_user=12)
    data = ["--items", str(items), "--interactions", str(log)]
    result = runner.invoke(
        app, ["train", "notellm", "--preset", "tiny", "--backbone", str(tiny_llama_dir), *data]
    )
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["embed", "--show", "0"]).exit_code == 0
    eaar = ["train", "eaar", "--preset", "tiny", "--encoder", str(tiny_bert_dir), "--teacher", "notellm"]
    result = runner.invoke(app, eaar)
    assert result.exit_code == 0, result.output
    run_dir = artifacts_dir() / "eaar" / "notellm" / "eaar" / "seed0"
    assert f"run in {run_dir}" in result.output
    recorded = json.loads((run_dir / "config.json").read_text())["data"]
    assert recorded == json.loads((artifacts_dir() / "notellm" / "config.json").read_text())["data"]

    other = tmp_path / "other"
    other.mkdir()
    _, other_items, other_log = write_user_files(other, n_items=30, n_users=60, per_user=12)
    result = runner.invoke(app, [*eaar, "--items", str(other_items), "--interactions", str(other_log)])
    assert result.exit_code == 2 and str(other_items) in result.output and str(items) in result.output
