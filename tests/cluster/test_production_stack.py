"""The production stack (issue 13) on Docker-in-Docker servers: install from docs/admins.md, sign-in over HTTPS
through nginx, isolation, backup and restore onto a fresh swarm, upgrade with servers running, the hub killed,
a broken site file, the end of a term and erasure. One server is shared by the module (tests/cluster/conftest.py)."""

from __future__ import annotations

import pytest
import requests

from support.dns import names_on_loopback
from support.production import DOMAIN

pytestmark = [pytest.mark.cluster, pytest.mark.docker]


def test_the_install_steps_of_admins_md_end_with_a_working_https_lab(server, prod_tls):
    assert server.returncode == 0, f"the Install steps failed:\n{server.output[-4000:]}"
    with names_on_loopback(DOMAIN, server.node.address):
        login = requests.get(f"https://{DOMAIN}/hub/login", verify=str(prod_tls.ca_certificate), timeout=30)
        assert login.status_code == 200 and "Sign in with University login" in login.text
        assert login.headers["Strict-Transport-Security"].startswith("max-age=")
        plain = requests.get(f"http://{DOMAIN}/hub/login?next=x", allow_redirects=False, timeout=30)
        assert plain.status_code == 301 and plain.headers["Location"] == f"https://{DOMAIN}/hub/login?next=x"
