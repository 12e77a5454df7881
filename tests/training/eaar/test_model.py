import pytest
import torch

from llmrec.server.rank_head import RankerConfig
from llmrec.training.eaar.model import Ranker, TextEncoder, copy_loss, regularizer, total_loss

TEXTS = [
    "Toy Story | 1990s | Animation",
    "GoldenEye | 1990s | Action, Thriller",
    "Casablanca | 1940s | Drama",
    "Alien | 1970s | Horror, Sci-Fi",
    "Heat | 1990s | Crime",
    "Fargo | 1990s | Crime, Drama",
]


def make(tiny_bert_dir, strategy, train_layers=1, pooling="additive"):
    config = RankerConfig(
        strategy=strategy,
        encoder=str(tiny_bert_dir),
        train_layers=train_layers,
        max_tokens=12,
        history_len=3,
        negatives=2,
        pooling=pooling,
        att_dim=8,
        teacher_dim=5,
        pretrain_steps=2,
    )
    encoder = TextEncoder(config.encoder, config.train_layers, config.max_tokens)
    encoder.build_cache(TEXTS)
    teacher = torch.nn.functional.normalize(
        torch.randn(len(TEXTS), 5, generator=torch.Generator().manual_seed(0)), dim=1
    )
    torch.manual_seed(0)
    return Ranker(config, encoder, None if strategy == "base" else teacher)


HISTORY = torch.tensor([[0, 1, -1], [2, 3, 4]])
CANDIDATES = torch.tensor([[2, 3, 5], [5, 0, 1]])


def test_cached_lower_layers_equal_the_full_encoder(tiny_bert_dir):
    encoder = TextEncoder(str(tiny_bert_dir), train_layers=1, max_tokens=12)
    encoder.build_cache(TEXTS)
    cached, mask = encoder(torch.arange(len(TEXTS)))
    full, full_mask = encoder.encode_texts(TEXTS)
    assert torch.equal(mask, full_mask)
    assert torch.allclose(cached, full, atol=1e-5)


@pytest.mark.parametrize("strategy,dim", [("base", 32), ("eaaf", 37), ("eaar", 37), ("eaap", 37)])
@pytest.mark.parametrize("pooling", ["additive", "dot"])
def test_each_strategy_scores_and_has_a_finite_loss(tiny_bert_dir, strategy, dim, pooling):
    ranker = make(tiny_bert_dir, strategy, pooling=pooling)
    scores, (c, u) = ranker(HISTORY, CANDIDATES)
    assert scores.shape == (2, 3) and ranker.item_dim == dim
    loss, parts = total_loss(ranker.config, scores, c, u, step=5)
    assert torch.isfinite(loss)
    loss.backward()
    assert ranker.user_query.grad is not None


def test_eaar_loss_is_ce_plus_weighted_regularizer(tiny_bert_dir):
    ranker = make(tiny_bert_dir, "eaar")
    scores, (c, u) = ranker(HISTORY, CANDIDATES)
    loss, parts = total_loss(ranker.config, scores, c, u, step=0)
    assert loss.item() == pytest.approx(parts["ce"] + ranker.config.reg_weight * parts["reg"], rel=1e-5)
    assert parts["reg"] == pytest.approx(regularizer(c, u).item())


def test_regularizer_gradient_reaches_the_encoder(tiny_bert_dir):
    ranker = make(tiny_bert_dir, "eaar")
    _, (c, u) = ranker(HISTORY, CANDIDATES)
    regularizer(c, u).backward()
    top = ranker.encoder.bert.encoder.layer[1].output.dense.weight
    assert top.grad is not None and top.grad.abs().sum() > 0
    assert ranker.encoder.bert.encoder.layer[0].output.dense.weight.grad is None  # frozen, cached


def test_eaap_switches_from_copy_to_ce(tiny_bert_dir):
    ranker = make(tiny_bert_dir, "eaap")
    scores, (c, u) = ranker(HISTORY, CANDIDATES)
    loss, parts = total_loss(ranker.config, scores, c, u, step=1)  # pretrain_steps = 2
    assert set(parts) == {"copy"} and loss.item() == pytest.approx(copy_loss(c, u).item())
    loss.backward()
    assert ranker.user_query.grad is None  # the copy phase does not touch the ranking head
    _, parts = total_loss(ranker.config, scores, c, u, step=2)
    assert set(parts) == {"ce"}


def test_strategy_needs_teacher(tiny_bert_dir):
    encoder = TextEncoder(str(tiny_bert_dir), 1, 12)
    with pytest.raises(ValueError, match="needs teacher vectors"):
        Ranker(RankerConfig(strategy="eaaf", encoder=str(tiny_bert_dir), teacher_dim=4), encoder, None)
    with pytest.raises(ValueError, match="strategy must be one of"):
        RankerConfig(strategy="eaax")
