"""A client for the local Docker engine, with "not running" turned into one line that says what to do."""

from __future__ import annotations

import docker
import docker.errors

from ..core.problems import TeachlabError


class DockerUnavailable(TeachlabError):
    pass


def connect() -> docker.DockerClient:
    """A client for the local engine, or a DockerUnavailable that says how to start it."""
    try:
        client = docker.from_env(timeout=300)
        client.ping()
        return client
    except (docker.errors.DockerException, OSError) as exc:
        reason = str(exc).splitlines()[0][:160]
        raise DockerUnavailable(
            f"Docker is not running or not reachable ({reason}); start it with deploy/bin/ensure-docker or 'make setup'"
        ) from None
