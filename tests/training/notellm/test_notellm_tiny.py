"""A tiny random-weight LLaMA end to end: train, checkpoint, resume, save, load, embed."""

import random

import pandas as pd
import torch

from llmrec.training.encoders import encode_notellm
from llmrec.training.notellm.model import NoteLLM, NoteLLMConfig
from llmrec.training.notellm.presets import TrainConfig
from llmrec.training.notellm.trainer import NoteLLMTrainer, batches_without_repeats
from tests.conftest import make_items


def pairs_for(items, n=24):
    rng = random.Random(0)
    ids = items["item_id"].tolist()
    rows = set()
    while len(rows) < n:
        a, b = rng.sample(ids, 2)
        rows.add((a, b))
    return pd.DataFrame(sorted(rows), columns=["src", "dst"]).assign(score=1.0)


def config(tiny_llama_dir, **kw):
    return NoteLLMConfig(backbone=str(tiny_llama_dir), emb_dim=16, **kw)


def test_batches_never_repeat_a_note():
    pairs = [(str(a), str(b)) for a in range(10) for b in range(10) if a != b]
    for batch in batches_without_repeats(pairs, 4, random.Random(0)):
        notes = [n for p in batch for n in p]
        assert len(notes) == len(set(notes)) == 8


def test_loss_goes_down_on_a_fixed_batch(tiny_llama_dir, tmp_path):
    items = make_items(16)
    pairs = pd.DataFrame({"src": ["0", "2", "4", "6"], "dst": ["1", "3", "5", "7"], "score": 1.0})
    tc = TrainConfig(steps=30, batch_pairs=4, lr=3e-3, head_lr=3e-2, warmup_steps=1, checkpoint_every=100)
    trainer = NoteLLMTrainer(config(tiny_llama_dir, alpha=1.0), tc, tmp_path)
    history = trainer.train(pairs, items)
    assert history[-1].loss < 0.5 * history[0].loss, [h.loss for h in history]


def test_frozen_layers_do_not_move(tiny_llama_dir, tmp_path):
    items = make_items(16)
    trainer = NoteLLMTrainer(
        config(tiny_llama_dir, train_layers=1), TrainConfig(steps=2, batch_pairs=4), tmp_path
    )
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train(pairs_for(items), items)
    after = trainer.model.state_dict()
    assert torch.equal(
        before["lm.model.layers.0.self_attn.q_proj.weight"],
        after["lm.model.layers.0.self_attn.q_proj.weight"],
    )
    assert torch.equal(before["lm.model.embed_tokens.weight"], after["lm.model.embed_tokens.weight"])
    assert not torch.equal(
        before["lm.model.layers.1.mlp.up_proj.weight"], after["lm.model.layers.1.mlp.up_proj.weight"]
    )
    assert not torch.equal(before["project.weight"], after["project.weight"])


def assert_resume_matches(model_config, tc, pairs, items, tmp_path) -> NoteLLMTrainer:
    """Train straight through, and again interrupted at step 2 then resumed: the weights must agree."""
    straight = NoteLLMTrainer(model_config, tc, tmp_path / "a")
    straight.train(pairs, items)

    interrupted = NoteLLMTrainer(model_config, tc, tmp_path / "b")
    interrupted.train(pairs, items, stop_at=2)
    resumed = NoteLLMTrainer(model_config, tc, tmp_path / "b")
    assert resumed.resume() and resumed.step == 2
    resumed.train(pairs, items)
    for (name, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-6), name
    return straight


def test_resume_matches_an_uninterrupted_run(tiny_llama_dir, tmp_path):
    items = make_items(16)
    tc = TrainConfig(steps=4, batch_pairs=4, checkpoint_every=2, seed=3)
    assert_resume_matches(config(tiny_llama_dir), tc, pairs_for(items), items, tmp_path)


def test_save_load_embed_round_trip(tiny_llama_dir, tmp_path):
    items = make_items(10)
    trainer = NoteLLMTrainer(
        config(tiny_llama_dir, vector_position="before_emb"), TrainConfig(steps=1, batch_pairs=4), tmp_path
    )
    trainer.train(pairs_for(items), items)
    folder = trainer.save()
    loaded = NoteLLM.load(folder)
    assert loaded.config.vector_position == "before_emb"
    v1 = encode_notellm(trainer.model, items)
    v2 = encode_notellm(loaded, items)
    assert v1.shape == (10, 16)
    assert torch.allclose(v1, v2, atol=1e-5)
    assert torch.allclose(v1.norm(dim=1), torch.ones(10), atol=1e-5)


def test_padding_does_not_change_a_vector(tiny_llama_dir):
    model = NoteLLM(config(tiny_llama_dir))
    items = make_items(6)
    alone = torch.cat([encode_notellm(model, items.iloc[[i]]) for i in range(6)])
    batched = encode_notellm(model, items, batch_size=6)
    assert torch.allclose(alone, batched, atol=1e-5)


