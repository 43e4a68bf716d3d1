"""Wire types only. `openai` follows OpenAI's API reference field by field."""
