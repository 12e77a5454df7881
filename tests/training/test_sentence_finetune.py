import pandas as pd
import torch

from llmrec.training.sentence_finetune import finetune_sentence_model
from tests.conftest import make_items


def test_finetuned_vectors_cover_the_catalogue_and_are_normalised(tiny_bert_dir):
    items = make_items(12)
    pairs = pd.DataFrame({"src": ["0", "2", "4", "6", "8"], "dst": ["1", "3", "5", "7", "9"], "score": 1.0})
    vectors = finetune_sentence_model(
        items, pairs, encoder=str(tiny_bert_dir), train_layers=1, steps=3, batch_pairs=4
    )
    assert vectors.shape == (12, 32)
    assert torch.allclose(vectors.norm(dim=1), torch.ones(12), atol=1e-5)
