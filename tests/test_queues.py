"""
Messages that wait, in memory on a L{Clock}: order, expiry, bounds, the
hand-over that removes before it writes, and the admin routes that queue
and list them, rendered in process.
"""

from __future__ import annotations

import json
from contextlib import redirect_stderr
from io import BytesIO, StringIO
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from tcpcomm import cli
from tcpcomm.control.admin import AdminResource, Outgoing, serverRoutes
from tcpcomm.control.metrics import makeRegistry
from tcpcomm.handlers import BaseHandler
from tcpcomm.hub.hub import Hub
from tcpcomm.hub.queues import QueueFull, Queues, Waiting
from tcpcomm.interfaces import IHub, ISession

from .support import NOON, connect, makeHub

PEER = "127.0.0.1:40000"


class ManualStore:
    """
    A store whose every call waits until the test fires it, to see what
    happens between a call and its commit.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, Deferred[Any]]] = []

    def _call(self, name: str, argument: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((name, argument, d))
        return d

    def load(self) -> Deferred[list[Waiting]]:
        return self._call("load", None)

    def add(self, entry: Waiting) -> Deferred[None]:
        return self._call("add", entry)

    def remove(self, seqs: list[int]) -> Deferred[None]:
        return self._call("remove", seqs)

    def commitAll(self) -> None:
        """
        Fire every call made so far, in order, as a store commits them.
        """
        while self.calls:
            name, _, d = self.calls.pop(0)
            d.callback([] if name == "load" else None)


def queuedHub(clock: Clock, queues: Queues | None = None) -> Hub:
    """
    A hub with queues on C{clock} (in memory, unless C{queues} is given).
    """
    if clock.seconds() == 0:
        clock.advance(NOON)
    hub = makeHub(clock)
    hub.queues = Queues(clock) if queues is None else queues
    return hub


def put(queues: Queues, clientId: str, text: str, ttl: float = 60.0) -> Any:
    """
    Queue C{text}; the position, or the L{QueueFull} raised.
    """
    results: list[Any] = []
    queues.put(clientId, text.encode(), ttl).addBoth(results.append)
    assert results, "the memory store answers at once"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


class QueueOrderTests(SynchronousTestCase):
    """
    A client that identifies gets what waited for it, in send order, first.
    """

    def test_deliveredInOrderOnConnect(self) -> None:
        """Three queued messages reach the client in the order sent, when it connects."""
        clock = Clock()
        hub = queuedHub(clock)
        assert hub.queues is not None
        self.assertEqual([put(hub.queues, PEER, t) for t in ("one", "two", "three")], [1, 2, 3])
        protocol, transport, _, _ = connect(hub=hub)
        self.assertEqual(transport.value(), b"one\ntwo\nthree\n")
        self.assertEqual((hub.queues.delivered, hub.queues.waitingMessages), (3, 0))
        self.assertEqual(hub.queues.summary(), [])

    def test_otherIdsKeepWaiting(self) -> None:
        """A client gets only its own queue; another id's messages keep waiting."""
        clock = Clock()
        hub = queuedHub(clock)
        assert hub.queues is not None
        put(hub.queues, "127.0.0.1:40001", "not yours")
        _, transport, _, _ = connect(hub=hub)
        self.assertEqual(transport.value(), b"")
        self.assertEqual([q["id"] for q in hub.queues.summary()], ["127.0.0.1:40001"])

    def test_queuedBeforeHandlerSends(self) -> None:
        """What the handler sends on connect comes after the queued messages."""

        class Welcome(BaseHandler):
            def connected(self, session: ISession) -> None:
                session.send("welcome")

        clock = Clock()
        clock.advance(NOON)
        hub = makeHub(clock, handler=Welcome)
        hub.queues = Queues(clock)
        put(hub.queues, PEER, "waited")
        _, transport, _, _ = connect(hub=hub)
        self.assertEqual(transport.value(), b"waited\nwelcome\n")

    def test_nothingQueuedCostsNothing(self) -> None:
        """A client with nothing waiting keeps its own peer: no stand-in is made."""
        clock = Clock()
        hub = queuedHub(clock)
        protocol, _, _, _ = connect(hub=hub)
        session = hub.get(PEER)
        assert session is not None
        self.assertIs(session.peer, protocol)  # type: ignore[attr-defined]


