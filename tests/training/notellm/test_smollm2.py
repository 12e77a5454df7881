"""The real default backbone, from its wheel (de-quantised once into the shared cache)."""

import pytest
import torch

from llmrec.server.prompts import EMB_TOKEN, collate
from llmrec.training.notellm.model import NoteLLM, NoteLLMConfig
from tests.conftest import make_items


@pytest.mark.slow
def test_smollm2_loads_from_its_wheel_with_emb_token(monkeypatch):
    monkeypatch.delenv("LLMREC_ARTIFACTS")  # share the de-quantised cache with `make demo`
    model = NoteLLM(NoteLLMConfig(keep_layers=2, train_layers=1))
    assert model.lm.config.model_type == "llama" and model.lm.config.hidden_size == 576
    assert model.tokenizer.convert_tokens_to_ids(EMB_TOKEN) == len(model.tokenizer) - 1
    item = make_items(1).to_dict("records")[0]
    batch = collate([model.prompts.category_prompt(item)], model.tokenizer.pad_token_id)
    v = model.encode(batch)
    assert v.shape == (1, 128) and torch.isfinite(v).all()
