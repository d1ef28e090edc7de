"""The shell steps of a section of docs/admins.md, as the document writes them, for tests that run them.

Every ```sh block of the section, in order, becomes one bash script (so variables of the first block reach the
last). The one block after the marker ``<!-- admins-install: site values -->`` holds the site's own values;
a test gives its own in its place, and nothing else is changed. The Restore section says "steps 1 to 4 of
Install, then": a test runs those four blocks, then the section's own.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping
from pathlib import Path

SITE_VALUES_MARKER = "<!-- admins-install: site values -->"
_BLOCK = re.compile(r"^(?P<indent>[ \t]*)```sh[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.MULTILINE | re.DOTALL)


def section(text: str, title: str) -> str:
    """The text of ``## <title>`` up to the next ``## `` heading."""
    match = re.search(rf"^## {re.escape(title)}[ \t]*\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    if match is None:
        raise AssertionError(f"docs/admins.md has no section '## {title}'")
    return match.group(1)


def shell_blocks(text: str) -> list[tuple[bool, str]]:
    """(is the site-values block, dedented body) of every ```sh block, in order."""
    blocks = []
    for match in _BLOCK.finditer(text):
        before = text[: match.start()].rstrip().splitlines()
        is_values = bool(before) and before[-1].strip() == SITE_VALUES_MARKER
        blocks.append((is_values, textwrap.dedent(match.group("body"))))
    return blocks


def install_script(document: Path, values: Mapping[str, str], title: str = "Install", first: int | None = None) -> str:
    """The section's steps (its ``first`` blocks only, when given) as one bash script, with ``values`` in place
    of the site-values block."""
    blocks = shell_blocks(section(document.read_text(), title))[:first]
    if sum(1 for is_values, _ in blocks if is_values) != (1 if values else 0):
        raise AssertionError(f"the {title} section needs {'one block' if values else 'no block'} after {SITE_VALUES_MARKER}")
    lines = ["set -euo pipefail"]
    for is_values, body in blocks:
        if is_values:
            names = re.findall(r"^([A-Z_]+)=", body, re.MULTILINE)
            missing = sorted(set(names) - set(values))
            if missing:
                raise AssertionError(f"the test gives no value for {', '.join(missing)} of the site-values block")
            lines += [f"{name}={_quoted(values[name])}" for name in names]
        else:
            lines.append(body)
    return "\n".join(lines) + "\n"


def _quoted(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"
