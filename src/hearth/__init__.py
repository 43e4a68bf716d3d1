"""Hearth: a local LLM server. One model, loaded once, shared by every app via the OpenAI API."""

__version__ = "0.1.0"

__all__ = ["__version__"]
