"""Server settings. Every field reads `HEARTH_<NAME>` from the environment; the CLI flags of
`hearth serve` are generated from these fields (hearth.cli.serve), so the two never drift."""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import ByteSize, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from hearth.keep_alive import parse_keep_alive

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "ServeSettings",
    "hearth_home",
    "parse_duration",
    "physical_cores",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8642

_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([smhd])")


def hearth_home() -> Path:
    """Hearth's data directory: $HEARTH_HOME, else $XDG_DATA_HOME/hearth (~/.local/share)."""
    if home := os.environ.get("HEARTH_HOME"):
        return Path(home).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data).expanduser() / "hearth"


def parse_duration(value: str | int | float) -> float:
    """Seconds in a positive duration: a number of seconds, or units like '30d', '12h', '1h30m',
    '90s'."""
    problem = f"invalid duration {value!r}: give seconds, or a duration like '30d', '12h', '10m'"
    if isinstance(value, bool):
        raise ValueError(problem)
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            seconds, position = 0.0, 0
            while position < len(text):
                match = _DURATION_PART.match(text, position)
                if match is None:
                    raise ValueError(problem) from None
                seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
                position = match.end()
            if not text:
                raise ValueError(problem) from None
    if not 0 < seconds < float("inf"):
        raise ValueError(f"a duration must be more than 0 and finite, not {value!r}")
    return seconds


