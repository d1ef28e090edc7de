"""The egress policy of a node's students' network, as iptables rules.

Forwarded traffic from the students' bridge (to other networks, the internet) passes Docker's
``DOCKER-USER`` chain; traffic to the node's own addresses passes ``INPUT``. Both jump into chains of
ours, one pair per students' network, so the rules are ours alone to replace:

* ``TL-EGRESS-<id>``: link-local (cloud metadata), private, loopback, multicast and reserved ranges are
  dropped; so is everything from the offline address range (servers of courses with ``network: off``);
  the rest (the public internet) continues through Docker's own rules.
* ``TL-INPUT-<id>``: the hub's API port and DNS on the gateway are accepted, replies to connections the
  node opened are accepted, everything else a student's container sends to the node is dropped.
* ``TL-HUB-<id>`` (nat table, only on a node where the hub does not run, ``hub_address`` set): the hub's API
  port on the gateway is forwarded to the hub's address on the management network, and ``TL-EGRESS`` accepts
  exactly that destination first, and the servers' answers to connections made to their published ports. Every
  node's students' network has the same subnet, so a server calls the hub at the same gateway address on every
  node (docs/scale-out.md).
* ``TL-INGRESS-<id>`` (same nodes): what enters the students' bridge from outside (a published port) is only
  what the hub's address opens (the hub and the proxy run there) and answers to the servers' own connections;
  any other machine of the management network is dropped.

``egress_rules``/``input_rules`` are pure; ``install`` applies them with the ``iptables`` command and
``verify`` reads them back, so a hub start can refuse when the kernel does not hold what it asked for.
"""

from __future__ import annotations

import hashlib
import ipaddress
import shutil
import subprocess
from dataclasses import dataclass

from ..core.problems import TeachlabError

# Destinations no student server may reach, whatever its course says.
BLOCKED_DESTINATIONS = (
    "0.0.0.0/8",  # "this network"
    "10.0.0.0/8",  # private
    "100.64.0.0/10",  # carrier-grade NAT
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local: cloud metadata services live here
    "172.16.0.0/12",  # private
    "192.168.0.0/16",  # private
    "198.18.0.0/15",  # benchmarking
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, broadcast
)
DOCKER_FORWARD_HOOK = "DOCKER-USER"
DNS_PORT = 53


class FirewallError(TeachlabError):
    """The rules could not be installed or are not what was asked for."""


@dataclass(frozen=True)
class StudentNetwork:
    """What the rules need to know about a students' network."""

    network_id: str
    bridge: str  # the host's interface of the network, e.g. br-1f2e3d4c5b6a
    subnet: str
    gateway: str
    offline_range: str  # addresses of servers that may not reach the internet
    hub_port: int
    hub_address: str = ""  # the hub's address when it runs on another node; empty: it listens on the gateway

    @property
    def hub_chain(self) -> str:
        return f"TL-HUB-{self.suffix}"

    @property
    def suffix(self) -> str:
        return hashlib.sha256(self.network_id.encode()).hexdigest()[:12]

    @property
    def egress_chain(self) -> str:
        return f"TL-EGRESS-{self.suffix}"

    @property
    def input_chain(self) -> str:
        return f"TL-INPUT-{self.suffix}"

    @property
    def ingress_chain(self) -> str:
        return f"TL-INGRESS-{self.suffix}"


def split_subnet(subnet: str) -> tuple[str, str]:
    """The halves of a students' subnet: Docker hands out the first (``ip_range``), offline servers get the second."""
    network = ipaddress.ip_network(subnet)
    if network.prefixlen > 28:
        raise ValueError(f"{subnet} is too small for student servers; use a /24 or larger")
    lower, upper = network.subnets(prefixlen_diff=1)
    return str(lower), str(upper)


def free_subnet(taken: list[str], pool: str = "172.24.0.0/13", prefix: int = 20) -> str:
    """The first ``/prefix`` of ``pool`` that overlaps none of the ``taken`` subnets (for a new students' network)."""
    used = [ipaddress.ip_network(subnet) for subnet in taken]
    for candidate in ipaddress.ip_network(pool).subnets(new_prefix=prefix):
        if not any(candidate.overlaps(other) for other in used):
            return str(candidate)
    raise FirewallError(f"no free /{prefix} left in {pool} for a students' network; remove unused Docker networks")


