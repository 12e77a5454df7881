"""NoteLLM's two losses (NoteLLM, arXiv 2403.01744)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmrec.server.prompts import IGNORE_INDEX


class GenerativeContrastiveLoss(nn.Module):
    """GCL: InfoNCE over in-batch pairs with a learnable temperature.

    A batch of B pairs holds 2B notes, laid out as [a_1..a_B, b_1..b_B]; note i's positive i+ is its
    pair partner and every other note of the batch is a negative:

        L_cl = -(1/2B) sum_i log( exp(cos(n_i, n_i+) e^tau) / sum_{j != i} exp(cos(n_i, n_j) e^tau) )

    tau is learnable and starts at 3 (scale e^3, about 20).
    """

    def __init__(self, tau_init: float = 3.0):
        super().__init__()
        self.tau = nn.Parameter(torch.tensor(float(tau_init)))

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        n = vectors.shape[0]  # 2B
        if n % 2 or n < 4:
            raise ValueError(f"GCL needs 2B notes with B >= 2 pairs, got {n}")
        v = F.normalize(vectors.float(), dim=-1)
        logits = (v @ v.T) * self.tau.exp()  # (2B, 2B)
        logits = logits.masked_fill(torch.eye(n, dtype=torch.bool, device=v.device), float("-inf"))
        half = n // 2
        positive = torch.cat([torch.arange(half, n), torch.arange(0, half)]).to(v.device)
        return F.cross_entropy(logits, positive)


def generation_loss(hidden: torch.Tensor, labels: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
    """CSFT: next-token loss on the output part only (category or tags, then [EOS]).

    The vocabulary projection runs only where a label exists, not over the whole sequence.
    """
    target = labels[:, 1:]  # (B, T-1): token t+1 is predicted from position t
    keep = target != IGNORE_INDEX
    if not keep.any():
        return hidden.sum() * 0.0
    logits = lm_head(hidden[:, :-1][keep])  # (n_out, V)
    return F.cross_entropy(logits.float(), target[keep])


def combine(l_cl: torch.Tensor, l_gen: torch.Tensor, alpha: float) -> torch.Tensor:
    """L = (L_cl + alpha * L_gen) / (1 + alpha)."""
    return (l_cl + alpha * l_gen) / (1.0 + alpha)
