"""The teachlab-ssh process: the SSH gateway and the keys page on one event loop.

Started by the hub (``c.JupyterHub.services``) with the JUPYTERHUB_* variables of a managed service and
the TEACHLAB_SSH_* ones that ``spawner.hub.config.ssh_service`` sets. A setting that cannot be read
stops it with one line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sys
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from urllib.parse import urlparse

from jupyterhub.utils import url_path_join

from ..catalog.cache import CatalogCache
from ..core.contract import StateLayout, default_state_dir
from ..core.naming import DEFAULT_PREFIX, LabNames
from ..engine import DockerUnavailable, connect
from ..hubclient.api import HubApi
from .bridge import ContainerBridge
from .gateway import Gateway, load_host_key
from .keys import SshKeyStore
from .pages import make_app


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name)
    if not value:
        print(f"teachlab-ssh: {name} is not set (the hub sets it for its managed service)", file=sys.stderr)
        raise SystemExit(2)
    return value


async def serve(env: Mapping[str, str]) -> None:
    layout = StateLayout(default_state_dir(env))
    public_url = _required(env, "TEACHLAB_PUBLIC_URL")
    hub_prefix = env.get("JUPYTERHUB_BASE_URL", "/").rstrip("/") + "/hub/"
    service_prefix = _required(env, "JUPYTERHUB_SERVICE_PREFIX")
    ssh_host = env.get("TEACHLAB_SSH_PUBLIC_HOST") or urlparse(public_url).hostname or "localhost"
    ssh_port = int(env.get("TEACHLAB_SSH_PORT", "2222"))
    today = (lambda: date.fromisoformat(env["TEACHLAB_TODAY"])) if env.get("TEACHLAB_TODAY") else date.today
    try:
        client = connect()
    except DockerUnavailable as exc:
        print(f"teachlab-ssh: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    store = SshKeyStore.open(_required(env, "TEACHLAB_RECORDS_URL"))
    hub = HubApi(_required(env, "JUPYTERHUB_API_URL"), _required(env, "JUPYTERHUB_API_TOKEN"))
    catalog_cache = CatalogCache.for_root(Path(_required(env, "TEACHLAB_CATALOG")))
    host_key = load_host_key(layout.ssh_host_key)
    gateway = Gateway(
        store=store,
        hub=hub,
        bridge=ContainerBridge(
            client, _required(env, "TEACHLAB_LAB_ID"), LabNames(env.get("TEACHLAB_NAME_PREFIX", DEFAULT_PREFIX))
        ),
        catalog_cache=catalog_cache,
        today=today,
        keys_url=env.get("TEACHLAB_SSH_KEYS_URL") or public_url.rstrip("/") + service_prefix,
        token_url=public_url.rstrip("/") + url_path_join(hub_prefix, "token"),
        activity_interval=float(env.get("TEACHLAB_SSH_ACTIVITY_INTERVAL", "60")),
    )
    await gateway.listen(env.get("TEACHLAB_SSH_BIND", "127.0.0.1"), ssh_port, host_key)
    app = make_app(
        service_prefix=service_prefix,
        hub_prefix=hub_prefix,
        base_prefix=env.get("JUPYTERHUB_BASE_URL", "/"),
        store=store,
        hub=hub,
        catalog_cache=catalog_cache,
        today=today,
        ssh_host=ssh_host,
        ssh_port=ssh_port,
        host_fingerprint=host_key.get_fingerprint("sha256"),
        cookie_secret=secrets.token_bytes(32),
    )
    url = urlparse(_required(env, "JUPYTERHUB_SERVICE_URL"))
    app.listen(url.port, url.hostname)
    logging.getLogger("teachlab.ssh").info("teachlab-ssh listening for SSH on port %s, keys page at %s", ssh_port, service_prefix)
    await asyncio.Event().wait()


def main(environ: Mapping[str, str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)1.1s %(asctime)s %(name)s] %(message)s")
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    try:
        asyncio.run(serve(os.environ if environ is None else environ))
    except KeyboardInterrupt:
        pass
