"""The GPT4SM ranker's head: what `rank` runs after the exported text encoder, and what training trains.

Strategies (GPT4SM: "Are GPT Embeddings Useful for Ads and Recommendation?", KSEM 2023), with u the teacher's (LLM's) L2-normalised vector of an item:
  base  h = pool(E)                                     no LLM anywhere
  eaaf  h = sum_i a_i [e_i ; u], a = softmax(w.[e;u]/sqrt(d))   u is a feature: needed at serving time too
  eaar  c = W_c e_0, h = [c ; pool(E)],  loss = CE + w_r mean ||c/||c|| - u||    u only in training
  eaap  the eaar network; the first `pretrain_steps` train only MSE(c/||c||, u), then CE alone
pool(.) is the additive form q.tanh(V e + b) (released code) or the scaled-dot form (paper), a config field;
EaaF always uses the scaled-dot form, which is how the paper defines it. Both go through `llmrec.kernels`.
The user vector is additive attention over the history's item vectors; score = user . item.

Serving builds this head alone from the exported parameters (the encoder's token states come from ONNX);
training's `Ranker` (llmrec.training.eaar.model) adds the text encoder, the teacher vectors and the losses.
Only torch and the kernels are imported here: the served model never loads transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from llmrec.kernels import additive_attention_pool, dot_attention_pool

STRATEGIES = ("base", "eaaf", "eaar", "eaap")


@dataclass
class RankerConfig:
    strategy: Literal["base", "eaaf", "eaar", "eaap"] = "eaar"
    encoder: str = "minilm"  # "minilm" (llmrec.training.backbones.MINILM) or a BERT-class transformers folder
    train_layers: int = 1  # top encoder layers that train (the paper: the top 4 of 12); 0 freezes it all
    max_tokens: int = 32  # item text truncated to this many tokens (the paper: 32)
    history_len: int = 10  # H: the user's last H items before the target (the paper: 50)
    negatives: int = 4  # K sampled negatives per clicked target (the paper's npratio)
    pooling: Literal["additive", "dot"] = "additive"  # token pooling of base / eaar / eaap
    att_dim: int = 128  # A: width of the additive attention
    teacher: str = "notellm"  # "notellm", "mpnet", or a vector file (.npy + ids, .parquet)
    teacher_dim: int | None = (
        None  # U: the teacher's dimension; None: read from the file, else checked against it
    )
    reg_weight: float = 0.1  # w_r of EaaR
    pretrain_steps: int = 50  # EaaP: steps of the copy-only phase

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")

    @property
    def uses_teacher(self) -> bool:
        return self.strategy != "base"


class RankHead(nn.Module):
    """Token pooling (and, for eaar/eaap, the projection to the teacher's space) and the user attention over
    token states of width `hidden`."""

    def __init__(self, config: RankerConfig, hidden: int):
        super().__init__()
        self.config = config
        h, u, a = hidden, config.teacher_dim, config.att_dim
        if config.strategy == "eaaf":
            self.w_tok = nn.Parameter(torch.randn(h + u) / (h + u) ** 0.5)
            self.item_dim = h + u
        else:
            if config.pooling == "additive":
                self.tok_proj = nn.Parameter(torch.randn(a, h) / h**0.5)
                self.tok_bias = nn.Parameter(torch.zeros(a))
                self.tok_query = nn.Parameter(torch.randn(a) / a**0.5)
            else:
                self.w_tok = nn.Parameter(torch.randn(h) / h**0.5)
            self.item_dim = h
            if config.strategy in ("eaar", "eaap"):
                self.to_teacher = nn.Linear(h, u, bias=False)  # W_c: first token -> teacher space
                self.item_dim = h + u
        d = self.item_dim
        self.user_proj = nn.Parameter(torch.randn(a, d) / d**0.5)
        self.user_bias = nn.Parameter(torch.zeros(a))
        self.user_query = nn.Parameter(torch.randn(a) / a**0.5)

    def head_state(self) -> dict[str, torch.Tensor]:
        """The head's parameters (everything but a text encoder), what serving needs next to the ONNX encoder."""
        return {n: p.detach() for n, p in self.named_parameters() if not n.startswith("encoder.")}

    def pool_items(
        self, tokens: torch.Tensor, mask: torch.Tensor, teacher: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Item vectors (n, D) from token states (n, T, H) and mask (n, T) and, for eaar/eaap, c = W_c e_0
        (n, U); EaaF also needs the items' teacher vectors (n, U)."""
        s = self.config
        if s.strategy == "eaaf":
            if teacher is None:
                raise ValueError("EaaF pools with the items' teacher vectors: pass them")
            return dot_attention_pool(tokens, mask, self.w_tok, teacher), None
        if s.pooling == "additive":
            pooled = additive_attention_pool(tokens, mask, self.tok_proj, self.tok_bias, self.tok_query)
        else:
            pooled = dot_attention_pool(tokens, mask, self.w_tok)
        if s.strategy == "base":
            return pooled, None
        c = self.to_teacher(tokens[:, 0])  # (n, U)
        return torch.cat([c, pooled], dim=-1), c

    def user_vectors(self, hist: torch.Tensor, hist_mask: torch.Tensor) -> torch.Tensor:
        return additive_attention_pool(hist, hist_mask, self.user_proj, self.user_bias, self.user_query)
