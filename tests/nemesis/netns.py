"""Hosts as network namespaces: a namespace holding a bridge (the switch) and one namespace per
host, joined to it by a veth pair, on a private /24. Everything is named `m19<4 hex>-...` so two
runs never meet, and a run's owner pid is written down before anything is made, so a later run
can tell a dead run's namespaces (owner gone: removed) from a live one's (left alone).

Why namespaces and not containers: they are cheap (tens of ms), need only `ip` and root, and give
each host its own network stack, so `tc netem` on one host's link partitions or slows that host
alone while every process still shares the file system (the histories are plain files)."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

FAMILY = "m19"
BLACKHOLE_MAC = "02:00:5e:19:19:19"  # locally administered; on no interface
OWNERS = Path("/run/medic-nemesis")


LIVE: list[Network] = []  # networks this process made and has not destroyed yet


def destroy_all() -> None:
    """Destroy every network this process still holds: a pytest finalizer's last resort, should a
    run be cut off before its own `finally`."""
    for net in list(LIVE):
        net.destroy()


def ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done


def namespaces() -> list[str]:
    out = ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def ns_pids(ns: str) -> list[int]:
    """Every process living in namespace `ns` (`ip netns pids`)."""
    done = ip("netns", "pids", ns, check=False)
    return [int(p) for p in done.stdout.split()] if done.returncode == 0 else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def can_make_namespaces() -> str | None:
    """None if this process can make a namespace; else why not (the nemesis suite skips with it)."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add); not root here"
    probe = f"{FAMILY}probe{os.getpid()}"
    try:
        done = ip("netns", "add", probe, check=False)
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns add` cannot run: {exc}"
    if done.returncode != 0:
        return f"`ip netns add` failed: {done.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


def kill_namespace_processes(ns: str) -> None:
    """SIGKILL (after SIGCONT, harmless) every pid in `ns`: only called on namespaces of our own."""
    for _ in range(20):
        pids = ns_pids(ns)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def remove_stale() -> list[str]:
    """Delete namespaces of the m19 family whose owner run is dead (its pid gone, or no owner file);
    returns what was removed. A live run's namespaces are left alone."""
    removed = []
    for ns in namespaces():
        if not ns.startswith(FAMILY) or "-" not in ns:
            continue
        prefix = ns.split("-", 1)[0]
        owner = OWNERS / prefix
        with contextlib.suppress(OSError, ValueError):
            if _alive(int(owner.read_text().strip())):
                continue
        kill_namespace_processes(ns)
        ip("netns", "del", ns, check=False)
        removed.append(ns)
    for owner in OWNERS.glob(f"{FAMILY}*") if OWNERS.exists() else []:
        if not any(ns.startswith(owner.name + "-") for ns in namespaces()):
            with contextlib.suppress(OSError, ValueError):
                if not _alive(int(owner.read_text().strip())):
                    owner.unlink()
    return removed


def _free_subnet() -> int:
    """A third octet N such that 10.199.N.0/24 is on no interface this (root) namespace sees."""
    used = ip("-o", "-4", "addr").stdout
    nets = {ipaddress.ip_interface(w).network for w in used.split() if "/" in w and w[0].isdigit()}
    choices = [n for n in range(1, 255) if not any(ipaddress.ip_network(f"10.199.{n}.0/24").overlaps(u) for u in nets)]
    return random.SystemRandom().choice(choices)


@dataclass
class Host:
    name: str
    ns: str
    addr: str
    veth_host: str  # inside the host's namespace
    veth_switch: str  # its peer, inside the switch's namespace, enslaved to the bridge


@dataclass
class Network:
    """The switch and the hosts of one run."""

    prefix: str
    subnet: int
    hosts: dict[str, Host] = field(default_factory=dict)

    @property
    def switch(self) -> str:
        return f"{self.prefix}-sw"

    @classmethod
    def create(cls, names: list[str]) -> Network:
        """Make the switch and every host; on any failure, remove what was made and raise."""
        OWNERS.mkdir(parents=True, exist_ok=True)
        remove_stale()
        prefix = f"{FAMILY}{random.SystemRandom().randrange(16**4):04x}"
        (OWNERS / prefix).write_text(str(os.getpid()))  # before any namespace: never one without its owner
        net = cls(prefix, _free_subnet())
        LIVE.append(net)
        try:
            net._build(names)
        except BaseException:
            net.destroy()
            raise
        return net

    def _build(self, names: list[str]) -> None:
        ip("netns", "add", self.switch)
        ip("link", "set", "lo", "up", ns=self.switch)
        ip("link", "add", "br0", "type", "bridge", ns=self.switch)
        ip("link", "set", "br0", "up", ns=self.switch)
        for i, name in enumerate(names):
            host = Host(
                name,
                f"{self.prefix}-{name}",
                f"10.199.{self.subnet}.{10 + i}",
                f"{self.prefix}h{i}",
                f"{self.prefix}s{i}",
            )
            ip("netns", "add", host.ns)
            self.hosts[name] = host
            ip("link", "add", host.veth_host, "type", "veth", "peer", "name", host.veth_switch)
            ip("link", "set", host.veth_host, "netns", host.ns)
            ip("link", "set", host.veth_switch, "netns", self.switch)
            ip("link", "set", host.veth_switch, "master", "br0", "up", ns=self.switch)
            ip("link", "set", "lo", "up", ns=host.ns)
            ip("addr", "add", f"{host.addr}/24", "dev", host.veth_host, ns=host.ns)
            ip("link", "set", host.veth_host, "up", ns=host.ns)

    def exec_argv(self, host: str, argv: list[str]) -> list[str]:
        """`argv` run inside `host`'s namespace (ip netns exec execs it: same pid)."""
        return ["ip", "netns", "exec", self.hosts[host].ns, *argv]

    def pids(self, host: str) -> list[int]:
        return ns_pids(self.hosts[host].ns)

    # ------------------------------------------------------------------------- link faults
    # This kernel has no sch_netem, prio or u32 (only htb, tbf, pfifo): a partition is made with
    # neighbour entries instead, and latency by the hosts' delay proxies (tests/nemesis/delayproxy.py).

    def cut(self, host: str, peer: str) -> None:
        """Drop every packet between `host` and `peer`, both ways, silently: each side's neighbour
        entry for the other points at a MAC no one has (permanent, so ARP cannot fix it), and the
        bridge floods those frames to ports that discard them. Other peers are not affected."""
        a, b = self.hosts[host], self.hosts[peer]
        for me, other in ((a, b), (b, a)):
            ip(
                "neigh",
                "replace",
                other.addr,
                "lladdr",
                BLACKHOLE_MAC,
                "nud",
                "permanent",
                "dev",
                me.veth_host,
                ns=me.ns,
            )

    def heal(self, host: str, peer: str) -> None:
        """Undo `cut`: the bogus entries removed, ARP resolves the real MACs again."""
        a, b = self.hosts[host], self.hosts[peer]
        for me, other in ((a, b), (b, a)):
            ip("neigh", "del", other.addr, "dev", me.veth_host, ns=me.ns, check=False)

    # ------------------------------------------------------------------------------ teardown

    def destroy(self) -> None:
        """Kill every process left in our namespaces, delete them, drop the owner file."""
        for ns in [*(h.ns for h in self.hosts.values()), self.switch]:
            kill_namespace_processes(ns)
            ip("netns", "del", ns, check=False)
        with contextlib.suppress(FileNotFoundError):
            (OWNERS / self.prefix).unlink()
        if self in LIVE:
            LIVE.remove(self)
