"""llama.cpp's process-wide setup: its backends, and its log lines routed to Python's logging.

Every module that calls into llama.cpp starts it here first (`init_backend`): the runner, the
device list, the buffer types, the quantizer.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import re
from collections.abc import Iterator
from typing import Any

import llama_cpp as llama

__all__ = ["BUFFER_LINE", "capturing_buffer_lines", "init_backend", "llama_log_callback"]

# enum ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues the last)
_GGML_LOG_TO_LOGGING = {3: logging.WARNING, 4: logging.ERROR}
_GGML_LOG_CONT = 5
_llama_logger = logging.getLogger("hearth.llama_cpp")
_last_log_level: int | None = None
# While a model loads: llama.cpp's INFO lines that say how much of it each buffer type holds.
_buffer_lines: list[str] | None = None
BUFFER_LINE = re.compile(r"(\S+) model buffer size =\s*([0-9.]+) MiB")


@llama.llama_log_callback  # type: ignore[untyped-decorator]
def _log_callback(level: int, text: bytes, _user_data: Any) -> None:
    # llama.cpp logs hundreds of INFO lines per load; keep warnings and errors only.
    global _last_log_level
    python_level = _last_log_level if level == _GGML_LOG_CONT else _GGML_LOG_TO_LOGGING.get(level)
    _last_log_level = python_level
    message = text.decode("utf-8", "replace").rstrip() if text else ""
    if _buffer_lines is not None and "model buffer size" in message:
        _buffer_lines.append(message)
    if python_level is not None and message:
        _llama_logger.log(python_level, "%s", message)


def llama_log_callback() -> Any:
    """The callback that routes llama.cpp's log lines into Python's logging (libmtmd's too)."""
    return _log_callback


_backend_ready = False


def init_backend() -> None:
    global _backend_ready
    if not _backend_ready:
        llama.llama_log_set(_log_callback, ctypes.c_void_p(0))
        llama.llama_backend_init()
        _backend_ready = True


@contextlib.contextmanager
def capturing_buffer_lines() -> Iterator[list[str]]:
    """The lines llama.cpp logs about its model buffers while this is open (one load at a time:
    the caller holds buffer_types.load_lock)."""
    global _buffer_lines
    lines: list[str] = []
    _buffer_lines = lines
    try:
        yield lines
    finally:
        _buffer_lines = None
