"""The protocol-free turn every API shares: the `Conversation` (and `RawPrompt`) an adapter
converts into, its preparation (preset, template, tools, grammar, sampling, limits), running it
on the engine and reading it back as steps. Nothing here knows an API, nor FastAPI."""
