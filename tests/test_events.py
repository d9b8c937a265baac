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

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.headers: dict[bytes, bytes] = {}
        self.producer: Any = None
        self._finished: Deferred[None] = Deferred()

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
        return [json.loads(w[len(b"data: ") :]) for w in self.written if w.startswith(b"data: ")]


class EventStreamTests(SynchronousTestCase):
    """
    Readers get traffic as it happens, and never make the daemon buffer for them.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.hub = makeHub(self.clock, delay=0)
        self.request = FakeRequest()
        result = EventStream(self.hub, self.clock)(cast(Request, self.request), [])
        self.assertIs(result, NOT_DONE_YET)

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
        self.assertEqual(self.hub.watchers, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