def test_pca_projection_is_orthonormal_and_blind_to_the_mean(tiny_llama_dir):
    model = NoteLLM(config(tiny_llama_dir))
    torch.manual_seed(0)
    common = torch.randn(64) * 10
    states = common + torch.randn(40, 64)  # nearly parallel states, like an LLM's at one prompt position
    model.init_projection_pca(states)
    w = model.project.weight.double()
    assert torch.allclose(w @ w.T, torch.eye(16, dtype=torch.float64), atol=1e-5)
    assert (w @ (states.double().mean(0))).abs().max() < 1e-3
    v = torch.nn.functional.normalize(model.project(states), dim=1)
    assert (v @ v.T).mean() < 0.2  # spread out, unlike the raw states


def test_under_bf16_autocast_the_head_and_losses_stay_fp32(tiny_llama_dir):
    """bf16 cosines times the GCL scale (about 20) carry noise the size of the positive margin: the head and the
    losses must run in fp32 while the decoder layers run in bf16."""
    from llmrec.server.prompts import collate

    model = NoteLLM(config(tiny_llama_dir))
    rng = random.Random(0)
    prompts = [model.prompts.training_prompt(item, rng) for item in make_items(8).to_dict("records")]
    batch = collate(prompts, model.tokenizer.pad_token_id)
    seen = {}
    model.project.register_forward_hook(lambda m, i, o: seen.update(head=o.dtype))
    model.lm.model.layers[0].mlp.register_forward_hook(lambda m, i, o: seen.update(layer=o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        l_cl, l_gen = model.losses(batch)
    assert seen == {"layer": torch.bfloat16, "head": torch.float32}
    assert l_cl.dtype == l_gen.dtype == torch.float32


def test_bf16_defaults_to_what_the_hardware_multiplies_natively(tiny_llama_dir, tmp_path):
    from llmrec.training.notellm.trainer import native_bf16

    auto = NoteLLMTrainer(config(tiny_llama_dir), TrainConfig(steps=1, batch_pairs=2), tmp_path / "a")
    assert auto.bf16 == native_bf16(torch.device("cpu"))
    off = NoteLLMTrainer(
        config(tiny_llama_dir), TrainConfig(steps=1, batch_pairs=2, bf16=False), tmp_path / "b"
    )
    assert off.bf16 is False


def test_emb_row_init_mean_is_the_mean_pretrained_row_for_every_seed(tiny_llama_dir):
    rows = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = NoteLLM(config(tiny_llama_dir, emb_row_init="mean"))
        table = model.lm.get_input_embeddings().weight
        emb = model.prompts.emb_id
        assert emb == len(table) - 1
        assert torch.allclose(table[emb], table[:emb].mean(0))
        rows.append(table[emb].clone())
    assert torch.equal(rows[0], rows[1])
    torch.manual_seed(0)
    a = NoteLLM(config(tiny_llama_dir)).lm.get_input_embeddings().weight[-1].clone()
    torch.manual_seed(1)
    b = NoteLLM(config(tiny_llama_dir)).lm.get_input_embeddings().weight[-1]
    assert not torch.equal(a, b)  # "sampled" (the default) draws a different row per seed


def test_batch_center_makes_a_common_shift_free_and_inference_uses_the_fitted_center(tiny_llama_dir):
    """With batch_center the training loss cannot fall by moving every note together (the collapse that
    stalled a seed at log(2B - 1)); outside the loss the note vector keeps the fitted center."""
    torch.manual_seed(0)
    model = NoteLLM(config(tiny_llama_dir, batch_center=True))
    states = torch.randn(8, 1, model.lm.config.hidden_size)
    at = torch.zeros(8, dtype=torch.long)
    shift = torch.randn(model.lm.config.hidden_size) * 5.0

    def loss(hidden, batch_center):
        return model.gcl(model.note_vectors(hidden, at, batch_center=batch_center))

    assert torch.allclose(loss(states, True), loss(states + shift, True), atol=1e-5)
    assert not torch.allclose(loss(states, False), loss(states + shift, False), atol=1e-3)
    model.center.copy_(torch.randn(16))
    expected = torch.nn.functional.normalize(model.project(states[:, 0]) - model.center, dim=-1)
    assert torch.allclose(model.note_vectors(states, at), expected, atol=1e-6)


def test_the_temperature_can_have_its_own_learning_rate(tiny_llama_dir, tmp_path):
    tc = TrainConfig(steps=1, batch_pairs=4, head_lr=1e-3, tau_lr=0.05)
    trainer = NoteLLMTrainer(config(tiny_llama_dir), tc, tmp_path)
    rates = {id(p): g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
    assert rates[id(trainer.model.gcl.tau)] == 0.05
    assert rates[id(trainer.model.project.weight)] == 1e-3
