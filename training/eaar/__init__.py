"""GPT4SM's ranker family: a small BERT-class encoder with an LLM's embeddings as feature (EaaF),
regularizer (EaaR) or pre-training target (EaaP) (GPT4SM: "Are GPT Embeddings Useful for Ads and Recommendation?", KSEM 2023)."""
