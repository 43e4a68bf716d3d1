"""Function tools and the tool choice as OpenAI's chat completions writes them, which Ollama's
/api/chat shares: `[{"type": "function", "function": {...}}]` to `Tool`s, and "none", "auto",
"required" or a named function to a `ToolChoice`. Errors name the wire path (`tools[0].function`).
"""

from __future__ import annotations

from typing import Any

from hearth.errors import InvalidRequestError
from hearth.server.core.conversation import Tool, ToolChoice

__all__ = ["tool_choice", "tools_from"]


def tools_from(tools: list[dict[str, Any]]) -> tuple[Tool, ...]:
    """Chat completions' `tools`: [{"type": "function", "function": {...}}]."""
    converted = []
    for i, tool in enumerate(tools):
        param = f"tools[{i}]"
        function = tool.get("function")
        if tool.get("type") != "function" or not isinstance(function, dict):
            raise InvalidRequestError(
                "Each tool must be {'type': 'function', 'function': {...}}.", param=param
            )
        name = function.get("name")
        if not isinstance(name, str):
            raise InvalidRequestError(
                "A function name must be 1 to 64 letters, digits, underscores or dashes.",
                param=f"{param}.function.name",
            )
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            raise InvalidRequestError(
                "'parameters' must be a JSON Schema object.", param=f"{param}.function.parameters"
            )
        description = function.get("description", "")
        converted.append(
            Tool(
                name,
                description if isinstance(description, str) else "",
                parameters,
                param=f"{param}.function",
                strict=function.get("strict") is True,
            )
        )
    return tuple(converted)


def tool_choice(
    choice: str | dict[str, Any] | None, has_tools: bool, parallel: bool | None
) -> ToolChoice:
    if choice is not None and not has_tools:
        raise InvalidRequestError(
            "'tool_choice' is only allowed when 'tools' are specified.", param="tool_choice"
        )
    if parallel is not None and not has_tools:
        raise InvalidRequestError(
            "'parallel_tool_calls' is only allowed when 'tools' are specified.",
            param="parallel_tool_calls",
        )
    allow_parallel = parallel is not False
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if choice.get("type") != "function" or not isinstance(name, str):
            raise InvalidRequestError(
                "'tool_choice' must be 'none', 'auto', 'required' or "
                "{'type': 'function', 'function': {'name': ...}}.",
                param="tool_choice",
            )
        return ToolChoice("named", name, parallel=allow_parallel)
    if choice is None:
        return ToolChoice("auto", parallel=allow_parallel)
    if choice not in ("none", "auto", "required"):
        raise InvalidRequestError(
            f"Invalid 'tool_choice' {choice!r}: use 'none', 'auto', 'required' or a function.",
            param="tool_choice",
        )
    return ToolChoice(choice, parallel=allow_parallel)  # type: ignore[arg-type]
