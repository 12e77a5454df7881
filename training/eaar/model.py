"""The GPT4SM ranker in training: text encoder -> the served head (llmrec.server.rank_head) -> scores, and
its losses. The strategies and the head's equations: llmrec.server.rank_head."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from llmrec.server.rank_head import RankerConfig, RankHead
from llmrec.training.backbones import resolve_encoder


class TextEncoder(nn.Module):
    """A BERT-class encoder whose frozen lower layers run once per catalogue (cached), the top ones per step."""

    def __init__(self, spec: str, train_layers: int, max_tokens: int):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        folder = resolve_encoder(spec)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.bert = AutoModel.from_pretrained(folder, attn_implementation="eager")
        self.max_tokens = max_tokens
        layers = self.bert.encoder.layer
        if not 0 <= train_layers <= len(layers):
            raise ValueError(f"train_layers={train_layers} but the encoder has {len(layers)} layers")
        self.n_frozen = len(layers) - train_layers
        self.bert.requires_grad_(False)
        for layer in layers[self.n_frozen :]:
            layer.requires_grad_(True)
        self.register_buffer(
            "cache", torch.empty(0), persistent=False
        )  # (N, T, H) states below the top layers
        self.register_buffer("cache_mask", torch.empty(0, dtype=torch.long), persistent=False)

    @property
    def hidden(self) -> int:
        return self.bert.config.hidden_size

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            texts, padding="max_length", truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )

    @torch.no_grad()
    def build_cache(self, texts: list[str], batch_size: int = 256, store: Path | None = None) -> None:
        """Run embeddings + frozen layers over the whole catalogue once (or load them from `store`)."""
        if store is not None and store.is_file():
            saved = torch.load(store)
            self.cache, self.cache_mask = saved["states"], saved["mask"]
            return
        states, masks = [], []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenize(texts[start : start + batch_size])
            hidden = self.bert.embeddings(
                input_ids=enc["input_ids"], token_type_ids=enc.get("token_type_ids")
            )
            hidden = self._run(self.bert.encoder.layer[: self.n_frozen], hidden, enc["attention_mask"])
            states.append(hidden)
            masks.append(enc["attention_mask"])
        self.cache, self.cache_mask = torch.cat(states), torch.cat(masks)
        if store is not None:
            store.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"states": self.cache, "mask": self.cache_mask}, store.with_suffix(".tmp"))
            store.with_suffix(".tmp").replace(store)

    def cache_key(self, texts: list[str]) -> str:
        """Names the cached states: encoder folder, frozen depth, token budget and the catalogue's text."""
        h = hashlib.sha1(f"{self.bert.name_or_path}|{self.n_frozen}|{self.max_tokens}|".encode())
        for t in texts:
            h.update(t.encode() + b"\0")
        return h.hexdigest()[:16]

    def _run(self, layers, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # (B, 1, 1, T) additive mask, what BERT's eager attention adds to its scores (checked against the full
        # model in tests/training/eaar/test_model.py).
        extended = (1.0 - mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        for layer in layers:
            hidden = layer(hidden, attention_mask=extended)
        return hidden

    def forward(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states (n, T, H) and mask (n, T) of catalogue rows."""
        if self.cache.numel() == 0:
            raise RuntimeError("build_cache() must run before the encoder is used")
        mask = self.cache_mask[rows]
        return self._run(self.bert.encoder.layer[self.n_frozen :], self.cache[rows], mask), mask

    def encode_texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """All layers, from raw text (no cache): what an exported encoder computes."""
        enc = self.tokenize(texts)
        return self.bert(**enc).last_hidden_state, enc["attention_mask"]


class Ranker(RankHead):
    """Text encoder + the served head; `teacher` holds every catalogue item's LLM vector (rows as the
    encoder's cache)."""

    def __init__(self, config: RankerConfig, encoder: TextEncoder, teacher: torch.Tensor | None):
        super().__init__(config, encoder.hidden)
        self.encoder = encoder
        # EaaF reads u at every forward; EaaR/EaaP only in their training losses (the trainer always passes it).
        if teacher is None and config.strategy == "eaaf":
            raise ValueError(f"strategy {config.strategy!r} needs teacher vectors")
        self.register_buffer("teacher", teacher if teacher is not None else torch.empty(0), persistent=False)

    @classmethod
    def load(cls, run_dir: Path) -> Ranker:
        """A trained ranker from its run folder (config.json + ranker.pt), with its full text encoder."""
        config_path, weights = Path(run_dir) / "config.json", Path(run_dir) / "ranker.pt"
        if not (config_path.is_file() and weights.is_file()):
            raise FileNotFoundError(
                f"{run_dir} holds no trained ranker (config.json + ranker.pt); train one first"
            )
        config = RankerConfig(**json.loads(config_path.read_text())["model"])
        if config.strategy == "eaaf":
            raise ValueError(
                "EaaF needs the LLM's vector of every item at serving time; only base/eaar/eaap load"
            )
        encoder = TextEncoder(config.encoder, config.train_layers, config.max_tokens)
        ranker = cls(config, encoder, None)
        state = torch.load(weights, map_location="cpu")
        missing = [n for n, p in ranker.named_parameters() if p.requires_grad and n not in state]
        unknown = ranker.load_state_dict(state, strict=False).unexpected_keys
        if missing or unknown:
            raise ValueError(f"{weights} does not match the config: missing {missing}, unknown {unknown}")
        return ranker.eval()

    def item_vectors(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Item vectors (n, D) and, for eaar/eaap, c = W_c e_0 (n, U) of catalogue rows."""
        tokens, mask = self.encoder(rows)  # (n, T, H), (n, T)
        return self.pool_items(tokens, mask, self.teacher[rows] if self.config.strategy == "eaaf" else None)

    def forward(self, history: torch.Tensor, candidates: torch.Tensor):
        """Scores (B, 1+K) plus, for the teacher losses, (c, u) over the batch's unique items."""
        valid = history >= 0
        rows, inverse = torch.unique(torch.cat([history[valid], candidates.flatten()]), return_inverse=True)
        vectors, c = self.item_vectors(rows)  # (n, D)
        n_hist = int(valid.sum())
        hist = torch.zeros(*history.shape, self.item_dim, dtype=vectors.dtype, device=vectors.device)
        hist[valid] = vectors[inverse[:n_hist]]
        cand = vectors[inverse[n_hist:]].view(*candidates.shape, self.item_dim)  # (B, 1+K, D)
        user = self.user_vectors(hist, valid)  # (B, D)
        scores = torch.einsum("bd,bkd->bk", user, cand)
        return scores, (c, self.teacher[rows] if c is not None else None)


def regularizer(c: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """EaaR: mean ||c/||c|| - u|| (u already L2-normalised)."""
    return (F.normalize(c, dim=-1) - u).norm(dim=-1).mean()


def copy_loss(c: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """EaaP's pre-training target: MSE between c/||c|| and u."""
    return F.mse_loss(F.normalize(c, dim=-1), u)


def ranking_loss(scores: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over (target, K negatives); the target is column 0."""
    return F.cross_entropy(scores, torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device))


def total_loss(config: RankerConfig, scores, c, u, step: int) -> tuple[torch.Tensor, dict[str, float]]:
    """The strategy's loss at this step, and its parts for the log."""
    if config.strategy == "eaap" and step < config.pretrain_steps:
        copy = copy_loss(c, u)
        return copy, {"copy": copy.item()}
    ce = ranking_loss(scores)
    if config.strategy == "eaar":
        reg = regularizer(c, u)
        return ce + config.reg_weight * reg, {"ce": ce.item(), "reg": reg.item()}
    return ce, {"ce": ce.item()}
