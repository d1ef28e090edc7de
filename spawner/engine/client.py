"""A client for the local Docker engine, with "not running" turned into one line that says what to do."""

from __future__ import annotations

import docker
import docker.errors
from docker.utils import kwargs_from_env

from ..core.problems import TeachlabError


class DockerUnavailable(TeachlabError):
    pass


class EngineClient(docker.APIClient):
    """A Docker API client that ignores requests' environment variables. requests lets ``REQUESTS_CA_BUNDLE``
    replace a session's own CA (psf/requests issues 4650 and 4726), which breaks mutual TLS to an engine whose
    CA is the lab's whenever the environment names another bundle; proxy variables must not apply either."""

    trust_env = property(lambda self: False, lambda self, value: None)


def engine_client(**arguments) -> docker.DockerClient:
    """The high-level client around an ``EngineClient`` made with ``arguments`` (``docker.APIClient``'s)."""
    client = docker.DockerClient.__new__(docker.DockerClient)
    client.api = EngineClient(**arguments)
    return client


def connect() -> docker.DockerClient:
    """A client for the engine the environment names (DOCKER_HOST and its TLS settings, as docker's CLI reads them;
    the local engine by default), or a DockerUnavailable that says how to start it."""
    try:
        client = engine_client(**{"timeout": 300, **kwargs_from_env()})
        client.ping()
        return client
    except (docker.errors.DockerException, OSError) as exc:
        reason = str(exc).splitlines()[0][:160]
        raise DockerUnavailable(
            f"Docker is not running or not reachable ({reason}); start it with deploy/bin/ensure-docker or 'make setup'"
        ) from None
