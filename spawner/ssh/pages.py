"""teachlab-ssh's web page: a student adds, lists and deletes their SSH public keys.

Behind the hub's OAuth (``HubOAuthenticated``): only the signed-in user's own keys are shown or changed.
Every POST carries the hub's XSRF token (``_xsrf``); a cookie-authenticated POST without it is not
authenticated at all (JupyterHub's service XSRF check), so another site cannot add a key for a student.
The page extends JupyterHub's own ``page.html``, so it looks like the rest of the hub.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import date
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jinja2
from jupyterhub._data import DATA_FILES_PATH
from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated
from jupyterhub.utils import url_path_join
from tornado import web

from ..catalog.cache import CatalogCache
from ..core.blocking import LEDGER, run_blocking
from ..hubclient.api import HubApi, HubRefused
from .keys import KeyRejected, SshKeyStore

TEMPLATES_DIR = Path(__file__).with_name("templates")
log = logging.getLogger("teachlab.ssh")


def page_templates() -> jinja2.Environment:
    """Our templates first, then the hub's (for ``page.html``)."""
    loader = jinja2.FileSystemLoader([str(TEMPLATES_DIR), str(Path(DATA_FILES_PATH) / "templates")])
    return jinja2.Environment(loader=loader, autoescape=True)


def _text(value: str | bytes) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else value


class KeysPage(HubOAuthenticated, web.RequestHandler):
    @property
    def store(self) -> SshKeyStore:
        return self.settings["store"]

    async def _courses(self) -> list[dict]:
        """The courses the user may open now (the hub's groups, the catalog's rules)."""
        hub: HubApi = self.settings["hub"]
        name = self.current_user["name"]
        try:
            model = await hub.user(name) or {}
        except (HubRefused, OSError):
            model = {}
        catalog = await self.settings["catalog_cache"].refresh()
        today: Callable[[], date] = self.settings["today"]
        return [
            {"slug": course.slug, "title": course.title}
            for course, _ in catalog.available_to(name, list(model.get("groups") or []), today())
        ]

    async def render_page(self, *, message: str = "", error: bool = False, status: int = 200) -> None:
        name = self.current_user["name"]
        keys = await run_blocking(LEDGER, self.store.keys_of, name)
        hub_prefix = self.settings["hub_prefix"]
        html = (
            self.settings["templates"]
            .get_template("ssh_keys.html")
            .render(
                keys=keys,
                courses=await self._courses(),
                message=message,
                error=error,
                service_prefix=self.settings["service_prefix"],
                ssh_host=self.settings["ssh_host"],
                ssh_port=self.settings["ssh_port"],
                host_fingerprint=self.settings["host_fingerprint"],
                # What the hub's page.html expects
                user=SimpleNamespace(name=name, json_escaped_name=json.dumps(name)[1:-1]),
                base_url=hub_prefix,
                prefix=self.settings["base_prefix"],
                static_url=lambda path, include_version=True: url_path_join(hub_prefix, "static", path),
                logout_url=url_path_join(hub_prefix, "logout"),
                login_url=url_path_join(hub_prefix, "login"),
                xsrf_token=_text(self.xsrf_token),
                parsed_scopes=set(),
                services=[],
                no_spawner_check=True,
                admin_access=False,
            )
        )
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(html)

    @web.authenticated
    async def get(self) -> None:
        await self.render_page()


class AddKey(KeysPage):
    @web.authenticated
    async def post(self) -> None:
        name = self.current_user["name"]
        try:
            key = await run_blocking(LEDGER, self.store.add, name, self.get_body_argument("public_key", ""))
        except KeyRejected as rejected:
            await self.render_page(message=f"The key was not added: {rejected}", error=True, status=400)
            return
        log.info("ssh key %s added by %s", key.fingerprint, name)
        await self.render_page(message=f"Added {key.algorithm} key {key.fingerprint}.")


class DeleteKey(KeysPage):
    @web.authenticated
    async def post(self, key_id: str) -> None:
        name = self.current_user["name"]
        try:
            key = await run_blocking(LEDGER, self.store.delete, name, int(key_id))
        except KeyRejected as rejected:
            await self.render_page(message=str(rejected), error=True, status=404)
            return
        log.info("ssh key %s deleted by %s", key.fingerprint, name)
        await self.render_page(message=f"Deleted key {key.fingerprint}; it no longer opens your courses.")


def make_app(
    *,
    service_prefix: str,
    hub_prefix: str,
    base_prefix: str,
    store: SshKeyStore,
    hub: HubApi,
    catalog_cache: CatalogCache,
    today: Callable[[], date],
    ssh_host: str,
    ssh_port: int,
    host_fingerprint: str,
    cookie_secret: bytes,
) -> web.Application:
    settings: dict[str, Any] = {
        "store": store,
        "hub": hub,
        "catalog_cache": catalog_cache,
        "today": today,
        "templates": page_templates(),
        "service_prefix": service_prefix,
        "hub_prefix": hub_prefix,
        "base_prefix": base_prefix,
        "ssh_host": ssh_host,
        "ssh_port": ssh_port,
        "host_fingerprint": host_fingerprint,
        "cookie_secret": cookie_secret,
    }
    return web.Application(
        [
            (service_prefix, KeysPage),
            (url_path_join(service_prefix, "oauth_callback"), HubOAuthCallbackHandler),
            (url_path_join(service_prefix, "keys"), AddKey),
            (url_path_join(service_prefix, r"keys/(\d{1,9})/delete"), DeleteKey),
        ],
        **settings,
    )
