"""
A real C{haproxy} for the fleet's end-to-end tests, run from the sample
C{contrib/haproxy/haproxy.cfg} with its ports replaced by free loopback ones:
started in a scratch folder, every wait bounded, stopped by its pid whatever
the outcome.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from typing import IO

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from .processes import WAIT, environment, freePort, scratch

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "contrib", "haproxy", "haproxy.cfg")
HAPROXY = shutil.which("haproxy") or (
    "/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None
)

#: The sample's ports: the clients' front, the status page, and each node's
#: client port and admin port.
FRONT, STATS = 9527, 9540
NODES = [(9531, 9541), (9532, 9542), (9533, 9543)]


@dataclass
class Ports:
    """
    Free loopback ports for a rendered sample: the front, the status page,
    and (client, admin) for each node.
    """

    nodes: int = 3
    front: int = field(default_factory=freePort)
    stats: int = field(default_factory=freePort)
    node: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.node:
            self.node = [(freePort(), freePort()) for _ in range(self.nodes)]


def render(ports: Ports, sendProxy: str = "send-proxy-v2") -> str:
    """
    The sample config with its ports replaced by C{ports}, bound to loopback,
    keeping only the first C{ports.nodes} nodes.
    """
    with open(SAMPLE, encoding="utf-8") as f:
        text = f.read()
    mapping = {FRONT: ports.front, STATS: ports.stats}
    for (client, admin), (newClient, newAdmin) in zip(NODES, ports.node, strict=False):
        mapping[client], mapping[admin] = newClient, newAdmin
    kept = {f"node{i + 1}" for i in range(ports.nodes)}
    lines = [
        line
        for line in text.splitlines()
        if not (line.strip().startswith("server node") and line.split()[1] not in kept)
    ]
    text = "\n".join(lines) + "\n"
    text = text.replace("bind :", "bind 127.0.0.1:").replace("send-proxy-v2", sendProxy)
    return re.sub(r"\b95\d\d\b", lambda m: str(mapping.get(int(m.group()), m.group())), text)


class HAProxy:
    """
    One C{haproxy -db} (foreground) process on a rendered sample config.
    """

    def __init__(self, case: SynchronousTestCase, ports: Ports, sendProxy: str = "send-proxy-v2"):
        if HAPROXY is None:
            raise SkipTest("haproxy is not installed (.ci/run installs it)")
        self.ports = ports
        folder = scratch(case)
        self.config = os.path.join(folder, "haproxy.cfg")
        with open(self.config, "w", encoding="utf-8") as f:
            f.write(render(ports, sendProxy))
        self.logPath = os.path.join(folder, "haproxy.log")
        self._out: IO[bytes] = open(self.logPath, "wb")
        self.process = subprocess.Popen(
            [HAPROXY, "-f", self.config, "-db"],
            cwd=folder,
            env=environment(),
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        case.addCleanup(self.stop)

    def output(self) -> str:
        with open(self.logPath, encoding="utf-8", errors="replace") as f:
            return f.read()

    def servers(self) -> dict[str, dict[str, str]]:
        """
        The backend's servers as HAProxy's status page shows them (C{status}:
        UP, DOWN, ...; C{check_status}: L7OK when the last check passed), or
        nothing while the page does not answer yet.
        """
        if self.process.poll() is not None:
            raise AssertionError(f"haproxy exited ({self.process.returncode}):\n{self.output()}")
        try:
            url = f"http://127.0.0.1:{self.ports.stats}/;csv"
            with urllib.request.urlopen(url, timeout=WAIT) as response:
                text = response.read().decode()
        except OSError:
            return {}
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {
            row["svname"]: row
            for row in rows
            if row["pxname"] == "tcpcomm_nodes" and row["svname"] not in ("BACKEND", "FRONTEND")
        }

    def waitForStates(self, states: dict[str, str], timeout: float = 3 * WAIT) -> None:
        """
        Wait until each named server is UP with its last check passed, or
        DOWN, as C{states} says.
        """
        deadline = time.monotonic() + timeout
        servers: dict[str, dict[str, str]] = {}
        while time.monotonic() < deadline:
            servers = self.servers()
            if servers and all(self._is(servers.get(n), want) for n, want in states.items()):
                return
            time.sleep(0.1)
        seen = {n: (s["status"], s["check_status"]) for n, s in servers.items()}
        raise AssertionError(f"not {states} within {timeout} s: {seen}\n{self.output()}")

    @staticmethod
    def _is(server: dict[str, str] | None, want: str) -> bool:
        if server is None:
            return False
        if want == "UP":
            return server["status"] == "UP" and server["check_status"] == "L7OK"
        return server["status"] == want

    def stop(self) -> None:
        """
        Stop it by its pid, killing it if it lingers.
        """
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(WAIT)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(WAIT)
        self._out.close()
