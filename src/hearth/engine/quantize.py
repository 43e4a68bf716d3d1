"""Re-quantize a GGUF into a type with fast batched CPU kernels (llama_model_quantize).

The embedded SmolLM2 is Q4_1, which neither ggml's repack path nor llamafile's sgemm handles on
x86, so batching gains little; Q8_0 and Q4_0 do have those kernels. Opt-in, measured in
bench/quality.py (top-1 agreement with the original) and bench/bench.py (speed).

`hearth create` and `/api/create` also take Q4_K_M and Q4_K_S, the types Ollama's docs/api.md
lists for `quantize`; tensors whose rows are not a multiple of 256 (all of SmolLM2-135M's 576-wide
ones) fall back to Q5_0 or Q8_0, as llama.cpp's quantizer decides.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import shutil
from pathlib import Path

import llama_cpp as llama

from hearth.engine.backend import init_backend

__all__ = ["QUANT_TYPES", "quantize"]

logger = logging.getLogger(__name__)

# name -> enum llama_ftype
QUANT_TYPES = {
    "q8_0": llama.LLAMA_FTYPE_MOSTLY_Q8_0,
    "q4_0": llama.LLAMA_FTYPE_MOSTLY_Q4_0,
    "q4_k_m": llama.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    "q4_k_s": llama.LLAMA_FTYPE_MOSTLY_Q4_K_S,
}


def quantize(source: Path, kind: str, target: Path, threads: int) -> Path:
    """Write `source` re-quantized to `kind` at `target`, once; later calls reuse the file."""
    if target.is_file():
        return target
    init_backend()
    params = llama.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[kind]
    params.nthread = threads
    params.allow_requantize = True  # the source is already quantized
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    logger.info("Re-quantizing %s to %s (once; cached at %s)", source.name, kind, target)
    try:
        status = llama.llama_model_quantize(str(source).encode(), str(partial).encode(), params)
        if status != 0:
            # llama.cpp says only that it failed; name a full disk when that is the likely cause.
            no_room = _no_room(partial.parent, source.stat().st_size // 2)
            if no_room is not None:
                raise no_room
            raise RuntimeError(f"llama.cpp could not quantize {source} to {kind} ({status})")
        partial.replace(target)  # atomic: a crash never leaves a half model under the name
    finally:
        partial.unlink(missing_ok=True)
    return target


def _no_room(folder: Path, needed: int) -> OSError | None:
    """An OSError (EFBIG, ENOSPC) when a file of `needed` bytes cannot be written in `folder`:
    past this process's file size limit, or more than the disk has free. A quantized copy is
    at least about half a 4-bit source."""
    limit, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if limit != resource.RLIM_INFINITY and limit < needed:
        return OSError(errno.EFBIG, f"{os.strerror(errno.EFBIG)} (the file size limit is {limit})")
    if shutil.disk_usage(folder).free < needed:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return None
