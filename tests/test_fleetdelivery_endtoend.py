"""
Fleet delivery end to end: real C{twistd} nodes on a real C{redis-server}
(C{--backplane}), clients connected straight to each node over loopback:
broadcasts and chat that reach every node's clients once.
"""

from __future__ import annotations

import os
import signal
from functools import partial
from typing import Any
from urllib.parse import quote

from twisted.trial.unittest import SynchronousTestCase

from .processes import RedisServer, assertCleanLog
from .test_backplane_endtoend import Client, Node, numbered, waitUntil
from .test_cli import tcpcomm


def send(node: Node, clientId: str, text: str, ttl: float) -> tuple[int, Any]:
    return node.call(
        "POST", f"/clients/{quote(clientId, safe='')}/messages?ttl={ttl:g}", text.encode()
    )


def marked(line: bytes) -> bool:
    return line.startswith(b"all-")


class FleetBroadcastTests(SynchronousTestCase):
    """
    Three nodes on one Redis, with named clients spread over them.
    """

    def setUp(self) -> None:
        self.redis = RedisServer(self)
        # A long TTL: a node stopped with SIGSTOP stays in the fleet (and owes
        # an answer) however slow the machine.
        self.nodes = [Node(self, self.redis, n, "--client-id", "hello", ttl=30) for n in "abc"]
        self.clients = [Client(self, self.nodes[i % 3], f"agent-{i}") for i in range(30)]
        for node in self.nodes:
            waitUntil(partial(lambda n: len(n.clients()) == 30, node), f"{node.name} sees 30")

    def test_everyClientOnce(self) -> None:
        """A broadcast through node a (and one with tcpcomm broadcast through node c) reaches each of 30 clients over three nodes exactly once, and its answer sums every node's count."""
        a = self.nodes[0]
        status, answer = a.call("POST", "/broadcast", b"all-1")
        self.assertEqual(
            (status, answer),
            (200, {"received": 30, "nodes": {"a": 10, "b": 10, "c": 10}, "unanswered": []}),
        )
        result = tcpcomm(
            self, "--admin", f"http://127.0.0.1:{self.nodes[2].admin}", "broadcast", "all-2"
        )
        self.assertEqual(
            (result.returncode, result.stdout),
            (0, "sent to 30 clients on 3 nodes\n"),
            result.stderr,
        )
        for client in self.clients:
            self.assertEqual(client.lines(2, marked), [b"all-1", b"all-2"])
        # Nothing more came: a third line would be a duplicate.
        a.call("POST", "/broadcast", b"all-end")
        for client in self.clients:
            self.assertEqual(client.lines(1, marked), [b"all-end"])
        for node in self.nodes:
            assertCleanLog(self, node.server.output())

    def test_silentNodeNamed(self) -> None:
        """A node that does not answer (stopped with SIGSTOP) is named in the answer, which comes within a few seconds and counts the others."""
        c = self.nodes[2]
        os.kill(c.server.pid, signal.SIGSTOP)
        self.addCleanup(os.kill, c.server.pid, signal.SIGCONT)
        status, answer = self.nodes[0].call("POST", "/broadcast", b"all-1")
        self.assertEqual(
            (status, answer),
            (200, {"received": 20, "nodes": {"a": 10, "b": 10}, "unanswered": ["c"]}),
        )
        for i, client in enumerate(self.clients):
            if i % 3 != 2:
                self.assertEqual(client.lines(1, marked), [b"all-1"])


class FleetChatTests(SynchronousTestCase):
    """
    The C{chat} handler on two nodes.
    """

    def test_chatAcrossNodes(self) -> None:
        """A chat message reaches every other client of both nodes once, after the sender's name; the sender gets none."""
        redis = RedisServer(self)
        nodes = [Node(self, redis, n, "--client-id", "hello", "--handler", "chat") for n in "ab"]
        clients = {f"agent-{i}": Client(self, nodes[i % 2], f"agent-{i}") for i in range(6)}
        for node in nodes:
            waitUntil(partial(lambda n: len(n.clients()) == 6, node), f"{node.name} sees 6")
        clients["agent-0"].sock.sendall(b"all-1\n")
        clients["agent-3"].sock.sendall(b"all-2\n")
        said = lambda line: b": all-" in line  # noqa: E731
        for name, client in clients.items():
            expected = {b"agent-0: all-1", b"agent-3: all-2"}
            expected -= {line for line in expected if line.startswith(name.encode() + b":")}
            self.assertEqual(set(client.lines(len(expected), said)), expected, name)
        # A last message from agent-1 to all: nobody got a duplicate before it.
        clients["agent-1"].sock.sendall(b"all-3\n")
        for name, client in clients.items():
            if name != "agent-1":
                self.assertEqual(client.lines(1, said), [b"agent-1: all-3"], name)
        for node in nodes:
            assertCleanLog(self, node.server.output())


