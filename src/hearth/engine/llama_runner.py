"""The llama.cpp side of the engine, over llama-cpp-python's low-level ctypes API.

Only the engine package imports llama_cpp: this module, `backend`, `buffer_types`, `devices`,
`quantize`, `grammar`, `vocab` and `embedder`. Everything here but `tokenize`, `detokenize` and
`check_grammar` runs on the engine thread, which owns the context; those three only read the
vocabulary (`vocab.Vocabulary`), which llama.cpp allows from any thread.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import math
from collections.abc import Sequence as SequenceType
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import llama_cpp as llama
import numpy as np

from hearth.engine.backend import BUFFER_LINE, capturing_buffer_lines, init_backend
from hearth.engine.cpu import RepackMode, WeightPlacement
from hearth.engine.scheduler import Chunk
from hearth.engine.types import Grammar, MediaInput, MediaSpan, SamplingParams, TokenLogprob
from hearth.engine.vocab import Vocabulary

if TYPE_CHECKING:
    from hearth.engine.media import MediaEncoder

__all__ = ["KV_CACHE_TYPES", "LlamaRunner", "ModelInfo", "RunnerConfig"]

logger = logging.getLogger(__name__)

# How many recent tokens the repeat, presence and frequency penalties look at (llama.cpp's 64).
PENALTY_LAST_N = 64

# enum llama_flash_attn_type
_FLASH_ATTN_TYPES = {"auto": -1, "off": 0, "on": 1}
# enum ggml_type, for the KV cache's K and V (--cache-type-k/-v)
KV_CACHE_TYPES = {
    "f16": llama.GGML_TYPE_F16,
    "q8_0": llama.GGML_TYPE_Q8_0,
    "q4_0": llama.GGML_TYPE_Q4_0,
}


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    model_path: Path
    n_slots: int
    n_ctx_per_slot: int
    n_threads: int
    n_batch: int
    gpu_layers: int = -1  # -1: as many as llama.cpp offers (none on a CPU-only build)
    flash_attn: str = "auto"  # "auto", "on" or "off"
    type_k: str = "f16"  # the KV cache's types: a key of KV_CACHE_TYPES
    type_v: str = "f16"
    kv_unified: bool = False  # one KV pool for all slots, instead of n_ctx_per_slot cells each
    repack: RepackMode = "auto"  # the weight buffer types a load may use (engine/cpu.py)
    weight_types: tuple[str, ...] = ()  # the GGUF's tensor types: part of the AMX probe's key
    n_prefill: int = 128  # most prompt tokens per step beside decoding rows (probed with AMX)
    mmproj_path: Path | None = None  # a multimodal projector: the model takes images


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Facts about the loaded model the HTTP layer needs (templating, limits)."""

    chat_template: str | None
    bos_text: str
    eos_text: str
    add_bos: bool
    n_ctx_train: int
    n_params: int
    size_bytes: int
    description: str
    fim_tokens: tuple[int, int, int] | None  # prefix, suffix, middle: the model can infill


def _load_model(config: RunnerConfig, model_params: Any) -> tuple[Any, WeightPlacement]:
    """Load the weights into the buffer types `--repack` allows on this CPU; also say which
    buffer types received them."""
    from hearth.engine.amx_probe import ProbeShape, plan_weights
    from hearth.engine.buffer_types import load_lock, offering

    placement = plan_weights(
        config.repack,
        config.model_path,
        config.weight_types,
        ProbeShape(config.n_slots, config.n_batch, config.n_prefill, config.n_threads),
    )
    model_params.use_extra_bufts = placement.use_extra_bufts
    with load_lock, offering(placement.offered), capturing_buffer_lines() as lines:
        model = llama.llama_model_load_from_file(str(config.model_path).encode(), model_params)
    buffers: dict[str, int] = {}
    for line in lines:
        if match := BUFFER_LINE.search(line):
            name = match.group(1)
            buffers[name] = buffers.get(name, 0) + int(float(match.group(2)) * (1 << 20))
    return model, dataclasses.replace(placement, buffers=buffers)


