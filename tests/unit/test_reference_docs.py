"""The generated references stay equal to the code they are generated from (`make docs` writes them)."""

from __future__ import annotations

from spawner.hub.reference import render_configuration_reference
from spawner.hub.settings import settings_reference


def test_configuration_reference_is_current(repo_root):
    assert (repo_root / "docs" / "configuration.md").read_text() == render_configuration_reference(), (
        "docs/configuration.md is stale: run make docs"
    )


def test_every_setting_and_every_spawner_trait_is_in_it():
    from spawner.hub.spawner import CourseSpawner

    text = render_configuration_reference()
    for row in settings_reference():
        assert f"| `{row['variable']}` |" in text
    for name in (
        "catalog_path",
        "state_dir",
        "lab_id",
        "extra_labels",
        "gpu_inventory",
        "gpu_ledger_url",
        "gpu_driver",
        "form_template_paths",
        "today",
    ):
        assert CourseSpawner.class_traits(config=True)[name].help
        assert f"| `{name}` |" in text


def test_site_file_reference_is_current(repo_root):
    from spawner.deploy.docs import render_site_yaml_reference

    assert (repo_root / "docs" / "site-yaml.md").read_text() == render_site_yaml_reference(), (
        "docs/site-yaml.md is stale: run make docs"
    )
