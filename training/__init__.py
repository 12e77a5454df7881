"""Data, models, losses, trainers and evaluation (NoteLLM; the EaaR family)."""
