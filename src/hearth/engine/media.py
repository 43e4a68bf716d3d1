"""Images into a sequence's KV cache, through llama.cpp's multimodal library (libmtmd).

`MediaEncoder` owns the projector (`mtmd_init_from_file`). For an image it decodes the bytes
(stb_image, inside libmtmd), preprocesses them and splits them into chunks with `mtmd_tokenize`
over the media marker alone: the image chunk, and the text some models wrap it in (SmolVLM's
`<fake_token_around_image>`). Their tokens together are the positions the image takes in a
prompt. `decode` evaluates them in order into one sequence at the image's positions: the text
decoded, the image encoded by the vision tower and its embeddings decoded
(`mtmd_helper_eval_chunk_single`, which switches to non-causal attention where the model wants
it). Chunks are kept by the image's key (a hash of
its bytes), most recent first, so that measuring an image and then decoding it tokenizes once.

Runs on the engine thread only, which owns the llama context.
"""

from __future__ import annotations

import ctypes
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

import llama_cpp.mtmd_cpp as mtmd

from hearth.engine.backend import llama_log_callback
from hearth.engine.types import MediaInput, MediaSpan

__all__ = ["MediaEncoder"]

logger = logging.getLogger(__name__)

_KEEP_CHUNKS = 16  # images tokenized and kept for their decode, most recent
_INPUT_CHUNK_IMAGE = 1  # enum mtmd_input_chunk_type: TEXT 0, IMAGE 1, AUDIO 2


class _Tokenized:
    """One image's chunk list (owned) and its chunks in order (borrowed from the list)."""

    def __init__(self, chunks: Any, parts: list[Any], n_tokens: int) -> None:
        self.chunks = chunks
        self.parts = parts
        self.n_tokens = n_tokens

    def free(self) -> None:
        mtmd.mtmd_input_chunks_free(self.chunks)


class MediaEncoder:
    def __init__(self, mmproj_path: Path, model: Any, n_threads: int) -> None:
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = True  # where llama.cpp has a GPU; a CPU-only build ignores it
        params.n_threads = n_threads
        params.print_timings = False
        params.warmup = False
        # libmtmd's and clip's lines go where llama.cpp's go: warnings and errors kept.
        mtmd.mtmd_helper_log_set(llama_log_callback(), None)
        self._marker = mtmd.mtmd_default_marker()
        self._ctx = mtmd.mtmd_init_from_file(str(mmproj_path).encode(), model, params)
        if not self._ctx:
            raise RuntimeError(f"llama.cpp could not load the projector {mmproj_path}")
        self.vision = bool(mtmd.mtmd_support_vision(self._ctx))
        self.audio = bool(mtmd.mtmd_support_audio(self._ctx))
        self._kept: OrderedDict[str, _Tokenized] = OrderedDict()

    def n_tokens(self, media: MediaInput) -> int | str:
        """The positions `media` takes, or why libmtmd refused it."""
        try:
            return self._tokenized(media).n_tokens
        except ValueError as exc:
            return str(exc)

    def decode(self, lctx: Any, span: MediaSpan, seq_id: int, n_batch: int) -> int:
        tokenized = self._tokenized(span.media)
        n_past = ctypes.c_int32(span.start)
        for part in tokenized.parts:
            status = mtmd.mtmd_helper_eval_chunk_single(
                self._ctx,
                lctx,
                part,
                n_past.value,
                seq_id,
                n_batch,
                False,  # the text after the image asks for the logits
                ctypes.byref(n_past),
            )
            if status != 0:
                return int(status)
        return 0

    def close(self) -> None:
        for tokenized in self._kept.values():
            tokenized.free()
        self._kept.clear()
        if self._ctx:
            mtmd.mtmd_free(self._ctx)
            self._ctx = None

    def _tokenized(self, media: MediaInput) -> _Tokenized:
        kept = self._kept.get(media.key)
        if kept is not None:
            self._kept.move_to_end(media.key)
            return kept
        tokenized = self._tokenize(media)
        self._kept[media.key] = tokenized
        while len(self._kept) > _KEEP_CHUNKS:
            _, oldest = self._kept.popitem(last=False)
            oldest.free()
        return tokenized

    def _tokenize(self, media: MediaInput) -> _Tokenized:
        data = (ctypes.c_uint8 * len(media.data)).from_buffer_copy(media.data)
        bitmap = mtmd.mtmd_helper_bitmap_init_from_buf(self._ctx, data, len(media.data), False)
        if not bitmap:
            raise ValueError("llama.cpp could not decode the image (a damaged or unknown file)")
        try:
            mtmd.mtmd_bitmap_set_id(bitmap, media.key.encode())
            text = mtmd.mtmd_input_text(
                text=self._marker, text_len=len(self._marker), add_special=False,
                parse_special=True,
            )  # fmt: skip
            chunks = mtmd.mtmd_input_chunks_init()
            bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
            status = mtmd.mtmd_tokenize(self._ctx, chunks, ctypes.byref(text), bitmaps, 1)
        finally:
            mtmd.mtmd_bitmap_free(bitmap)
        if status != 0:
            mtmd.mtmd_input_chunks_free(chunks)
            raise ValueError(f"llama.cpp could not preprocess the image (status {status})")
        parts = [
            mtmd.mtmd_input_chunks_get(chunks, i)
            for i in range(mtmd.mtmd_input_chunks_size(chunks))
        ]
        n_tokens = sum(int(mtmd.mtmd_input_chunk_get_n_tokens(part)) for part in parts)
        n_pos = sum(int(mtmd.mtmd_input_chunk_get_n_pos(part)) for part in parts)
        images = [p for p in parts if mtmd.mtmd_input_chunk_get_type(p) == _INPUT_CHUNK_IMAGE]
        if not images or n_pos != n_tokens:  # M-RoPE models: not one position per token
            mtmd.mtmd_input_chunks_free(chunks)
            why = "no image chunk" if not images else "image positions in 2-D (M-RoPE)"
            raise ValueError(f"llama.cpp made {why} of it, which Hearth does not serve yet")
        return _Tokenized(chunks, parts, n_tokens)
