"""Wire types only. `openai` follows OpenAI's API reference field by field; `extensions`
holds Hearth's own endpoints (after llama-server's)."""
