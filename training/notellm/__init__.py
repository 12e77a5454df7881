"""NoteLLM: an LLM that compresses an item's text into one [EMB] token (PAPERS.md section 2)."""
