"""Hosts as Linux network namespaces, for tests that need more than one machine.

`Network` makes a bridge in the root namespace with an address of its own in a /24 of
10.77.0.0/16 that no route uses yet; each `Host` is a namespace with its own loopback, one veth
link into the bridge and its own hostname (a UTS namespace per process started there, so Celery
names its nodes `<queue>@<host>`). The test process itself stays in the root namespace and reaches
every host through the bridge. Names carry the run's token, so parallel runs never collide, and
`close()` removes everything (processes first) even after a failure.

Needs root and `ip netns` (iproute2); `Network.unavailable()` says why not, for a skip.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


@dataclass(frozen=True)
class Host:
    name: str
    netns: str
    address: str

    def argv(self, argv: list[str]) -> list[str]:
        """`argv` run on this host: in its network namespace, under its own hostname. Each
        wrapper execs the next, so the process keeps its pid (signals reach it directly)."""
        return [
            "ip", "netns", "exec", self.netns,
            "unshare", "--uts", "--",
            "sh", "-c", 'hostname "$0" && exec "$@"', self.name,
            *argv,
        ]  # fmt: skip

    def pids(self) -> list[int]:
        listed = _ip("netns", "pids", self.netns, check=False).stdout.split()
        return [int(pid) for pid in listed]

    def kill(self) -> int:
        """SIGKILL every process on the host, as a power cut would; how many there were."""
        killed = 0
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        return killed


class Network:
    """A bridge and the hosts attached to it; `with Network() as net: net.host("infra")`."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(3)
        self.bridge = f"mhbr{self.token}"
        self.hosts: list[Host] = []
        self.prefix = ""

    @staticmethod
    def unavailable() -> str | None:
        """Why hosts cannot be made here, or None."""
        if os.geteuid() != 0:
            return "network namespaces need root (CI runs as root)"
        if shutil.which("ip") is None or shutil.which("unshare") is None:
            return "`ip` (iproute2) or `unshare` (util-linux) is not installed"
        probe = _ip("netns", "list", check=False)
        if probe.returncode != 0:
            return f"`ip netns` does not work here: {probe.stderr.strip()}"
        return None

    def __enter__(self) -> Network:
        used = _ip("-4", "route", "show").stdout + _ip("-4", "addr", "show").stdout
        free = [n for n in range(256) if f"10.77.{n}." not in used]
        if not free:
            raise RuntimeError("every 10.77.<n>.0/24 is in use; remove stale test bridges")
        self.prefix = f"10.77.{random.choice(free)}"
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.prefix}.1/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def host(self, name: str) -> Host:
        host = Host(name, f"mh-{self.token}-{name}", f"{self.prefix}.{len(self.hosts) + 2}")
        veth = f"mh{self.token}{len(self.hosts)}"  # at most 15 characters
        self.hosts.append(host)
        _ip("netns", "add", host.netns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        _ip("link", "set", veth, "master", self.bridge, "up")
        _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", host.netns, "link", "set", "eth0", "up")
        _ip("-n", host.netns, "link", "set", "lo", "up")
        return host

    def close(self) -> None:
        for host in self.hosts:
            host.kill()
            _ip("netns", "del", host.netns, check=False)  # its end of the veth goes with it
        for index in range(len(self.hosts)):
            _ip("link", "del", f"mh{self.token}{index}", check=False)
        _ip("link", "del", self.bridge, check=False)
        self.hosts = []
