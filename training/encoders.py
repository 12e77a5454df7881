"""Item encoders that turn a catalogue into L2-normalised vectors (N, d), in catalogue order.

NoteLLM (trained), its backbone zero-shot (same prompt, raw hidden state, no projection), and
all-MiniLM-L6-v2 zero-shot (mean pooling, the sentence-transformers recipe): the i2i baselines.
"""

from __future__ import annotations

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from llmrec.server.contract import item_text
from llmrec.server.prompts import collate
from llmrec.training.backbones import MINILM, resolve_encoder
from llmrec.training.notellm.model import NoteLLM


def _batches(items: pd.DataFrame, batch_size: int, desc: str, progress: bool = True):
    records = items.to_dict("records")
    starts = range(0, len(records), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", dynamic_ncols=True) if progress else starts:
        yield records[start : start + batch_size]


@torch.no_grad()
def encode_notellm(
    model: NoteLLM,
    items: pd.DataFrame,
    batch_size: int = 64,
    project: bool = True,
    normalize: bool = True,
    progress: bool = True,
) -> torch.Tensor:
    """Note vectors from the category prompt cut after [EMB].

    project=False gives the hidden states themselves (the zero-shot form), L2-normalised unless
    normalize=False. progress=False: no progress bar (a caller that shows its own).
    """
    model.eval()
    device = next(model.parameters()).device
    out = []
    for chunk in _batches(items, batch_size, "embed notellm" if project else "embed zero-shot", progress):
        batch = collate([model.prompts.embedding_prompt(r) for r in chunk], model.tokenizer.pad_token_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        hidden = model.hidden_states(batch["input_ids"], batch["attention_mask"])
        if project:
            out.append(model.note_vectors(hidden, batch["emb_index"]).float().cpu())
        else:
            states = model.vector_states(hidden, batch["emb_index"]).float()
            out.append((F.normalize(states, dim=-1) if normalize else states).cpu())
    return torch.cat(out)


@torch.no_grad()
def encode_sentence_model(
    items: pd.DataFrame, encoder: str = MINILM, batch_size: int = 128, max_length: int = 128
) -> torch.Tensor:
    """Mean-pooled, L2-normalised token states of a BERT-class sentence encoder."""
    from transformers import AutoModel, AutoTokenizer

    folder = resolve_encoder(encoder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    out = []
    for chunk in _batches(items, batch_size, "embed minilm"):
        enc = tokenizer(
            [item_text(r) for r in chunk],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        states = model(**enc).last_hidden_state  # (B, T, H)
        mask = enc["attention_mask"].unsqueeze(-1).float()
        out.append(F.normalize((states * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1))
    return torch.cat(out)


@torch.no_grad()
def generate_categories(
    model: NoteLLM, items: pd.DataFrame, batch_size: int = 64, max_new_tokens: int = 8
) -> list[str]:
    """Greedy generation after "The category is:"; returns the first generated phrase per item."""
    model.eval()
    tok = model.tokenizer
    device = next(model.parameters()).device
    preds: list[str] = []
    for chunk in _batches(items, batch_size, "generate category"):
        prompts = [model.prompts.generation_prompt(r) for r in chunk]
        width = max(map(len, prompts))
        ids = torch.full((len(prompts), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(prompts):  # left padding, so every row continues from its last token
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        out = model.lm.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        for text in tok.batch_decode(out[:, width:], skip_special_tokens=True):
            preds.append(text.strip().split(",")[0].split("\n")[0].strip())
    return preds
