"""Talk to a running lab as a person would: log in through the real provider, then use the hub's REST API."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from html import unescape
from urllib.parse import urljoin

import requests

from spawner.devlab.lab import Lab
from support.oidc import login_with_requests


class HubUser:
    """A user logged in through the OIDC provider, holding an API token of their own."""

    def __init__(self, lab: Lab, username: str, password: str | None = None):
        self.lab = lab
        self.name = username
        self.session = requests.Session()
        start = self.session.get(f"{lab.public_url}/hub/oauth_login", allow_redirects=False)
        authorize_url = urljoin(start.url, start.headers["Location"])
        back = login_with_requests(self.session, authorize_url, username, password or lab.password(username))
        assert back.is_redirect, f"login of {username} did not return to the hub: {back.status_code} {back.text[:200]}"
        home = self.session.get(urljoin(back.url, back.headers["Location"]))
        assert home.status_code == 200 and home.url.endswith("/hub/home"), (home.status_code, home.url)
        token = self.session.post(
            f"{lab.public_url}/hub/api/users/{username}/tokens",
            headers={"X-XSRFToken": self.session.cookies.get("_xsrf")},
            json={"note": "tests"},
        )
        assert token.status_code == 201, token.text
        self.token = token.json()["token"]

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {"Authorization": f"token {self.token}", **kwargs.pop("headers", {})}
        return requests.request(method, f"{self.lab.public_url}/hub/api{path}", headers=headers, timeout=120, **kwargs)

    def start(self, course: str, *, user: str | None = None, **kwargs) -> requests.Response:
        return self.api("POST", f"/users/{user or self.name}/servers/{course}", **kwargs)

    def stop(self, course: str, *, user: str | None = None) -> requests.Response:
        return self.api("DELETE", f"/users/{user or self.name}/servers/{course}")

    def server(self, course: str, *, user: str | None = None) -> dict:
        model = self.api("GET", f"/users/{user or self.name}").json()
        return model.get("servers", {}).get(course, {})

    def wait_until_ready(self, course: str, *, user: str | None = None, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server = self.server(course, user=user)
            if server.get("ready"):
                return server
            if not server:
                raise AssertionError(f"{user or self.name}/{course} is not starting (spawn failed?)")
            time.sleep(0.5)
        raise AssertionError(f"{user or self.name}/{course} not ready after {timeout} s: {self.server(course, user=user)}")

    def wait_until_stopped(self, course: str, *, user: str | None = None, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.server(course, user=user):
                return
            time.sleep(0.5)
        raise AssertionError(f"{user or self.name}/{course} still running after {timeout} s")

    def ensure_stopped(self, course: str) -> None:
        """Stop the server if it runs (tests that watch a start from the beginning need this)."""
        if self.server(course):
            self.stop(course)
            self.wait_until_stopped(course)

    def start_and_wait(self, course: str) -> dict:
        """Start (unless already running) and wait until ready."""
        running = self.server(course)
        if running.get("ready"):
            return running
        response = self.start(course)
        assert response.status_code in (201, 202), response.text
        return self.wait_until_ready(course)

    def open_server(self, user: str, course: str, path: str = "api/status") -> requests.Response:
        """Open someone's server in the browser session, clicking "Authorize" when the hub asks for consent.

        The hub asks when a person opens a server that is not their own (an instructor opening a
        student's server); the hub then issues a token for exactly that server.
        """
        base = self.lab.server_url(user, course)
        page = self.session.get(base + "lab")
        if "/hub/api/oauth2/authorize" in page.url and page.status_code == 200:
            fields = re.findall(r'<input type="hidden" name="(_xsrf|scopes)" value="([^"]*)"', page.text)
            page = self.session.post(page.url, data=[(name, unescape(value)) for name, value in fields])
        if page.status_code != 200:
            return page
        return self.session.get(base + path)

    def get_server_page(self, path: str, *, user: str | None = None, course: str) -> requests.Response:
        """A request to a single-user server with this user's token (as a browser extension would)."""
        url = self.lab.server_url(user or self.name, course) + path.lstrip("/")
        return requests.get(url, headers={"Authorization": f"token {self.token}"}, timeout=60, allow_redirects=False)


def signed_in_users(lab) -> Callable[[str], HubUser]:
    """Users of ``lab`` by name, each signed in through the provider once, on first use."""
    cache: dict[str, HubUser] = {}

    def get(name: str) -> HubUser:
        if name not in cache:
            cache[name] = HubUser(lab, name)
        return cache[name]

    return get
