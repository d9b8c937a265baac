"""
Tests for fleet delivery's pieces that need no Redis: the backplane's
fleet-wide requests on a L{Clock}, a node's answer to another's broadcast,
the hub's relay of its handler's broadcasts, the CLI's answer, and the
fleet's queues with their store stood in for.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tcpcomm.cli import showBroadcast
from tcpcomm.control.admin import AdminResource, Outgoing, serverRoutes
from tcpcomm.control.metrics import makeRegistry
from tcpcomm.fleet.backplane import LOCATE, NODES, encode
from tcpcomm.fleet.node import FleetNode
from tcpcomm.fleet.queuestore import formatEntry, parseEntry
from tcpcomm.fleet.settings import BackplaneUnavailable
from tcpcomm.handlers import Chat
from tcpcomm.hub.queues import QueueElsewhere, QueueFull, SharedEntry, SharedQueues

from .support import connect, hubOf, makeHub
from .test_backplane import makeBackplane
from .test_queues import answer, render


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
        """This node's own broadcast, coming back on the fleet channel, is not sent again, answered or counted."""
        self.backplane.received(encode("broadcast", "a", {"rid": 4}, b"mine"))
        self.assertEqual(self.firstTransport.value() + self.secondTransport.value(), b"")
        self.assertEqual(self.publisher.published(), [])
        self.assertEqual(self.backplane.messagesIn, 0)  # nor counted as a cross-node message

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


class ManualShared:
    """
    A stand-in for the fleet's Redis queue store: each call waits for the
    test to answer it.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], Deferred[Any]]] = []

    def _call(self, name: str, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((name, args, d))
        return d

    def put(self, *args: Any) -> Deferred[dict[str, Any]]:
        return self._call("put", *args)

    def take(self, clientId: str) -> Deferred[tuple[float, list[SharedEntry]]]:
        return self._call("take", clientId)

    def restore(self, clientId: str, entries: list[SharedEntry]) -> Deferred[Any]:
        return self._call("restore", clientId, entries)

    def summary(self) -> Deferred[tuple[float, list[tuple[str, int, int, float]]]]:
        return self._call("summary")


class SharedQueuesTests(SynchronousTestCase):
    """
    The fleet's queues on the hub's side: what the shared store answers,
    made into positions, refusals and hand-overs.
    """

    def setUp(self) -> None:
        self.shared = ManualShared()
        self.queues = SharedQueues(Clock(), self.shared, 3, 100, 1000)

    def test_put(self) -> None:
        """A send is queued with the node's bounds, and its position is what the store says; the fleet's totals are kept for the metrics."""
        d = self.queues.put("agent-7", b"hi", 60)
        name, args, answer = self.shared.calls[-1]
        self.assertEqual((name, args), ("put", ("agent-7", b"hi", 60, 3, 100, 1000)))
        answer.callback({"queued": 2, "expired": 1, "messages": 5, "bytes": 40})
        self.assertEqual(self.successResultOf(d), 2)
        self.assertEqual(
            (self.queues.queued, self.queues.expired, self.queues.waitingMessages), (1, 1, 5)
        )

    def test_full(self) -> None:
        """A send the store finds over a bound is refused naming the bound, fleet-wide."""
        d = self.queues.put("agent-7", b"hi", 60)
        self.shared.calls[-1][2].callback(
            {"full": "--queue-max-messages", "held": 3, "expired": 0, "messages": 3, "bytes": 6}
        )
        error = self.failureResultOf(d, QueueFull).value
        assert isinstance(error, QueueFull)
        self.assertEqual(error.bound, "--queue-max-messages")
        self.assertIn("holds 3 messages, the most --queue-max-messages 3 allows", error.message)
        self.assertEqual(self.queues.refused, 1)

    def test_elsewhere(self) -> None:
        """A send for a client a node holds now is not queued: it says which node."""
        d = self.queues.put("agent-7", b"hi", 60)
        self.shared.calls[-1][2].callback({"elsewhere": "b"})
        self.assertEqual(self.failureResultOf(d, QueueElsewhere).value.node, "b")

    def test_handOver(self) -> None:
        """A client that identifies gets its unexpired queued messages in order, before anything sent to it meanwhile."""
        hub = makeHub(Clock(), 0)
        hub.queues = self.queues
        _, transport, _, _ = connect(hub=hub)
        session = hub.sessions()[0]
        self.assertEqual(self.shared.calls[-1][:2], ("take", (session.id,)))
        session.sendBytes(b"meanwhile")
        self.assertEqual(transport.value(), b"")
        self.shared.calls[-1][2].callback(
            (100.0, [(b"one", 1.0, 200.0), (b"old", 1.0, 50.0), (b"two", 2.0, 200.0)])
        )
        self.assertEqual(transport.value(), b"one\ntwo\nmeanwhile\n")
        self.assertEqual((self.queues.delivered, self.queues.expired), (2, 1))

    def test_goneBeforeWritten(self) -> None:
        """A client gone before its queue came back from the store gets none of it, and it waits again, in order."""
        session = FakeRecipient()
        self.queues.deliver(session, lambda: False)
        entries = [(b"one", 1.0, 200.0), (b"two", 2.0, 200.0)]
        self.shared.calls[-1][2].callback((100.0, entries))
        self.assertEqual(session.sent, [])
        self.assertEqual(self.shared.calls[-1][:2], ("restore", (session.id, entries)))

    def test_storeFails(self) -> None:
        """A hand-over the store cannot answer takes nothing, lets the client's other messages through, and is logged once for many."""
        hub = makeHub(Clock(), 0)
        hub.queues = self.queues
        _, transport, _, _ = connect(hub=hub)
        _, other, _, _ = connect(hub=hub, port=40001)
        for session in hub.sessions():
            session.sendBytes(b"meanwhile")
        with capturedLogs() as logs:
            for _, _, d in self.shared.calls:
                d.errback(BackplaneUnavailable("Redis did not answer within 1 s"))
        self.assertEqual(transport.value(), b"meanwhile\n")
        self.assertEqual(other.value(), b"meanwhile\n")
        # One line for a storm of them (every client, while Redis is away).
        self.assertEqual([e["event"] for e in logs], ["queue-handover-failed"])

    def test_listing(self) -> None:
        """GET /queues lists what the store holds, with ages on Redis' clock."""
        d = self.queues.listing()
        self.shared.calls[-1][2].callback((110.0, [("b", 1, 2, 100.0), ("a", 2, 6, 105.5)]))
        self.assertEqual(
            self.successResultOf(d),
            [
                {"id": "a", "messages": 2, "bytes": 6, "oldestAgeSeconds": 4.5},
                {"id": "b", "messages": 1, "bytes": 2, "oldestAgeSeconds": 10.0},
            ],
        )


