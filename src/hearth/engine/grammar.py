"""JSON Schema → GBNF for llama.cpp's grammar sampler.

The conversion is llama.cpp's own (`json_schema_to_gbnf`'s `SchemaConverter`, shipped in
llama-cpp-python). It ignores keywords it does not know, and an ignored keyword would let the
model write JSON that fails the schema, so `check_schema` refuses those first, by path.

Repetition bounds (minLength, maxLength, minItems, maxItems, `{m,n}` in a pattern) and nesting
are amplifiers: the grammar grows with each, and `minLength: 100000000` took 16 s and 3.3 GB.
Past `MAX_REPETITION` each, `MAX_TOTAL_REPETITION` together, or `MAX_SCHEMA_DEPTH` levels,
`check_schema` refuses them (`SchemaTooLargeError`), and `without_large_bounds` drops them from
a schema that need not be enforced exactly (a tool that is not strict). llama.cpp's own grammar
parser refuses upper bounds past about 1000 as well.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from hearth.engine.integer_grammar import IntegerBounds, gbnf, integer_patterns
from hearth.engine.types import Grammar

__all__ = [
    "MAX_REPETITION",
    "MAX_SCHEMA_DEPTH",
    "MAX_TOTAL_REPETITION",
    "GrammarBuilder",
    "SchemaNotEnforcedError",
    "SchemaNotSupportedError",
    "SchemaTooLargeError",
    "check_schema",
    "json_schema_grammar",
    "without_large_bounds",
    "without_unenforced",
]

# The largest repetition count a schema may ask for: llama.cpp compiles up to about 1000 as an
# upper bound, and a larger lower bound costs memory in proportion.
MAX_REPETITION = 1000
# Nested schemas (properties, items, anyOf...) deeper than this are refused; real ones stay
# within a dozen levels.
MAX_SCHEMA_DEPTH = 32
# Bounds within the limit still add up: 200 strings of minLength 1000 took a second and 140 MB
# to compile. All of a schema's bounds together may ask for this many repetitions.
MAX_TOTAL_REPETITION = 50_000
_HUGE = 10**9
_REPETITION_KEYWORDS = ("minLength", "maxLength", "minItems", "maxItems")
# A regex quantifier {m}, {m,} or {m,n}.
_PATTERN_BOUND = re.compile(r"\{(\d+)(?:,(\d*))?\}")

# Keywords the converter enforces.
_ENFORCED = frozenset(
    {
        "type", "properties", "required", "additionalProperties", "items", "prefixItems",
        "minItems", "maxItems", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs",
        "definitions", "pattern", "format", "minLength", "maxLength",
    }
)  # fmt: skip
# Integer bounds: enforced on an `integer` (engine/integer_grammar.py); on a `number` they are
# float bounds, which a grammar cannot enforce.
_INTEGER_BOUNDS = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})
# `propertyNames` that every JSON key satisfies (Claude Code's tools send {"type": "string"}).
_TRIVIAL_PROPERTY_NAMES: tuple[Any, ...] = ({}, {"type": "string"}, True)
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


class SchemaNotEnforcedError(SchemaNotSupportedError):
    """A keyword the grammar cannot enforce (a float bound, a format, `uniqueItems`…): a schema
    that is not strict is served without it (`without_unenforced`); a strict one is refused."""


class SchemaTooLargeError(SchemaNotSupportedError):
    """A repetition bound or a nesting past the limits; `path` ends at the keyword."""


def _pattern_count(pattern: str) -> int:
    """The repetitions a pattern's quantifiers ask for, added up ('a{2,5}b{3}' is 8)."""
    total = 0
    for match in _PATTERN_BOUND.finditer(pattern):
        # A count too long to be worth reading is too large (int() refuses 4300 digits).
        total += max(_HUGE if len(n) > 9 else int(n) for n in match.groups() if n)
    return total