class ExpiryTests(SynchronousTestCase):
    """
    Expired messages are dropped and counted, never sent.
    """

    def test_expiredDroppedOnDelivery(self) -> None:
        """Of a 10 s and a 100 s message, 50 s later only the second is delivered."""
        clock = Clock()
        hub = queuedHub(clock)
        assert hub.queues is not None
        put(hub.queues, PEER, "short", ttl=10)
        put(hub.queues, PEER, "long", ttl=100)
        clock.advance(50)
        _, transport, _, _ = connect(hub=hub)
        self.assertEqual(transport.value(), b"long\n")
        self.assertEqual((hub.queues.expired, hub.queues.delivered), (1, 1))

    def test_expiredLeaveTheBounds(self) -> None:
        """An expired message no longer counts against --queue-max-messages."""
        clock = Clock()
        clock.advance(NOON)
        queues = Queues(clock, maxMessages=1)
        put(queues, PEER, "old", ttl=1)
        clock.advance(2)
        self.assertEqual(put(queues, PEER, "new"), 1)
        self.assertEqual(queues.expired, 1)
        self.assertEqual(queues.summary()[0]["messages"], 1)

    def test_summaryShowsAge(self) -> None:
        """GET /queues' shape: id, messages, bytes, and the age of the oldest."""
        clock = Clock()
        clock.advance(NOON)
        queues = Queues(clock)
        put(queues, PEER, "abc")
        clock.advance(7.5)
        put(queues, PEER, "de")
        self.assertEqual(
            queues.summary(), [{"id": PEER, "messages": 2, "bytes": 5, "oldestAgeSeconds": 7.5}]
        )


class BoundTests(SynchronousTestCase):
    """
    A send over a bound is refused, naming it; nothing queued is dropped.
    """

    def assertRefused(self, queues: Queues, bound: str, clientId: str, text: str) -> None:
        before = queues.summary()
        error = self.assertRaises(QueueFull, put, queues, clientId, text)
        self.assertEqual(error.bound, bound)
        self.assertIn(bound, error.message)
        self.assertEqual(queues.summary(), before)
        self.assertEqual(queues.refused, 1)

    def test_maxMessages(self) -> None:
        """The third message for one id over --queue-max-messages 2 is refused."""
        queues = Queues(Clock(), maxMessages=2)
        put(queues, PEER, "a")
        put(queues, PEER, "b")
        self.assertRefused(queues, "--queue-max-messages", PEER, "c")

    def test_maxBytes(self) -> None:
        """Bytes for one id over --queue-max-bytes 5 are refused; another id still queues."""
        queues = Queues(Clock(), maxBytes=5)
        put(queues, PEER, "abcd")
        self.assertRefused(queues, "--queue-max-bytes", PEER, "ef")
        self.assertEqual(put(queues, "other", "ef"), 1)

    def test_totalBytes(self) -> None:
        """Bytes over --queue-total-bytes 5, summed over every id, are refused."""
        queues = Queues(Clock(), totalBytes=5)
        put(queues, "one", "abc")
        self.assertRefused(queues, "--queue-total-bytes", "two", "def")


