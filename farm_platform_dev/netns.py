"""Hosts on one machine: Linux network namespaces on a bridge of their own.

Each host is a network namespace with one veth link to a bridge this module creates, and an
address in a private /24 (10.45.0.0/24 by default) that exists only on that bridge: the
bridge's own address (.1) is where this machine reaches the hosts from; nothing is routed
anywhere else, and the machine's own interfaces and routes are never touched. The faults
between hosts act on a host's link (cut, restored, delayed with `tc netem`).

`NetworkLayout.down` removes every namespace and link it made, and ends whatever still runs in
its namespaces first, even after a failed `up` (it only looks for names it owns).
Needs root (`ip netns`, `ip link`, `tc`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

# A private /24 nobody routes: the hosts' addresses exist only on the bridge made here.
DEFAULT_SUBNET = "10.45.0.0/24"
DEFAULT_PREFIX = "fp45"
# The hosts' addresses start here; .1 is the bridge's (this machine's side).
FIRST_HOST = 10


class NetworkError(RuntimeError):
    """An `ip`/`tc` command failed: the message names the command and its error."""


def ip(*args: str, check: bool = True) -> str:
    """Run `ip ARGS` and return its stdout (NetworkError naming the command when it fails)."""
    return _run(["ip", *args], check)


def _run(command: list[str], check: bool = True) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise NetworkError(f"`{' '.join(command)}` failed: {result.stderr.strip()}")
    return result.stdout


@dataclass(frozen=True)
class NetworkLayout:
    """The namespaces of `hosts`, named PREFIX-HOST, on the bridge PREFIXbr in `subnet`."""

    hosts: tuple[str, ...]
    prefix: str = DEFAULT_PREFIX
    subnet: str = DEFAULT_SUBNET

    def __post_init__(self) -> None:
        network = ipaddress.ip_network(self.subnet)
        if not network.is_private or network.prefixlen != 24:
            raise NetworkError(f"the hosts' subnet must be a private /24, not {self.subnet}")
        if len(self.prefix) > 8 or not self.prefix.isalnum():
            raise NetworkError(f"prefix {self.prefix!r}: at most 8 letters or digits")

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    @property
    def gateway(self) -> str:
        """This machine's address on the bridge: where the hosts are reached from."""
        return str(ipaddress.ip_network(self.subnet)[1])

    def namespace(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def address(self, host: str) -> str:
        return str(ipaddress.ip_network(self.subnet)[FIRST_HOST + self.hosts.index(host)])

    def link(self, host: str) -> str:
        """The bridge's end of `host`'s veth pair (the host's end is its `eth0`)."""
        return f"{self.prefix}v{self.hosts.index(host)}"

    def exists(self) -> bool:
        return bool(ip("link", "show", self.bridge, check=False).strip())

    def up(self) -> None:
        """Create the bridge and every host with its link and address; on a failure, remove
        what was made and raise."""
        try:
            self._up()
        except BaseException:
            self.down()
            raise

    def _up(self) -> None:
        length = ipaddress.ip_network(self.subnet).prefixlen
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.gateway}/{length}", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for host in self.hosts:
            namespace, link = self.namespace(host), self.link(host)
            ip("netns", "add", namespace)
            ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", namespace)
            ip("link", "set", link, "master", self.bridge, "up")
            ip("-n", namespace, "addr", "add", f"{self.address(host)}/{length}", "dev", "eth0")
            ip("-n", namespace, "link", "set", "eth0", "up")
            ip("-n", namespace, "link", "set", "lo", "up")

    def down(self) -> None:
        """End every process in the namespaces, then remove them, their links and the
        bridge. Safe to call on a half-made or already removed layout."""
        # The last hosts first: those that use the first ones' services.
        namespaces = [self.namespace(host) for host in reversed(self.hosts)]
        present = set(ip("netns", "list", check=False).split())
        for namespace in namespaces:
            if namespace in present:
                end_processes_in(namespace)
                ip("netns", "del", namespace, check=False)
        for host in self.hosts:  # a veth whose namespace was never made
            ip("link", "del", self.link(host), check=False)
        ip("link", "del", self.bridge, check=False)

    def leftovers(self) -> list[str]:
        """What of this layout still exists (namespaces, links, the bridge): [] once down."""
        namespaces = set(ip("netns", "list", check=False).split())
        links = {
            line.split()[0].split("@")[0] for line in ip("-br", "link", check=False).splitlines()
        }
        mine = [self.namespace(host) for host in self.hosts if self.namespace(host) in namespaces]
        mine += [link for link in (*map(self.link, self.hosts), self.bridge) if link in links]
        return mine

    def exec_prefix(self, host: str) -> list[str]:
        """The command prefix that runs a program on `host` (in its network namespace)."""
        return ["ip", "netns", "exec", self.namespace(host)]

    def listening(self, host: str) -> set[str]:
        """The addresses `host`'s TCP servers listen on (IPv4-mapped ones as IPv4)."""
        lines = ip("netns", "exec", self.namespace(host), "ss", "-ltnH").splitlines()
        local = {line.split()[3].rsplit(":", 1)[0] for line in lines if line.strip()}
        return {address.strip("[]").removeprefix("::ffff:") for address in local}

    def set_link(self, host: str, up: bool) -> None:
        """Cut (`up` False) or restore `host`'s link to the bridge: its processes live on,
        unreachable, as a machine whose network dropped."""
        ip("link", "set", self.link(host), "up" if up else "down")

    def delay(self, milliseconds: float, hosts: Sequence[str] | None = None) -> None:
        """Every packet leaving each of `hosts` (all) waits `milliseconds` (tc netem); 0
        removes the delay. A round trip between two hosts then costs twice that."""
        for host in hosts or self.hosts:
            command = [*self.exec_prefix(host), "tc", "qdisc"]
            if milliseconds > 0:
                try:
                    _run(
                        [
                            *command,
                            "replace",
                            "dev",
                            "eth0",
                            "root",
                            "netem",
                            "delay",
                            f"{milliseconds}ms",
                        ]
                    )
                except NetworkError as exc:
                    if "unknown" not in str(exc):
                        raise
                    raise NetworkError(
                        "tc netem is not in this kernel (CONFIG_NET_SCH_NETEM is not set): "
                        "delays between hosts need a kernel with sch_netem"
                    ) from exc
            else:
                _run([*command, "del", "dev", "eth0", "root"], check=False)


def processes_in(namespace: str) -> list[int]:
    """The pids running in network namespace `namespace`."""
    return [int(pid) for pid in ip("netns", "pids", namespace, check=False).split()]


def end_processes_in(namespace: str, timeout: float = 10.0) -> None:
    """SIGTERM every process in `namespace`, SIGKILL what is left after `timeout`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in processes_in(namespace):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while processes_in(namespace) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not processes_in(namespace):
            return
