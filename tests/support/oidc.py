"""Start the local OpenID Connect provider (deploy/oidc/provider.mjs) from tests, and sign in without a browser.

Tests that need a login provider run the real one, as the lab does in a demo: a Node process on
127.0.0.1 with the accounts and clients the test gives it. See docs/oidc.md.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from html import unescape
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests

from spawner.devlab.lab import free_port

READY_PREFIX = "oidc-provider ready at "
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
MAX_REDIRECTS = 20
LOGIN_FORM_ACTION = re.compile(r'<form[^>]*\bmethod="post"[^>]*\baction="([^"]+)"', re.IGNORECASE)


class OidcProvider:
    """The local OIDC provider as a subprocess: started on enter, stopped on exit.

    Guarantees: once `start()` returns, the provider listens on `issuer` and answers discovery; when it
    does not come up within 20 s, `start()` raises `RuntimeError` with the end of its log and leaves no
    process behind. Config and log live in `workdir` (a temporary folder removed on `stop()` when none
    is given; pass pytest's `tmp_path` to keep the log of a failed test).
    """

    def __init__(
        self,
        accounts: list[dict],
        clients: list[dict],
        port: int | None = None,
        *,
        repo_root: Path,
        workdir: Path | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.port = port or free_port()
        self.host = host  # another address of this machine the test owns, e.g. a cluster network's gateway
        self.issuer = f"http://{host}:{self.port}"
        self.accounts = accounts
        self.clients = clients
        self.repo_root = Path(repo_root)
        self._owns_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="teachlab-oidc-"))
        self.config_path = self.workdir / "oidc-provider.json"
        self.log_path = self.workdir / "oidc-provider.log"
        self._process: subprocess.Popen | None = None

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    def config(self) -> dict:
        """The JSON document provider.mjs reads (see docs/oidc.md for its shape)."""
        return {
            "issuer": self.issuer,
            "port": self.port,
            "host": self.host,
            "clients": self.clients,
            "accounts": self.accounts,
        }

    def start(self) -> OidcProvider:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not on PATH: install Node.js 20 or later, then run `make node-env`")
        script = self.repo_root / "deploy" / "oidc" / "provider.mjs"
        if not (self.repo_root / "deploy" / "node_modules" / "oidc-provider").is_dir():
            raise RuntimeError("deploy/node_modules/oidc-provider is missing: run `make node-env`")

        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                [node, str(script), "--config", str(self.config_path)],
                cwd=self.repo_root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_until_ready()
        return self

    def _wait_until_ready(self) -> None:
        """Polls the log for the ready line, so start() returns only once the port accepts requests."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if f"{READY_PREFIX}{self.issuer}" in self.log_path.read_text(errors="replace"):
                return
            if self._process.poll() is not None:
                break
            time.sleep(0.05)
        exit_code = self._process.poll()
        self.stop(remove_workdir=False)
        what = f"exited with code {exit_code}" if exit_code is not None else f"was not ready after {START_TIMEOUT_S:.0f} s"
        raise RuntimeError(f"the local OIDC provider ({self.config_path}) {what}; end of {self.log_path}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        """The end of the provider's log, for error messages and failed-test reports."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log written)"

    def stop(self, *, remove_workdir: bool = True) -> None:
        """Terminates the provider (kills it after 5 s); safe to call twice."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if remove_workdir and self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> OidcProvider:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _same_origin(url: str, other: str) -> bool:
    first, second = urlsplit(url), urlsplit(other)
    return (first.scheme, first.netloc) == (second.scheme, second.netloc)


def login_with_requests(session: requests.Session, authorize_url: str, username: str, password: str) -> requests.Response:
    """Signs in at the local provider the way a browser would, for tests that must not need one.

    Follows the provider's redirects to its login form, posts the credentials and follows redirects
    again, but never leaves the provider: the result is either the redirect whose `Location` points at
    the client's redirect_uri (with `code=` and `state=`; the client is not called) or the provider
    page where the flow stopped (the form again with "Wrong username or password", or an error page).
    """
    response = follow_on_provider(session, session.get(authorize_url, allow_redirects=False), authorize_url)
    action = LOGIN_FORM_ACTION.search(response.text) if not response.is_redirect else None
    if action is None:
        return response
    form_url = urljoin(response.url, unescape(action.group(1)))
    posted = session.post(form_url, data={"username": username, "password": password}, allow_redirects=False)
    return follow_on_provider(session, posted, authorize_url)


def follow_on_provider(session: requests.Session, response: requests.Response, provider_url: str) -> requests.Response:
    """Follows redirects while they stay on the provider, so the client's callback is never requested."""
    for _ in range(MAX_REDIRECTS):
        if not response.is_redirect:
            return response
        location = urljoin(response.url, response.headers["Location"])
        if not _same_origin(location, provider_url):
            return response
        response = session.get(location, allow_redirects=False)
    raise RuntimeError(f"more than {MAX_REDIRECTS} redirects on the provider, last at {response.url}")