class AtMostOnceTests(SynchronousTestCase):
    """
    A message leaves the store before it is written: never sent twice,
    and nothing sent meanwhile overtakes it.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = ManualStore()
        self.queues = Queues(self.clock, self.store)
        self.hub = queuedHub(self.clock, self.queues)
        self.queues.start()
        self.store.commitAll()  # the load
        for text in ("one", "two"):
            self.queues.put(PEER, text.encode(), 60)
        self.store.commitAll()

    def test_removedBeforeWritten(self) -> None:
        """Nothing is written until the store has committed the removal; then all, in order."""
        _, transport, _, _ = connect(hub=self.hub)
        [(name, seqs, _)] = self.store.calls
        self.assertEqual((name, seqs), ("remove", [1, 2]))
        self.assertEqual(transport.value(), b"")
        self.store.commitAll()
        self.assertEqual(transport.value(), b"one\ntwo\n")

    def test_newSendWaitsForQueued(self) -> None:
        """A send to the client while its queue is handed over arrives after the queue."""
        _, transport, _, _ = connect(hub=self.hub)
        session = self.hub.get(PEER)
        assert session is not None
        session.send("new")
        self.hub.broadcast("everyone")
        self.assertEqual(transport.value(), b"")
        self.store.commitAll()
        self.assertEqual(transport.value(), b"one\ntwo\nnew\neveryone\n")

    def test_closeWaitsForQueued(self) -> None:
        """A close asked during the hand-over happens after what waited is written."""
        _, transport, _, _ = connect(hub=self.hub)
        session = self.hub.get(PEER)
        assert session is not None
        session.close()
        self.assertFalse(transport.disconnecting)
        self.store.commitAll()
        self.assertEqual(transport.value(), b"one\ntwo\n")
        self.assertTrue(transport.disconnecting)

    def test_goneBeforeCommitWaitsAgain(self) -> None:
        """A client gone before the removal commits gets nothing; its queue waits again."""
        protocol, transport, _, _ = connect(hub=self.hub)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.store.commitAll()
        self.assertEqual(transport.value(), b"")
        self.assertEqual([q["messages"] for q in self.queues.summary()], [2])
        self.store.commitAll()  # stored again
        _, again, _, _ = connect(hub=self.hub)
        self.store.commitAll()
        self.assertEqual(again.value(), b"one\ntwo\n")
        self.assertEqual(self.queues.delivered, 2)

    def test_replacedDuringHandOver(self) -> None:
        """A connection that replaces one whose hand-over is under way gets the queue, once."""
        _, first, _, _ = connect(hub=self.hub)
        _, second, _, _ = connect(hub=self.hub)  # the same id: it replaces the first
        self.store.commitAll()  # the first's removal; it is no longer the id's: given back
        self.store.commitAll()  # stored again, then the second's removal
        self.store.commitAll()
        self.assertEqual((first.value(), second.value()), (b"", b"one\ntwo\n"))
        self.assertEqual((self.queues.delivered, self.queues.summary()), (2, []))

    def test_storeFailureSendsNothing(self) -> None:
        """A removal the store cannot commit sends nothing and keeps the queue."""
        _, transport, _, _ = connect(hub=self.hub)
        with capturedLogs() as events:
            self.store.calls.pop()[2].errback(Failure(OSError("disk full")))
        self.assertEqual(transport.value(), b"")
        self.assertEqual([q["messages"] for q in self.queues.summary()], [2])
        self.assertIn("queue-store-error", [e.get("event") for e in events])
        self.flushLoggedErrors(OSError)

    def test_connectWhileLoading(self) -> None:
        """A client that connects before the store has loaded gets its queue once it has."""
        clock = Clock()
        store = ManualStore()
        queues = Queues(clock, store)
        hub = queuedHub(clock, queues)
        queues.start()
        _, transport, _, _ = connect(hub=hub)
        hub.broadcast("new")
        name, _, load = store.calls.pop(0)
        load.callback([Waiting(7, PEER, b"kept", NOON, NOON + 60)])
        store.commitAll()
        self.assertEqual(transport.value(), b"kept\nnew\n")

    def test_loadedBoundsHold(self) -> None:
        """What the store loads counts against the bounds, and numbering goes on after it."""
        clock = Clock()
        clock.advance(NOON)
        store = ManualStore()
        queues = Queues(clock, store, maxMessages=2)
        queues.start()
        store.calls.pop(0)[2].callback(
            [Waiting(4, PEER, b"a", NOON, NOON + 60), Waiting(9, PEER, b"b", NOON, NOON + 60)]
        )
        results: list[Any] = []
        queues.put(PEER, b"c", 60).addBoth(results.append)
        self.assertIsInstance(results[0].value, QueueFull)
        queues.put("other", b"c", 60)
        self.assertEqual(store.calls[0][1].seq, 10)
        store.commitAll()


def render(resource: AdminResource, method: bytes, path: bytes, body: bytes = b"") -> Any:
    """
    Render one request in process; the request, which holds the answer
    once it is finished.
    """
    request: Any = DummyRequest(path[1:].split(b"?")[0].split(b"/"))
    request.method = method
    request.path = path.split(b"?")[0]
    query = path.partition(b"?")[2]
    request.args = {}
    for pair in filter(None, query.split(b"&")):
        name, _, value = pair.partition(b"=")
        request.args.setdefault(name, []).append(value)
    request.content = BytesIO(body)
    result = resource.render(request)
    if result is not NOT_DONE_YET:
        request.write(result)
        request.finish()
    return request


def answer(request: Any) -> tuple[int, Any]:
    """
    The status and decoded JSON of a finished request.
    """
    assert request.finished, "not answered yet"
    return request.responseCode or 200, json.loads(b"".join(request.written))


class QueueRouteTests(SynchronousTestCase):
    """
    C{POST /clients/{id}/messages?ttl=} and C{GET /queues}, in process.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = ManualStore()
        self.queues = Queues(self.clock, self.store, maxMessages=2)
        self.hub = queuedHub(self.clock, self.queues)
        self.queues.start()
        self.store.commitAll()
        self.resource = self.makeResource(self.hub)

    def makeResource(self, hub: Hub) -> AdminResource:
        routes = serverRoutes(hub, Outgoing("utf-8", "line", 64), self.clock)
        return AdminResource(routes, makeRegistry(hub), "server", None, 64)

    def send(self, clientId: str, query: bytes, body: bytes = b"hello") -> Any:
        return render(
            self.resource, b"POST", b"/clients/" + clientId.encode() + b"/messages" + query, body
        )

    def test_queuedAfterCommit(self) -> None:
        """A ttl send to an absent client is answered 202 with its position once stored."""
        request = self.send("agent-7", b"?ttl=3600")
        self.assertFalse(request.finished)
        self.store.commitAll()
        self.assertEqual(answer(request), (202, {"id": "agent-7", "queued": True, "position": 1}))
        second = self.send("agent-7", b"?ttl=1.5")
        self.store.commitAll()
        self.assertEqual(answer(second)[1]["position"], 2)

    def test_queuedInMemory(self) -> None:
        """Without a store, the 202 is answered at once."""
        hub = queuedHub(self.clock)
        request = render(self.makeResource(hub), b"POST", b"/clients/a/messages?ttl=5", b"m")
        self.assertEqual(answer(request), (202, {"id": "a", "queued": True, "position": 1}))

    def test_withoutTtlAbsentIs404(self) -> None:
        """Without a ttl, a send to an absent client stays a 404 and queues nothing."""
        status, body = answer(self.send("agent-7", b""))
        self.assertEqual(status, 404)
        self.assertEqual(self.queues.summary(), [])

    def test_connectedSentAtOnce(self) -> None:
        """A ttl send to a connected client is sent at once, 200, as without one."""
        _, transport, _, _ = connect(hub=self.hub)
        self.assertEqual(answer(self.send(PEER, b"?ttl=60")), (200, {"id": PEER, "sent": 1}))
        self.assertEqual(transport.value(), b"hello\n")

    def test_badTtl(self) -> None:
        """A ttl that is not a positive number is a 400 naming the parameter and the value."""
        for bad in (b"0", b"-5", b"soon", b"nan", b"inf", b""):
            status, body = answer(self.send("agent-7", b"?ttl=" + bad))
            self.assertEqual(status, 400, bad)
            self.assertEqual(
                body["error"], f"ttl must be a positive number of seconds, not {bad.decode()!r}"
            )
        self.assertEqual(self.queues.summary(), [])

    def test_overBoundIs507(self) -> None:
        """A send over --queue-max-messages is a 507 naming the bound."""
        for _ in range(2):
            self.send("agent-7", b"?ttl=60")
        self.store.commitAll()
        status, body = answer(self.send("agent-7", b"?ttl=60"))
        self.assertEqual(status, 507)
        self.assertIn("--queue-max-messages 2", body["error"])

    def test_listQueues(self) -> None:
        """GET /queues lists each id with messages waiting, in the dashboard's shape."""
        self.send("agent-7", b"?ttl=60", b"abc")
        self.store.commitAll()
        self.clock.advance(3)
        self.assertEqual(
            answer(render(self.resource, b"GET", b"/queues")),
            (
                200,
                {"queues": [{"id": "agent-7", "messages": 1, "bytes": 3, "oldestAgeSeconds": 3}]},
            ),
        )

    def test_listWaitsForLoad(self) -> None:
        """GET /queues answers once the stored queues are loaded, with them, never an empty list before."""
        store = ManualStore()
        queues = Queues(self.clock, store)
        queues.start()
        request = render(self.makeResource(queuedHub(self.clock, queues)), b"GET", b"/queues")
        self.assertFalse(request.finished)
        name, _, loading = store.calls.pop(0)
        self.assertEqual(name, "load")
        loading.callback([Waiting(1, "agent-7", b"kept", self.clock.seconds(), NOON + 60)])
        self.assertEqual(answer(request)[1]["queues"][0]["id"], "agent-7")

    def test_metrics(self) -> None:
        """/metrics shows what was queued, delivered, expired and refused, and what waits."""
        self.send("a", b"?ttl=60")
        self.send("a", b"?ttl=1")
        self.send("a", b"?ttl=60")  # refused
        self.store.commitAll()
        self.clock.advance(2)
        request = render(self.resource, b"GET", b"/metrics")
        text = b"".join(request.written).decode()
        for line in (
            "tcpcomm_queue_queued_total 2.0",
            "tcpcomm_queue_refused_total 1.0",
            "tcpcomm_queue_delivered_total 0.0",
            "tcpcomm_queue_waiting_messages 2.0",
            "tcpcomm_queue_waiting_bytes 10.0",
        ):
            self.assertIn(line + "\n", text)