class LlamaRunner:
    """A loaded GGUF model and one llama context with a sequence per slot."""

    def __init__(self, config: RunnerConfig) -> None:
        init_backend()
        self.config = config
        model_params = llama.llama_model_default_params()
        model_params.n_gpu_layers = 999 if config.gpu_layers < 0 else config.gpu_layers
        self._model, self.weights = _load_model(config, model_params)
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load {config.model_path}")
        self.vocabulary = Vocabulary(self._model)
        self._vocab = self.vocabulary.handle

        ctx_params = llama.llama_context_default_params()
        ctx_params.n_ctx = config.n_ctx_per_slot * config.n_slots
        ctx_params.n_batch = config.n_batch
        ctx_params.n_ubatch = config.n_batch
        ctx_params.n_seq_max = config.n_slots
        ctx_params.n_threads = config.n_threads
        ctx_params.n_threads_batch = config.n_threads
        # Split KV: every slot owns n_ctx_per_slot cells, so one long chat never starves others.
        ctx_params.kv_unified = config.kv_unified
        ctx_params.no_perf = True
        ctx_params.flash_attn_type = _FLASH_ATTN_TYPES[config.flash_attn]
        ctx_params.type_k = KV_CACHE_TYPES[config.type_k]
        ctx_params.type_v = KV_CACHE_TYPES[config.type_v]
        self._ctx = llama.llama_init_from_model(self._model, ctx_params)
        if not self._ctx:
            llama.llama_model_free(self._model)
            if config.type_v != "f16":
                # llama.cpp refuses a quantized V cache when flash attention is not on.
                raise RuntimeError(
                    f"llama.cpp could not create a context with --cache-type-v {config.type_v}: "
                    "a quantized V cache needs flash attention, which this backend could not "
                    "turn on for this model (try --cache-type-v f16)"
                )
            raise RuntimeError("llama.cpp could not create a context (out of memory?)")
        self._memory = llama.llama_get_memory(self._ctx)
        self._n_ctx_per_slot = int(llama.llama_n_ctx_seq(self._ctx))
        self._batch = llama.llama_batch_init(config.n_batch, 0, 1)
        self._n_vocab = self.vocabulary.n_vocab
        # A set, not a ctypes call per sampled token: this is asked once per token of every stream.
        self._eog_tokens = frozenset(
            t for t in range(self._n_vocab) if llama.llama_vocab_is_eog(self._vocab, t)
        )
        self._pieces: dict[int, bytes] = {}
        self._piece_buffer = ctypes.create_string_buffer(256)
        self.info = self._read_info()
        self.media: MediaEncoder | None = None
        if config.mmproj_path is not None:
            from hearth.engine.media import MediaEncoder

            self.media = MediaEncoder(config.mmproj_path, self._model, config.n_threads)

    @property
    def vision(self) -> bool:
        return self.media is not None and self.media.vision

    def media_tokens(self, media: MediaInput) -> int | str:
        """The positions an image takes in a prompt, or why llama.cpp could not read it."""
        if self.media is None:
            return "this model has no projector"
        return self.media.n_tokens(media)

    def decode_media(self, span: MediaSpan, seq_id: int) -> int:
        """Encode an image and decode its embeddings into `seq_id`'s KV at its positions; 0 on
        success, else llama.cpp's status."""
        assert self.media is not None
        return self.media.decode(self._ctx, span, seq_id, self.config.n_batch)

    # -- ModelRunner protocol ------------------------------------------------------------------

    @property
    def n_ctx_per_slot(self) -> int:
        return self._n_ctx_per_slot

    def decode(self, chunks: SequenceType[Chunk]) -> int:
        batch = self._batch
        token, pos, n_seq_id, seq_id, logits = (
            batch.token,
            batch.pos,
            batch.n_seq_id,
            batch.seq_id,
            batch.logits,
        )
        i = 0
        for chunk in chunks:
            sid = chunk.seq_id
            p = chunk.start_pos
            for t in chunk.tokens:
                token[i] = t
                pos[i] = p
                n_seq_id[i] = 1
                seq_id[i][0] = sid
                logits[i] = 0
                p += 1
                i += 1
            if chunk.wants_logits:
                logits[i - 1] = 1
            if chunk.n_draft:  # a draft is verified row by row: its rows and the one before
                for row in range(i - chunk.n_draft - 1, i - 1):
                    logits[row] = 1
        batch.n_tokens = i
        return int(llama.llama_decode(self._ctx, batch))

    def new_sampler(self, params: SamplingParams) -> object:
        # The order of llama.cpp's common sampler: constraints, penalties, truncation, temperature.
        chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
        add = llama.llama_sampler_chain_add
        if params.grammar is not None:
            add(chain, self.vocabulary.grammar_sampler(params.grammar))
        biases = list(params.logit_bias)
        if params.ignore_eos:
            biases.extend((t, float("-inf")) for t in self._eog_tokens)
        if biases:
            array = (llama.llama_logit_bias * len(biases))(
                *(llama.llama_logit_bias(token, bias) for token, bias in biases)
            )
            add(chain, llama.llama_sampler_init_logit_bias(self._n_vocab, len(biases), array))
        if params.presence_penalty or params.frequency_penalty or params.repeat_penalty != 1.0:
            add(
                chain,
                llama.llama_sampler_init_penalties(
                    self._n_vocab,
                    PENALTY_LAST_N,
                    params.repeat_penalty,
                    params.frequency_penalty,
                    params.presence_penalty,
                ),
            )
        if params.greedy:
            add(chain, llama.llama_sampler_init_greedy())
            return chain
        seed = llama.LLAMA_DEFAULT_SEED if params.seed is None else params.seed & 0xFFFFFFFF
        if params.mirostat:
            add(chain, llama.llama_sampler_init_temp(params.temperature))
            if params.mirostat == 1:
                add(
                    chain,
                    llama.llama_sampler_init_mirostat(
                        self._n_vocab, seed, params.mirostat_tau, params.mirostat_eta, 100
                    ),
                )
            else:
                add(
                    chain,
                    llama.llama_sampler_init_mirostat_v2(
                        seed, params.mirostat_tau, params.mirostat_eta
                    ),
                )
            return chain
        if params.top_k > 0:
            add(chain, llama.llama_sampler_init_top_k(params.top_k))
        if params.typical_p < 1.0:
            add(chain, llama.llama_sampler_init_typical(params.typical_p, 1))
        if params.top_p < 1.0:
            add(chain, llama.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0.0:
            add(chain, llama.llama_sampler_init_min_p(params.min_p, 1))
        add(chain, llama.llama_sampler_init_temp(params.temperature))
        add(chain, llama.llama_sampler_init_dist(seed))
        return chain

    def sample(self, sampler: object, batch_row: int) -> int:
        # llama_sampler_sample also accepts the token into the chain (penalties, grammar).
        return int(llama.llama_sampler_sample(sampler, self._ctx, batch_row))

    def accept(self, sampler: object, token: int) -> None:
        llama.llama_sampler_accept(sampler, token)

    def token_logprob(self, batch_row: int, token: int, top_k: int) -> TokenLogprob:
        # The model's own distribution: the raw logits, which sampling only reads.
        pointer = llama.llama_get_logits_ith(self._ctx, batch_row)
        logits = np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))
        peak = float(logits.max())
        log_total = peak + math.log(float(np.exp(logits - peak).sum()))
        top: tuple[tuple[int, bytes, float], ...] = ()
        if top_k > 0:
            best = np.argpartition(-logits, top_k)[:top_k]
            best = best[np.argsort(-logits[best], kind="stable")]
            top = tuple(
                (int(t), self.token_bytes(int(t)), float(logits[t]) - log_total) for t in best
            )
        return TokenLogprob(
            token=token,
            piece=self.token_bytes(token),
            logprob=float(logits[token]) - log_total,
            top=top,
        )

    def check_grammar(self, grammar: Grammar) -> bool:
        return self.vocabulary.check_grammar(grammar)

    def free_sampler(self, sampler: object) -> None:
        llama.llama_sampler_free(sampler)

    def is_end_of_generation(self, token: int) -> bool:
        return token in self._eog_tokens

    def token_bytes(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._piece(token, special=False)
            self._pieces[token] = piece
        return piece

    def kv_trim(self, seq_id: int, from_pos: int) -> None:
        llama.llama_memory_seq_rm(self._memory, seq_id, from_pos, -1)

    def kv_copy(self, src: int, dst: int) -> None:
        # With split KV each sequence is its own stream, and llama.cpp copies streams whole
        # (p0 = p1 = -1); the scheduler trims the copy's tail right after.
        llama.llama_memory_seq_rm(self._memory, dst, -1, -1)
        llama.llama_memory_seq_cp(self._memory, src, dst, -1, -1)

    def kv_save(self, seq_id: int, path: Path, tokens: SequenceType[int]) -> bool:
        """Write `seq_id`'s KV cache, which holds `tokens`, to `path` (the prompt cache on
        disk)."""
        array = (llama.llama_token * len(tokens))(*tokens)
        written = llama.llama_state_seq_save_file(
            self._ctx, str(path).encode(), seq_id, array, len(tokens)
        )
        return int(written) > 0

    def kv_load(self, seq_id: int, path: Path, max_tokens: int) -> list[int] | None:
        """Replace `seq_id`'s KV cache with the state in `path`; the tokens it holds, or None
        if llama.cpp refused the file (the sequence is then empty)."""
        tokens = (llama.llama_token * max_tokens)()
        count = ctypes.c_size_t(0)
        read = llama.llama_state_seq_load_file(
            self._ctx, str(path).encode(), seq_id, tokens, max_tokens, ctypes.byref(count)
        )
        if not read:
            llama.llama_memory_seq_rm(self._memory, seq_id, -1, -1)
            return None
        return list(tokens[: count.value])

    # -- request side --------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        return self.vocabulary.tokenize(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, tokens: SequenceType[int]) -> str:
        return self.vocabulary.detokenize(tokens)

    @property
    def n_vocab(self) -> int:
        return self._n_vocab

    @property
    def n_slots(self) -> int:
        return self.config.n_slots

    @property
    def model_handle(self) -> Any:
        """The loaded llama_model, for other contexts over the same weights (embeddings)."""
        return self._model

    def close(self) -> None:
        if self.media is not None:
            self.media.close()
            self.media = None
        if self._ctx:
            llama.llama_batch_free(self._batch)
            llama.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            llama.llama_model_free(self._model)
            self._model = None

    # -- helpers -------------------------------------------------------------------------------

    def _piece(self, token: int, *, special: bool) -> bytes:
        return self.vocabulary.piece(token, special=special, buffer=self._piece_buffer)

    def _read_info(self) -> ModelInfo:
        template = llama.llama_model_chat_template(self._model, None)
        desc = ctypes.create_string_buffer(256)
        llama.llama_model_desc(self._model, desc, len(desc))
        bos = int(llama.llama_vocab_bos(self._vocab))
        eos = int(llama.llama_vocab_eos(self._vocab))
        fim = (
            int(llama.llama_vocab_fim_pre(self._vocab)),
            int(llama.llama_vocab_fim_suf(self._vocab)),
            int(llama.llama_vocab_fim_mid(self._vocab)),
        )
        return ModelInfo(
            chat_template=template.decode("utf-8") if template else None,
            bos_text=self._piece(bos, special=True).decode("utf-8", "replace") if bos >= 0 else "",
            eos_text=self._piece(eos, special=True).decode("utf-8", "replace") if eos >= 0 else "",
            add_bos=bool(llama.llama_vocab_get_add_bos(self._vocab)),
            n_ctx_train=int(llama.llama_model_n_ctx_train(self._model)),
            n_params=int(llama.llama_model_n_params(self._model)),
            size_bytes=int(llama.llama_model_size(self._model)),
            description=desc.value.decode("utf-8", "replace"),
            fim_tokens=fim if min(fim) >= 0 else None,
        )