def _repetitions(schema: dict[str, Any]) -> list[tuple[str, int]]:
    """(keyword, count) for each repetition bound of this schema (not of its subschemas)."""
    found: list[tuple[str, int]] = []
    for key in _REPETITION_KEYWORDS:
        count = schema.get(key)
        if isinstance(count, int) and not isinstance(count, bool) and count > 0:
            found.append((key, count))
    pattern = schema.get("pattern")
    if isinstance(pattern, str) and (in_pattern := _pattern_count(pattern)) > 0:
        found.append(("pattern", in_pattern))
    return found


def _check_bounds(schema: dict[str, Any], path: str, budget: list[int]) -> None:
    """Refuse a bound past MAX_REPETITION, or one that takes the schema's bounds together past
    MAX_TOTAL_REPETITION (`budget` holds what is left)."""
    for key, count in _repetitions(schema):
        if count > MAX_REPETITION:
            raise SchemaTooLargeError(
                f"{path}.{key}", f"{count} repetitions are more than the {MAX_REPETITION} allowed"
            )
        budget[0] -= count
        if budget[0] < 0:
            raise SchemaTooLargeError(
                f"{path}.{key}",
                f"the schema's repetition bounds add up to more than {MAX_TOTAL_REPETITION}",
            )


def _subschemas(schema: dict[str, Any]) -> list[tuple[str, Any]]:
    """(key path, subschema) for each schema nested directly in `schema`."""
    found: list[tuple[str, Any]] = []
    for key in _SUBSCHEMA_MAPS:
        value = schema.get(key)
        if isinstance(value, dict):
            found.extend((f"{key}.{name}", sub) for name, sub in value.items())
    for key in _SUBSCHEMA_LISTS:
        value = schema.get(key)
        if isinstance(value, list):
            found.extend((f"{key}[{i}]", sub) for i, sub in enumerate(value))
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            found.append((key, schema[key]))
    return found


