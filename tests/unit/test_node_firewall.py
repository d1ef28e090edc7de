"""The egress rules of a students' network, as computed (the kernel's side is tested in tests/node)."""

from __future__ import annotations

import ipaddress

import pytest

from spawner.node.firewall import (
    BLOCKED_DESTINATIONS,
    StudentNetwork,
    egress_rules,
    hub_forward_rules,
    ingress_rules,
    input_rules,
    jump_rules,
    nat_jump_rules,
    split_subnet,
)

NET = StudentNetwork(
    network_id="abc123",
    bridge="br-abc123",
    subnet="172.30.0.0/20",
    gateway="172.30.0.1",
    offline_range="172.30.8.0/21",
    hub_port=8081,
)


def test_every_private_link_local_and_loopback_range_is_dropped():
    dropped = [rule[rule.index("-d") + 1] for rule in egress_rules(NET) if "-d" in rule]
    assert dropped == list(BLOCKED_DESTINATIONS)
    for address in ("169.254.169.254", "10.1.2.3", "192.168.1.1", "172.17.0.1", "127.0.0.1", "100.64.0.1"):
        assert any(ipaddress.ip_address(address) in ipaddress.ip_network(cidr) for cidr in dropped), address
    for address in ("198.51.100.7", "203.0.113.9", "8.8.8.8"):
        assert not any(ipaddress.ip_address(address) in ipaddress.ip_network(cidr) for cidr in dropped), address


def test_offline_servers_reach_nothing_outside_and_the_rest_continues_through_dockers_rules():
    rules = egress_rules(NET)
    assert ["-A", NET.egress_chain, "-s", "172.30.8.0/21", "-j", "DROP"] in rules
    assert rules[-1] == ["-A", NET.egress_chain, "-j", "RETURN"]


def test_the_node_accepts_only_the_hub_port_and_dns_on_the_gateway():
    rules = input_rules(NET)
    accepted_ports = [rule[rule.index("--dport") + 1] for rule in rules if "--dport" in rule]
    assert accepted_ports == ["8081", "53", "53"]
    assert all("172.30.0.1/32" in rule for rule in rules if "--dport" in rule)
    assert rules[-1] == ["-A", NET.input_chain, "-j", "DROP"]


def test_chains_are_per_network_and_the_bridge_jumps_into_them():
    other = StudentNetwork(**{**NET.__dict__, "network_id": "other"})
    assert NET.egress_chain != other.egress_chain and len(NET.egress_chain) <= 28
    assert jump_rules(NET) == [
        ["DOCKER-USER", "-i", "br-abc123", "-j", NET.egress_chain],
        ["INPUT", "-i", "br-abc123", "-j", NET.input_chain],
    ]


def test_a_subnet_splits_into_docker_half_and_offline_half():
    assert split_subnet("172.30.0.0/20") == ("172.30.0.0/21", "172.30.8.0/21")
    with pytest.raises(ValueError, match="too small"):
        split_subnet("172.30.0.0/30")


def test_a_node_without_the_hub_forwards_only_the_hub_port_to_the_hub():
    """Another node's servers call the hub at the same gateway address; the node sends exactly that port on, and
    lets the servers answer (never open) connections the proxy makes to their published ports."""
    remote = StudentNetwork(**{**NET.__dict__, "hub_address": "10.0.0.2"})
    rules = egress_rules(remote)
    reply = ["-m", "conntrack", "--ctstate", "ESTABLISHED", "--ctdir", "REPLY", "-j", "ACCEPT"]
    hub = ["-d", "10.0.0.2/32", "-p", "tcp", "-m", "tcp", "--dport", "8081", "-j", "ACCEPT"]
    assert rules[:2] == [["-A", remote.egress_chain, *reply], ["-A", remote.egress_chain, *hub]]
    assert rules[2:] == egress_rules(NET)  # everything else of the policy is the same
    assert hub_forward_rules(remote) == [
        ["-A", remote.hub_chain, "-d", "172.30.0.1/32", "-p", "tcp", "-m", "tcp", "--dport", "8081", "-j", "DNAT",
         "--to-destination", "10.0.0.2:8081"],
    ]  # fmt: skip
    assert nat_jump_rules(remote) == [["PREROUTING", "-i", "br-abc123", "-j", remote.hub_chain]]
    assert hub_forward_rules(NET) == [] and nat_jump_rules(NET) == []  # where the hub listens on the gateway


def test_on_a_node_without_the_hub_only_the_hubs_address_opens_connections_to_the_servers():
    """Published ports face the management network: the hub and the proxy (at the hub's address) open connections
    to servers; answers to the servers' own connections come back; any other machine there is dropped."""
    remote = StudentNetwork(**{**NET.__dict__, "hub_address": "10.0.0.2"})
    assert ingress_rules(remote) == [
        ["-A", remote.ingress_chain, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN"],
        ["-A", remote.ingress_chain, "-s", "10.0.0.2/32", "-j", "RETURN"],
        ["-A", remote.ingress_chain, "-j", "DROP"],
    ]
    assert jump_rules(remote)[-1] == ["DOCKER-USER", "-o", "br-abc123", "-j", remote.ingress_chain]
    assert len(remote.ingress_chain) <= 28
    # Where the hub runs, its proxy reaches the servers on the bridge itself: no ingress chain.
    assert ingress_rules(NET) == [] and all(remote.ingress_chain not in jump for jump in jump_rules(NET))
