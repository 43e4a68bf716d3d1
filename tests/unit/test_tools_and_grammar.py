"""Tool-call parsing (streamed in any split) and the schema checks in front of the grammar."""

from __future__ import annotations

import json

import pytest

from hearth.engine.grammar import SchemaNotSupportedError, check_schema, json_schema_grammar
from hearth.server.tools import ToolCallParser, ToolSpec, render_call, tool_grammar

OUTPUT = (
    "Let me check.\n"
    + render_call("get_weather", '{"city": "Paris"}')
    + "\n"
    + render_call("get_time", '{"zone": "CET"} ')
)


def parse(pieces: list[str]) -> tuple[str, list[tuple[str, str]], list[tuple[str, object]]]:
    parser = ToolCallParser()
    events = []
    for piece in pieces:
        events.extend(parser.feed(piece))
    events.extend(parser.finish())
    content = "".join(str(v) for k, v in events if k == "content")
    return content, [(c.name, c.arguments) for c in parser.calls], events


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_calls_parse_the_same_however_the_output_is_split(size: int) -> None:
    pieces = [OUTPUT[i : i + size] for i in range(0, len(OUTPUT), size)]
    content, calls, events = parse(pieces)
    assert content.strip() == "Let me check."  # blank text around calls is dropped
    assert calls == [("get_weather", '{"city": "Paris"}'), ("get_time", '{"zone": "CET"}')]
    for _, arguments in calls:
        json.loads(arguments)
    # The streamed argument pieces add up to the arguments.
    streamed = "".join(str(v) for k, v in events if k == "arguments")
    assert streamed == '{"city": "Paris"}{"zone": "CET"}'


def test_plain_text_with_angle_brackets_is_content() -> None:
    content, calls, _ = parse(["a < b and <tool", "s> are fine"])
    assert content == "a < b and <tools> are fine"
    assert calls == []


def test_a_call_cut_short_keeps_what_came() -> None:
    content, calls, _ = parse([render_call("f", '{"x": 1}')[:-16]])
    assert content == ""
    assert calls[0][0] == "f"
    assert calls[0][1].startswith('{"x"')


def test_unenforceable_keywords_are_refused_by_path() -> None:
    with pytest.raises(SchemaNotSupportedError) as caught:
        check_schema({"type": "object", "properties": {"age": {"type": "integer", "minimum": 0}}})
    assert caught.value.path == "schema.properties.age.minimum"
    with pytest.raises(SchemaNotSupportedError):
        check_schema({"type": "string", "format": "email"})
    with pytest.raises(SchemaNotSupportedError):
        check_schema({"$ref": "https://example.com/schema.json"})
    check_schema(
        {
            "title": "Person",
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 20, "description": "a name"},
                "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
                "when": {"type": "string", "format": "date"},
            },
            "required": ["name"],
            "additionalProperties": False,
        }
    )


def test_grammars_name_their_root() -> None:
    grammar = json_schema_grammar({"type": "object", "properties": {"a": {"type": "integer"}}})
    assert grammar.gbnf.startswith("root ::= ")
    assert not grammar.triggers
    tools = [ToolSpec("f", "", {"type": "object"}), ToolSpec("g", "", {"type": "object"})]
    lazy = tool_grammar(tools, lazy=True, parallel=True)
    assert lazy.triggers and "<tool_call>" in lazy.triggers[0]
    assert "fn0-arguments" in lazy.gbnf and "fn1-arguments" in lazy.gbnf
    # JSON strings never hold raw control characters.
    assert "\\x00-\\x1F" in lazy.gbnf