def without_large_bounds(schema: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A copy of `schema` without what `check_schema` refuses as too large: each repetition
    bound past MAX_REPETITION, each pattern holding one, and each subschema past
    MAX_SCHEMA_DEPTH (any JSON there). Also the paths of what was dropped."""
    relaxed = copy.deepcopy(schema)
    dropped: list[str] = []
    budget = MAX_TOTAL_REPETITION
    stack: list[tuple[dict[str, Any], str, int]] = [(relaxed, "schema", 0)]
    while stack:
        node, path, depth = stack.pop()
        for key, count in _repetitions(node):
            if count > MAX_REPETITION or count > budget:
                del node[key]
                dropped.append(f"{path}.{key}")
            else:
                budget -= count
        for where, sub in reversed(_subschemas(node)):  # popped in the schema's order
            if not isinstance(sub, dict):
                continue
            if depth + 1 > MAX_SCHEMA_DEPTH:
                if where in ("items", "additionalProperties"):
                    del node[where]  # any items, any further properties
                else:
                    sub.clear()  # a property or a branch: the converter reads {} as any object
                dropped.append(f"{path}.{where}")
            else:
                stack.append((sub, f"{path}.{where}", depth + 1))
    return relaxed, dropped


def check_schema(
    schema: Any, path: str = "schema", depth: int = 0, budget: list[int] | None = None
) -> None:
    """Raise SchemaNotSupportedError naming the first part the grammar could not enforce.
    `depth` and `budget` (the repetitions left) carry the limits into subschemas."""
    if budget is None:
        budget = [MAX_TOTAL_REPETITION]
    if depth > MAX_SCHEMA_DEPTH and schema not in ({}, True):  # those two accept any value
        raise SchemaTooLargeError(
            path, f"schemas nested deeper than {MAX_SCHEMA_DEPTH} levels are not allowed"
        )
    if isinstance(schema, bool):
        if not schema:
            raise SchemaNotSupportedError(path, "a schema of `false` accepts nothing")
        return
    if not isinstance(schema, dict):
        raise SchemaNotSupportedError(path, "a schema must be an object")
    _check_bounds(schema, path, budget)
    for key, value in schema.items():
        where = f"{path}.{key}"
        if key in _ANNOTATIONS:
            continue
        if not _enforced(schema, key):
            raise SchemaNotEnforcedError(where, _why_not_enforced(schema, key))
        if key == "type":
            types = value if isinstance(value, list) else [value]
            bad = [t for t in types if t not in _TYPES]
            if bad:
                raise SchemaNotSupportedError(where, f"unknown type {bad[0]!r}")
        elif key in _INTEGER_BOUNDS and IntegerBounds.from_schema(schema).empty:
            raise SchemaNotSupportedError(where, "no integer lies within these bounds")
        elif key == "$ref" and not (isinstance(value, str) and value.startswith("#")):
            raise SchemaNotSupportedError(where, "only local references ('#/...') are allowed")
        elif key in _SUBSCHEMA_MAPS:
            if not isinstance(value, dict):
                raise SchemaNotSupportedError(where, "must be an object of schemas")
            for name, sub in value.items():
                check_schema(sub, f"{where}.{name}", depth + 1, budget)
        elif key in _SUBSCHEMA_LISTS:
            if not isinstance(value, list) or not value:
                raise SchemaNotSupportedError(where, "must be a non-empty list of schemas")
            for i, sub in enumerate(value):
                check_schema(sub, f"{where}[{i}]", depth + 1, budget)
        elif key in ("items", "additionalProperties") and not isinstance(value, bool):
            check_schema(value, where, depth + 1, budget)


def _enforced(schema: dict[str, Any], key: str) -> bool:
    """Whether the grammar enforces `key` where it stands in `schema`."""
    if key in _INTEGER_BOUNDS:
        return schema.get("type") == "integer"
    if key == "format":
        return schema.get("format") in _FORMATS
    if key == "propertyNames":
        return any(schema[key] == trivial for trivial in _TRIVIAL_PROPERTY_NAMES)
    return key in _ENFORCED


def _why_not_enforced(schema: dict[str, Any], key: str) -> str:
    if key in _INTEGER_BOUNDS:
        return f"the keyword '{key}' cannot be enforced on a non-integer (a float bound)"
    if key == "format":
        return f"the format {schema[key]!r} cannot be enforced"
    return f"the keyword '{key}' cannot be enforced"


def without_unenforced(schema: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """For a schema that is not strict: a copy without the keywords the grammar cannot enforce
    (float bounds, formats, `uniqueItems`…), and the paths of what was left out."""
    relaxed = copy.deepcopy(schema)
    dropped: list[str] = []
    stack: list[tuple[Any, str]] = [(relaxed, "schema")]
    while stack:
        node, path = stack.pop()
        if not isinstance(node, dict):
            continue
        for key in list(node):
            if key not in _ANNOTATIONS and not _enforced(node, key):
                del node[key]
                dropped.append(f"{path}.{key}")
        for where, sub in reversed(_subschemas(node)):
            stack.append((sub, f"{path}.{where}"))
    return relaxed, dropped


def _converter() -> Any:
    """llama.cpp's converter, taught two things it lacks: integer bounds, and a schema of
    annotations only (`{"description": …}`), which accepts any value."""
    from llama_cpp.llama_grammar import PRIMITIVE_RULES, RESERVED_NAMES, SchemaConverter

    class Converter(SchemaConverter):  # type: ignore[misc]
        def visit(self, schema: Any, name: str) -> str:
            if isinstance(schema, dict) and not ({"enum", "const"} & schema.keys()):
                rule_name = name + "-" if name in RESERVED_NAMES else name or "root"
                if schema and schema.keys() <= _ANNOTATIONS:
                    return str(self._add_primitive("value", PRIMITIVE_RULES["value"]))
                if schema.get("type") == "integer" and _INTEGER_BOUNDS & schema.keys():
                    digits = gbnf(integer_patterns(IntegerBounds.from_schema(schema)))
                    return str(self._add_rule(rule_name, f"{digits} space"))
            return str(super().visit(schema, name))

    return Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)


class GrammarBuilder:
    """One GBNF made of several schemas' rules and a root the caller writes."""

    def __init__(self) -> None:
        self._converter = _converter()

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
