"""docs/site-yaml.md, generated from the site file's JSON Schema (its descriptions are the reference)."""

from __future__ import annotations

from ..catalog.docs import reference_table_rows
from .site import site_schema

HEADER = """# Site file reference (`/etc/teachlab/site.yaml`)

Generated from `spawner/deploy/schema/site.schema.json` by `teachlab deploy site-docs`; do not edit by hand.
Unknown keys are errors at every level. Check a site file with `teachlab deploy validate --site FILE`;
[admins.md](admins.md) shows a whole one.

| key | type | required | description | example |
|---|---|---|---|---|
"""


def render_site_yaml_reference() -> str:
    return HEADER + "\n".join(reference_table_rows(site_schema())) + "\n"
