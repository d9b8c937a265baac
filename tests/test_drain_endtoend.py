"""
Draining a real C{twistd} server with C{tcpcomm drain}: it refuses new
connections at once, says so on C{/healthz}, closes its tcpcomm clients
(which retry) spread over C{--drain-period}, and exits; behind a real
HAProxy running the sample config, its clients end up on the other node, and
a rolling restart of three nodes keeps every client away for no longer than
its retry delay.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from datetime import datetime

from twisted.trial.unittest import SynchronousTestCase

from .haproxy import HAProxy, Ports
from .processes import WAIT, Twistd, assertCleanLog, localServer
from .test_admin import ADMIN_PORT, call
from .test_cli import tcpcomm
from .test_faults import getJSON, waitUntil
from .test_haproxy import node

#: Clients of the drained server, and the period they are closed over.
CLIENTS = 6
PERIOD = 4.0


def tcpcommClient(case: SynchronousTestCase, port: int) -> Twistd:
    """
    A tcpcomm client of the server (or HAProxy front) on C{port}, retrying
    within a second when it loses it.
    """
    return Twistd(
        case,
        "tcpcomm",
        "client",
        "--port",
        str(port),
        "--reply-delay",
        "1",
        "--retry-initial",
        "0.5",
        "--retry-max",
        "1",
    )


def watchClosings(
    admin: int,
    ids: set[str],
    timeout: float,
    start: float | None = None,
    each: Callable[[float], object] = lambda elapsed: None,
) -> dict[str, float]:
    """
    When (seconds from C{start}, a C{time.monotonic()}; now by default) each
    of C{ids} left the server whose admin API is on C{admin}, polling
    C{/clients} until it stops answering with the server; C{each} is called
    with the time of every poll, to watch something else meanwhile.
    """
    if start is None:
        start = time.monotonic()
    gone: dict[str, float] = {}
    while time.monotonic() - start < timeout:
        try:
            clients = call(admin, "GET", "/clients")[1]
        except OSError:
            return gone  # the server has stopped
        now = time.monotonic() - start
        for clientId in ids - {c["id"] for c in clients} - set(gone):
            gone[clientId] = now
        each(now)
        time.sleep(0.05)
    raise AssertionError(f"the server still answers {timeout} s after the drain: {gone}")


def assertSpread(case: SynchronousTestCase, times: list[float], period: float) -> None:
    """
    C{times} (of closings, from the drain's start) are spread over C{period}:
    the first soon, the last well into it, not in one burst.
    """
    times = sorted(times)
    case.assertLess(times[0], period / 2, times)
    case.assertGreater(times[-1] - times[0], period * 0.4, times)
    case.assertGreaterEqual(len({round(t, 1) for t in times}), (len(times) + 1) // 2, times)


class DrainEndToEndTests(SynchronousTestCase):
    """
    A server with C{CLIENTS} tcpcomm clients, drained over C{PERIOD} seconds.
    """

    def setUp(self) -> None:
        self.server = localServer(
            self,
            "--reply-delay",
            "1",
            "--admin",
            "tcp:0:interface=127.0.0.1",
            "--drain-period",
            f"{PERIOD:g}",
        )
        self.port = int(self.server.waitFor(r"listening on 127\.0\.0\.1:(\d+) \(tcp:").group(1))
        self.admin = int(self.server.waitFor(ADMIN_PORT).group(1))
        self.clients = [tcpcommClient(self, self.port) for _ in range(CLIENTS)]
        self.ids = self.waitForClients(CLIENTS)

    def waitForClients(self, count: int, timeout: float = 4 * WAIT) -> set[str]:
        """
        The ids of the server's clients once there are C{count} of them.
        """
        deadline = time.monotonic() + timeout
        while True:
            clients = call(self.admin, "GET", "/clients")[1]
            if len(clients) == count:
                return {c["id"] for c in clients}
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(clients)} of {count} clients within {timeout} s")
            time.sleep(0.1)

    def test_drain(self) -> None:
        """A drained server refuses newcomers, closes its clients over the period, and exits 0."""
        url = f"http://127.0.0.1:{self.admin}"
        first = tcpcomm(self, "--admin", url, "drain")
        self.assertEqual(first.returncode, 0, first.stderr)
        self.assertEqual(
            first.stdout.strip(),
            f"draining: stopped listening; closing {CLIENTS} clients over {PERIOD:g} s, "
            "then stopping",
        )
        status, health, _ = call(self.admin, "GET", "/healthz")
        self.assertEqual((status, health["status"]), (503, "draining"))
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", self.port), timeout=WAIT).close()
        again = tcpcomm(self, "--admin", url, "drain")
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertRegex(again.stdout, rf"^already draining: closed \d of {CLIENTS} clients")

        gone = watchClosings(self.admin, self.ids, PERIOD + 2 * WAIT)
        self.server.process.wait(WAIT)
        self.assertEqual(self.server.process.returncode, 0, self.server.output())

        self.assertEqual(set(gone), self.ids)
        assertSpread(self, list(gone.values()), PERIOD)
        output = self.server.output()
        self.assertIn(f"drained: closed {CLIENTS} client(s)", output)
        assertCleanLog(self, output)
        for client in self.clients:
            client.waitFor(r"retry \d+ to connect to 127\.0\.0\.1")
            assertCleanLog(self, client.output())


class HAProxyDrainTests(SynchronousTestCase):
    """
    Two nodes behind HAProxy running the sample config, tcpcomm clients
    connecting through it, and one node drained.
    """

    clients = 6
    #: Longer than HAProxy's checks take to see a 503 (inter 2s, fall 2).
    period = 8.0

    def test_clientsMoveToTheOtherNode(self) -> None:
        """HAProxy takes a draining node out on its 503 while it still runs, and the clients
        it closes over the period come back through HAProxy to the other node."""
        ports = Ports(nodes=2)
        nodes = [
            node(self, port, admin, "--drain-period", f"{self.period:g}")
            for port, admin in ports.node
        ]
        front = HAProxy(self, ports)
        front.waitForStates({"node1": "UP", "node2": "UP"})
        clients = [tcpcommClient(self, ports.front) for _ in range(self.clients)]
        [(_, drained), (_, other)] = ports.node

        def held() -> list[set[str]] | None:
            seen = [{c["id"] for c in getJSON(admin, "/clients")} for _, admin in ports.node]
            return seen if sum(map(len, seen)) == self.clients else None

        first, _ = waitUntil("every client connected through HAProxy", held, timeout=4 * WAIT)
        self.assertTrue(first, "leastconn gives the drained node clients")

        started = time.monotonic()
        result = tcpcomm(self, "--admin", f"http://127.0.0.1:{drained}", "drain")
        self.assertEqual(result.returncode, 0, result.stderr)
        down: list[float] = []

        def checkFront(elapsed: float) -> None:
            if not down and front.servers().get("node1", {}).get("status") == "DOWN":
                down.append(elapsed)

        gone = watchClosings(drained, first, self.period + 2 * WAIT, started, checkFront)
        nodes[0].process.wait(WAIT)
        self.assertEqual(nodes[0].process.returncode, 0, nodes[0].output())
        self.assertEqual(set(gone), first)
        assertSpread(self, list(gone.values()), self.period)
        self.assertTrue(down, f"HAProxy never took node1 out:\n{front.output()}")
        self.assertLess(down[0], self.period * 0.9, "taken out on its 503, while still draining")

        waitUntil(
            "every client on the other node",
            lambda: len(getJSON(other, "/clients")) == self.clients,
            timeout=2 * WAIT,
        )
        for server in nodes:
            assertCleanLog(self, server.output())
        for client in clients:
            assertCleanLog(self, client.output())


def connections(log: str) -> list[tuple[str, float]]:
    """
    The C{connected} and C{lost} events in a tcpcomm client's JSON log, in
    order, each with its time in seconds since the epoch.
    """
    events = []
    for line in log.splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        if record.get("event") in ("connected", "lost"):
            when = datetime.fromisoformat(record["time"]).timestamp()
            events.append((record["event"], when))
    return events


def reconnectGaps(events: list[tuple[str, float]]) -> list[float]:
    """
    The seconds between each C{lost} and the C{connected} after it, in
    L{connections}' events.
    """
    return [
        back - gone
        for (kind, gone), (nextKind, back) in zip(events, events[1:], strict=False)
        if kind == "lost" and nextKind == "connected"
    ]


def jsonLoggingClient(case: SynchronousTestCase, port: int, retryMax: float = 1.0) -> Twistd:
    """
    A tcpcomm client of C{port} (a HAProxy front) logging JSON to standard
    output, for L{connections}, and retrying within C{retryMax} seconds.
    """
    return Twistd(
        case,
        "--logfile",
        "-",
        "tcpcomm",
        "client",
        "--port",
        str(port),
        "--log-format",
        "json",
        "--reply-delay",
        "1",
        "--retry-initial",
        "0.5",
        "--retry-max",
        f"{retryMax:g}",
    )


class RollingRestartTests(SynchronousTestCase):
    """
    Three nodes behind HAProxy running the sample config, restarted one
    after the other the way the README's rolling restart does it.
    """

    clients = 6
    period = 3.0
    #: The clients' --retry-max, the longest they wait before trying again.
    retry = 1.0

    def test_noClientLongGone(self) -> None:
        """Drain, wait for the exit, start again, wait until HAProxy has it back, for each of three
        nodes: every client is back through HAProxy each time within its retry delay (plus a
        second for the new connection on a loaded machine), and all are connected at the end."""
        ports = Ports(nodes=3)
        drain = ("--drain-period", f"{self.period:g}")
        nodes = [node(self, port, admin, *drain) for port, admin in ports.node]
        front = HAProxy(self, ports)
        states = {f"node{i + 1}": "UP" for i in range(3)}
        front.waitForStates(states)
        clients = [jsonLoggingClient(self, ports.front, self.retry) for _ in range(self.clients)]

        def connectedCount() -> int:
            return sum(len(getJSON(admin, "/clients")) for _, admin in ports.node)

        waitUntil("every client connected", lambda: connectedCount() == self.clients, 4 * WAIT)
        for i, (port, admin) in enumerate(ports.node):
            result = tcpcomm(self, "--admin", f"http://127.0.0.1:{admin}", "drain")
            self.assertEqual(result.returncode, 0, result.stderr)
            nodes[i].process.wait(self.period + 2 * WAIT)
            self.assertEqual(nodes[i].process.returncode, 0, nodes[i].output())
            nodes[i] = node(self, port, admin, *drain)
            front.waitForStates(states)
        waitUntil("every client connected", lambda: connectedCount() == self.clients, 2 * WAIT)

        for client in clients:
            events = connections(client.output())
            self.assertEqual(events[0][0], "connected", events)
            gaps = reconnectGaps(events)
            self.assertTrue(gaps, f"a client was never moved: {events}")
            self.assertLess(max(gaps), self.retry + 1.0, events)
            self.assertEqual(events[-1][0], "connected", events)
        for server in nodes:
            assertCleanLog(self, server.output())
