"""A model's vocabulary: tokenize, detokenize, check a grammar. What the server process needs of
a model; the weights live in its runner process (engine/runner_process.py).

`Vocabulary.load` reads a GGUF with `vocab_only`: the tokenizer and the metadata, no tensors,
so the server holds a few megabytes per model and never touches a GPU. `LlamaRunner` builds one
over its own fully loaded model. Every method only reads the vocabulary, which llama.cpp allows
from any thread (its own server tokenizes in HTTP threads).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence as SequenceType
from pathlib import Path
from typing import Any

import llama_cpp as llama

from hearth.engine.backend import init_backend
from hearth.engine.types import Grammar

__all__ = ["Vocabulary"]


class Vocabulary:
    def __init__(self, model: Any, *, owned: bool = False) -> None:
        self._model = model  # a llama_model*
        self._owned = owned  # freed by close(): a vocab-only load of our own
        self._vocab = llama.llama_model_get_vocab(model)
        self.n_vocab = int(llama.llama_vocab_n_tokens(self._vocab))

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        """The vocabulary of the GGUF at `path`, without its weights."""
        init_backend()
        params = llama.llama_model_default_params()
        params.vocab_only = True
        params.n_gpu_layers = 0
        model = llama.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            raise RuntimeError(f"llama.cpp could not read the vocabulary of {path}")
        return cls(model, owned=True)

    @property
    def handle(self) -> Any:
        """The llama_vocab*, for samplers."""
        return self._vocab

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buffer = (llama.llama_token * capacity)()
        n = llama.llama_tokenize(
            self._vocab, data, len(data), buffer, capacity, add_special, parse_special
        )
        if n < 0:  # never for byte-level vocabularies, but the API allows it
            capacity = -n
            buffer = (llama.llama_token * capacity)()
            n = llama.llama_tokenize(
                self._vocab, data, len(data), buffer, capacity, add_special, parse_special
            )
        return list(buffer[:n])

    def detokenize(self, tokens: SequenceType[int]) -> str:
        # Its own buffer, never the engine thread's: any thread may call.
        buffer = ctypes.create_string_buffer(256)
        data = b"".join(self.piece(t, special=False, buffer=buffer) for t in tokens)
        return data.decode("utf-8", "replace")

    def piece(self, token: int, *, special: bool, buffer: Any) -> bytes:
        n = llama.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, special)
        if n < 0:
            buffer = ctypes.create_string_buffer(-n)
            n = llama.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, special)
        return bytes(buffer.raw[:n])

    def grammar_sampler(self, grammar: Grammar) -> Any:
        """A llama.cpp grammar sampler for `grammar`, or NULL if llama.cpp refuses it."""
        text, root = grammar.gbnf.encode(), grammar.root.encode()
        if not grammar.triggers:
            return llama.llama_sampler_init_grammar(self._vocab, text, root)
        patterns = (ctypes.c_char_p * len(grammar.triggers))(
            *(p.encode() for p in grammar.triggers)
        )
        no_tokens = (llama.llama_token * 1)()
        return llama.llama_sampler_init_grammar_lazy_patterns(
            self._vocab, text, root, patterns, len(grammar.triggers), no_tokens, 0
        )

    def check_grammar(self, grammar: Grammar) -> bool:
        """Whether llama.cpp accepts `grammar`."""
        sampler = self.grammar_sampler(grammar)
        if not sampler:
            return False
        llama.llama_sampler_free(sampler)
        return True

    def close(self) -> None:
        if self._owned and self._model:
            llama.llama_model_free(self._model)
        self._model = None
