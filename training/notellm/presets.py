"""The two NoteLLM training recipes, in one place.

cpu: finishes in under 10 minutes on a 2-core laptop-class CPU. It keeps the first 6 of SmolLM2's
     30 decoder layers and trains only the top 3 of them, plus the projection and the temperature; the
     3 frozen layers run once per (item, prompt variant) and are cached (trunk_cache.py), so a step runs
     only the top 3, in bf16 autocast where the CPU multiplies bf16 natively (AVX512-BF16 or AMX; the head
     and the losses stay fp32). Chosen by measurement (docs/RESULTS.md): keeping 12 layers (9 frozen)
     learned far less in the same steps (R@100 11.4), 8 layers a little less than 6 (18.5 vs 18.8 at 200
     steps), 4 layers (1 frozen) stayed near chance for 100 steps; training 4 layers or doubling the lr did
     worse; more steps help most (6 layers, bf16: 19.3 at 300 steps, 22.1 at 500), and bf16 autocast makes
     a step 1.56x faster, which paid for 500 on the box that measured it; on a box about 20% slower (1.2 s a
     step) 500 steps took 630 s, so the preset runs 400. The prompt is the paper's, unshortened. The learning rate
     is far above the paper's 3e-6 (at 1e-4 the loss had not left log(2B - 1) after 40 steps; at 5e-4 it
     had), and the projection starts from PCA (model.py). Each batch's vectors are centred before the norm
     and the temperature starts at 1 with its own rate 0.05 (the paper: 3, learnt at the head's rate): with
     the paper's start one seed in three collapsed onto one vector and sat at log(2B - 1) for 100 steps
     (R@100 14.0 against 22-24 for the other seeds); centred, every seed leaves chance within 50 steps.
gpu: the paper's recipe: the whole model trains, 64 pairs per batch, lr 3e-6, one epoch, bf16
     autocast, gradient checkpointing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from llmrec.training.notellm.model import NoteLLMConfig


@dataclass
class TrainConfig:
    steps: int | None = None  # optimiser steps; None: `epochs` passes over the training pairs
    epochs: float = 1.0
    batch_pairs: int = 16  # B pairs = 2B notes per step (in-batch negatives)
    lr: float = 1e-4  # pretrained layers
    head_lr: float = 1e-3  # new parameters: projection, temperature
    tau_lr: float | None = None  # the GCL temperature's own rate (None: head_lr)
    weight_decay: float = 0.01
    warmup_steps: int = 10
    grad_clip: float = 1.0
    # bf16 autocast. None: where the hardware multiplies bf16 natively (see trainer.native_bf16): on the 2-core
    # AVX512-BF16 box a cpu-preset step takes 0.91 s against 1.42 s in fp32 (docs/RESULTS.md).
    bf16: bool | None = None
    gradient_checkpointing: bool = False
    trunk_cache: bool = True  # run the frozen layers once per (item, prompt variant); see trunk_cache.py
    tag_variants: int = 2  # tag prompts drawn once per item for the cache (uncached runs draw per step)
    cache_dtype: str = "bfloat16"  # what the cached states are kept in
    checkpoint_every: int = 100  # steps between checkpoints (and at the end)
    keep_checkpoints: int = 2
    seed: int = 0
    log_every: int = 10


PRESETS: dict[str, tuple[NoteLLMConfig, TrainConfig]] = {
    "cpu": (
        NoteLLMConfig(keep_layers=6, train_layers=3, tau_init=1.0, batch_center=True),
        TrainConfig(steps=400, batch_pairs=16, lr=5e-4, head_lr=5e-4, tau_lr=0.05, checkpoint_every=100),
    ),
    "gpu": (
        NoteLLMConfig(),
        TrainConfig(
            epochs=1.0,
            batch_pairs=64,
            lr=3e-6,
            head_lr=1e-3,
            bf16=True,
            gradient_checkpointing=True,
            checkpoint_every=500,
        ),
    ),
    # A seconds-long run for tests and smoke checks (2 layers, a few steps).
    "tiny": (
        NoteLLMConfig(keep_layers=2, train_layers=1, emb_dim=32),
        TrainConfig(steps=4, batch_pairs=4, checkpoint_every=2, log_every=1),
    ),
}


def preset(name: str) -> tuple[NoteLLMConfig, TrainConfig]:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name])
