"""Train and evaluate one EaaR-family ranker.

Steps: (1) build impressions from the time split, (2) load the teacher (not for base), (3) build the encoder
and cache its frozen layers over the catalogue, (4) train with AdamW, (5) evaluate on the held-out
impressions, (6) save the heads, config and report.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from llmrec.paths import cache_dir
from llmrec.runs import peak_rss_mib, provenance, write_json
from llmrec.server.contract import item_text
from llmrec.server.rank_head import RankerConfig
from llmrec.training.eaar.impressions import Impressions, build_impressions
from llmrec.training.eaar.model import Ranker, TextEncoder, total_loss
from llmrec.training.eaar.presets import RankerTrainConfig
from llmrec.training.eaar.teachers import load_teacher
from llmrec.training.notellm.trainer import seed_everything
from llmrec.training.ranking_metrics import impression_metrics
from llmrec.training.schema import RecData
from llmrec.training.split import Split

TEST_SEED = 12345  # the held-out impressions (and their negatives) are the same for every model and seed


def train_samples(data: RecData, split: Split, mc: RankerConfig, tc: RankerTrainConfig) -> Impressions:
    log = split.train_interactions
    rng = np.random.default_rng(tc.seed)
    chosen = np.zeros(len(log), dtype=bool)
    chosen[rng.choice(len(log), size=min(tc.max_train_samples, len(log)), replace=False)] = True
    return build_impressions(
        log, data.item_index(), mc.history_len, mc.negatives, seed=tc.seed, targets=pd.Series(chosen)
    )


def test_impressions(data: RecData, split: Split, mc: RankerConfig) -> Impressions:
    """Held-out targets with their history (which may reach into the training period) and K negatives."""
    log = pd.concat([split.train_interactions, split.test_interactions], ignore_index=True)
    is_test = pd.Series(np.arange(len(log)) >= len(split.train_interactions))
    return build_impressions(
        log, data.item_index(), mc.history_len, mc.negatives, seed=TEST_SEED, targets=is_test
    )


def build_ranker(data: RecData, mc: RankerConfig) -> Ranker:
    teacher = load_teacher(mc.teacher, data.items, mc.teacher_dim) if mc.uses_teacher else None
    if teacher is not None:
        mc.teacher_dim = teacher.shape[1]  # the file is the truth when no dimension was configured
    encoder = TextEncoder(mc.encoder, mc.train_layers, mc.max_tokens)
    texts = [item_text(r) for r in data.items.to_dict("records")]
    # Frozen layers compute the same states in every run: computed once, kept under artifacts/cache.
    encoder.build_cache(texts, store=cache_dir() / "encoder_states" / f"{encoder.cache_key(texts)}.pt")
    return Ranker(mc, encoder, teacher)


def train_ranker(ranker: Ranker, samples: Impressions, tc: RankerTrainConfig) -> list[dict]:
    mc = ranker.config
    encoder_params = [p for p in ranker.encoder.parameters() if p.requires_grad]
    enc_ids = {id(p) for p in encoder_params}
    head_params = [p for p in ranker.parameters() if p.requires_grad and id(p) not in enc_ids]
    optimizer = torch.optim.AdamW(
        [{"params": encoder_params, "lr": tc.lr}, {"params": head_params, "lr": tc.head_lr}],
        weight_decay=tc.weight_decay,
    )
    per_epoch = len(samples) // tc.batch_size
    if per_epoch == 0:
        raise ValueError(f"{len(samples)} training samples cannot fill one batch of {tc.batch_size}")
    total = tc.steps if tc.steps is not None else int(tc.epochs * per_epoch)
    rng = np.random.default_rng(tc.seed)
    order = np.concatenate([rng.permutation(len(samples)) for _ in range(total // per_epoch + 1)])
    history: list[dict] = []
    device = ranker.encoder.cache.device
    ranker.train()
    bar = tqdm(range(total), desc=f"{mc.strategy}", unit="step", dynamic_ncols=True)
    for step in bar:
        idx = order[step * tc.batch_size : (step + 1) * tc.batch_size]
        scores, (c, u) = ranker(
            torch.from_numpy(samples.history[idx]).to(device),
            torch.from_numpy(samples.candidates[idx]).to(device),
        )
        loss, parts = total_loss(mc, scores, c, u, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in ranker.parameters() if p.requires_grad], tc.grad_clip)
        optimizer.step()
        history.append({"step": step + 1, "loss": loss.item(), **parts})
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", rss=f"{peak_rss_mib():.0f}M")
    return history


@torch.no_grad()
def evaluate_ranker(
    ranker: Ranker, impressions: Impressions, n_items: int, batch_size: int = 512
) -> dict[str, float]:
    ranker.eval()
    device = ranker.encoder.cache.device
    vectors = torch.cat(
        [
            ranker.item_vectors(torch.arange(s, min(s + batch_size, n_items), device=device))[0]
            for s in range(0, n_items, batch_size)
        ]
    )  # (N, D): every item once
    hist_rows = torch.from_numpy(impressions.history).to(device)
    valid = hist_rows >= 0
    scores = []
    for s in range(0, len(impressions), batch_size):
        rows, mask = hist_rows[s : s + batch_size], valid[s : s + batch_size]
        user = ranker.user_vectors(vectors[rows.clamp(min=0)] * mask.unsqueeze(-1), mask)
        cand = vectors[torch.from_numpy(impressions.candidates[s : s + batch_size]).to(device)]
        scores.append(torch.einsum("bd,bkd->bk", user, cand))
    scores_np = torch.cat(scores).float().cpu().numpy()
    labels = np.zeros_like(scores_np)
    labels[:, 0] = 1
    return impression_metrics(labels, scores_np)


def run(data: RecData, split: Split, mc: RankerConfig, tc: RankerTrainConfig, run_dir: Path) -> dict:
    started = time.time()
    seed_everything(tc.seed)
    samples = train_samples(data, split, mc, tc)
    tests = test_impressions(data, split, mc)
    ranker = build_ranker(data, mc).to("cuda" if torch.cuda.is_available() else "cpu")  # kernels run on CUDA
    history = train_ranker(ranker, samples, tc)
    metrics = evaluate_ranker(ranker, tests, len(data.items))
    run_dir.mkdir(parents=True, exist_ok=True)
    # The trained parameters only; the frozen ones come from the encoder package.
    torch.save(
        {n: p.detach() for n, p in ranker.named_parameters() if p.requires_grad}, run_dir / "ranker.pt"
    )
    report = {
        "strategy": mc.strategy,
        "teacher": mc.teacher if mc.uses_teacher else None,
        "seed": tc.seed,
        "train_samples": len(samples),
        "test_impressions": len(tests),
        "steps": len(history),
        "loss_first": history[0]["loss"],
        "loss_last": history[-1]["loss"],
        **metrics,
        **provenance(started),
    }
    config = {"model": asdict(mc), "train": asdict(tc)}
    write_json(run_dir / "config.json", config | ({"data": data.source} if data.source else {}))
    write_json(run_dir / "history.json", history)
    write_json(run_dir / "report.json", report)
    return report
