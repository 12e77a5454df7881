"""llmrec: LLM-enhanced text embeddings for recommendation, from training to serving."""

__version__ = "0.1.0"
