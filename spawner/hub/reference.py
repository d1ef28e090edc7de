"""docs/configuration.md, generated from the code: every ``TEACHLAB_*`` setting (``HubSettings``) and
every configurable ``CourseSpawner`` trait with its help text. ``make docs`` writes it; a test fails
when it is stale."""

from __future__ import annotations

import inspect
import sys

from traitlets import HasTraits

from .settings import settings_reference

HEADER = """# Configuring a lab

Generated from the code by `make docs` (`python -m spawner.hub.reference`); do not edit by hand.

`jupyterhub_config.py` reads the settings below from `TEACHLAB_*` variables when the hub starts
(`spawner/hub/settings.py`), calls `apply(settings, c)` (`spawner/hub/config.py`), then reads a site's
`jupyterhub_config.d/*.py` files, sorted, last: they may override any trait. `make up` sets the variables
for the demo lab; a production deployment sets them in its service definition.

## Settings

| variable | default | what it is for | example |
|---|---|---|---|
"""

TRAITS_HEADER = """
## `CourseSpawner` traits

Set in `jupyterhub_config.d/*.py` as `c.CourseSpawner.<name> = ...`; `apply()` sets the first ones from
the settings above. Every trait of DockerSpawner and JupyterHub's `Spawner` applies too
(`jupyterhub --help-all`), except those the course decides: image, volumes, limits and devices come from
the catalog and the published version.

| trait | type | default | help |
|---|---|---|---|
"""

FOOTER = """
## Startup checks

The hub refuses to start, printing one line per problem and no traceback, when a setting cannot be read,
the catalog is broken (the same lines as `teachlab course validate`), Docker is not reachable, the
students' network lets containers reach each other, the login provider's discovery document cannot be
read, or the GPU inventory is invalid. Before taking requests it makes the GPU ledger equal to what this
lab's running containers hold.
"""


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _trait_rows(cls: type[HasTraits]) -> list[str]:
    """The traits ``cls`` itself declares with ``config=True``."""
    rows = []
    own = set(vars(cls))
    for name, trait in sorted(cls.class_traits(config=True).items()):
        if name not in own:
            continue
        help_text = inspect.cleandoc(trait.help or "")
        summary, _, rest = help_text.partition("\n\n")
        example = next((line.strip() for line in rest.splitlines() if line.strip().startswith("c.")), "")
        default = trait.default_value_repr() if hasattr(trait, "default_value_repr") else ""
        help_cell = _cell(summary) + (f" Example: `{example}`" if example else "")
        rows.append(f"| `{name}` | {type(trait).__name__} | `{_cell(default)}` | {help_cell} |")
    return rows


def render_configuration_reference() -> str:
    from .spawner import CourseSpawner

    settings = []
    for row in settings_reference():
        example = f"`{row['example']}`" if row["example"] else ""
        default = f"`{row['default']}`" if row["default"] else "none"
        settings.append(f"| `{row['variable']}` | {default} | {_cell(row['help'])} | {example} |")
    return HEADER + "\n".join(settings) + "\n" + TRAITS_HEADER + "\n".join(_trait_rows(CourseSpawner)) + "\n" + FOOTER


if __name__ == "__main__":
    sys.stdout.write(render_configuration_reference())
