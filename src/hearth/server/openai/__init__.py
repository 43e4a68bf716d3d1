"""OpenAI's chat completions, completions, embeddings and model list under /v1."""
