"""Other nodes' Docker engines, as admins' commands that span a swarm take them (``teachlab nodes``,
``teachlab work move``): ``--engine NODE=URL``, each a client with the TLS settings of docker's own CLI."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ..core.problems import TeachlabError

ENGINE_TIMEOUT_SECONDS = 30


def engine_urls(pairs: Sequence[str]) -> dict[str, str]:
    """``NODE=URL`` arguments as a mapping; a malformed one is a one-line error that shows the form."""
    engines = {}
    for pair in pairs:
        node, separator, url = pair.partition("=")
        if not separator or not node or not url:
            raise TeachlabError(f"--engine {pair!r}: write NODE=URL, e.g. --engine worker-1=ssh://admin@worker-1")
        engines[node] = url
    return engines


def node_engine(node: str, url: str, *, timeout: float = ENGINE_TIMEOUT_SECONDS) -> Any:
    """A docker-py client of ``node``'s engine. It takes the client certificate the manager's does
    (DOCKER_TLS_VERIFY, DOCKER_CERT_PATH), as docker's own CLI would. An engine that does not answer is one line."""
    import docker.errors
    import docker.utils

    from ..engine.client import engine_client

    try:
        return engine_client(base_url=url, timeout=timeout, tls=docker.utils.kwargs_from_env().get("tls"))
    except docker.errors.DockerException as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise TeachlabError(
            f"the engine of {node} ({url}) does not answer ({reason}); bring it up, or leave its --engine out"
        ) from None


def add_engine_argument(parser: argparse.ArgumentParser, purpose: str) -> None:
    parser.add_argument(
        "--engine",
        action="append",
        metavar="NODE=URL",
        help=f"the Docker API of a node {purpose} (repeatable; tcp:// URLs use the client certificate of "
        "DOCKER_CERT_PATH when DOCKER_TLS_VERIFY is set)",
    )
