"""The CLI's token can do what the CLI does and nothing more, and a hub start replaces it."""

from __future__ import annotations

import time

import pytest
import requests

pytestmark = [pytest.mark.hub, pytest.mark.usefixtures("hub_log_on_failure")]


def _call(lab, token, method, path, **kwargs):
    return requests.request(
        method, f"{lab.public_url}/hub/api{path}", headers={"Authorization": f"token {token}"}, timeout=60, **kwargs
    )


def test_the_cli_token_lists_and_stops_servers_and_nothing_more(lab, users):
    erin = users("erin")
    erin.start_and_wait("intro-python")
    token = lab.secrets()["cli_token"]
    active = _call(lab, token, "GET", "/users?state=active")
    assert active.status_code == 200 and "intro-python" in {s for u in active.json() for s in u["servers"]}
    assert _call(lab, token, "POST", "/users", json={"usernames": ["mallory"]}).status_code == 403
    assert _call(lab, token, "POST", "/users/erin/tokens", json={"note": "stolen"}).status_code == 403
    assert _call(lab, token, "POST", "/groups/lab-admins/users", json={"users": ["erin"]}).status_code == 403
    assert _call(lab, token, "POST", "/users/erin/servers/data-analysis").status_code == 403
    assert _call(lab, token, "DELETE", "/users/erin/servers/intro-python").status_code in (202, 204)
    erin.wait_until_stopped("intro-python")


def test_a_hub_start_rotates_the_cli_token(lab):
    before = lab.secrets()["cli_token"]
    lab.hub.stop()
    lab.start_hub()
    after = lab.secrets()["cli_token"]
    assert after != before
    assert _call(lab, after, "GET", "/users").status_code == 200
    deadline = time.monotonic() + 30  # retired at the first catalog refresh after the start (every 10 s)
    while _call(lab, before, "GET", "/users").status_code != 403:
        assert time.monotonic() < deadline, "the replaced CLI token still works"
        time.sleep(1)
