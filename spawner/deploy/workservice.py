"""``teachlab-work``: a student downloads their work in a course as one zip, until the course's term ends.

A hub-managed service behind the hub's OAuth: ``GET /services/teachlab-work/<course>.zip`` answers the
signed-in person's own work volume of that course, and nobody else's (the volume's name comes from the
signed-in name, never from the request). It is offered while the course is open to them (the catalog's
access rules: membership and term); after the term, ``teachlab deploy archive-course`` archives the work.
The zip is streamed as Docker copies the volume's files (``spawner.engine.volumes``): nothing of the student's
runs, nothing is kept on the hub's disk. The home page links each course row here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sys
import threading
from collections.abc import Callable, Mapping
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import docker.errors
from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated
from jupyterhub.utils import url_path_join
from tornado import web

from ..catalog.cache import CatalogCache
from ..core.blocking import DOCKER_CALLS, run_blocking
from ..core.contract import Labels, Scopes, StateLayout, default_state_dir
from ..core.naming import DEFAULT_PREFIX, LabNames, is_course_slug
from ..engine import connect
from ..engine.volumes import tar_chunks, zip_chunks
from ..hub.nodeagent import AgentVolumeStore, NodeAgent
from ..images.registry import VersionRegistry
from ..node.disks import VolumeStore

log = logging.getLogger("teachlab.work")


class WorkArchive(HubOAuthenticated, web.RequestHandler):
    """The signed-in person's work in one course, as ``<course>-work.zip``."""

    @web.authenticated
    async def get(self, slug: str) -> None:
        user: dict[str, Any] = self.current_user
        name = user["name"]
        if not is_course_slug(slug):
            raise web.HTTPError(404, "There is no such course")
        catalog = await self.settings["catalog_cache"].refresh()
        course = catalog.courses.get(slug)
        today: Callable[[], date] = self.settings["today"]
        if course is None:
            raise web.HTTPError(404, f"There is no course {slug}")
        access = course.access(name, user.get("groups") or [], today())
        if not access.allowed:
            raise web.HTTPError(403, f"You cannot download work of {course.title}: {access.reason}")
        names: LabNames = self.settings["names"]
        volume = names.home_volume(name, slug)
        client = self.settings["client"]
        try:
            await run_blocking(DOCKER_CALLS, client.volumes.get, volume)
        except docker.errors.NotFound:
            raise web.HTTPError(404, f"You have no work in {course.title} yet: start the course once")
        store: VolumeStore = self.settings["volume_store"]
        if await run_blocking(DOCKER_CALLS, store.exists, volume):
            await run_blocking(DOCKER_CALLS, store.ensure_mounted, volume)
        current = await run_blocking(DOCKER_CALLS, self.settings["registry"].current_image, slug)
        if current is None:
            raise web.HTTPError(503, f"{course.title} has no published environment to read your work with")
        log.info("%s downloads their work in %s", name, slug)
        self.set_header("Content-Type", "application/zip")
        self.set_header("Content-Disposition", f'attachment; filename="{slug}-work.zip"')
        self.set_header("Cache-Control", "no-store")
        labels = {Labels.LAB: self.settings["lab_id"]}
        await self._stream(lambda: zip_chunks(tar_chunks(client, current.base_image, volume, labels), f"{slug}-work"))

    async def _stream(self, chunks: Callable[[], Any]) -> None:
        """Run the (blocking) chunk generator in a thread and send each chunk as it comes, with back-pressure."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue(maxsize=8)
        failed: list[BaseException] = []

        def produce() -> None:
            try:
                for chunk in chunks():
                    asyncio.run_coroutine_threadsafe(queue.put(chunk), loop).result()
            except BaseException as exc:  # noqa: BLE001 - reported on the event loop below
                failed.append(exc)
            finally:
                asyncio.run_coroutine_threadsafe(queue.put(None), loop).result()

        threading.Thread(target=produce, name="teachlab-work-zip", daemon=True).start()
        while (chunk := await queue.get()) is not None:
            self.write(chunk)
            await self.flush()
        if failed:
            log.error("the download of %s failed: %s", self.request.path, failed[0])
            raise failed[0]


def make_app(settings: Mapping[str, Any], service_prefix: str) -> web.Application:
    return web.Application(
        [
            (url_path_join(service_prefix, r"([a-z0-9-]{1,64})\.zip"), WorkArchive),
            (url_path_join(service_prefix, "oauth_callback"), HubOAuthCallbackHandler),
        ],
        cookie_secret=secrets.token_bytes(32),
        **settings,
    )


def volume_store(env: Mapping[str, str], client: Any, names: LabNames, layout: StateLayout) -> VolumeStore:
    image = env.get("TEACHLAB_NODE_AGENT_IMAGE")
    if not image:
        return VolumeStore(layout.volumes)
    agent = NodeAgent(client.api, image=image, name=names.node_agent(), volume_root=layout.volumes)
    return AgentVolumeStore(agent)


async def serve(env: Mapping[str, str]) -> None:
    layout = StateLayout(default_state_dir(env))
    names = LabNames(env.get("TEACHLAB_NAME_PREFIX", DEFAULT_PREFIX))
    client = connect()
    service_prefix = env["JUPYTERHUB_SERVICE_PREFIX"]
    settings = {
        "client": client,
        "names": names,
        "lab_id": env["TEACHLAB_LAB_ID"],
        "catalog_cache": CatalogCache.for_root(Path(env["TEACHLAB_CATALOG"])),
        "registry": VersionRegistry(layout.courses),
        "volume_store": volume_store(env, client, names, layout),
        "today": (lambda: date.fromisoformat(env["TEACHLAB_TODAY"])) if env.get("TEACHLAB_TODAY") else date.today,
    }
    url = urlparse(env["JUPYTERHUB_SERVICE_URL"])
    make_app(settings, service_prefix).listen(url.port, url.hostname)
    log.info("%s listening at %s", Scopes.WORK_SERVICE, service_prefix)
    await asyncio.Event().wait()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)1.1s %(asctime)s %(name)s] %(message)s")
    try:
        asyncio.run(serve(os.environ))
    except KeyError as exc:
        print(f"teachlab-work: {exc.args[0]} is not set (the hub sets it for its managed service)", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
