"""Ollama's native API under /api: chat, generate, embeddings, and its model management (pull,
copy, delete, create, blobs)."""
