"""Tool-call parsing (streamed in any split) and the schema checks in front of the grammar."""

from __future__ import annotations

import json
import re

import pytest

from hearth.engine.grammar import (
    MAX_REPETITION,
    MAX_SCHEMA_DEPTH,
    MAX_TOTAL_REPETITION,
    SchemaNotEnforcedError,
    SchemaNotSupportedError,
    SchemaTooLargeError,
    check_schema,
    json_schema_grammar,
    without_large_bounds,
    without_unenforced,
)
from hearth.server.core.tools import ToolCallParser, ToolSpec, render_call, tool_grammar

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
    with pytest.raises(SchemaNotEnforcedError) as caught:
        check_schema({"type": "object", "properties": {"age": {"type": "number", "minimum": 0}}})
    assert caught.value.path == "schema.properties.age.minimum"
    with pytest.raises(SchemaNotEnforcedError):
        check_schema({"type": "string", "format": "email"})
    with pytest.raises(SchemaNotEnforcedError):
        check_schema({"type": "array", "uniqueItems": True})
    with pytest.raises(SchemaNotEnforcedError):
        check_schema({"type": "object", "propertyNames": {"pattern": "^a"}})
    with pytest.raises(SchemaNotSupportedError) as invalid:
        check_schema({"$ref": "https://example.com/schema.json"})
    assert not isinstance(invalid.value, SchemaNotEnforcedError)  # refused even when not strict
    with pytest.raises(SchemaNotSupportedError) as empty:
        check_schema({"type": "integer", "minimum": 5, "maximum": 4})
    assert "no integer" in str(empty.value)
    check_schema(
        {
            "title": "Person",
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 20, "description": "a name"},
                "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
                "when": {"type": "string", "format": "date"},
                "age": {"type": "integer", "minimum": 0, "exclusiveMaximum": 150},
                "meta": {"type": "object", "propertyNames": {"type": "string"}},
            },
            "required": ["name"],
            "additionalProperties": False,
        }
    )


