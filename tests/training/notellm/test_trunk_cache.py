"""Trunk caching gives the losses and gradients of the full forward pass, and trains and resumes the same way."""

import json
import random

import pytest
import torch

from llmrec.server.prompts import collate
from llmrec.training.notellm.model import NoteLLM, NoteLLMConfig
from llmrec.training.notellm.presets import TrainConfig
from llmrec.training.notellm.trainer import NoteLLMTrainer
from llmrec.training.notellm.trunk_cache import TrunkCache
from tests.conftest import make_items
from tests.training.notellm.test_notellm_tiny import assert_resume_matches, pairs_for


def _layers(folder) -> list[str]:
    """Each decoder layer's attention kind (plain LLaMA: all full)."""
    config = json.loads((folder / "config.json").read_text())
    return config.get("layer_types") or ["full_attention"] * config["num_hidden_layers"]


def _grads(model: NoteLLM, l_cl: torch.Tensor, l_gen: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    (l_cl + l_gen).backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("backbone", ["tiny_llama_dir", "tiny_gemma_dir"])
def test_cached_and_uncached_losses_and_gradients_agree(backbone, request):
    """Gemma 3 mixes sliding and full attention with two rotary bases: the trained top (layers 1-2) must run
    each layer as its own kind, not as the kind of its index in the cut list."""
    torch.manual_seed(0)
    folder = request.getfixturevalue(backbone)
    model = NoteLLM(NoteLLMConfig(backbone=str(folder), emb_dim=16, train_layers=len(_layers(folder)) - 1))
    assert model.n_frozen == 1
    items = make_items(12).to_dict("records")
    cache = TrunkCache(model, items, tag_variants=2, seed=0, dtype=torch.float32, batch_size=5)
    rng = random.Random(1)
    keys = [cache.choose(item["item_id"], rng, tag_fraction=0.5) for item in items[:8]]
    assert {v for _, v in keys} >= {0, 1} or {v for _, v in keys} >= {0, 2}  # both tasks present
    model.train()

    cached = model.losses(cache.batch(keys, torch.device("cpu")))
    grads_cached = _grads(model, *cached)
    full = model.losses(collate([cache.prompt(k) for k in keys], model.tokenizer.pad_token_id))
    grads_full = _grads(model, *full)

    for a, b in zip(cached, full, strict=True):
        assert torch.allclose(a, b, atol=1e-5), (a.item(), b.item())
    assert grads_cached.keys() == grads_full.keys()
    assert any(k.startswith("lm.model.layers.1.") for k in grads_cached)  # the trained top is in the check
    if backbone == "tiny_gemma_dir":
        assert model.lm.config.layer_types == _layers(folder)  # restored after each partial run
    for name, g in grads_cached.items():
        assert torch.allclose(g, grads_full[name], atol=1e-5, rtol=1e-4), name


def test_cached_states_are_the_frozen_layers_output(tiny_llama_dir):
    model = NoteLLM(NoteLLMConfig(backbone=str(tiny_llama_dir), emb_dim=16, train_layers=1))
    item = make_items(3).to_dict("records")[2]
    cache = TrunkCache(model, [item], tag_variants=1, dtype=torch.float32)
    prompt = cache.prompt(("2", 0))
    ids = torch.tensor([prompt.input_ids])
    with torch.no_grad():
        hidden = model.lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    assert torch.allclose(cache.states[("2", 0)], hidden[1][0], atol=1e-5)  # after layer 0 of 2


def test_the_trainer_caches_when_layers_are_frozen_and_resumes_identically(tiny_llama_dir, tmp_path):
    items = make_items(16)
    pairs = pairs_for(items)
    config = NoteLLMConfig(backbone=str(tiny_llama_dir), emb_dim=16, train_layers=1, projection_init="random")
    tc = TrainConfig(steps=4, batch_pairs=4, checkpoint_every=2, seed=3, cache_dtype="float32")
    straight = assert_resume_matches(config, tc, pairs, items, tmp_path)
    assert straight.cache is not None
    assert len(straight.cache.prompts) == len(set(pairs["src"]) | set(pairs["dst"]))


def test_center_is_the_mean_training_vector_and_survives_save_and_load(tiny_llama_dir, tmp_path):
    items = make_items(16)
    pairs = pairs_for(items)
    config = NoteLLMConfig(backbone=str(tiny_llama_dir), emb_dim=16, train_layers=1, projection_init="random")
    trainer = NoteLLMTrainer(config, TrainConfig(steps=2, batch_pairs=4, cache_dtype="float32"), tmp_path)
    trainer.train(pairs, items)
    model = trainer.model
    in_pairs = items[items["item_id"].isin(set(pairs["src"]) | set(pairs["dst"]))]
    with torch.no_grad():
        states = trainer._emb_states(in_pairs)
        centred = model.project(states) - model.center
    assert model.center.abs().sum() > 0
    assert torch.allclose(centred.mean(0), torch.zeros(16), atol=1e-5)

    loaded = NoteLLM.load(trainer.save())
    assert torch.equal(loaded.center, model.center)
    from llmrec.training.encoders import encode_notellm

    assert torch.allclose(encode_notellm(loaded, items), encode_notellm(model, items), atol=1e-5)