class HandlerHubTests(SynchronousTestCase):
    """
    The queues hang on the server's hub, where handlers do not see them.
    """

    def test_hubWithoutQueues(self) -> None:
        """A hub made without queues (a client's) delivers nothing and lists no queues."""
        clock = Clock()
        hub = makeHub(clock)
        self.assertIsNone(hub.queues)
        self.assertTrue(IHub.providedBy(hub))
        routes = serverRoutes(hub, Outgoing("utf-8", "line", 64), clock)
        resource = AdminResource(routes, makeRegistry(hub), "server", None, 64)
        self.assertEqual(answer(render(resource, b"GET", b"/queues")), (200, {"queues": []}))
        self.assertEqual(
            answer(render(resource, b"POST", b"/clients/x/messages?ttl=5", b"m"))[0], 404
        )


class QueueCommandTests(SynchronousTestCase):
    """
    C{tcpcomm send --ttl} and C{tcpcomm queues}, in process.
    """

    def test_sendWithTtl(self) -> None:
        """send --ttl adds ?ttl= to the send and says where the message was queued."""
        calls: list[tuple[str, str, str | None]] = []

        class Recorder:
            def call(self, method: str, path: str, body: str | None = None) -> cli.Answer:
                calls.append((method, path, body))
                return cli.Answer({"id": "agent-7", "queued": True, "position": 3}, "")

        args = cli.parser({}).parse_args(["send", "--ttl", "90", "agent-7", "restart"])
        answer = args.call(Recorder(), args)
        self.assertEqual(calls, [("POST", "/clients/agent-7/messages?ttl=90.0", "restart")])
        self.assertEqual(cli.showSent(answer.data, args), "queued for agent-7 (position 3)")

    def test_badTtl(self) -> None:
        """send --ttl refuses a ttl that is not a positive number, as a usage error."""
        errors = StringIO()
        with redirect_stderr(errors), self.assertRaises(SystemExit) as raised:
            cli.parser({}).parse_args(["send", "--ttl", "0", "agent-7", "restart"])
        self.assertEqual(raised.exception.code, cli.USAGE)
        self.assertIn(
            "argument --ttl: must be a positive number of seconds, not '0'", errors.getvalue()
        )

    def test_queuesTable(self) -> None:
        """queues shows each id's messages, bytes and oldest age, and a total."""
        answer = {
            "queues": [
                {"id": "agent-7", "messages": 2, "bytes": 2048, "oldestAgeSeconds": 185.2},
                {"id": "b", "messages": 1, "bytes": 3, "oldestAgeSeconds": 4.0},
            ]
        }
        args = cli.parser({}).parse_args(["queues"])
        self.assertEqual(
            cli.showQueues(answer, args),
            "ID       MESSAGES  BYTES    OLDEST\n"
            "agent-7  2         2.0 KiB  3m05s\n"
            "b        1         3 B      4s\n"
            "3 messages waiting for 2 clients",
        )
        self.assertEqual(cli.showQueues({"queues": []}, args), "no messages waiting")


class LoadFailureTests(SynchronousTestCase):
    """
    A store that cannot be loaded is never written over.
    """

    def test_unavailable(self) -> None:
        """After a failed load, a ttl send is a 503 and nothing is stored; clients still connect."""
        clock = Clock()
        store = ManualStore()
        queues = Queues(clock, store)
        hub = queuedHub(clock, queues)
        queues.start()
        with capturedLogs() as events:
            store.calls.pop(0)[2].errback(Failure(OSError("not a database")))
        self.assertIn("queues-load-failed", [e.get("event") for e in events])
        self.flushLoggedErrors(OSError)
        routes = serverRoutes(hub, Outgoing("utf-8", "line", 64), clock)
        resource = AdminResource(routes, makeRegistry(hub), "server", None, 64)
        status, body = answer(render(resource, b"POST", b"/clients/a/messages?ttl=5", b"m"))
        self.assertEqual(status, 503)
        self.assertIn("could not be loaded", body["error"])
        self.assertEqual(store.calls, [])
        _, transport, _, _ = connect(hub=hub)
        hub.broadcast("still served")
        self.assertEqual(transport.value(), b"still served\n")
