"""Hot-path kernels: OpenAI Triton on CUDA tensors, the PyTorch reference everywhere else.

Callers use the dispatch functions exported here; the reference module is the single source of
truth that tests and benchmarks compare against.
"""

from llmrec.kernels.attention_pool import additive_attention_pool, dot_attention_pool
from llmrec.kernels.cosine_topk import cosine_topk

__all__ = ["additive_attention_pool", "cosine_topk", "dot_attention_pool"]
