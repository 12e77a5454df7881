"""`llmrec eval notellm`: NoteLLM against its baselines on the same time split."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import typer

from llmrec.runs import provenance, table, write_json
from llmrec.training.backbones import backbone_name
from llmrec.training.embed_io import load_vectors
from llmrec.training.encoders import encode_notellm, encode_sentence_model, generate_categories
from llmrec.training.i2i_eval import (
    DEFAULT_KS,
    category_accuracy,
    exposure_buckets,
    pair_ranks,
    popularity_ranks,
    recall_from_ranks,
)
from llmrec.training.notellm.model import NoteLLM, NoteLLMConfig
from llmrec.training.notellm.trainer import seed_everything
from llmrec.training.schema import RecData
from llmrec.training.split import Split

BUCKET_KS = (10, 100)  # the by-exposure table's cut-offs


def evaluate_notellm(
    run_dir: Path,
    data: RecData,
    split: Split,
    full_backbone: bool = False,
    minilm_finetuned: bool = True,
    generation: bool = True,
) -> dict:
    """Recall@k overall and by exposure bucket for NoteLLM and its baselines; category accuracy unless
    `generation` is off (greedy generation is the slow part when only recall is wanted)."""
    started = time.time()
    seed_everything(0)  # the zero-shot rows' [EMB] embedding is drawn at random when the vocabulary grows
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{run_dir} holds no training run (config.json); run `llmrec train notellm` first"
        )
    run_config = json.loads(config_path.read_text())
    trained_config = NoteLLMConfig.from_dict(run_config["model"])
    ids = data.items["item_id"].tolist()
    held_out = split.held_out_items(data.items)
    truth = held_out["category"].tolist()
    ks = [k for k in DEFAULT_KS if k < len(ids)]
    buckets = exposure_buckets(split.train_interactions, split.train_pairs, split.test_pairs)
    rows: list[dict] = []
    bucket_rows: list[dict] = []

    def add_ranks(name: str, dim: int, rank: torch.Tensor, cat_acc: float | None = None) -> None:
        rows.append(
            {
                "model": name,
                "dim": dim,
                **recall_from_ranks(rank, ks),
                "category acc %": cat_acc if cat_acc is not None else float("nan"),
            }
        )
        by_bucket = {"model": name}
        for k in BUCKET_KS:
            for bucket, where in buckets.items():
                by_bucket[f"R@{k} {bucket}"] = recall_from_ranks(rank, [k], where)[f"R@{k}"]
        bucket_rows.append(by_bucket)
        typer.echo(
            f"  {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in rows[-1].items() if k.startswith("R@"))
        )

    def add(name: str, vectors: torch.Tensor, cat_acc: float | None = None) -> None:
        add_ranks(name, vectors.shape[1], pair_ranks(vectors, ids, split.test_pairs, max(ks)), cat_acc)

    def categories(model: NoteLLM) -> float | None:
        return category_accuracy(generate_categories(model, held_out), truth) if generation else None

    # 0. Context, not a text model: one popularity list for every query.
    add_ranks(
        "popularity (train period)", 0, popularity_ranks(split.train_interactions, ids, split.test_pairs)
    )
    # 1. The SentenceBERT analogue.
    add("all-MiniLM-L6-v2 zero-shot", encode_sentence_model(data.items))
    if minilm_finetuned:  # 1b. ... fine-tuned with GCL on the same training pairs, as many as NoteLLM saw
        from llmrec.training.sentence_finetune import MINILM_BATCH_PAIRS, finetune_sentence_model

        steps = math.ceil(_pairs_seen(run_config["train"], split) / MINILM_BATCH_PAIRS)
        add(
            f"all-MiniLM-L6-v2 + GCL on the same pairs ({steps} x {MINILM_BATCH_PAIRS})",
            finetune_sentence_model(data.items, split.train_pairs, steps=steps),
        )
    # 2. The backbone as NoteLLM trains it (same layers kept), untrained, raw hidden state.
    zero = NoteLLM(trained_config)
    layers = len(zero.lm.model.layers)
    backbone = backbone_name(trained_config.backbone)
    add(f"{backbone} {layers}L zero-shot", encode_notellm(zero, data.items, project=False), categories(zero))
    del zero
    # 3. Optionally the whole backbone, untruncated.
    if full_backbone and trained_config.keep_layers is not None:
        full = NoteLLM(
            NoteLLMConfig.from_dict({**run_config["model"], "keep_layers": None, "train_layers": None})
        )
        add(
            f"{backbone} {len(full.lm.model.layers)}L zero-shot",
            encode_notellm(full, data.items, project=False),
        )
        del full
    # 4. The trained model.
    model = NoteLLM.load(run_dir / "model")
    add(
        f"NoteLLM ({backbone} {layers}L, trained)",
        _saved_or_encoded(model, run_dir, data.items),
        categories(model),
    )

    majority = (
        held_out["category"].value_counts(normalize=True).max() * 100 if len(held_out) else float("nan")
    )
    report = {
        "rows": rows,
        "by_exposure": bucket_rows,
        "bucket_pairs": {bucket: int(where.sum()) for bucket, where in buckets.items()},
        "test_pairs": len(split.test_pairs),
        "items": len(ids),
        "held_out_items": len(held_out),
        "category_generation": generation,
        "majority_category_acc": majority,
        **provenance(started),
    }
    write_json(run_dir / "eval" / "report.json", report)
    typer.echo(
        f"\ni2i recall (%) over {len(split.test_pairs)} held-out pairs, {len(ids)} items; "
        f"category accuracy over {len(held_out)} items absent from training pairs "
        f"(majority class: {majority:.1f}%)"
    )
    typer.echo(table(rows))
    sizes = ", ".join(f"{b} {n}" for b, n in report["bucket_pairs"].items())
    typer.echo(
        f"\nby the target's exposure (training-period interactions, split at the median; cold: in no training "
        f"pair); pairs: {sizes}"
    )
    typer.echo(table(bucket_rows))
    typer.echo(f"report: {run_dir / 'eval' / 'report.json'}")
    return report


def _pairs_seen(train: dict, split: Split) -> int:
    """How many training pairs the NoteLLM run drew: steps x pairs per batch (or its epochs over the pairs)."""
    if train.get("steps") is not None:
        return int(train["steps"]) * int(train["batch_pairs"])
    return math.ceil(float(train["epochs"]) * len(split.train_pairs))


def _saved_or_encoded(model: NoteLLM, run_dir: Path, items) -> torch.Tensor:
    """The vectors `llmrec embed` wrote for this model and catalogue, else encode them now."""
    path = run_dir / "item_vectors.npy"
    head = run_dir / "model" / "head.pt"
    if path.is_file() and path.stat().st_mtime > head.stat().st_mtime:
        ids, vectors = load_vectors(path)
        if ids == items["item_id"].tolist():
            typer.echo(f"  using the item vectors in {path}")
            return torch.from_numpy(vectors)
    return encode_notellm(model, items)