@cache
def physical_cores() -> int:
    """Physical cores this process may run on; llama.cpp is slower on hyperthread siblings."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    logical = len(allowed) if allowed else (os.cpu_count() or 1)
    try:
        cores: set[tuple[str, str]] = set()
        cpu = physical = ""
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "processor":
                    cpu = value
                elif key == "physical id":
                    physical = value
                elif key == "core id" and (allowed is None or int(cpu) in allowed):
                    cores.add((physical, value))
        return max(1, min(len(cores), logical)) if cores else logical
    except (OSError, ValueError):
        return logical


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HEARTH_", extra="ignore")

    host: str = Field(DEFAULT_HOST, description="Address to bind. Loopback unless told otherwise.")
    port: int = Field(DEFAULT_PORT, ge=0, le=65535, description="TCP port to listen on.")
    model: str | None = Field(
        None, description="Model to serve: 'smollm2:135m' (embedded) or a path to a .gguf file."
    )
    ctx_size: int | None = Field(
        None,
        ge=64,
        description="Context tokens per slot; the KV cache holds ctx_size × parallel. Default: "
        "the model's trained context, or less where its KV cache at --parallel would take more "
        "than half the memory left after the weights.",
    )
    parallel: int = Field(4, ge=1, le=256, description="Slots: sequences decoded together.")
    threads: int = Field(
        default_factory=physical_cores, ge=1, description="CPU threads (default: physical cores)."
    )
    api_key: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="API keys (Bearer or x-api-key) for /v1, /api, /admin, /tokenize, "
        "/detokenize and /metrics; each key's stored responses are its own (comma-separated in "
        "the env). Empty: no auth.",
    )
    cors_origin: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins allowed by CORS, and to send writes (comma-separated; '*': any). "
        "Besides these, writes carrying a browser's Origin are refused unless from the server's "
        "own page, loopback or app:// file:// tauri:// vscode-webview://.",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names a loopback-bound server answers besides localhost, 127.0.0.1 and "
        "[::1] (comma-separated; '*': any). Others get 403, against DNS rebinding.",
    )
    metrics_public: bool = Field(
        False, description="Serve /metrics without an API key even when --api-key is set."
    )
    no_ui: bool = Field(
        False, description="Leave out the web page at / (chat, models, pulls); the API stays."
    )
    max_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest request body accepted; larger gets 413."
    )
    max_batch_tokens: int = Field(
        512, ge=16, description="Most tokens in one decode step (llama.cpp's n_batch)."
    )
    max_prefill_tokens: int = Field(
        128, ge=1, description="Most prompt tokens per step while other requests are generating."
    )
    max_queue: int = Field(
        64, ge=0, description="Requests that may wait for a slot; past it, 429 with Retry-After."
    )
    queue_timeout: float = Field(
        300.0, gt=0, description="Seconds a request may wait for a slot before a 503."
    )
    drain_timeout: float = Field(
        30.0,
        ge=0,
        description="On SIGTERM or Ctrl-C, seconds running requests get to finish while new ones "
        "get 503; those still running then end with an error. A second signal stops at once.",
    )
    flash_attn: Literal["auto", "on", "off"] = Field(
        "auto",
        description="llama.cpp flash attention. 'off' makes outputs independent of how a prompt "
        "was split between cache and batch, at some speed on long contexts.",
    )
    cache_type_k: Literal["f16", "q8_0", "q4_0"] = Field(
        "f16",
        description="Type of the KV cache's keys: q8_0 halves their memory, q4_0 quarters it, "
        "at a small cost in quality (README: KV cache types).",
    )
    cache_type_v: Literal["f16", "q8_0", "q4_0"] = Field(
        "f16",
        description="Type of the KV cache's values, as --cache-type-k; a quantized V cache needs "
        "flash attention (--flash-attn auto or on).",
    )
    kv_unified: bool = Field(
        False,
        description="One KV cache shared by all slots (--parallel x --ctx-size cells) instead of "
        "one --ctx-size part each: a request may then use the whole of it while others are idle. "
        "When it fills, idle caches go first, then the request holding the most of it ends with "
        "a 503 error so that the others go on.",
    )
    prompt_cache_disk: ByteSize = Field(
        ByteSize(2 * 2**30),
        ge=0,
        description="Disk the prompt cache may use in the Hearth home (bytes, or '2GiB'): slots' "
        "KV caches saved at unload and on a graceful stop, restored when a prompt starts with "
        "one; least recently used evicted. 0: off.",
    )
    speculation: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Speculative decoding from the request's own text (its 'prediction', or "
        "n-grams of prompt and output): 'auto' drafts while few requests decode and drafts are "
        "accepted, 'on' always, 'off' never. The output is the same either way.",
    )
    quantize: Literal["none", "q8_0", "q4_0"] = Field(
        "none",
        description="Serve the model re-quantized to a type with fast batched CPU kernels "
        "(converted once into the Hearth home).",
    )
    repack: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Weights repacked at load into the CPU's fast layouts (llama.cpp's extra "
        "buffer types): 'auto' uses them all but AMX, which it uses only where a probe proved it "
        "works on this machine (it crashes on some Xeons); 'on' uses every one, AMX included; "
        "'off' none (llama-server's --no-repack).",
    )
    mmproj: Path | None = Field(
        None,
        description="A multimodal projector GGUF (mmproj) for --model FILE: the model then "
        "takes images (llama.cpp's libmtmd).",
    )
    max_image_bytes: ByteSize = Field(
        ByteSize(10 * 1024 * 1024),
        description="The largest image a request may send, decoded (bytes, or 10MiB).",
    )
    allow_media_urls: bool = Field(
        False,
        description="Fetch images given as http(s) addresses. Off: a server that fetches what "
        "its clients name can be made to reach the local network (docs/media.md).",
    )
    runner: Literal["process", "inline"] = Field(
        "process",
        description="Where each model runs: 'process', a runner process per model, so that a "
        "crash in llama.cpp ends that model's requests and it loads again, and nothing else "
        "notices; 'inline', in the server's own process (a crash ends the server).",
    )
    runner_watchdog: float = Field(
        60.0,
        gt=0,
        description="Seconds a runner may go without finishing an engine step while it has "
        "requests before it is killed and restarted (at least 20 times its slowest step).",
    )
    gpu_layers: int = Field(
        -1, ge=-1, description="Layers to offload to a GPU; -1 offloads all that fit the backend."
    )
    keep_alive: str = Field(
        "5m",
        description="How long a model stays loaded after its last request: seconds or a duration "
        "('10m', '1h'); 0 unloads at once, -1 never. The startup model stays loaded unless this "
        "is set explicitly.",
    )
    max_loaded_models: int = Field(
        3, ge=1, description="Models loaded at once; the least recently used idle one makes room."
    )
    max_memory: ByteSize | None = Field(
        None,
        description="Memory the loaded models may take, by their estimates (bytes, or '4GiB', "
        "'512MB'); the least recently used idle one makes room. Default: no limit.",
    )
    reasoning_budget: int = Field(
        -1,
        ge=-1,
        description="Most tokens a reasoning model may think before Hearth closes its thinking "
        "block itself and it answers, when the request sets no budget (-1: no limit).",
    )
    journal: Path | None = Field(
        None,
        description="Folder for the request journal: one JSON line per request (route, model, "
        "status, tokens, timings), rotated by size; read it with `hearth journal`. Default: off.",
    )
    journal_bodies: bool = Field(
        False, description="Also write request and response bodies (64 KiB each) to the journal."
    )
    journal_max_bytes: ByteSize = Field(
        ByteSize(10 * 2**20),
        gt=0,
        description="Size at which the journal file is rotated (bytes, or '10MiB'); the last "
        "five rotated files are kept.",
    )
    responses_max_age: str = Field(
        "30d",
        description="How long /v1/responses keeps a stored response (and its conversation, for "
        "previous_response_id) in the Hearth home: seconds or a duration ('30d', '12h', '10m').",
    )
    no_ollama_store: bool = Field(
        False,
        description="Leave Ollama's model store ($OLLAMA_MODELS, else ~/.ollama/models) out: "
        "its models are otherwise listed and served in place under their Ollama names.",
    )
    config: Path | None = Field(
        None, description="Presets file (default: hearth.toml in the Hearth home, if present)."
    )
    log_level: str = Field("info", description="Log level: debug, info, warning or error.")

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _valid_keep_alive(cls, value: object) -> object:
        if isinstance(value, int | float | str):
            parse_keep_alive(value)
            return str(value).strip()
        return value

    @field_validator("responses_max_age", mode="before")
    @classmethod
    def _valid_max_age(cls, value: object) -> object:
        if isinstance(value, int | float | str):
            parse_duration(value)
            return str(value).strip()
        return value

    @property
    def responses_max_age_s(self) -> float:
        """`responses_max_age` in seconds."""
        return parse_duration(self.responses_max_age)

    @field_validator("api_key", "cors_origin", "allowed_hosts", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, (list, tuple)):
            return [str(part).strip() for part in value if str(part).strip()]
        return value

    @model_validator(mode="after")
    def _quantized_v_needs_flash_attn(self) -> ServeSettings:
        # llama.cpp has no kernel for a quantized V cache without flash attention.
        if self.cache_type_v != "f16" and self.flash_attn == "off":
            raise ValueError(
                f"--cache-type-v {self.cache_type_v} needs flash attention, but --flash-attn is "
                "off: set --flash-attn auto (or on), or keep --cache-type-v f16"
            )
        return self

    @model_validator(mode="after")
    def _batch_fits_every_slot(self) -> ServeSettings:
        # Every generating slot puts one token into each step; llama.cpp asserts on less.
        if self.max_batch_tokens < self.parallel:
            raise ValueError(
                f"max_batch_tokens ({self.max_batch_tokens}) must be at least parallel "
                f"({self.parallel}): each slot adds a token to every decode step"
            )
        return self
