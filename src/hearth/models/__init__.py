"""Models: where GGUF files are, what they are called, and how their chat is formatted."""
