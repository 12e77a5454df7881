"""Tokenizers inside the server, on the `tokenizers` library alone.

The python backend's stub cannot import transformers (its hub client pulls in `ssl`, whose C module
does not link against the stub's embedded Python), so export saves each model's fast tokenizer as
tokenizer.json + special_tokens.json and this module reads them. Export checks that the ids are
identical to the transformers tokenizer used in training, over the whole catalogue.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SPECIAL = "special_tokens.json"


def save(hf_tokenizer, folder: Path) -> None:
    """Write a transformers fast tokenizer in the form `ServingTokenizer` reads."""
    folder.mkdir(parents=True, exist_ok=True)
    hf_tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    special = {
        name: getattr(hf_tokenizer, f"{name}_token_id") for name in ("bos", "eos", "pad", "unk", "cls", "sep")
    }
    special["pad_token"] = hf_tokenizer.pad_token
    (folder / SPECIAL).write_text(json.dumps(special, indent=2))


class ServingTokenizer:
    """What PromptBuilder and the ranker need of a transformers tokenizer, and no more."""

    def __init__(self, folder: Path):
        from tokenizers import Tokenizer

        self.folder = folder = Path(folder)
        self.backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.backend.no_truncation()  # prompts are cut segment by segment (PromptBuilder), never here
        self.backend.no_padding()
        special = json.loads((folder / SPECIAL).read_text())
        self.bos_token_id = special["bos"]
        self.eos_token_id = special["eos"]
        self.pad_token_id = special["pad"]
        self.unk_token_id = special["unk"]
        self.pad_token = special["pad_token"]

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self.backend.encode(text, add_special_tokens=add_special_tokens).ids}

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def padded(self, length: int) -> PaddedTokenizer:
        return PaddedTokenizer(self.folder, self.pad_token_id, self.pad_token, length)


class PaddedTokenizer:
    """Texts -> fixed-length batches with special tokens. Its own tokenizer object, configured once: the
    Rust tokenizer is not to be reconfigured while another thread encodes with it."""

    def __init__(self, folder: Path, pad_id: int, pad_token: str, length: int):
        from tokenizers import Tokenizer

        self.backend = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
        self.backend.enable_truncation(length)
        self.backend.enable_padding(length=length, pad_id=pad_id, pad_token=pad_token)

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        """input_ids, attention_mask, token_type_ids (n, length)."""
        encodings = self.backend.encode_batch(texts)
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