class FleetQueueTests(SynchronousTestCase):
    """
    Queues kept in Redis, on two nodes with small bounds.
    """

    def setUp(self) -> None:
        self.redis = RedisServer(self)
        bounds = ("--queue-max-messages", "3", "--queue-max-bytes", "1000")
        self.a, self.b = (Node(self, self.redis, n, "--client-id", "hello", *bounds) for n in "ab")

    def test_deliveredThroughAnotherNode(self) -> None:
        """Messages queued through node a for an absent client reach it once, in order, when it connects through node b; a later connection gets none again."""
        for i in range(3):
            status, answer = send(self.a, "agent-q", f"n-{i}", ttl=60)
            self.assertEqual(
                (status, answer), (202, {"id": "agent-q", "queued": True, "position": i + 1})
            )
        status, listed = self.b.call("GET", "/queues")
        self.assertEqual(
            [(q["id"], q["messages"], q["bytes"]) for q in listed["queues"]], [("agent-q", 3, 9)]
        )
        client = Client(self, self.b, "agent-q")
        self.assertEqual(client.lines(3, numbered), [b"n-0", b"n-1", b"n-2"])
        self.assertEqual(self.a.call("GET", "/queues"), (200, {"queues": []}))
        # Now held by b: a send with a ttl through a is delivered there, not queued.
        self.assertEqual(
            send(self.a, "agent-q", "n-3", ttl=60), (200, {"id": "agent-q", "node": "b", "sent": 1})
        )
        self.assertEqual(client.lines(1, numbered), [b"n-3"])
        client.sock.close()
        waitUntil(lambda: "agent-q" not in self.a.clients(), "agent-q gone")
        again = Client(self, self.a, "agent-q")
        waitUntil(lambda: "agent-q" in self.a.clients(local=True), "agent-q on a")
        self.assertEqual(send(self.a, "agent-q", "n-4", ttl=60)[0], 200)
        self.assertEqual(again.lines(1, numbered), [b"n-4"])  # n-0..n-3 not again
        for node in (self.a, self.b):
            assertCleanLog(self, node.server.output())

    def test_boundsFleetWide(self) -> None:
        """--queue-max-messages holds across nodes: the fourth message for one name, sent through another node, is a 507 naming the bound."""
        for node in (self.a, self.b, self.a):
            self.assertEqual(send(node, "agent-full", "n-x", ttl=60)[0], 202)
        status, answer = send(self.b, "agent-full", "n-x", ttl=60)
        self.assertEqual(status, 507, answer)
        self.assertIn("--queue-max-messages 3", answer["error"])
        status, answer = send(self.b, "agent-big", "x" * 1001, ttl=60)
        self.assertEqual(status, 507, answer)
        self.assertIn("--queue-max-bytes 1000", answer["error"])

    def test_expired(self) -> None:
        """A queued message past its ttl is dropped unsent, whichever node the client comes to."""
        self.assertEqual(send(self.a, "agent-e", "n-old", ttl=0.2)[0], 202)
        self.assertEqual(send(self.a, "agent-e", "n-new", ttl=60)[0], 202)
        waitUntil(
            lambda: self.b.call("GET", "/queues")[1]["queues"][0]["oldestAgeSeconds"] > 0.5,
            "the first message past its ttl",
        )
        client = Client(self, self.b, "agent-e")
        self.assertEqual(client.lines(1, numbered), [b"n-new"])


class FleetTotalBoundTests(SynchronousTestCase):
    """
    --queue-total-bytes over the fleet's queues together.
    """

    def test_totalFleetWide(self) -> None:
        """Messages queued through one node count against the total of a send through the other (507); once they expire, they make room again."""
        redis = RedisServer(self)
        a, b = (
            Node(self, redis, n, "--client-id", "hello", "--queue-total-bytes", "8") for n in "ab"
        )
        self.assertEqual(send(a, "agent-x", "n-1xx", ttl=2)[0], 202)
        status, answer = send(b, "agent-y", "n-2yy", ttl=60)
        self.assertEqual(status, 507, answer)
        self.assertIn("--queue-total-bytes 8", answer["error"])
        waitUntil(lambda: send(b, "agent-y", "n-2yy", ttl=60)[0] == 202, "room again")
        status, listed = a.call("GET", "/queues")
        self.assertEqual([q["id"] for q in listed["queues"]], ["agent-y"])