class FakeRecipient:
    """
    A session as a queue sees it: an id, a peer, and what it was sent.
    """

    id = "agent-7"

    def __init__(self) -> None:
        self.peer: Any = connect()[0]
        self.sent: list[bytes] = []

    def sendBytes(self, message: bytes) -> None:
        self.sent.append(message)


class EntryTests(SynchronousTestCase):
    """
    A queued message as Redis keeps it.
    """

    def test_roundTrip(self) -> None:
        """An entry keeps its bytes (newlines too) and its times to the millisecond."""
        entry = (b"two\nlines", 1795867200.125, 1795867260.5)
        self.assertEqual(formatEntry(entry), b"1795867260500 1795867200125\ntwo\nlines")
        self.assertEqual(parseEntry(formatEntry(entry)), entry)


class StopQuietTests(SynchronousTestCase):
    """
    A node that stops on purpose says nothing is wrong.
    """

    def test_noWarningWhenLeaving(self) -> None:
        """The connections a stopping node closes itself are not logged as a degraded backplane (they were, twice per node)."""
        backplane, _, publisher, subscriber = makeBackplane()
        backplane.leave()
        with capturedLogs() as logs:
            backplane.publisherLost(publisher, Failure(Exception("Connection was closed cleanly.")))
            backplane.subscriberLost(
                subscriber, Failure(Exception("Connection was closed cleanly."))
            )
        self.assertEqual([e.get("event") for e in logs], [])
        self.assertEqual(backplane.state()["state"], "degraded")


