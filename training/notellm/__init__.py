"""NoteLLM: an LLM that compresses an item's text into one [EMB] token (NoteLLM, arXiv 2403.01744)."""
