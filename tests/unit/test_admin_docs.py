"""docs/admins.md's Install steps as the cluster test runs them (tests/support/admin_docs.py), checked without Docker."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from support.admin_docs import install_script, section, shell_blocks

ADMINS_MD = Path(__file__).resolve().parents[2] / "docs" / "admins.md"
VALUES = {
    "LAB_HOST": "lab.example-uni.test",
    "SERVER_ADDRESS": "198.51.100.7",
    "OIDC_ISSUER": "https://login.example-uni.test/realms/u",
    "OIDC_CLIENT_ID": "teachlab",
    "OIDC_CLIENT_SECRET": "it's a secret",
    "ADMIN_GROUP": "lab-admins",
}


def test_the_install_script_is_every_block_in_order_with_the_tests_values():
    script = install_script(ADMINS_MD, VALUES)
    blocks = shell_blocks(section(ADMINS_MD.read_text(), "Install"))
    assert sum(1 for is_values, _ in blocks if is_values) == 1
    position = 0
    for is_values, body in blocks:
        if not is_values:
            position = script.index(body, position) + len(body)
    assert "SERVER_ADDRESS='198.51.100.7'" in script and "login.example-uni.edu" not in script  # the document's own values
    assert "OIDC_CLIENT_SECRET='it'\"'\"'s a secret'" in script
    assert script.startswith("set -euo pipefail\n")
    assert "teachlab deploy up" in script and "docker swarm init" in script


def test_the_script_is_valid_bash():
    result = subprocess.run(["bash", "-n"], input=install_script(ADMINS_MD, VALUES), text=True, capture_output=True)
    assert result.returncode == 0, result.stderr


def test_a_missing_value_is_named():
    values = {name: value for name, value in VALUES.items() if name != "ADMIN_GROUP"}
    with pytest.raises(AssertionError, match="no value for ADMIN_GROUP"):
        install_script(ADMINS_MD, values)
