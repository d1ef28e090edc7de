"""A course server's volumes: the student's size-limited work volume and the course's data volumes.

* The work volume is an ext4 filesystem of the course's ``resources.disk`` (``spawner.node.disks``), owned by
  the student uid from the moment it is made; Docker sees a bind volume of its mount point. It is mounted
  again (by file) before every start. A plain volume made by an earlier release keeps working, unsized.
* A new data volume belongs to root: a short helper hands it to the student uid once, when the course's
  first server starts. The helper runs the platform's base image (never the course author's), as root with
  only CHOWN, without network. A crowd of first starts waits for that one helper (a lock per volume set), not
  one helper each; its wait holds one of the spawner's Docker threads (a pool, ``CourseSpawner.executor``).

A failure part-way removes what this start made, so the next start begins from nothing half-done; what
existed before (last week's work) is never touched.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import docker.errors

from ..catalog import Course
from ..core import naming
from ..core.blocking import DISKS, run_blocking
from ..core.contract import IMAGE, Labels
from ..core.hardening import HELPER_HARDENING
from ..node.disks import VolumeStore

DockerCall = Callable[..., Awaitable[Any]]

_DATA_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = weakref.WeakKeyDictionary()


def _data_lock(volume: str) -> asyncio.Lock:
    """One lock per data volume (and event loop): the first start of a course makes and hands it over, the
    others wait for it."""
    locks = _DATA_LOCKS.setdefault(asyncio.get_running_loop(), {})
    return locks.setdefault(volume, asyncio.Lock())


class StorageFailed(Exception):
    """Preparing the volumes failed; everything made for this start was removed again."""


@dataclass
class ServerStorage:
    """Prepares the volumes of one start through ``docker`` (DockerSpawner's ``self.docker``)."""

    docker: DockerCall
    client: Any  # docker-py APIClient, for create_host_config
    store: VolumeStore
    names: naming.LabNames
    extra_labels: dict[str, str]
    log: logging.Logger

    async def _exists(self, name: str) -> bool:
        try:
            await self.docker("inspect_volume", name)
            return True
        except docker.errors.NotFound:
            return False

    async def prepare(self, *, course: Course, username: str, home_volume: str, helper_image: str) -> list[str]:
        """Make what is missing; returns the names of the volumes made now."""
        labels = {**self.extra_labels, Labels.COURSE: course.slug}
        made: list[str] = []
        sized_now = False
        try:
            if await self._exists(home_volume):
                if await run_blocking(DISKS, self.store.exists, home_volume):
                    await run_blocking(DISKS, self.store.ensure_mounted, home_volume)
            else:
                await run_blocking(
                    DISKS, self.store.create, home_volume, course.resources.disk_bytes, uid=IMAGE.uid, gid=IMAGE.gid
                )
                sized_now = True
                await self.docker(
                    "create_volume",
                    name=home_volume,
                    driver="local",
                    driver_opts=self.store.driver_options(home_volume),
                    labels={**labels, Labels.USER: username},
                )
                made.append(home_volume)
            for name in course.data_volumes:
                volume = self.names.data_volume(course.slug, name)
                async with _data_lock(volume):
                    if not await self._exists(volume):
                        await self.docker("create_volume", name=volume, labels=labels)
                        try:
                            await self._give_to_student_uid(helper_image, [volume])
                        except Exception:
                            await self._remove([volume], sized_home=None)  # before a waiting start sees it
                            raise
                        made.append(volume)
        except Exception as exc:
            await self._remove(made, sized_home=home_volume if sized_now else None)
            raise StorageFailed(str(exc)) from exc
        return made

    async def _remove(self, volumes: list[str], *, sized_home: str | None) -> None:
        for name in volumes:
            try:
                await self.docker("remove_volume", name)
            except docker.errors.APIError as error:
                self.log.error("could not remove the half-prepared volume %s: %s", name, error)
        if sized_home is not None:
            await run_blocking(DISKS, self.store.remove, sized_home)

    async def _give_to_student_uid(self, image: str, volumes: list[str]) -> None:
        binds = {volume: {"bind": f"/mnt/{index}", "mode": "rw"} for index, volume in enumerate(volumes)}
        host_config = self.client.create_host_config(binds=binds, network_mode="none", **HELPER_HARDENING.docker_py_kwargs())
        container = await self.docker(
            "create_container",
            image=image,
            user="0:0",
            entrypoint=["/bin/chown"],
            command=[IMAGE.user] + [f"/mnt/{index}" for index in range(len(volumes))],
            host_config=host_config,
            labels={**self.extra_labels, Labels.HELPER: "chown"},
        )
        try:
            await self.docker("start", container["Id"])
            result = await self.docker("wait", container["Id"], timeout=60)
            if result.get("StatusCode") != 0:
                raise RuntimeError(f"chown exited with {result.get('StatusCode')}")
        finally:
            await self.docker("remove_container", container["Id"], force=True)
