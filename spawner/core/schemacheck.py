"""JSON Schema validation with Teachlab's one-line problems: ``FILE:YAML.PATH: what is wrong (how to fix)``.

Used for every hand-written file a person gives Teachlab (course.yaml, flavor.yaml, the site file): the
schema says what is allowed, and each error becomes one line naming the key, what was found and a fix
taken from the schema's own ``examples`` and ``description``.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from typing import Any

import jsonschema

from .problems import Problem, format_yaml_path

_TYPE_WORDS = {
    "string": "text",
    "integer": "a whole number",
    "number": "a number",
    "object": "a mapping (key: value lines)",
    "array": "a list",
    "boolean": "true or false",
}


def _example_fix(schema: Mapping[str, Any], key: object) -> str:
    example = (schema.get("examples") or [None])[0]
    description = schema.get("description", "").rstrip(".")
    shown_key = key if isinstance(key, str) else "-"
    parts = []
    if example is not None:
        parts.append(f"write e.g. {shown_key}: {json.dumps(example)}")
    if description:
        parts.append(description)
    return "; ".join(parts) or "see the reference documentation"


def _describe(value: Any) -> str:
    kind = {str: "text", bool: "true/false", int: "a number", float: "a number", list: "a list", dict: "a mapping"}
    if value is None:
        return "empty"
    return f"{kind.get(type(value), type(value).__name__)} {json.dumps(value)[:60]}"


def _schema_problems(error: jsonschema.ValidationError, shown_as: str) -> list[Problem]:
    path = list(error.absolute_path)
    key = path[-1] if path else None
    schema = error.schema if isinstance(error.schema, dict) else {}
    instance = error.instance
    kind = error.validator

    def problem(message: str, fix: str, where: list[object] | None = None) -> Problem:
        return Problem(shown_as, format_yaml_path(path if where is None else where), message, fix)

    if kind == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        found = []
        for extra in sorted(set(instance) - set(allowed), key=str):
            close = difflib.get_close_matches(str(extra), allowed, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            found.append(problem("unknown key", f"{hint}allowed here: {', '.join(allowed)}", path + [extra]))
        return found
    if kind == "required":
        missing = error.message.split("'")[1]
        subschema = schema.get("properties", {}).get(missing, {})
        return [problem("missing key", _example_fix(subschema, missing), path + [missing])]
    if kind == "type":
        wanted = " or ".join(
            _TYPE_WORDS.get(t, t)
            for t in ([error.validator_value] if isinstance(error.validator_value, str) else error.validator_value)
        )
        return [problem(f"must be {wanted}, not {_describe(instance)}", _example_fix(schema, key))]
    if kind == "enum":
        return [
            problem(f"{json.dumps(instance)} is not a known value", f"use one of: {', '.join(map(str, error.validator_value))}")
        ]
    if kind == "format":
        return [problem(f"{json.dumps(instance)} is not a valid {error.validator_value}", _example_fix(schema, key))]
    if kind in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        relation = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[kind]
        return [problem(f"{instance} is out of range: it must be {relation} {error.validator_value}", _example_fix(schema, key))]
    if kind == "uniqueItems":
        return [problem("lists the same entry twice", "remove the duplicate")]
    if kind == "pattern":
        return [problem(f"{json.dumps(instance)} does not have the expected form", _example_fix(schema, key))]
    if kind in ("minLength", "maxLength", "maxItems", "minItems"):
        limit = {
            "minLength": "at least {} characters",
            "maxLength": "at most {} characters",
            "maxItems": "at most {} entries",
            "minItems": "at least {} entries",
        }[kind]
        return [problem(f"must have {limit.format(error.validator_value)}", _example_fix(schema, key))]
    return [problem(error.message, _example_fix(schema, key))]


def schema_problems(data: Any, schema: Mapping[str, Any], shown_as: str) -> list[Problem]:
    """Every way ``data`` breaks ``schema``, one Problem each, sorted by YAML path."""
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    errors = sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    return [problem for error in errors for problem in _schema_problems(error, shown_as)]
