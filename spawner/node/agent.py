"""The node agent: this package's firewall and disks as a command, for a hub that runs in a container.

In the production stack the hub is a Swarm service: it has the node's Docker API but neither the node's
mount namespace (a loop mount it made would stay inside its container) nor loop devices (Swarm services
cannot be given devices). So the hub starts one small privileged container per node from its own image,
``python -m spawner.node serve``, and runs each node operation in it with ``docker exec``
(``spawner.hub.nodeagent``). The agent shares the node's network namespace (its iptables rules are the
node's) and binds the volume folder with shared propagation, so the filesystems it mounts appear on the
node, where dockerd binds them into students' containers; they stay mounted when the agent is replaced.

Every command prints a JSON value on success and one line on standard error (exit status 1) on failure,
so the hub can tell a refusal from a crash and show the reason.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..core.problems import TeachlabError
from . import firewall
from .disks import VolumeStore
from .firewall import Iptables, StudentNetwork

IPTABLES_VARIANTS = ("iptables-nft", "iptables-legacy")


def docker_iptables() -> Iptables:
    """The iptables variant that holds Docker's own chains on this node.

    The agent's image and the node may default to different backends (nftables or legacy); rules written
    to the other one would never see the students' traffic, so the variant whose filter table has
    ``DOCKER-USER`` is the one to use. Falls back to plain ``iptables`` (whose error then says what is missing).
    """
    for variant in IPTABLES_VARIANTS:
        if shutil.which(variant) is None:
            continue
        listing = subprocess.run([variant, "-w", "10", "-S", firewall.DOCKER_FORWARD_HOOK], capture_output=True, timeout=60)
        if listing.returncode == 0:
            return Iptables(variant)
    return Iptables()


def _network(text: str) -> StudentNetwork:
    try:
        return StudentNetwork(**json.loads(text))
    except (ValueError, TypeError) as exc:
        raise TeachlabError(f"not a students' network description: {exc}") from None


def network_argument(net: StudentNetwork) -> str:
    """How the hub passes a students' network to ``firewall-install`` and ``firewall-remove``."""
    return json.dumps(asdict(net), sort_keys=True)


def _serve(store: VolumeStore) -> Any:
    """Mount every volume of the node (after a reboot), then stay up until stopped."""
    mounted = store.mount_all()
    print(json.dumps({"mounted": mounted}), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        signal.pause()


def parser() -> argparse.ArgumentParser:
    commands = argparse.ArgumentParser(prog="python -m spawner.node", description="Teachlab's node agent")
    commands.add_argument("--volumes", type=Path, required=True, help="the node's folder of size-limited volumes")
    sub = commands.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="mount every volume, then wait (the agent container's main process)")
    for name in ("firewall-install", "firewall-remove"):
        sub.add_parser(name).add_argument("network", help="the students' network as JSON")
    for name in ("volume-exists", "volume-mount", "volume-remove", "volume-usage", "volume-size"):
        sub.add_parser(name).add_argument("name")
    create = sub.add_parser("volume-create")
    create.add_argument("name")
    create.add_argument("size_bytes", type=int)
    create.add_argument("uid", type=int)
    create.add_argument("gid", type=int)
    sub.add_parser("volume-names")
    return commands


def run(arguments: Sequence[str]) -> Any:
    """Carry out one command; returns what to print as JSON. TeachlabError for an expected failure."""
    args = parser().parse_args(arguments)
    store = VolumeStore(args.volumes)
    command = args.command
    if command == "serve":
        return _serve(store)
    if command == "firewall-install":
        firewall.install(_network(args.network), docker_iptables())
        return "installed"
    if command == "firewall-remove":
        firewall.remove(_network(args.network), docker_iptables())
        return "removed"
    if command == "volume-exists":
        return store.exists(args.name)
    if command == "volume-mount":
        store.ensure_mounted(args.name)
        return "mounted"
    if command == "volume-create":
        store.create(args.name, args.size_bytes, uid=args.uid, gid=args.gid)
        return "created"
    if command == "volume-remove":
        store.remove(args.name)
        return "removed"
    if command == "volume-usage":
        return list(store.used_and_size(args.name))
    if command == "volume-size":
        return store.size_bytes(args.name)
    return store.names()


def main(arguments: Sequence[str] | None = None) -> int:
    try:
        result = run(sys.argv[1:] if arguments is None else arguments)
    except TeachlabError as exc:
        print(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0
