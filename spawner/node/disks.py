"""Size-limited volumes: each one is an ext4 filesystem in a file, loop-mounted on the node.

Docker's local volume driver cannot attach a loop device itself, and loop device numbers change across
reboots, so a volume never remembers one. Instead:

* ``<root>/images/<name>.ext4`` holds the filesystem (a sparse file of the course's ``resources.disk``),
  made with ``mkfs.ext4 -E root_owner=<uid>:<gid>`` so it belongs to the student from the start;
* ``<root>/mounts/<name>`` is where it is mounted (``mount -o loop`` picks a free loop device each time);
* the Docker volume is a bind of that mount point (``type=none, o=bind``), so Docker only ever sees a path.

``ensure_mounted`` re-attaches by file and is called before every start and at node start, never
trusting an earlier mount. An unmounted mount point is an empty root-owned folder with mode 000, so a
container started on it by mistake cannot write a byte to the node's disk. The kernel enforces the size:
writing past it fails with "No space left on device" inside the container.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..core.problems import TeachlabError

MOUNT_OPTIONS = "loop,nodev,nosuid"


class DiskError(TeachlabError):
    """A volume's filesystem could not be made, mounted or removed."""


def _run(*command: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        message = (result.stderr.strip().splitlines() or result.stdout.strip().splitlines() or ["no message"])[-1]
        raise DiskError(f"{' '.join(command[:2])} failed: {message} (the node needs root, mkfs.ext4 and loop devices)")


def mounted_paths() -> set[str]:
    """Mount points of this mount namespace (from /proc/self/mountinfo)."""
    paths = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        paths.add(line.split()[4].replace("\\040", " "))
    return paths


@dataclass(frozen=True)
class VolumeStore:
    """Sized volumes of one node under ``root`` (a folder on a local disk of the node)."""

    root: Path

    def image(self, name: str) -> Path:
        return self.root / "images" / f"{name}.ext4"

    def mount_point(self, name: str) -> Path:
        return self.root / "mounts" / name

    def driver_options(self, name: str) -> dict[str, str]:
        """Options of the Docker ``local`` volume that binds this volume's mount point."""
        return {"type": "none", "o": "bind", "device": str(self.mount_point(name))}

    def exists(self, name: str) -> bool:
        return self.image(name).is_file()

    def is_mounted(self, name: str) -> bool:
        return str(self.mount_point(name)) in mounted_paths()

    def create(self, name: str, size_bytes: int, *, uid: int, gid: int) -> None:
        """Make and mount a new filesystem of ``size_bytes`` owned by uid:gid; nothing is left when it fails."""
        image, mount_point = self.image(name), self.mount_point(name)
        if image.exists():
            raise DiskError(f"volume {name} already has a filesystem at {image}")
        image.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            with open(image, "wb") as handle:
                handle.truncate(size_bytes)  # sparse: the node's disk fills only as the student writes
            os.chmod(image, 0o600)
            _run("mkfs.ext4", "-q", "-F", "-m", "0", "-E", f"root_owner={uid}:{gid}", "-L", name[-16:], str(image))
            self._prepare_mount_point(mount_point)
            _run("mount", "-o", MOUNT_OPTIONS, str(image), str(mount_point))
            lost_and_found = mount_point / "lost+found"
            if lost_and_found.is_dir() and not any(lost_and_found.iterdir()):
                lost_and_found.rmdir()  # root's, and in the student's way
        except BaseException:
            self.remove(name)
            raise

    @staticmethod
    def _prepare_mount_point(mount_point: Path) -> None:
        mount_point.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        mount_point.mkdir(exist_ok=True)
        os.chmod(mount_point, 0o000)  # unmounted, nobody but root may write here

    def ensure_mounted(self, name: str) -> None:
        """Attach the volume's file again if it is not mounted (after a reboot, or when a loop device went away)."""
        if not self.exists(name):
            raise DiskError(f"volume {name} has no filesystem at {self.image(name)}")
        if self.is_mounted(name):
            return
        self._prepare_mount_point(self.mount_point(name))
        _run("mount", "-o", MOUNT_OPTIONS, str(self.image(name)), str(self.mount_point(name)))

    def names(self) -> list[str]:
        folder = self.root / "images"
        return sorted(path.stem for path in folder.glob("*.ext4")) if folder.is_dir() else []

    def mount_all(self) -> list[str]:
        """At node start: mount every volume that is not mounted; returns the names it mounted."""
        mounted = []
        for name in self.names():
            if not self.is_mounted(name):
                self.ensure_mounted(name)
                mounted.append(name)
        return mounted

    def used_and_size(self, name: str) -> tuple[int, int]:
        """Bytes used and bytes available in total on a mounted volume."""
        stats = shutil.disk_usage(self.mount_point(name))
        return stats.used, stats.total

    def size_bytes(self, name: str) -> int:
        """The size the volume was made with (its file's; what ``create`` takes to make another like it)."""
        if not self.exists(name):
            raise DiskError(f"volume {name} has no filesystem at {self.image(name)}")
        return self.image(name).stat().st_size

    def remove(self, name: str) -> None:
        """Unmount (detaching the loop device) and delete the volume's file and mount point."""
        mount_point = self.mount_point(name)
        if str(mount_point) in mounted_paths():
            _run("umount", "-d", str(mount_point))
        if mount_point.is_dir():
            mount_point.rmdir()
        self.image(name).unlink(missing_ok=True)
