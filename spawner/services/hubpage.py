"""The hub's page frame for the services' pages: JupyterHub's own ``page.html`` (navigation bar, styles,
scripts), rendered by a service so that the lab looks like one product.

A service's pages live on the service's own origin (``https://<service>--service.<host>`` with per-server
origins): the hub's links are absolute URLs of the hub (``JUPYTERHUB_HOST``), where its sign-in cookie is
sent; its static files are fetched from the service's own host (the proxy sends every path but the
service's to the hub), so its fonts stay same-origin.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jinja2
from jupyterhub._data import DATA_FILES_PATH
from tornado import web

from ..core.contract import PAGE_LINKS_VARIABLE

TEMPLATES_DIR = Path(__file__).with_name("templates")
STATIC_DIR = Path(__file__).with_name("static")


def page_templates() -> jinja2.Environment:
    """Our templates first, then the hub's (for ``page.html``)."""
    loader = jinja2.FileSystemLoader([str(TEMPLATES_DIR), str(Path(DATA_FILES_PATH) / "templates")])
    return jinja2.Environment(loader=loader, autoescape=True)


@dataclass(frozen=True)
class HubLinks:
    """Where the hub's pages are, seen from a service's page, and the lab's other pages."""

    hub_url: str  # absolute, ends with /hub/
    base_prefix: str
    pages: tuple[Mapping[str, str], ...] = ()

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> HubLinks:
        base = env.get("JUPYTERHUB_BASE_URL", "/")
        pages = json.loads(env.get(PAGE_LINKS_VARIABLE) or "[]")
        return cls(hub_url=env.get("JUPYTERHUB_HOST", "") + base.rstrip("/") + "/hub/", base_prefix=base, pages=tuple(pages))

    def static_url(self, path: str, include_version: bool = True) -> str:
        return f"{self.base_prefix.rstrip('/')}/hub/static/{path}"


def page_variables(*, user: Mapping[str, Any], links: HubLinks, xsrf_token: str, title: str) -> dict[str, Any]:
    """What the hub's ``page.html`` expects, for a signed-in ``user`` (the hub's user model)."""
    name = user["name"]
    return {
        "user": SimpleNamespace(name=name, json_escaped_name=json.dumps(name)[1:-1]),
        "base_url": links.hub_url,
        "prefix": links.base_prefix,
        "static_url": links.static_url,
        "logout_url": f"{links.hub_url}logout",
        "login_url": f"{links.hub_url}login",
        "xsrf_token": xsrf_token,
        "parsed_scopes": set(),
        "services": [SimpleNamespace(name=page["name"], href=page["href"]) for page in links.pages],
        "no_spawner_check": True,
        "admin_access": False,
        "page_title": title,
    }


class ServiceHandling:
    """What the lab's services' request handlers share (tornado's ``RequestHandler`` with ``templates``,
    ``links`` and ``service_prefix`` in its settings for pages): pages in the hub's frame, JSON bodies, errors."""

    def body(self) -> dict:
        """The request's JSON object, or a 400 that says what is wrong."""
        try:
            payload = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "the body must be JSON")
        if not isinstance(payload, dict):
            raise web.HTTPError(400, "the body must be a JSON object")
        return payload

    def error_message(self, **kwargs: Any) -> str:
        """What a failed request says: the HTTPError's own message, else the status's reason."""
        error = kwargs.get("exc_info", (None, None))[1]
        return error.log_message if isinstance(error, web.HTTPError) and error.log_message else self._reason

    def write_json_error(self, status_code: int, **kwargs: Any) -> None:
        """An error as ``{"status", "message"}``: for the APIs and for callers without a page to show."""
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status_code, "message": self.error_message(**kwargs)}))

    def write_error_page(self, status_code: int, **kwargs: Any) -> None:
        """An error as a page in the hub's frame, for a signed-in person's browser."""
        self.render_page(
            "error.html",
            title=self._reason,
            status=status_code,
            status_code=status_code,
            reason=self._reason,
            error_message=self.error_message(**kwargs),
        )

    def render_page(self, template: str, *, title: str, status: int = 200, **values: Any) -> None:
        """A page in the hub's frame (``page.html``)."""
        templates: jinja2.Environment = self.settings["templates"]
        html = templates.get_template(template).render(
            **page_variables(user=self.current_user, links=self.settings["links"], xsrf_token=text(self.xsrf_token), title=title),
            service_prefix=self.settings["service_prefix"],
            **values,
        )
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(html)


def text(value: str | bytes) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else value
