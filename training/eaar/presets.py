"""The EaaR-family training recipes.

cpu: one strategy x seed in about a minute on 2 cores, so the results table (4 strategies, 3 seeds, 2
     teachers) fits in half an hour. all-MiniLM-L6-v2 with only its top layer trained: the five frozen layers
     run once over the catalogue and are cached (the same numbers, computed once). History 10, 16 users per
     step, 200 steps (3,200 of ML-100k's 90k training interactions).
gpu: the paper's settings where they transfer: history 50, batch 32, lr 5e-5 for the encoder, the top 4
     layers trained, one epoch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from llmrec.server.rank_head import RankerConfig


@dataclass
class RankerTrainConfig:
    steps: int | None = 200  # None: `epochs` over the training interactions
    epochs: float = 1.0
    batch_size: int = 16  # impressions (users) per step
    lr: float = 1e-4  # trainable encoder layers
    head_lr: float = 1e-3  # pooling heads, W_c
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    max_train_samples: int = 20_000  # training interactions drawn (seeded) to build samples from


PRESETS: dict[str, tuple[RankerConfig, RankerTrainConfig]] = {
    "cpu": (RankerConfig(train_layers=1, history_len=10), RankerTrainConfig(steps=200, batch_size=16)),
    "gpu": (
        RankerConfig(train_layers=4, history_len=50),
        RankerTrainConfig(steps=None, epochs=1.0, batch_size=32, lr=5e-5, max_train_samples=10**9),
    ),
    "tiny": (
        RankerConfig(train_layers=1, history_len=4, pretrain_steps=2),
        RankerTrainConfig(steps=4, batch_size=4),
    ),
}


def preset(name: str) -> tuple[RankerConfig, RankerTrainConfig]:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name])
