"""Docker-safe names for users, courses and their containers, volumes and images.

Guarantees (tested with hypothesis in tests/unit/test_naming.py):

* Every name matches Docker's ``[a-zA-Z0-9][a-zA-Z0-9_.-]*`` and is at most ``MAX_NAME_LENGTH``
  characters; image repositories are lowercase and tags at most 128 characters.
* ``user_slug`` keeps a username that is already safe (lowercase letters, digits, single dashes,
  at most ``MAX_USER_SLUG_LENGTH``) as it is. Any other username becomes a readable safe prefix plus
  ``--`` and 16 hex digits of its SHA-256, so two different usernames get different slugs (up to a
  64-bit hash collision) and no safe slug ever equals a hashed one (safe slugs never contain ``--``).
* A user slug never contains ``---`` and course slugs never contain ``--``, so the pair separator
  ``---`` is unambiguous: two different (user, course) pairs never share a container or a volume.
* The functions are pure and their output for a given input never changes between releases: a
  student's volume is found again after any upgrade. The spawner also stores the names it used in
  its state, so even a changed template never renames an existing volume.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

MAX_NAME_LENGTH = 128
MAX_USER_SLUG_LENGTH = 40
MAX_COURSE_SLUG_LENGTH = 32
PAIR_SEPARATOR = "---"

COURSE_SLUG_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?!-)){0,30}[a-z0-9]$")
_SAFE_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?!-))*$")
_UNSAFE_RUN = re.compile(r"[^a-z0-9]+")
_HASH_DIGITS = 16


def is_course_slug(text: str) -> bool:
    """A course slug: 2-32 lowercase letters, digits and single dashes, no dash at either end."""
    return bool(COURSE_SLUG_PATTERN.fullmatch(text))


def suggest_course_slug(text: str) -> str:
    """A valid slug close to ``text``, for error messages (``'Intro_Python'`` -> ``'intro-python'``)."""
    slug = _UNSAFE_RUN.sub("-", text.lower()).strip("-")[:MAX_COURSE_SLUG_LENGTH].strip("-")
    return slug if is_course_slug(slug) else "my-course"


def user_slug(username: str) -> str:
    """Safe, stable, injective slug for a hub username (see the module docstring)."""
    if len(username) <= MAX_USER_SLUG_LENGTH and _SAFE_SLUG.fullmatch(username) and not username.endswith("-"):
        return username
    digest = hashlib.sha256(username.encode("utf-8")).hexdigest()[:_HASH_DIGITS]
    prefix_length = MAX_USER_SLUG_LENGTH - len(digest) - 2
    prefix = _UNSAFE_RUN.sub("-", username.lower()).strip("-")[:prefix_length].strip("-")
    return f"{prefix}--{digest}" if prefix else f"u--{digest}"


def _require_course_slug(course_slug: str) -> str:
    if not is_course_slug(course_slug):
        raise ValueError(f"{course_slug!r} is not a course slug")
    return course_slug


DEFAULT_PREFIX = "teachlab"
_PREFIX = re.compile(r"^[a-z][a-z0-9]{0,19}$")


def is_name_prefix(text: str) -> bool:
    """A prefix of a lab's object names: a letter, then up to 19 lowercase letters and digits (no dash, so the
    ``-home-``/``-data-`` kinds stay unambiguous)."""
    return bool(_PREFIX.fullmatch(text))


@dataclass(frozen=True)
class LabNames:
    """Names of one lab's containers and volumes. Labs sharing an engine (tests, a staging lab beside production)
    use different prefixes; the default prefix gives the names every release has used."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not is_name_prefix(self.prefix):
            raise ValueError(f"{self.prefix!r} is not a name prefix (a letter, then up to 19 lowercase letters and digits)")

    def container(self, username: str, course_slug: str) -> str:
        """The container of ``username``'s server for ``course_slug``."""
        return f"{self.prefix}-{user_slug(username)}{PAIR_SEPARATOR}{_require_course_slug(course_slug)}"

    def home_volume(self, username: str, course_slug: str) -> str:
        """The persistent volume mounted as the student's work folder for this student in this course."""
        return f"{self.prefix}-home-{user_slug(username)}{PAIR_SEPARATOR}{_require_course_slug(course_slug)}"

    def data_volume(self, course_slug: str, volume: str) -> str:
        """The shared data volume ``volume`` (a schema-checked short name) of a course."""
        return f"{self.prefix}-data-{_require_course_slug(course_slug)}{PAIR_SEPARATOR}{volume}"

    def node_agent(self) -> str:
        """The node agent container of this lab on a node (``spawner.hub.nodeagent``); never a student's name,
        which always holds the pair separator."""
        return f"{self.prefix}-node-agent"


def course_image_repository(course_slug: str, namespace: str = "teachlab") -> str:
    """Repository of a course's images; one tag per published version."""
    return f"{namespace}/course-{_require_course_slug(course_slug)}"


def course_image(course_slug: str, version: str, namespace: str = "teachlab") -> str:
    """Image reference of one version of a course, e.g. ``teachlab/course-intro-python:v3``."""
    return f"{course_image_repository(course_slug, namespace)}:{version}"


# A registry's address as image references start with it: a host name or IPv4 address, and a port.
_REGISTRY_ADDRESS = re.compile(
    r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*:[0-9]{1,5}$"
)
DIGEST_PATTERN = re.compile(r"^sha256:[0-9a-f]{64}$")


def is_registry_address(text: str) -> bool:
    """``host:port`` (lowercase host name or IPv4 address, no scheme, no path), e.g. ``10.0.0.2:5000``: the port is
    required, so the engine never mistakes the host for the first part of a repository path."""
    return bool(_REGISTRY_ADDRESS.fullmatch(text)) and 0 < int(text.rsplit(":", 1)[1]) < 65536


def registry_course_image(registry_address: str, course_slug: str, version: str, namespace: str = "teachlab") -> str:
    """A version's tag in a registry, e.g. ``10.0.0.2:5000/teachlab/course-intro-python:v3`` (what is pushed)."""
    if not is_registry_address(registry_address):
        raise ValueError(f"{registry_address!r} is not a registry address (host:port)")
    return f"{registry_address}/{course_image(course_slug, version, namespace)}"


def digest_reference(reference: str, digest: str) -> str:
    """``reference`` (a repository, with or without a tag) pinned to ``digest``: ``<repository>@sha256:...``, the
    name under which every engine gets exactly the bytes that were pushed."""
    if not DIGEST_PATTERN.fullmatch(digest):
        raise ValueError(f"{digest!r} is not a sha256 digest")
    repository = reference.split("@", 1)[0]
    last = repository.rsplit("/", 1)
    if ":" in last[-1]:
        repository = repository.rsplit(":", 1)[0]
    return f"{repository}@{digest}"


def is_digest_reference(reference: str) -> bool:
    """An image reference pinned to a digest (``<repository>@sha256:...``)."""
    repository, separator, digest = reference.partition("@")
    return bool(separator and repository and DIGEST_PATTERN.fullmatch(digest))


def version_tag(number: int) -> str:
    """Version numbers count up from 1 per course: ``v1``, ``v2``, ..."""
    if number < 1:
        raise ValueError("version numbers start at 1")
    return f"v{number}"


def version_number(tag: str) -> int:
    """Inverse of ``version_tag``; ValueError for anything else."""
    match = re.fullmatch(r"v([1-9][0-9]*)", tag)
    if not match:
        raise ValueError(f"{tag!r} is not a version (expected v1, v2, ...)")
    return int(match.group(1))