def egress_rules(net: StudentNetwork) -> list[list[str]]:
    chain = net.egress_chain
    rules = []
    if net.hub_address:
        # The hub and proxy reach this node's servers through published ports: the servers' answers (and only
        # answers: the reply direction of connections made to them) go back through the node.
        rules.append(["-A", chain, "-m", "conntrack", "--ctstate", "ESTABLISHED", "--ctdir", "REPLY", "-j", "ACCEPT"])
        hub = ["-d", f"{net.hub_address}/32", "-p", "tcp", "-m", "tcp", "--dport", str(net.hub_port), "-j", "ACCEPT"]
        rules.append(["-A", chain, *hub])
    rules += [["-A", chain, "-d", cidr, "-j", "DROP"] for cidr in BLOCKED_DESTINATIONS]
    rules.append(["-A", chain, "-s", net.offline_range, "-j", "DROP"])
    rules.append(["-A", chain, "-j", "RETURN"])
    return rules


def input_rules(net: StudentNetwork) -> list[list[str]]:
    chain = net.input_chain
    return [
        ["-A", chain, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"],
        ["-A", chain, "-d", f"{net.gateway}/32", "-p", "tcp", "-m", "tcp", "--dport", str(net.hub_port), "-j", "ACCEPT"],
        ["-A", chain, "-d", f"{net.gateway}/32", "-p", "udp", "-m", "udp", "--dport", str(DNS_PORT), "-j", "ACCEPT"],
        ["-A", chain, "-d", f"{net.gateway}/32", "-p", "tcp", "-m", "tcp", "--dport", str(DNS_PORT), "-j", "ACCEPT"],
        ["-A", chain, "-j", "DROP"],
    ]


def ingress_rules(net: StudentNetwork) -> list[list[str]]:
    """Connections into the bridge from outside: only the hub's address opens them (none where the hub runs here)."""
    if not net.hub_address:
        return []
    chain = net.ingress_chain
    return [
        ["-A", chain, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN"],
        ["-A", chain, "-s", f"{net.hub_address}/32", "-j", "RETURN"],
        ["-A", chain, "-j", "DROP"],
    ]


def filter_chains(net: StudentNetwork) -> list[tuple[str, list[list[str]]]]:
    """Our filter-table chains of this network and their rules."""
    chains = [(net.egress_chain, egress_rules(net)), (net.input_chain, input_rules(net))]
    return chains + ([(net.ingress_chain, ingress_rules(net))] if net.hub_address else [])


def hub_forward_rules(net: StudentNetwork) -> list[list[str]]:
    """nat rules: the hub's port on the gateway goes to the hub on another node (none where the hub listens here)."""
    if not net.hub_address:
        return []
    chain = net.hub_chain
    return [
        ["-A", chain, "-d", f"{net.gateway}/32", "-p", "tcp", "-m", "tcp", "--dport", str(net.hub_port), "-j", "DNAT",
         "--to-destination", f"{net.hub_address}:{net.hub_port}"],
    ]  # fmt: skip


def jump_rules(net: StudentNetwork) -> list[list[str]]:
    """The rules (without -A/-I) that send the bridge's traffic into our chains."""
    jumps = [[DOCKER_FORWARD_HOOK, "-i", net.bridge, "-j", net.egress_chain], ["INPUT", "-i", net.bridge, "-j", net.input_chain]]
    return jumps + ([[DOCKER_FORWARD_HOOK, "-o", net.bridge, "-j", net.ingress_chain]] if net.hub_address else [])


def nat_jump_rules(net: StudentNetwork) -> list[list[str]]:
    """The nat rule (without -A/-I) that sends the bridge's new connections into the hub forward."""
    return [["PREROUTING", "-i", net.bridge, "-j", net.hub_chain]] if net.hub_address else []


class Iptables:
    """The ``iptables`` command (the same one Docker uses); each call is a short subprocess."""

    def __init__(self, command: str = "iptables"):
        self.command = shutil.which(command)
        if self.command is None:
            raise FirewallError(f"{command} is not installed; install it (apt-get install iptables) or run 'make setup'")

    def run(self, *arguments: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([self.command, "-w", "10", *arguments], capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            message = (result.stderr.strip().splitlines() or ["no message"])[-1]
            raise FirewallError(f"iptables {' '.join(arguments)} failed: {message} (the hub needs root or CAP_NET_ADMIN)")
        return result

    def has_chain(self, chain: str, table: str = "filter") -> bool:
        """Whether ``table`` has ``chain`` (read from the whole listing: asking for a missing chain gives
        different messages on different iptables backends, and a refusal must not read as "missing")."""
        listing = self.run(*_table(table), "-S").stdout.splitlines()
        return any(line.split()[:2] in (["-N", chain], ["-P", chain]) for line in listing)

    def chain_rules(self, chain: str, table: str = "filter") -> list[str]:
        return [line for line in self.run(*_table(table), "-S", chain).stdout.splitlines() if line.startswith("-A ")]


def _table(table: str) -> tuple[str, ...]:
    """``-t TABLE``, left out for the filter table (iptables' default), so filter commands read as they always did."""
    return () if table == "filter" else ("-t", table)


def install(net: StudentNetwork, iptables: Iptables | None = None) -> None:
    """Replace our chains with the current rules and make sure the bridge jumps into them (idempotent)."""
    iptables = iptables or Iptables()
    if not iptables.has_chain(DOCKER_FORWARD_HOOK):
        raise FirewallError(f"the {DOCKER_FORWARD_HOOK} chain is missing: Docker must run with its iptables rules on")
    for chain, rules in filter_chains(net):
        if iptables.has_chain(chain):
            iptables.run("-F", chain)
        else:
            iptables.run("-N", chain)
        for rule in rules:
            iptables.run(*rule)
    if net.hub_address:
        if iptables.has_chain(net.hub_chain, table="nat"):
            iptables.run("-t", "nat", "-F", net.hub_chain)
        else:
            iptables.run("-t", "nat", "-N", net.hub_chain)
        for rule in hub_forward_rules(net):
            iptables.run("-t", "nat", *rule)
    for jump in jump_rules(net):
        if iptables.run("-C", *jump, check=False).returncode != 0:
            iptables.run("-I", jump[0], "1", *jump[1:])
    for jump in nat_jump_rules(net):
        if iptables.run("-t", "nat", "-C", *jump, check=False).returncode != 0:
            iptables.run("-t", "nat", "-I", jump[0], "1", *jump[1:])
    verify(net, iptables)


def verify(net: StudentNetwork, iptables: Iptables | None = None) -> None:
    """Read the rules back; FirewallError names the first difference."""
    iptables = iptables or Iptables()
    for chain, rules in filter_chains(net):
        expected = [" ".join(rule) for rule in rules]
        found = iptables.chain_rules(chain)
        if found != expected:
            raise FirewallError(
                f"chain {chain} holds {len(found)} rule(s) that differ from the {len(expected)} expected "
                f"(first difference: {next((f for f, e in zip(found, expected, strict=False) if f != e), 'count')})"
            )
    if net.hub_address:
        expected = [" ".join(rule) for rule in hub_forward_rules(net)]
        if iptables.chain_rules(net.hub_chain, table="nat") != expected:
            raise FirewallError(f"nat chain {net.hub_chain} does not forward the hub's port to {net.hub_address}")
    for jump in jump_rules(net):
        if iptables.run("-C", *jump, check=False).returncode != 0:
            raise FirewallError(f"{jump[0]} does not send {net.bridge}'s traffic to {jump[-1]}")
    for jump in nat_jump_rules(net):
        if iptables.run("-t", "nat", "-C", *jump, check=False).returncode != 0:
            raise FirewallError(f"nat {jump[0]} does not send {net.bridge}'s connections to {jump[-1]}")


def remove(net: StudentNetwork, iptables: Iptables | None = None) -> None:
    """Take the network's rules out (when the network itself is removed)."""
    iptables = iptables or Iptables()
    for jump in jump_rules(net):
        while iptables.run("-C", *jump, check=False).returncode == 0:
            iptables.run("-D", *jump)
    for chain, _ in filter_chains(net):
        if iptables.has_chain(chain):
            iptables.run("-F", chain)
            iptables.run("-X", chain)
    if net.hub_address:
        for jump in nat_jump_rules(net):
            while iptables.run("-t", "nat", "-C", *jump, check=False).returncode == 0:
                iptables.run("-t", "nat", "-D", *jump)
        if iptables.has_chain(net.hub_chain, table="nat"):
            iptables.run("-t", "nat", "-F", net.hub_chain)
            iptables.run("-t", "nat", "-X", net.hub_chain)
