"""The engine: continuous batching over llama.cpp. Only `llama_runner`, `embedder`, `devices`,
`buffer_types`, `quantize` and `grammar` import it.

Import the llama-backed pieces from their modules (`hearth.engine.llama_runner`), so that
importing this package stays cheap for the CLI.
"""

from hearth.engine.types import (
    BatchBudget,
    EngineStats,
    FinishReason,
    GenerationRequest,
    RequestOutput,
    SamplingParams,
)

__all__ = [
    "BatchBudget",
    "EngineStats",
    "FinishReason",
    "GenerationRequest",
    "RequestOutput",
    "SamplingParams",
]
