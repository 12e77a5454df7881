"""`llmrec eval notellm`: NoteLLM against its baselines on the same time split."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import typer

from llmrec.runs import provenance, table, write_json
from llmrec.training.embed_io import load_vectors
from llmrec.training.encoders import encode_notellm, encode_sentence_model, generate_categories
from llmrec.training.i2i_eval import category_accuracy, popularity_recall, recall_at_k
from llmrec.training.notellm.model import NoteLLM, NoteLLMConfig
from llmrec.training.notellm.trainer import seed_everything
from llmrec.training.schema import RecData
from llmrec.training.split import Split


def evaluate_notellm(
    run_dir: Path, data: RecData, split: Split, full_backbone: bool = False, minilm_finetuned: bool = False
) -> dict:
    started = time.time()
    seed_everything(0)  # the zero-shot rows' [EMB] embedding is drawn at random when the vocabulary grows
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{run_dir} holds no training run (config.json); run `llmrec train notellm` first"
        )
    trained_config = NoteLLMConfig.from_dict(json.loads(config_path.read_text())["model"])
    ids = data.items["item_id"].tolist()
    held_out = split.held_out_items(data.items)
    truth = held_out["category"].tolist()
    rows: list[dict] = []

    def add(name: str, vectors: torch.Tensor, cat_acc: float | None = None) -> None:
        rows.append(
            {
                "model": name,
                "dim": vectors.shape[1],
                **recall_at_k(vectors, ids, split.test_pairs),
                "category acc %": cat_acc if cat_acc is not None else float("nan"),
            }
        )
        typer.echo(
            f"  {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in rows[-1].items() if k.startswith("R@"))
        )

    # 0. Context, not a text model: one popularity list for every query.
    rows.append(
        {
            "model": "popularity (train period)",
            "dim": 0,
            **popularity_recall(split.train_interactions, ids, split.test_pairs),
            "category acc %": float("nan"),
        }
    )
    # 1. The SentenceBERT analogue.
    add("all-MiniLM-L6-v2 zero-shot", encode_sentence_model(data.items))
    if minilm_finetuned:  # 1b. ... fine-tuned with GCL on the same training pairs
        from llmrec.training.sentence_finetune import finetune_sentence_model

        add(
            "all-MiniLM-L6-v2 + GCL on the same pairs", finetune_sentence_model(data.items, split.train_pairs)
        )
    # 2. The backbone as NoteLLM trains it (same layers kept), untrained, raw hidden state.
    zero = NoteLLM(trained_config)
    layers = len(zero.lm.model.layers)
    add(
        f"SmolLM2 {layers}L zero-shot",
        encode_notellm(zero, data.items, project=False),
        category_accuracy(generate_categories(zero, held_out), truth),
    )
    del zero
    # 3. Optionally the whole backbone, untruncated.
    if full_backbone and trained_config.keep_layers is not None:
        full = NoteLLM(
            NoteLLMConfig.from_dict(
                {**json.loads(config_path.read_text())["model"], "keep_layers": None, "train_layers": None}
            )
        )
        add(
            f"SmolLM2 {len(full.lm.model.layers)}L zero-shot", encode_notellm(full, data.items, project=False)
        )
        del full
    # 4. The trained model.
    model = NoteLLM.load(run_dir / "model")
    add(
        f"NoteLLM ({layers}L, trained)",
        _saved_or_encoded(model, run_dir, data.items),
        category_accuracy(generate_categories(model, held_out), truth),
    )

    majority = (
        held_out["category"].value_counts(normalize=True).max() * 100 if len(held_out) else float("nan")
    )
    report = {
        "rows": rows,
        "test_pairs": len(split.test_pairs),
        "items": len(ids),
        "held_out_items": len(held_out),
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
    typer.echo(f"report: {run_dir / 'eval' / 'report.json'}")
    return report


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
