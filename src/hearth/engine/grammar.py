"""JSON Schema → GBNF for llama.cpp's grammar sampler.

The conversion is llama.cpp's own (`json_schema_to_gbnf`'s `SchemaConverter`, shipped in
llama-cpp-python). It ignores keywords it does not know, and an ignored keyword would let the
model write JSON that fails the schema, so `check_schema` refuses those first, by path.
"""

from __future__ import annotations

import json
from typing import Any

from hearth.engine.types import Grammar

__all__ = ["GrammarBuilder", "SchemaNotSupportedError", "check_schema", "json_schema_grammar"]

# Keywords the converter enforces.
_ENFORCED = frozenset(
    {
        "type", "properties", "required", "additionalProperties", "items", "prefixItems",
        "minItems", "maxItems", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs",
        "definitions", "pattern", "format", "minLength", "maxLength",
    }
)  # fmt: skip
# Keywords that describe and never constrain.
_ANNOTATIONS = frozenset(
    {
        "title", "description", "default", "examples", "$schema", "$id", "$comment",
        "deprecated", "readOnly", "writeOnly", "strict",
    }
)  # fmt: skip
_LOOSE_CHAR_RULE = 'char ::= [^"\\\\] |'
_STRICT_CHAR_RULE = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'
_FORMATS = frozenset({"date", "time", "date-time", "uuid"})
_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")


class SchemaNotSupportedError(ValueError):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def check_schema(schema: Any, path: str = "schema") -> None:
    """Raise SchemaNotSupportedError naming the first part the grammar could not enforce."""
    if isinstance(schema, bool):
        if not schema:
            raise SchemaNotSupportedError(path, "a schema of `false` accepts nothing")
        return
    if not isinstance(schema, dict):
        raise SchemaNotSupportedError(path, "a schema must be an object")
    for key, value in schema.items():
        where = f"{path}.{key}"
        if key in _ANNOTATIONS:
            continue
        if key not in _ENFORCED:
            raise SchemaNotSupportedError(where, f"the keyword '{key}' cannot be enforced")
        if key == "type":
            types = value if isinstance(value, list) else [value]
            bad = [t for t in types if t not in _TYPES]
            if bad:
                raise SchemaNotSupportedError(where, f"unknown type {bad[0]!r}")
        elif key == "format" and value not in _FORMATS:
            raise SchemaNotSupportedError(where, f"the format {value!r} cannot be enforced")
        elif key == "$ref" and not (isinstance(value, str) and value.startswith("#")):
            raise SchemaNotSupportedError(where, "only local references ('#/...') are allowed")
        elif key in _SUBSCHEMA_MAPS:
            if not isinstance(value, dict):
                raise SchemaNotSupportedError(where, "must be an object of schemas")
            for name, sub in value.items():
                check_schema(sub, f"{where}.{name}")
        elif key in _SUBSCHEMA_LISTS:
            if not isinstance(value, list) or not value:
                raise SchemaNotSupportedError(where, "must be a non-empty list of schemas")
            for i, sub in enumerate(value):
                check_schema(sub, f"{where}[{i}]")
        elif key in ("items", "additionalProperties") and not isinstance(value, bool):
            check_schema(value, where)


class GrammarBuilder:
    """One GBNF made of several schemas' rules and a root the caller writes."""

    def __init__(self) -> None:
        from llama_cpp.llama_grammar import SchemaConverter

        self._converter = SchemaConverter(
            prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
        )

    def add_schema(self, schema: dict[str, Any], name: str) -> str:
        """Add `schema`'s rules; the name of the rule that matches it."""
        check_schema(schema)
        try:
            resolved = self._converter.resolve_refs(schema, name)
            rule: str = self._converter.visit(resolved, name)
        except (ValueError, AssertionError, KeyError, TypeError, RecursionError) as exc:
            raise SchemaNotSupportedError("schema", f"the grammar converter failed: {exc}") from exc
        return rule

    @staticmethod
    def literal(text: str) -> str:
        return json.dumps(text)  # GBNF string literals use JSON's escapes

    def build(self, root: str, triggers: tuple[str, ...] = ()) -> Grammar:
        rules = self._converter.format_grammar()
        # The converter lets control characters into strings, and JSON forbids them unescaped.
        rules = rules.replace(_LOOSE_CHAR_RULE, _STRICT_CHAR_RULE)
        return Grammar(gbnf=f"root ::= {root}\n{rules}\n", triggers=triggers)


def json_schema_grammar(schema: dict[str, Any]) -> Grammar:
    builder = GrammarBuilder()
    return builder.build(builder.add_schema(schema, "value"))
