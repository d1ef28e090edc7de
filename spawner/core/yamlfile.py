"""Strict YAML reading for hand-written course files.

PyYAML's safe loader silently keeps the last of two equal keys and turns ``2026-09-01`` into a
``date``; both hide typos from the schema. This loader keeps scalars as written (dates stay
strings, checked by the schema's ``format: date``) and reports duplicate keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .problems import Problem, ProblemsError


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader without the timestamp resolver and with duplicate-key detection."""

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key '{key}' (first on line {seen[key] + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_yaml_file(path: Path, shown_as: str) -> Any:
    """Parse ``path``; raise ``ProblemsError`` with one line naming the line and column on failure."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProblemsError([Problem(shown_as, "(file)", "file is missing", f"create {path.name}")])
    except (OSError, UnicodeDecodeError) as exc:
        raise ProblemsError([Problem(shown_as, "(file)", f"cannot be read: {exc}", "save it as UTF-8 text")])
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark else "(document)"
        what = exc.problem or exc.context or "invalid YAML"
        raise ProblemsError([Problem(shown_as, where, f"YAML syntax error: {what}", "fix the YAML at that position")])
    except yaml.YAMLError as exc:
        raise ProblemsError([Problem(shown_as, "(document)", f"YAML syntax error: {exc}", "fix the YAML syntax")])