def test_a_schema_not_strict_leaves_out_what_cannot_be_enforced() -> None:
    schema = {
        "type": "object",
        "properties": {
            "url": {"type": "string", "format": "uri"},
            "ratio": {"type": "number", "minimum": 0, "maximum": 1},
            "offset": {"type": "integer", "minimum": 0},
            "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        },
    }
    relaxed, dropped = without_unenforced(schema)
    assert sorted(dropped) == [
        "schema.properties.ratio.maximum",
        "schema.properties.ratio.minimum",
        "schema.properties.tags.uniqueItems",
        "schema.properties.url.format",
    ]
    assert relaxed["properties"]["offset"] == {"type": "integer", "minimum": 0}  # enforced
    assert "format" in schema["properties"]["url"]  # the caller's schema is left as it was
    check_schema(relaxed)


@pytest.mark.parametrize(
    ("keyword", "bound", "inside", "outside"),
    [
        ("minimum", 0, [0, 1, 42], [-1, -30]),
        ("maximum", 10, [10, 0, -5], [11, 100]),
        ("exclusiveMinimum", 0, [1, 7], [0, -1]),
        ("exclusiveMaximum", 10, [9, -3], [10, 12]),
    ],
)
def test_integer_bounds_are_enforced_by_the_grammar(
    keyword: str, bound: int, inside: list[int], outside: list[int]
) -> None:
    """One keyword at a time, through the GBNF llama.cpp is given: the rule the converter wrote
    for the integer is read back as a regex and matched (engine/integer_grammar.py checks the
    digit patterns themselves exhaustively)."""
    schema = {"type": "object", "properties": {"n": {"type": "integer", keyword: bound}}}
    rules = dict(
        line.split(" ::= ", 1) for line in json_schema_grammar(schema).gbnf.splitlines() if line
    )
    pattern = _gbnf_digits_to_regex(rules["value-n"].removesuffix(" space"))
    for number in inside:
        assert re.fullmatch(pattern, str(number)), (keyword, number, rules["value-n"])
    for number in outside:
        assert not re.fullmatch(pattern, str(number)), (keyword, number, rules["value-n"])


def _gbnf_digits_to_regex(body: str) -> str:
    """The integer rule's GBNF (quoted digits, classes, counts, alternatives) as a regex."""
    text = re.sub(r'"([-0-9])"', lambda m: re.escape(m.group(1)), body)
    return text.replace(" ", "")


def test_an_annotation_only_schema_is_any_value() -> None:
    """Claude Code's Workflow tool has an argument described and not typed."""
    schema = {"type": "object", "properties": {"args": {"description": "any input"}}}
    check_schema(schema)
    grammar = json_schema_grammar(schema)
    assert "value" in grammar.gbnf


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


@pytest.mark.parametrize(
    ("schema", "path"),
    [
        ({"type": "string", "minLength": 100_000_000}, "schema.minLength"),
        ({"type": "string", "maxLength": 1001}, "schema.maxLength"),
        ({"type": "array", "minItems": 10**40}, "schema.minItems"),
        (
            {"properties": {"a": {"type": "array", "maxItems": 5000}}},
            "schema.properties.a.maxItems",
        ),
        ({"type": "string", "pattern": "^a{0,100000}$"}, "schema.pattern"),
        ({"type": "string", "pattern": "^a{" + "9" * 5000 + "}$"}, "schema.pattern"),
        ({"type": "string", "pattern": "^a{2000,}$"}, "schema.pattern"),
    ],
)
def test_repetition_bounds_past_the_limit_are_refused_by_keyword(
    schema: dict[str, object], path: str
) -> None:
    with pytest.raises(SchemaTooLargeError) as caught:
        check_schema(schema)
    assert caught.value.path == path


def test_bounds_within_the_limit_pass() -> None:
    check_schema(
        {
            "type": "object",
            "properties": {
                "a": {"type": "string", "minLength": 1, "maxLength": MAX_REPETITION},
                "b": {"type": "array", "items": {"type": "integer"}, "maxItems": 10},
                "c": {"type": "string", "pattern": "^[a-z]{3,8}$"},
            },
        }
    )


def nested(depth: int) -> dict[str, object]:
    schema: dict[str, object] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


def test_nesting_past_the_limit_is_refused_without_recursing_to_the_end() -> None:
    check_schema(nested(MAX_SCHEMA_DEPTH))
    with pytest.raises(SchemaTooLargeError) as caught:
        check_schema(nested(5000))  # deeper than Python's recursion limit
    assert caught.value.path == "schema" + ".items" * (MAX_SCHEMA_DEPTH + 1)


def test_without_large_bounds_drops_only_what_is_past_the_limits() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "string", "minLength": 2, "maxLength": 10**9},
            "b": {"type": "string", "pattern": "^x{0,99999}$"},
            "deep": nested(MAX_SCHEMA_DEPTH + 5),
        },
    }
    relaxed, dropped = without_large_bounds(schema)
    assert relaxed["properties"]["a"] == {"type": "string", "minLength": 2}
    assert relaxed["properties"]["b"] == {"type": "string"}
    assert "schema.properties.a.maxLength" in dropped
    assert "schema.properties.b.pattern" in dropped
    check_schema(relaxed)
    json_schema_grammar(relaxed)
    assert schema["properties"]["a"]["maxLength"] == 10**9  # the original is left as sent


def test_bounds_within_the_limit_still_add_up_to_a_limit() -> None:
    per_field = MAX_REPETITION
    fields = MAX_TOTAL_REPETITION // per_field
    props = {f"p{i}": {"type": "string", "minLength": per_field} for i in range(fields + 1)}
    with pytest.raises(SchemaTooLargeError) as caught:
        check_schema({"type": "object", "properties": props})
    assert caught.value.path == f"schema.properties.p{fields}.minLength"
    relaxed, dropped = without_large_bounds({"type": "object", "properties": props})
    assert dropped == [f"schema.properties.p{fields}.minLength"]
    check_schema(relaxed)
