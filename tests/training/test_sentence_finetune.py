"""The MiniLM + GCL baseline: as many pairs as the NoteLLM run drew, and a clear error where a batch cannot fill."""

import pandas as pd
import pytest

from llmrec.training.notellm.evaluate import _pairs_seen
from llmrec.training.sentence_finetune import finetune_sentence_model
from llmrec.training.split import Split
from tests.conftest import make_items


def test_pairs_seen_is_steps_times_batch_or_epochs_over_the_pairs():
    empty = pd.DataFrame()
    pairs = pd.DataFrame({"src": ["a"] * 1000, "dst": ["b"] * 1000})
    split = Split(
        cutoff=0.0, train_interactions=empty, test_interactions=empty, train_pairs=pairs, test_pairs=empty
    )
    assert _pairs_seen({"steps": 500, "batch_pairs": 16, "epochs": 1.0}, split) == 8000
    assert _pairs_seen({"steps": None, "batch_pairs": 16, "epochs": 0.5}, split) == 500


def test_too_few_items_for_one_batch_is_an_error_not_a_hang(tiny_bert_dir):
    items = make_items(10)
    pairs = pd.DataFrame({"src": ["0", "2", "4"], "dst": ["1", "3", "5"]})
    with pytest.raises(ValueError, match="3 training pairs cannot fill one batch of 32 pairs"):
        finetune_sentence_model(items, pairs, encoder=str(tiny_bert_dir), train_layers=1, steps=1)
