"""How every container the platform starts for a student (and every helper it runs) is confined.

One definition, used by the spawner, the smoke test and the platform's helpers, so a smoke test sees
exactly the limits a student gets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Hardening:
    """No privilege escalation, no capabilities, a bounded number of processes."""

    no_new_privileges: bool = True
    capabilities_kept: tuple[str, ...] = ()
    pids_limit: int = 1024

    def docker_py_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of docker-py's ``create_host_config`` / ``containers.create``."""
        kwargs: dict[str, Any] = {
            "cap_drop": ["ALL"],
            "cap_add": list(self.capabilities_kept),
            "privileged": False,
            "pids_limit": self.pids_limit,
        }
        if self.no_new_privileges:
            kwargs["security_opt"] = ["no-new-privileges"]
        return kwargs


STUDENT_HARDENING = Hardening()
