"""
Tests for fleet delivery's pieces that need no Redis: the backplane's
fleet-wide requests on a L{Clock}, a node's answer to another's broadcast,
the hub's relay of its handler's broadcasts, and the CLI's answer.
"""

from __future__ import annotations

import argparse
from typing import Any

from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tcpcomm.cli import showBroadcast
from tcpcomm.fleet.backplane import NODES, encode
from tcpcomm.fleet.node import FleetNode
from tcpcomm.fleet.settings import BackplaneUnavailable
from tcpcomm.handlers import Chat

from .support import connect, hubOf, makeHub
from .test_backplane import makeBackplane


class GatherTests(SynchronousTestCase):
    """
    L{Backplane.gather}: one message to every node, their replies by node.
    """

    def setUp(self) -> None:
        self.backplane, self.clock, self.publisher, _ = makeBackplane()
        self.d = self.backplane.gather("broadcast", {}, b"hi")
        self.assertEqual(self.publisher.commands[-1][1], NODES)
        self.publisher.answers[-1].callback([b"a", b"b", b"c"])
        channel, self.header, body = self.publisher.published()[-1]
        self.assertEqual((channel, self.header["kind"], body), (b"p:fleet", "broadcast", b"hi"))
        self.publisher.answers[-1].callback(3)

    def reply(self, node: str, received: int) -> None:
        self.backplane.received(
            encode("reply", node, {"to": self.header["rid"], "result": {"received": received}})
        )

    def test_allAnswer(self) -> None:
        """Once every other live node has answered, the replies are given by node, none missing, at once."""
        self.reply("b", 2)
        self.assertNoResult(self.d)
        self.reply("c", 5)
        self.assertEqual(
            self.successResultOf(self.d), ({"b": {"received": 2}, "c": {"received": 5}}, [])
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_silentNamed(self) -> None:
        """A node that does not answer within a second is named; its late reply is ignored."""
        self.reply("b", 2)
        self.clock.advance(0.9)
        self.assertNoResult(self.d)
        self.clock.advance(0.2)
        self.assertEqual(self.successResultOf(self.d), ({"b": {"received": 2}}, ["c"]))
        self.reply("c", 5)  # too late: no error, nothing changes

    def test_ownReplyIgnored(self) -> None:
        """A reply from the asking node itself is not counted (it answers for itself)."""
        self.reply("a", 9)
        self.clock.advance(1.1)
        self.assertEqual(self.successResultOf(self.d), ({}, ["b", "c"]))

    def test_redisDown(self) -> None:
        """Without Redis, a fleet-wide request fails at once, saying why."""
        self.backplane.publisherLost(self.publisher, Failure(Exception("gone")))
        failure = self.failureResultOf(self.backplane.gather("broadcast", {}), BackplaneUnavailable)
        self.assertIn("lost the connection", failure.getErrorMessage())

    def test_alone(self) -> None:
        """A node alone in the fleet has its answer as soon as the publish is taken."""
        d = self.backplane.gather("broadcast", {}, b"hi")
        self.publisher.answers[-1].callback([b"a"])
        self.assertNoResult(d)
        self.publisher.answers[-1].callback(1)
        self.assertEqual(self.successResultOf(d), ({}, []))


class RelayTests(SynchronousTestCase):
    """
    A node's handler broadcasts reach the other nodes, and theirs its own
    clients, once.
    """

    def setUp(self) -> None:
        self.hub = makeHub(Clock(), 0, handler=Chat)
        self.first, self.firstTransport, _, factory = connect(hub=self.hub, port=40001)
        self.second, self.secondTransport, _, _ = connect(hub=self.hub, port=40002)
        self.backplane, _, self.publisher, _ = makeBackplane(named=False)
        self.hub.fleet = FleetNode(self.hub, self.backplane, lambda s, why: None)
        del self.publisher.commands[:]

    def test_chatRelayed(self) -> None:
        """A chat message goes to the other local client, and once to the fleet channel for the other nodes; the sender gets none."""
        self.first.dataReceived(b"hello\n")
        self.assertEqual(self.secondTransport.value(), b"127.0.0.1:40001: hello\n")
        self.assertEqual(self.firstTransport.value(), b"")
        relayed = [(c, h["kind"], b) for c, h, b in self.publisher.published()]
        self.assertEqual(relayed, [(b"p:fleet", "broadcast", b"127.0.0.1:40001: hello")])

    def test_othersBroadcast(self) -> None:
        """Another node's broadcast reaches every client of this one; a reply says how many, when asked."""
        self.backplane.received(encode("broadcast", "b", {}, b"from b"))
        self.assertEqual(self.firstTransport.value(), b"from b\n")
        self.assertEqual(self.secondTransport.value(), b"from b\n")
        self.assertEqual(self.publisher.published(), [])
        self.backplane.received(encode("broadcast", "b", {"rid": 4}, b"again"))
        channel, header, _ = self.publisher.published()[-1]
        self.assertEqual((channel, header["to"], header["result"]), (b"p:to:b", 4, {"received": 2}))

    def test_ownIgnored(self) -> None:
        """This node's own broadcast, coming back on the fleet channel, is not sent again, nor answered."""
        self.backplane.received(encode("broadcast", "a", {"rid": 4}, b"mine"))
        self.assertEqual(self.firstTransport.value() + self.secondTransport.value(), b"")
        self.assertEqual(self.publisher.published(), [])

    def test_relayFailsQuietly(self) -> None:
        """Without Redis, a handler's broadcast still reaches this node's clients, and nothing fails."""
        self.backplane.publisherLost(self.publisher, Failure(Exception("gone")))
        self.assertEqual(self.hub.broadcast("still here"), 2)
        self.assertEqual(self.firstTransport.value(), b"still here\n")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_noFleet(self) -> None:
        """Without a backplane, a broadcast is this node's only."""
        hub = hubOf(connect()[3])
        self.assertIsNone(hub.fleet)
        self.assertEqual(hub.broadcast("x"), 1)


class ShowBroadcastTests(SynchronousTestCase):
    """
    What C{tcpcomm broadcast} prints.
    """

    def show(self, answer: dict[str, Any]) -> str:
        return showBroadcast(answer, argparse.Namespace())

    def test_fleet(self) -> None:
        """In a fleet, the sum, the nodes that answered, and those that did not."""
        self.assertEqual(self.show({"received": 1}), "sent to 1 client")
        self.assertEqual(
            self.show({"received": 7, "nodes": {"a": 3, "b": 4}, "unanswered": []}),
            "sent to 7 clients on 2 nodes",
        )
        self.assertEqual(
            self.show({"received": 3, "nodes": {"a": 3}, "unanswered": ["c"]}),
            "sent to 3 clients on 1 node; no answer from c (their clients may not have it)",
        )
