"""docs/course-yaml.md, generated from the course.yaml JSON Schema (its descriptions are the reference)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from .loader import course_schema

HEADER = """# course.yaml reference

Generated from `spawner/catalog/schema/course.schema.json` by `teachlab course schema-docs`; do not edit by hand.
Unknown keys are errors at every level. Check a catalog with `teachlab course validate course_envs`.

| key | type | required | description | example |
|---|---|---|---|---|
"""


def _resolve(schema: dict, root: dict) -> dict:
    if "$ref" in schema:
        target = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        return {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _type(schema: dict, root: dict) -> str:
    if "enum" in schema:
        return " \\| ".join(f"`{value}`" for value in schema["enum"])
    kind = schema.get("type", "")
    if kind == "array":
        items = _resolve(schema.get("items", {}), root)
        return "list of mappings" if items.get("type") == "object" else f"list of {_type(items, root)}"
    return kind


def _rows(schema: dict, root: dict, prefix: str = "") -> Iterator[str]:
    required = set(schema.get("required", ()))
    for key, sub in schema.get("properties", {}).items():
        sub = _resolve(sub, root)
        path = f"{prefix}{key}"
        example = f"`{json.dumps(sub['examples'][0])}`" if sub.get("examples") else ""
        default = f" Default: `{json.dumps(sub['default'])}`." if "default" in sub else ""
        yield (
            f"| `{path}` | {_type(sub, root)} | {'yes' if key in required else 'no'} | "
            f"{sub.get('description', '')}{default} | {example} |"
        )
        if sub.get("type") == "object":
            yield from _rows(sub, root, f"{path}.")
        if sub.get("type") == "array" and sub.get("items", {}).get("type") == "object":
            yield from _rows(sub["items"], root, f"{path}[].")


def reference_table_rows(schema: dict) -> list[str]:
    """One Markdown table row per key of a JSON Schema, nested keys included (also the site file's reference)."""
    return list(_rows(schema, schema))


def render_course_yaml_reference() -> str:
    root: dict[str, Any] = course_schema()
    return HEADER + "\n".join(_rows(root, root)) + "\n"
