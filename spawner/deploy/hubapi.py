"""The deploy commands' calls to the hub's REST API, with the ``teachlab-deploy`` service's token.

Only what an admin's command needs: list users with servers, stop a server and wait until it is gone,
delete a user (``spawner.hub.roles.DEPLOY_SCOPES``). The hub listens on the students' network's gateway of
this server, so the commands reach it directly, without the proxy.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

from ..core.problems import TeachlabError


class HubUnreachable(TeachlabError):
    """The hub did not answer, or refused the deploy token."""


class DeployHubApi:
    def __init__(self, api_url: str, token: str):
        self.api_url = api_url.rstrip("/")
        self._token = token

    def _request(self, method: str, path: str) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"{self.api_url}{path}", method=method, headers={"Authorization": f"token {self._token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                body = response.read()
                return response.status, json.loads(body) if body else None
        except urllib.error.HTTPError as error:
            if error.code in (401, 403):
                raise HubUnreachable(f"the hub refused the deploy token ({error.code}): run teachlab deploy up again") from None
            return error.code, None
        except OSError as exc:
            raise HubUnreachable(f"the hub does not answer at {self.api_url} ({exc}): see teachlab deploy status") from None

    def user(self, name: str) -> dict | None:
        status, body = self._request("GET", f"/users/{quote(name, safe='')}")
        return body if status == 200 else None

    def users_with_servers(self) -> list[dict]:
        status, body = self._request("GET", "/users?state=active")
        return body if status == 200 and isinstance(body, list) else []

    def stop_server(self, user: str, server: str) -> None:
        self._request("DELETE", f"/users/{quote(user, safe='')}/servers/{quote(server, safe='')}")

    def wait_until_stopped(self, pairs: list[tuple[str, str]], timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while True:
            running = [(user, server) for user, server in pairs if server in ((self.user(user) or {}).get("servers") or {})]
            if not running:
                return
            if time.monotonic() > deadline:
                listing = ", ".join(f"{user}/{server}" for user, server in running)
                raise TeachlabError(f"these servers did not stop within {timeout:.0f} s: {listing}")
            time.sleep(1)

    def stop_servers(self, pairs: list[tuple[str, str]]) -> None:
        """Stop each (user, server) and wait until all are gone."""
        for user, server in pairs:
            self.stop_server(user, server)
        self.wait_until_stopped(pairs)

    def running_servers(self, course: str | None = None) -> list[tuple[str, str]]:
        """(user, server) of every server that runs or starts; only ``course``'s when given."""
        return [
            (user["name"], server)
            for user in self.users_with_servers()
            for server in (user.get("servers") or {})
            if course is None or server == course
        ]

    def delete_user(self, name: str) -> bool:
        """Delete a user and every record the hub keeps of them (tokens, groups, servers); False when unknown."""
        status, _ = self._request("DELETE", f"/users/{quote(name, safe='')}")
        if status not in (204, 404):
            raise TeachlabError(f"the hub did not delete {name} (HTTP {status}); see the hub's log")
        return status == 204
