"""Tests for the admin API's event stream (C{GET /events}) on a clock."""

from __future__ import annotations

import json
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET, Request

from tcpcomm.control.admin import EventStream

from .support import connect, makeHub


class FakeRequest:
    """
    Just enough of a request to stream to: what was written, the producer,
    and a way to finish.
    """

    def __init__(self, lastEventId: bytes | None = None) -> None:
        self.written: list[bytes] = []
        self.headers: dict[bytes, bytes] = {}
        self.lastEventId = lastEventId
        self.producer: Any = None
        self._finished: Deferred[None] = Deferred()

    def getHeader(self, name: bytes) -> bytes | None:
        assert name == b"last-event-id", name
        return self.lastEventId

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.headers[name] = value

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def registerProducer(self, producer: object, streaming: bool) -> None:
        assert streaming
        self.producer = producer

    def notifyFinish(self) -> Deferred[None]:
        return self._finished

    def finish(self) -> None:
        self._finished.callback(None)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(data) for _, data in self.received()]

    def received(self) -> list[tuple[str, bytes]]:
        """
        The id and data of each event written.
        """
        found = []
        for chunk in self.written:
            fields = dict(line.split(b": ", 1) for line in chunk.split(b"\n") if b": " in line)
            if b"data" in fields:
                found.append((fields[b"id"].decode(), fields[b"data"]))
        return found


class EventStreamTestCase(SynchronousTestCase):
    """
    A server's event stream on a clock, with one reader from the start.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.hub = makeHub(self.clock, delay=0)
        self.request = FakeRequest()
        self.stream = EventStream(self.hub, self.clock)
        result = self.stream(cast(Request, self.request), [])
        self.assertIs(result, NOT_DONE_YET)

    def open(self, lastEventId: bytes | None = None) -> FakeRequest:
        """
        Another reader of the stream, coming with C{Last-Event-ID} if given.
        """
        request = FakeRequest(lastEventId)
        self.stream(cast(Request, request), [])
        return request


class EventStreamTests(EventStreamTestCase):
    """
    Readers get traffic as it happens, and never make the daemon buffer for them.
    """

    def test_traffic(self) -> None:
        """Connections, messages in and out, and departures arrive as JSON events."""
        protocol, _, _, _ = connect(hub=self.hub, port=7)
        protocol.dataReceived(b"hi\n")
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        protocol.connectionLost(Failure(ConnectionDone()))
        kinds = [(e["kind"], e["peer"]) for e in self.request.events()]
        self.assertEqual(kinds, [(k, "127.0.0.1:7") for k in ("connected", "in", "out", "lost")])
        self.assertEqual(self.request.events()[1]["text"], "hi")
        self.assertEqual(self.request.headers[b"content-type"], b"text/event-stream")

    def test_slowReaderDropsInsteadOfBuffering(self) -> None:
        """While the reader is paused events are dropped, and it is told how many."""
        protocol, _, _, _ = connect(hub=self.hub)
        self.request.producer.pauseProducing()
        before = len(self.request.written)
        protocol.dataReceived(b"a\nb\n")
        self.assertEqual(len(self.request.written), before)
        self.request.producer.resumeProducing()
        self.assertEqual(
            self.request.written[-1], b": 4 events dropped while the reader was behind\n\n"
        )

    def test_keepaliveAndFinish(self) -> None:
        """A comment every 20 s keeps the stream open; finishing stops the timer and the watcher."""
        self.clock.advance(20)
        self.assertEqual(self.request.written[-1], b": keep-alive\n\n")
        self.request.finish()
        self.assertEqual(self.stream.recent.readers, [])
        self.assertEqual(self.hub.watchers, [self.stream.recent.watch])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RecentEventsTests(EventStreamTestCase):
    """
    A reader opens with the last events, and one that comes back gets only those it missed.
    """

    def test_opensWithRecent(self) -> None:
        """A reader that comes after the traffic gets the events before it, in order."""
        protocol, _, _, _ = connect(hub=self.hub, port=7)
        protocol.dataReceived(b"hi\n")
        late = self.open()
        self.assertEqual(late.events(), self.request.events())
        self.assertEqual([e["kind"] for e in late.events()], ["connected", "in", "out"])
        protocol.dataReceived(b"again\n")
        self.assertEqual(late.events()[-2:], self.request.events()[-2:])

    def test_lastEventId(self) -> None:
        """A reader coming back with Last-Event-ID gets only the events after that one."""
        protocol, _, _, _ = connect(hub=self.hub, port=7)
        lastId = self.request.received()[-1][0]
        protocol.dataReceived(b"hi\n")
        back = self.open(lastId.encode())
        self.assertEqual([e["kind"] for e in back.events()], ["in", "out"])
        self.assertEqual(back.received(), self.request.received()[1:])

    def test_otherProcess(self) -> None:
        """A Last-Event-ID from another process (a restart) gets every event kept."""
        connect(hub=self.hub, port=7)
        for lastId in (b"0badf00d-1", b"nonsense", b""):
            self.assertEqual(len(self.open(lastId).events()), 1, lastId)

    def test_bounded(self) -> None:
        """Only the last 100 events are kept, their texts cut at 1024 characters."""
        protocol, _, _, _ = connect(hub=self.hub, port=7, maxMessageSize=5000)
        protocol.dataReceived(b"x" * 3000 + b"\n")
        for i in range(60):
            protocol.dataReceived(b"m%d\n" % i)
        events = self.open().events()
        self.assertEqual(len(events), 100)
        self.assertEqual(events[-2]["text"], "m59")
        self.assertEqual(self.request.events()[1]["text"], "x" * 3000)
        protocol.dataReceived(b"y" * 3000 + b"\n")
        kept = self.open().events()[-2]["text"]
        self.assertEqual(kept, "y" * 1024 + "…")
