"""What an SSH client asks for, checked before anything runs: the login name and local forwards.

Pure (no Docker, no hub, no network), tested in tests/unit/test_ssh_core.py. Guarantees:

* A login name is ``<user>+<course>``; the course is a catalog slug and the user a non-empty hub name
  without ``+`` or control characters. Anything else is a ``LoginNameError`` whose text tells the person
  what to type instead.
* A local forward (``-L``, or a SOCKS connection of ``-D``) may only reach the loopback of the student's
  own container (``127.0.0.0/8``, ``::1``, ``localhost``): the services the student runs there, which is
  all that VS Code Remote-SSH needs. Every other destination is refused with one line, so no SSH
  connection becomes a way into the students' network or out to the internet.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from ..core.naming import is_course_slug
from ..core.problems import TeachlabError

SEPARATOR = "+"
MAX_LOGIN_NAME_LENGTH = 300
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


class LoginNameError(TeachlabError):
    """The login name is not ``<user>+<course>``; the text says what to type instead."""


@dataclass(frozen=True)
class LoginName:
    """Who logs in and into which course's container."""

    user: str
    course: str

    def __str__(self) -> str:
        return f"{self.user}{SEPARATOR}{self.course}"


def parse_login_name(text: str) -> LoginName:
    """``alice+intro-python`` -> LoginName("alice", "intro-python"), or LoginNameError.

    The course is the part after the last ``+`` (hub names with ``+`` are not accepted: they would be
    ambiguous to a person reading the command).
    """
    example = "log in as <your lab username>+<course>, e.g. ssh -p 2222 alice+intro-python@<lab address>"
    if len(text) > MAX_LOGIN_NAME_LENGTH or _CONTROL.search(text):
        raise LoginNameError(f"that login name cannot be right; {example}")
    user, separator, course = text.partition(SEPARATOR)
    if not separator:
        raise LoginNameError(f"{text!r} names no course; {example}")
    if not user:
        raise LoginNameError(f"{text!r} names no user; {example}")
    if SEPARATOR in course:
        raise LoginNameError(f"{text!r} has more than one '+'; {example}")
    if not is_course_slug(course):
        raise LoginNameError(f"{course!r} is not a course name (lowercase letters, digits and dashes); {example}")
    return LoginName(user, course)


def is_container_loopback(host: str) -> bool:
    """True for the names and addresses that mean "this container itself"."""
    name = host.strip().lower().rstrip(".")
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def forward_refusal(host: str, port: int) -> str | None:
    """None when a local forward to ``host:port`` may open (inside the student's container), else why not."""
    if not 0 < port < 65536:
        return f"port {port} does not exist; forward to a port between 1 and 65535"
    if not is_container_loopback(host):
        return (
            f"forwarding to {host[:80]} is refused: only ports inside your own container can be forwarded "
            f"(use 127.0.0.1, e.g. ssh -L 8888:127.0.0.1:{port}); -D gives no more than -L"
        )
    return None