class FleetRouteTests(SynchronousTestCase):
    """
    The admin API's fleet broadcast and queued sends, in process, on a
    backplane whose Redis the test answers.
    """

    def setUp(self) -> None:
        self.backplane, self.clock, self.publisher, _ = makeBackplane()
        self.hub = makeHub(self.clock, 0)
        self.shared = ManualShared()
        self.hub.queues = SharedQueues(self.clock, self.shared)
        _, self.transport, _, _ = connect(hub=self.hub)
        self.shared.calls.pop()[2].callback((0.0, []))  # its hand-over: nothing waited
        routes = serverRoutes(
            self.hub, Outgoing("utf-8", "line", 64), self.clock, None, self.backplane
        )
        self.resource = AdminResource(
            routes, makeRegistry(self.hub), "server", None, 64, backplane=self.backplane
        )
        del self.publisher.commands[:], self.publisher.answers[:]

    def answerRedis(self, reply: Any) -> tuple[Any, ...]:
        """
        Answer the last command sent to Redis with C{reply}; that command.
        """
        command = self.publisher.commands[-1]
        self.publisher.answers[-1].callback(reply)
        return command

    def reply(self, node: str, fields: dict[str, Any]) -> None:
        header = self.publisher.published()[-1][1]
        self.backplane.received(encode("reply", node, {"to": header["rid"], "result": fields}))

    def test_broadcast(self) -> None:
        """POST /broadcast sends to this node's client at once, and answers with the sum of every node's count once they have all answered."""
        request = render(self.resource, b"POST", b"/broadcast", b"to all")
        self.assertEqual(self.transport.value(), b"to all\n")
        self.assertEqual(self.answerRedis([b"a", b"b", b"c"])[1], NODES)
        self.answerRedis(3)
        self.reply("b", {"received": 4})
        self.assertFalse(request.finished)
        self.reply("c", {"received": 0})
        self.assertEqual(
            answer(request),
            (200, {"received": 5, "nodes": {"a": 1, "b": 4, "c": 0}, "unanswered": []}),
        )

    def test_broadcastUnavailable(self) -> None:
        """Without Redis, POST /broadcast is a 503 that says this node's clients got it."""
        self.backplane.publisherLost(self.publisher, Failure(Exception("gone")))
        request = render(self.resource, b"POST", b"/broadcast", b"to all")
        status, body = answer(request)
        self.assertEqual(status, 503)
        self.assertIn("1 client(s) of this node got it", body["error"])
        self.assertEqual(self.transport.value(), b"to all\n")

    def test_queuedForAbsent(self) -> None:
        """A send with a ttl to a client no node holds is queued in the shared store: 202 with its position."""
        request = render(self.resource, b"POST", b"/clients/agent-7/messages?ttl=60", b"hi")
        self.assertEqual(self.answerRedis(None)[1], LOCATE)
        name, args, d = self.shared.calls[-1]
        self.assertEqual((name, args[:3]), ("put", ("agent-7", b"hi", 60.0)))
        d.callback({"queued": 1, "expired": 0, "messages": 1, "bytes": 2})
        self.assertEqual(answer(request), (202, {"id": "agent-7", "queued": True, "position": 1}))

    def test_queuedButArrived(self) -> None:
        """A client that a node registered between the look-up and the queueing is sent the message on that node instead (200)."""
        request = render(self.resource, b"POST", b"/clients/agent-7/messages?ttl=60", b"hi")
        self.answerRedis(None)
        self.shared.calls[-1][2].callback({"elsewhere": "b"})
        record = {"id": "agent-7", "node": "b", "peer": "127.0.0.1:9", "since": 1.0, "uid": "b#1"}
        self.assertEqual(self.answerRedis(json.dumps(record).encode())[1], LOCATE)
        channel, header, body = self.publisher.published()[-1]
        self.assertEqual((channel, header["kind"], body), (b"p:to:b", "deliver", b"hi"))
        self.answerRedis(1)
        self.reply("b", {"sent": 1})
        self.assertEqual(answer(request), (200, {"id": "agent-7", "node": "b", "sent": 1}))

    def test_queueBackplaneDown(self) -> None:
        """A queued send the store cannot answer is a 503, not an internal error."""
        request = render(self.resource, b"POST", b"/clients/agent-7/messages?ttl=60", b"hi")
        self.answerRedis(None)
        self.shared.calls[-1][2].errback(BackplaneUnavailable("Redis did not answer within 1 s"))
        status, body = answer(request)
        self.assertEqual(status, 503, body)
        self.assertIn("Redis did not answer", body["error"])

    def test_listQueues(self) -> None:
        """GET /queues lists the fleet's queues from the shared store."""
        request = render(self.resource, b"GET", b"/queues")
        self.shared.calls[-1][2].callback((10.0, [("agent-7", 2, 4, 9.0)]))
        self.assertEqual(
            answer(request),
            (
                200,
                {"queues": [{"id": "agent-7", "messages": 2, "bytes": 4, "oldestAgeSeconds": 1.0}]},
            ),
        )
