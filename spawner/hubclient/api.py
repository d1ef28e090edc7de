"""Calls to JupyterHub's REST API with a service's token; each method names the scopes it needs.

* ``user_for_token``: whose API token a password is (with the person's own token, no service scope).
* ``user``: a user's groups and servers (``read:users:name``, ``read:users:groups``, ``read:servers``).
* ``start_server`` and ``progress``: start a course server and follow the hub's progress events
  (``servers``, ``read:servers``), as the home page does.
* ``report_activity``: an SSH session with traffic counts as activity for the idle culler (``users:activity``).
* ``group_members`` (``read:groups``) and ``stop_server`` (``servers``): the class pre-warm.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

REQUEST_TIMEOUT_SECONDS = 30.0
PROGRESS_TIMEOUT_SECONDS = 600.0


class HubRefused(Exception):
    """The hub answered a request with an error; ``message`` is the hub's own reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ProgressEvent:
    progress: int | None
    message: str
    ready: bool
    failed: bool


def _quoted(name: str) -> str:
    return quote(name, safe="")


def _hub_message(error: HTTPClientError) -> str:
    body = error.response.body if error.response is not None else b""
    try:
        return str(json.loads(body or b"{}").get("message") or error.message)
    except ValueError:
        return str(error.message)


class HubApi:
    def __init__(self, api_url: str, token: str, client: AsyncHTTPClient | None = None):
        self.api_url = api_url.rstrip("/")
        self._token = token
        self._client = client or AsyncHTTPClient()

    async def _request(self, method: str, path: str, *, body: Any = None, token: str | None = None) -> Any:
        request = HTTPRequest(
            f"{self.api_url}{path}",
            method=method,
            headers={"Authorization": f"token {token or self._token}", "Content-Type": "application/json"},
            body=None if body is None else json.dumps(body),
            allow_nonstandard_methods=True,
            request_timeout=REQUEST_TIMEOUT_SECONDS,
        )
        try:
            response = await self._client.fetch(request)
        except HTTPClientError as error:
            raise HubRefused(error.code, _hub_message(error)) from None
        return json.loads(response.body) if response.body else None

    async def user_for_token(self, token: str) -> dict | None:
        """The user who owns ``token`` (None for an unknown, expired or revoked token, or a service's)."""
        try:
            model = await self._request("GET", "/user", token=token)
        except HubRefused as refused:
            if refused.status in (401, 403):
                return None
            raise
        return model if isinstance(model, dict) and model.get("kind") == "user" else None

    async def user(self, name: str) -> dict | None:
        """The user's model (name, groups, servers), or None when the hub has never seen them."""
        try:
            return await self._request("GET", f"/users/{_quoted(name)}")
        except HubRefused as refused:
            if refused.status == 404:
                return None
            raise

    async def start_server(self, user: str, server: str) -> None:
        """Ask the hub to start the named server; HubRefused carries the hub's reason when it will not."""
        await self._request("POST", f"/users/{_quoted(user)}/servers/{_quoted(server)}", body={})

    async def progress(self, user: str, server: str) -> AsyncIterator[ProgressEvent]:
        """The hub's progress events of a starting server, until it is ready or failed; HubRefused when the
        hub has no start to report on (not started yet, or its failure already reported)."""
        events: list[dict] = []
        buffer = bytearray()

        def on_chunk(chunk: bytes) -> None:
            buffer.extend(chunk)
            while b"\n\n" in buffer:
                block, _, rest = bytes(buffer).partition(b"\n\n")
                buffer[:] = rest
                for line in block.decode("utf-8", "replace").splitlines():
                    if line.startswith("data:"):
                        try:
                            events.append(json.loads(line[5:]))
                        except ValueError:
                            continue

        # The event stream is read to its end; the hub closes it when the server is ready or failed.
        request = HTTPRequest(
            f"{self.api_url}/users/{_quoted(user)}/servers/{_quoted(server)}/progress",
            headers={"Authorization": f"token {self._token}", "Accept": "text/event-stream"},
            streaming_callback=on_chunk,
            request_timeout=PROGRESS_TIMEOUT_SECONDS,
        )
        fetch = asyncio.ensure_future(self._client.fetch(request, raise_error=False))
        sent = 0
        try:
            while True:
                while sent < len(events):
                    event = events[sent]
                    sent += 1
                    yield ProgressEvent(
                        progress=event.get("progress"),
                        message=str(event.get("message") or ""),
                        ready=bool(event.get("ready")),
                        failed=bool(event.get("failed")),
                    )
                if fetch.done() and sent == len(events):
                    response = fetch.result()
                    if response.code != 200 and not events:
                        raise HubRefused(response.code, _hub_message(HTTPClientError(response.code, response=response)))
                    return
                await asyncio.wait([fetch], timeout=0.2)
        finally:
            fetch.cancel()

    async def group_members(self, group: str) -> list[str]:
        """The names in a hub group (empty when the hub has no such group yet)."""
        try:
            model = await self._request("GET", f"/groups/{_quoted(group)}")
        except HubRefused as refused:
            if refused.status == 404:
                return []
            raise
        return list(model.get("users", []))

    async def stop_server(self, user: str, server: str) -> None:
        await self._request("DELETE", f"/users/{_quoted(user)}/servers/{_quoted(server)}")

    async def report_activity(self, user: str, server: str, when: datetime) -> None:
        stamp = when.isoformat().replace("+00:00", "Z")
        await self._request(
            "POST",
            f"/users/{_quoted(user)}/activity",
            body={"last_activity": stamp, "servers": {server: {"last_activity": stamp}}},
        )
