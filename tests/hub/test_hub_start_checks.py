"""The hub validates the catalog when it starts and refuses to start with the CLI's one-line problems."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.hub


@pytest.mark.parametrize("case", ["unknown-root-key", "two-python-pins", "term-end-before-start"])
def test_hub_refuses_to_start_on_a_broken_catalog(repo_root, tmp_path, case):
    catalog = repo_root / "tests" / "broken_catalogs" / case
    env = {**os.environ, "TEACHLAB_CATALOG": str(catalog), "TEACHLAB_STATE_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "jupyterhub", "-f", str(repo_root / "jupyterhub_config.py")],
                            env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 1
    expected = [f"{catalog.parent}/{line}" for line in (catalog / "expected.txt").read_text().splitlines()]
    lines = result.stderr.splitlines()
    assert lines[-len(expected) - 1:-1] == expected
    assert lines[-1] == "teachlab: the hub did not start; fix the lines above and start it again"
    assert "Traceback" not in result.stderr
