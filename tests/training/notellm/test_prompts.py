import random

import pytest

from llmrec.server.prompts import EMB_TOKEN, IGNORE_INDEX, PromptBuilder, PromptConfig, collate
from llmrec.training.notellm.model import NoteLLMConfig, load_causal_lm
from tests.conftest import make_items


@pytest.fixture
def builder(tiny_llama_dir):
    tokenizer, _ = load_causal_lm(NoteLLMConfig(backbone=str(tiny_llama_dir)))
    return PromptBuilder(tokenizer, PromptConfig(tag_fraction=0.4, max_tags=2))


def test_category_prompt_layout(builder):
    item = make_items(1).to_dict("records")[0]
    p = builder.category_prompt(item)
    text = builder.tok.decode(p.input_ids)
    assert text.startswith("<s>Extract the note information in json format")
    assert "{'title': 'Movie 0', 'topic': '1990s', 'content':" in text
    assert f' The compression word is:"{EMB_TOKEN}". The category is: Drama</s>' in text
    assert p.input_ids[p.emb_index] == builder.emb_id and p.input_ids.count(builder.emb_id) == 1
    # The generation loss covers exactly the output and [EOS].
    out = [t for t, lab in zip(p.input_ids, p.labels, strict=True) if lab != IGNORE_INDEX]
    assert builder.tok.decode(out) == " Drama</s>"


def test_tag_prompt_drops_topic_and_samples_own_tags(builder):
    item = make_items(1).to_dict("records")[0]
    p = builder.tag_prompt(item, random.Random(0))
    text = builder.tok.decode(p.input_ids)
    assert "'topic'" not in text
    j = int(text.split("generate ")[1].split(" topics")[0])
    assert f"The {j} topics are:" in text
    output = builder.tok.decode(
        [t for t, lab in zip(p.input_ids, p.labels, strict=True) if lab != IGNORE_INDEX]
    )
    assert set(output.removesuffix("</s>").strip().split(", ")) <= set(item["tags"])


def test_embedding_prompt_ends_at_emb_and_matches_training_prefix(builder):
    item = make_items(1).to_dict("records")[0]
    full, cut = builder.category_prompt(item), builder.embedding_prompt(item)
    assert cut.input_ids == full.input_ids[: full.emb_index + 1] and cut.emb_index == full.emb_index


def test_tag_fraction_is_respected(builder):
    items = make_items(200).to_dict("records")
    rng = random.Random(0)
    tag_share = (
        sum("topics are" in builder.tok.decode(builder.training_prompt(i, rng).input_ids) for i in items)
        / 200
    )
    assert 0.3 < tag_share < 0.5


def test_input_is_truncated(builder, tiny_llama_dir):
    tokenizer, _ = load_causal_lm(NoteLLMConfig(backbone=str(tiny_llama_dir)))
    short = PromptBuilder(tokenizer, PromptConfig(max_input_tokens=3))
    item = make_items(1).to_dict("records")[0]
    assert len(short.embedding_prompt(item).input_ids) < len(builder.embedding_prompt(item).input_ids)


def test_collate_pads_right(builder):
    items = make_items(3).to_dict("records")
    prompts = [builder.category_prompt(items[0]), builder.embedding_prompt(items[1])]
    batch = collate(prompts, pad_id=builder.tok.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["attention_mask"][1].sum() == len(prompts[1].input_ids)
    assert batch["input_ids"][1, batch["emb_index"][1]] == builder.emb_id
