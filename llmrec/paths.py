"""Where runs write: artifacts/ (git-ignored) under the working directory, or $LLMREC_ARTIFACTS."""

from __future__ import annotations

import os
from pathlib import Path


def artifacts_dir() -> Path:
    return Path(os.environ.get("LLMREC_ARTIFACTS", "artifacts")).resolve()


def cache_dir() -> Path:
    path = artifacts_dir() / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path
