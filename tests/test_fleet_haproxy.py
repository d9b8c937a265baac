"""
The whole fleet end to end, as docs and the issue describe it: three real
tcpcomm nodes joined by a real C{redis-server} (C{--backplane}), behind a
real HAProxy running the sample config (C{--proxy-protocol}), with clients
coming in through HAProxy from addresses that are not HAProxy's.
"""

from __future__ import annotations

import signal
import socket
from functools import partial
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from .haproxy import HAProxy, Ports
from .processes import WAIT, RedisServer, Twistd, assertCleanLog
from .test_drain_endtoend import connections, jsonLoggingClient, reconnectGaps
from .test_faults import getJSON, waitUntil
from .test_haproxy import node

#: Where the raw clients connect from, a hundred from each: loopback, but
#: never 127.0.0.1, the address HAProxy reaches the nodes from.
SOURCES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")

#: The nodes' --backplane-ttl: a dead node's clients leave the fleet view
#: within it.
TTL = 2.0


def fleetNode(case: SynchronousTestCase, ports: Ports, index: int, redis: RedisServer) -> Twistd:
    """
    Node C{index} of C{ports}: behind HAProxy, on the fleet's Redis.
    """
    port, admin = ports.node[index]
    server = node(
        case,
        port,
        admin,
        "--backplane",
        redis.url,
        "--node-name",
        f"node{index + 1}",
        "--backplane-ttl",
        f"{TTL:g}",
    )
    server.waitFor(rf"backplane up: .* as node node{index + 1}")
    return server


def fleetView(admin: int) -> list[dict[str, Any]]:
    return list(getJSON(admin, "/clients"))


class FleetBehindHAProxyTests(SynchronousTestCase):
    """
    Three nodes on one Redis behind HAProxy.
    """

    def setUp(self) -> None:
        self.redis = RedisServer(self)
        self.ports = Ports(nodes=3)
        self.nodes = [fleetNode(self, self.ports, i, self.redis) for i in range(3)]
        self.front = HAProxy(self, self.ports)
        self.front.waitForStates({"node1": "UP", "node2": "UP", "node3": "UP"})

    def test_threeHundredClients(self) -> None:
        """300 clients through HAProxy are listed on every node, each once, with its real address
        and the node that holds it, and every node holds some."""
        addresses = set()
        for source in SOURCES:
            for _ in range(100):
                sock = socket.create_connection(("127.0.0.1", self.ports.front), WAIT, (source, 0))
                self.addCleanup(sock.close)
                host, port = sock.getsockname()[:2]
                addresses.add(f"{host}:{port}")

        def everyoneOn(admin: int) -> list[dict[str, Any]] | None:
            view = fleetView(admin)
            return view if {c["peer"] for c in view} == addresses else None

        for _, admin in self.ports.node:
            view = waitUntil(
                f"all 300 on the node of admin {admin}", partial(everyoneOn, admin), 4 * WAIT
            )
            self.assertEqual(len(view), 300)
            self.assertEqual({c["node"] for c in view}, {"node1", "node2", "node3"})
            for client in view:
                self.assertEqual(client["id"], f"{client['node']}/{client['peer']}")
        for server in self.nodes:
            assertCleanLog(self, server.output())

    def test_nodeKilled(self) -> None:
        """After a SIGKILL of a node, its tcpcomm clients come back through HAProxy to the other
        two within their retry window, and the fleet view on both holds no ghost of the dead node
        once its TTL has passed."""
        clients = [jsonLoggingClient(self, self.ports.front) for _ in range(6)]
        survivors = [admin for _, admin in self.ports.node[1:]]
        waitUntil("all six in the fleet view", lambda: len(fleetView(survivors[0])) == 6, 4 * WAIT)
        killed = {c["peer"] for c in fleetView(survivors[0]) if c["node"] == "node1"}
        self.assertTrue(killed, "leastconn gives node1 clients")
        self.nodes[0].process.send_signal(signal.SIGKILL)
        self.nodes[0].process.wait(WAIT)

        def converged(admin: int) -> list[dict[str, Any]] | None:
            view = fleetView(admin)
            nodes = {c["node"] for c in view}
            return view if len(view) == 6 and "node1" not in nodes else None

        for admin in survivors:
            waitUntil(
                f"the fleet view of admin {admin} without node1",
                partial(converged, admin),
                4 * WAIT,
            )
        moved = 0
        for client in clients:
            events = connections(client.output())
            gaps = reconnectGaps(events)
            moved += bool(gaps)
            # The retry delay (1 s at most), HAProxy's redispatch past the dead node while its
            # checks have not yet failed, and slack for a loaded machine.
            self.assertLess(max(gaps, default=0.0), 3.0, events)
        self.assertEqual(moved, len(killed))
        for server in self.nodes[1:]:
            assertCleanLog(self, server.output())
