"""The resumable vector job: an interrupted run continues from its last finished batch; another job starts afresh."""

import json

import numpy as np
import pytest

from llmrec.training import vector_job


def rows(start, stop, dim=3):
    return np.arange(start * dim, stop * dim, dtype=np.float32).reshape(stop - start, dim)


def test_an_interrupted_job_resumes_without_redoing_finished_batches(tmp_path):
    ids = [f"i{n}" for n in range(10)]
    calls = []

    def failing(start, stop):
        if start >= 6:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the job
        calls.append((start, stop))
        return rows(start, stop)

    path = tmp_path / "vectors.npy"
    with pytest.raises(KeyboardInterrupt):
        vector_job.run(path, ids, 3, failing, batch=2)
    assert calls == [(0, 2), (2, 4), (4, 6)] and not path.exists()

    calls.clear()

    def counting(start, stop):
        calls.append((start, stop))
        return rows(start, stop)

    out = vector_job.run(path, ids, 3, counting, batch=2)
    assert calls == [(6, 8), (8, 10)], "finished batches were redone"
    np.testing.assert_array_equal(out, rows(0, 10))
    assert json.loads(path.with_suffix(".ids.json").read_text()) == ids
    assert not list(tmp_path.glob("*.partial*")), "the job's partial files are left behind"


def test_a_partial_file_of_another_job_is_not_reused(tmp_path):
    ids = [f"i{n}" for n in range(6)]
    path = tmp_path / "vectors.npy"

    def stop_at_4(start, stop):
        if start >= 4:
            raise KeyboardInterrupt
        return rows(start, stop) + 100  # what another model would give

    with pytest.raises(KeyboardInterrupt):
        vector_job.run(path, ids, 3, stop_at_4, batch=2, key="model A")
    calls = []

    def counting(start, stop):
        calls.append(start)
        return rows(start, stop)

    out = vector_job.run(path, ids, 3, counting, batch=2, key="model B")
    assert calls == [0, 2, 4]
    np.testing.assert_array_equal(out, rows(0, 6))


def test_encode_of_the_wrong_shape_names_the_rows(tmp_path):
    with pytest.raises(ValueError, match=r"encode\(0, 2\) gave shape \(2, 4\), want \(2, 3\)"):
        vector_job.run(tmp_path / "v.npy", ["a", "b"], 3, lambda s, e: np.zeros((e - s, 4)), batch=2)
