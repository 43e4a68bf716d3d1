"""The OpenAI Agents SDK (`openai-agents`) runs an agent with a function tool against Hearth,
through the Responses API it uses by default."""

from __future__ import annotations

import asyncio

import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)

from tests.server.conftest import MODEL, HearthServer

pytestmark = pytest.mark.server


def test_an_agent_with_one_tool_runs_to_its_final_output(server: HearthServer) -> None:
    set_tracing_disabled(True)  # traces would go to OpenAI's cloud
    cities: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        cities.append(city)
        return f"It is 21 degrees and sunny in {city}."

    async def run() -> str:
        client = server.async_client()
        try:
            agent = Agent(
                name="Weather",
                instructions="Use the get_weather tool, then answer in one sentence.",
                model=OpenAIResponsesModel(model=MODEL, openai_client=client),
                model_settings=ModelSettings(tool_choice="required", temperature=0, max_tokens=80),
                tools=[get_weather],
            )
            result = await Runner.run(agent, "What is the weather in Paris?", max_turns=4)
            return str(result.final_output)
        finally:
            await client.close()

    final_output = asyncio.run(run())
    assert cities, "the agent never called its tool"
    assert final_output.strip()
