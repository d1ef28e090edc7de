"""How every container the platform starts for a student (and every helper it runs) is confined.

One definition, used by the spawner, the smoke test and the platform's helpers, so a smoke test sees
exactly the limits a student gets: no privilege escalation, no capabilities, a bounded number of
processes, a read-only root filesystem with size-limited scratch space (``/tmp`` and the home folder are
tmpfs, charged to the container's memory limit), and logs that rotate instead of filling the node's disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .contract import IMAGE


@dataclass(frozen=True)
class Hardening:
    no_new_privileges: bool = True
    capabilities_kept: tuple[str, ...] = ()
    pids_limit: int = 1024
    read_only_root: bool = True
    tmp_size: str = "1g"
    home_size: str = "256m"
    log_max_size: str = "10m"
    log_max_files: int = 3

    def scratch_mounts(self) -> dict[str, str]:
        """tmpfs mounts (path -> options); the work volume and course data are mounted inside the home one."""
        if not self.read_only_root:
            return {}
        return {
            "/tmp": f"size={self.tmp_size},mode=1777,nosuid,nodev",
            IMAGE.home: f"size={self.home_size},uid={IMAGE.uid},gid={IMAGE.gid},mode=0755,nosuid,nodev",
        }

    def docker_py_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of docker-py's ``create_host_config`` / ``containers.create``."""
        kwargs: dict[str, Any] = {
            "cap_drop": ["ALL"],
            "cap_add": list(self.capabilities_kept),
            "privileged": False,
            "pids_limit": self.pids_limit,
            "read_only": self.read_only_root,
            "tmpfs": self.scratch_mounts(),
            "log_config": {"Type": "json-file", "Config": {"max-size": self.log_max_size, "max-file": str(self.log_max_files)}},
        }
        if self.no_new_privileges:
            kwargs["security_opt"] = ["no-new-privileges"]
        return kwargs


STUDENT_HARDENING = Hardening()
# Platform helpers (handing a new data volume to the student uid) run as root with only CHOWN.
HELPER_HARDENING = Hardening(capabilities_kept=("CHOWN",), pids_limit=64)
