"""Course images in the stack's registry (issue 14, docs/scale-out.md "Images on every node").

Publishing with a registry (``BuildSettings.registry_address``) pushes a version's image there and records it by
digest (``CourseVersion.registry_image``): a swarm's nodes then pull exactly the bytes that were built, tested and
scanned, and a new version needs nothing on the nodes. The push goes through this engine, to
``registry_push_address`` when this engine reaches the registry by another route than the nodes (the manager's own
engine at ``127.0.0.1:5000``, which Docker trusts without a certificate); the recorded name is always the nodes'.

A push either returns the digest reference or raises ``PushFailed`` with one line (the engine's first error): the
caller records nothing then, so the previous version stays current. The registry tag is removed from this engine
afterwards either way (this engine keeps the version's own tag).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

import docker
import docker.errors
import requests.exceptions

from ..core.naming import DIGEST_PATTERN, digest_reference, registry_course_image
from ..core.problems import TeachlabError
from .settings import BuildSettings


class PushFailed(TeachlabError):
    """The registry did not take a version's image (the message says why and what to check)."""


def stream_error(events: Iterable[Mapping]) -> str | None:
    """The first error of an engine's push or pull stream (its first line), or None."""
    for event in events:
        detail = event.get("errorDetail") or {}
        message = detail.get("message") or event.get("error")
        if message:
            return str(message).strip().splitlines()[0][:300] or "an error without a message"
    return None


def pushed_digest(events: Iterable[Mapping]) -> str:
    """The digest the registry gave the pushed manifest (the stream's ``aux.Digest``); PushFailed with the engine's
    first error, or when the stream ended without a digest."""
    digest = None
    for event in events:
        error = stream_error([event])
        if error is not None:
            raise PushFailed(error)
        aux = event.get("aux") or {}
        if isinstance(aux, Mapping) and aux.get("Digest"):
            digest = str(aux["Digest"])
    if digest is None or not DIGEST_PATTERN.fullmatch(digest):
        raise PushFailed(f"the engine's push ended without the manifest's digest (got {digest!r})")
    return digest


def pull_stream_events(output: str | bytes) -> list[dict]:
    """A non-streamed pull's body (JSON objects, one a line) as events; lines that are not JSON are skipped."""
    text = output.decode(errors="replace") if isinstance(output, bytes) else output
    events = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def push_version(client: docker.DockerClient, *, image_id: str, slug: str, version: str, settings: BuildSettings) -> str:
    """Push a version's image to the stack's registry; returns its digest reference under the nodes' address."""
    if settings.registry_address is None:
        raise ValueError("push_version needs BuildSettings.registry_address")
    route = settings.registry_push_address or settings.registry_address
    pushed = registry_course_image(route, slug, version, settings.image_namespace)
    repository, tag = pushed.rsplit(":", 1)
    where = route if route == settings.registry_address else f"{settings.registry_address} (through {route})"
    try:
        client.api.tag(image_id, repository, tag)
        try:
            digest = pushed_digest(client.api.push(repository, tag=tag, stream=True, decode=True))
        finally:
            try:
                client.api.remove_image(pushed, noprune=True)
            except docker.errors.APIError:
                pass  # only a second name of the version's image; a later push replaces it
    except (PushFailed, docker.errors.APIError, requests.exceptions.RequestException) as error:
        reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise PushFailed(
            f"pushing {slug} {version} to the registry {where} failed: {reason}; nothing was recorded, the current "
            f"version stays as it was (check that the registry runs and that this engine trusts its certificate: "
            f"/etc/docker/certs.d/{route}/ca.crt)"
        ) from None
    return digest_reference(registry_course_image(settings.registry_address, slug, version, settings.image_namespace), digest)
