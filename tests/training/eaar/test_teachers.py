import numpy as np
import pytest

from llmrec.training.eaar.teachers import load_teacher
from llmrec.training.embed_io import save_vectors
from tests.conftest import make_items


def test_teacher_is_aligned_and_normalised(tmp_path):
    items = make_items(4)
    path = save_vectors(
        tmp_path / "t.npy", ["3", "2", "1", "0"], np.arange(12, dtype=np.float32).reshape(4, 3) + 1
    )
    u = load_teacher(str(path), items, expected_dim=3)
    assert np.allclose(u.norm(dim=1).numpy(), 1.0)
    assert np.allclose(u[0].numpy(), np.array([10, 11, 12]) / np.linalg.norm([10, 11, 12]))


def test_missing_item_and_wrong_dim_are_clear_errors(tmp_path):
    items = make_items(4)
    path = save_vectors(tmp_path / "t.npy", ["0", "1", "2"], np.ones((3, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"has no vector for 1 item\(s\), e.g. \['3'\]"):
        load_teacher(str(path), items)
    full = save_vectors(tmp_path / "f.npy", ["0", "1", "2", "3"], np.ones((4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="has 3-d vectors but the ranker expects 128"):
        load_teacher(str(full), items, expected_dim=128)
