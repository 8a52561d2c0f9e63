"""The namespace hosts themselves: a partition cuts exactly one pair of hosts and heals; teardown
leaves no namespace and no process; a dead run's namespaces are removed, a live run's kept."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.nemesis import netns
from tests.nemesis.netns import Network
from worker.testing.processes import wait_for

pytestmark = pytest.mark.nemesis

SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7777)); s.listen(50)
while True:
    c, _ = s.accept(); c.sendall(b"hi"); c.close()
"""
CLIENT = "import socket, sys; print(socket.create_connection((sys.argv[1], 7777), timeout=1).recv(2).decode())"


@pytest.fixture
def net() -> Iterator[Network]:
    why = netns.can_make_namespaces()
    if why:
        pytest.skip(f"needs network namespaces: {why}")
    n = Network.create(["data", "a", "b"])
    yield n
    n.destroy()


def _reaches(net: Network, host: str) -> bool:
    done = subprocess.run(
        net.exec_argv(host, [sys.executable, "-c", CLIENT, net.hosts["data"].addr]),
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return done.stdout.strip() == "hi"


def test_a_partition_cuts_one_host_from_data_and_heals(net: Network) -> None:
    server = subprocess.Popen(net.exec_argv("data", [sys.executable, "-c", SERVER, net.hosts["data"].addr]))
    try:
        wait_for(lambda: _reaches(net, "a"), 20, 0.2, "the data host's server")
        net.cut("a", "data")
        assert not _reaches(net, "a"), "a reached data through the partition"
        assert _reaches(net, "b"), "the partition of a cut b too"
        net.heal("a", "data")
        assert wait_for(lambda: _reaches(net, "a"), 20, 0.2, "a again after the heal")
    finally:
        server.kill()
        server.wait()


def test_teardown_leaves_no_namespace_and_no_process(net: Network) -> None:
    sleeper = subprocess.Popen(net.exec_argv("a", ["sleep", "600"]))
    try:
        # `ip netns exec` joins the namespace a moment after the fork (CI once looked too soon)
        assert wait_for(lambda: net.pids("a") == [sleeper.pid], 10, 0.05, "the sleeper in a's namespace")
        names = [h.ns for h in net.hosts.values()] + [net.switch]
        net.destroy()
        assert sleeper.wait(timeout=10) == -9
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
    assert not set(names) & set(netns.namespaces())
    assert not (netns.OWNERS / net.prefix).exists()


def test_a_dead_runs_namespaces_are_removed_and_a_live_runs_kept(net: Network) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    (netns.OWNERS / net.prefix).write_text(str(dead.pid))
    assert net.switch in netns.remove_stale()
    assert net.switch not in netns.namespaces()
    live = Network.create(["x"])  # owned by this (live) process
    try:
        assert live.switch not in netns.remove_stale()
        assert live.switch in netns.namespaces()
        assert (netns.OWNERS / live.prefix).read_text() == str(os.getpid())
    finally:
        live.destroy()
