"""The "SentenceBERT fine-tuned on the same pairs" baseline for NoteLLM's table.

all-MiniLM-L6-v2, mean-pooled, trained with NoteLLM's own GCL loss (in-batch InfoNCE, learnable temperature)
on the same co-occurrence pairs, the top layers only (the frozen ones are cached, as for the EaaR family).
"""

from __future__ import annotations

import random

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from llmrec.paths import cache_dir
from llmrec.server.contract import item_text
from llmrec.training.backbones import MINILM
from llmrec.training.eaar.model import TextEncoder
from llmrec.training.notellm.losses import GenerativeContrastiveLoss
from llmrec.training.notellm.trainer import batches_without_repeats, seed_everything


def _mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(states.dtype)
    return F.normalize((states * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)


MINILM_BATCH_PAIRS = 32


def finetune_sentence_model(
    items: pd.DataFrame,
    pairs: pd.DataFrame,
    encoder: str = MINILM,
    train_layers: int = 2,
    steps: int = 200,
    batch_pairs: int = MINILM_BATCH_PAIRS,
    lr: float = 5e-5,
    seed: int = 0,
    max_tokens: int = 64,
) -> torch.Tensor:
    """Train on `pairs` and return L2-normalised vectors (N, H) for every item, in catalogue order."""
    seed_everything(seed)
    enc = TextEncoder(encoder, train_layers, max_tokens)
    texts = [item_text(r) for r in items.to_dict("records")]
    enc.build_cache(texts, store=cache_dir() / "encoder_states" / f"{enc.cache_key(texts)}.pt")
    row = {item_id: i for i, item_id in enumerate(items["item_id"])}
    gcl = GenerativeContrastiveLoss()
    params = [p for p in enc.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": params, "lr": lr}, {"params": gcl.parameters(), "lr": 1e-3, "weight_decay": 0.0}]
    )
    rng = random.Random(seed)
    pair_list = list(zip(pairs["src"], pairs["dst"], strict=True))
    order: list = []
    while len(order) < steps:
        epoch = batches_without_repeats(pair_list, batch_pairs, rng)
        if not epoch:
            raise ValueError(f"{len(pair_list)} training pairs cannot fill one batch of {batch_pairs} pairs")
        order += epoch
    enc.train()
    for batch in tqdm(order[:steps], desc="minilm gcl", unit="step", dynamic_ncols=True):
        rows = torch.tensor([row[a] for a, _ in batch] + [row[b] for _, b in batch])
        loss = gcl(_mean_pool(*enc(rows)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    enc.eval()
    with torch.no_grad():
        return torch.cat(
            [_mean_pool(*enc(torch.arange(s, min(s + 256, len(items))))) for s in range(0, len(items), 256)]
        )
