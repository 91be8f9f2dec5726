"""Hosts for the several-hosts tests: Linux network namespaces joined to this one by veth pairs.

A host is a network namespace of its own (its own loopback, its own ports) with one veth pair
to the root namespace: ``outside`` is the root end's address, ``inside`` the host's. The host
reaches PostgreSQL and Redis only through its own proxy process (``tests/faults/proxy.py``),
whose listening sockets sit on ``outside`` (the addresses the host is configured with) and on
the host's own loopback at the ports Redis itself hands out (a Sentinel's answer or a Cluster's
slot map name ``127.0.0.1:<port>``); nothing else of the root namespace is reachable from it.
Names carry the test run's id, so runs never share a namespace, a link or a subnet.
"""
from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass


class NetworkError(RuntimeError):
    """An `ip` command failed: network namespaces are not usable here (the tests fail, never skip)."""


def ip(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``ip argv...``; raise NetworkError with its output if it fails and `check`."""
    try:
        done = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise NetworkError(f"ip {' '.join(argv)}: {error}") from error
    if check and done.returncode != 0:
        raise NetworkError(f"ip {' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


@dataclass(frozen=True)
class Host:
    """One host: network namespace `netns`, reached from here at `inside`; it reaches us at `outside`."""

    name: str
    netns: str
    veth: str
    outside: str
    inside: str

    @property
    def exec_prefix(self) -> tuple[str, ...]:
        """Prefix of a command run on this host."""
        return ("ip", "netns", "exec", self.netns)


def run_id() -> str:
    """Four hex digits naming this test run's namespaces and links."""
    return f"{os.getpid() & 0xffff:04x}"


def create_hosts(names: str, run: str) -> list[Host]:
    """A namespace and a veth pair per host name (one letter each); all removed again if one fails."""
    subnet = int(run, 16) % 250  # 10.77.<subnet>.0/24, one /30 per host
    hosts = []
    try:
        for index, name in enumerate(names):
            host = Host(name, f"pfh-{run}-{name.lower()}", f"pfh{run}{name.lower()}",
                        f"10.77.{subnet}.{4 * index + 1}", f"10.77.{subnet}.{4 * index + 2}")
            ip("netns", "add", host.netns)
            hosts.append(host)
            peer = host.veth + "p"
            ip("link", "add", host.veth, "type", "veth", "peer", "name", peer)
            ip("link", "set", peer, "netns", host.netns)
            ip("addr", "add", f"{host.outside}/30", "dev", host.veth)
            ip("link", "set", host.veth, "up")
            ip("-n", host.netns, "addr", "add", f"{host.inside}/30", "dev", peer)
            ip("-n", host.netns, "link", "set", peer, "up")
            ip("-n", host.netns, "link", "set", "lo", "up")
        return hosts
    except BaseException:
        remove_hosts(hosts)
        raise


def remove_hosts(hosts: list[Host]) -> None:
    """Delete the namespaces (their veth ends go with them) and any root end left behind."""
    for host in hosts:
        ip("netns", "del", host.netns, check=False)
    deadline = time.monotonic() + 5
    for host in hosts:
        while ip("link", "show", host.veth, check=False).returncode == 0 and time.monotonic() < deadline:
            time.sleep(0.1)  # the kernel removes the pair shortly after the namespace
        ip("link", "del", host.veth, check=False)
