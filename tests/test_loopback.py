"""
Integration: a server and a client built by L{tcpcomm.tap.makeService},
talking over real loopback sockets in this process's reactor.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, cast

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from tcpcomm.options import Options
from tcpcomm.tap import makeService


def build(*args: str) -> Any:
    options = Options()
    options.parseOptions(list(args))
    return makeService(options, reactor)


@inlineCallbacks
def until(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    """
    Wait on the reactor, never blocking it, until C{condition()} is true.
    """
    waited = 0.0
    while not condition():
        if waited > timeout:
            raise AssertionError(f"not true after {timeout} s")
        yield deferLater(reactor, 0.01, lambda: None)
        waited += 0.01
    return condition()


class LoopbackTests(TestCase):
    """
    Server and client from this package hold their conversation over TCP.
    """

    timeout = 30

    def setUp(self) -> None:
        self.events: list[LogEvent] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def said(self, prefix: str) -> list[LogEvent]:
        return [e for e in self.events if e.get("log_format", "").startswith(prefix)]

    @inlineCallbacks
    def test_serverAndClientTalk(self) -> Generator[Deferred[Any], Any, None]:
        """The client greets, each side answers the other, and both stop cleanly."""
        server = build("server", "--port", "0", "--interface", "127.0.0.1", "--reply-delay", "0.05")
        server.startService()
        self.addCleanup(lambda: server.running and server.stopService())
        [listening] = yield until(lambda: self.said("listening on"))
        port = listening["address"].rsplit(":", 1)[1]
        client = build("client", "--port", port, "--reply-delay", "0.05", "--greeting", "hi {time}")
        client.startService()
        self.addCleanup(lambda: client.running and client.stopService())
        serverPeer = f"127.0.0.1:{port}"

        def heard(peer: Callable[[str], bool]) -> list[str]:
            return [e["text"] for e in self.said("message from") if peer(e["peer"])]

        fromServer = lambda: heard(lambda p: p == serverPeer)  # noqa: E731
        fromClient = lambda: heard(lambda p: p != serverPeer)  # noqa: E731
        yield until(lambda: len(fromServer()) >= 2 and len(fromClient()) >= 2)
        self.assertTrue(fromClient()[0].startswith("hi "))
        self.assertTrue(all(t.startswith("response from client ") for t in fromClient()[1:]))
        self.assertTrue(all(t.startswith("response from server ") for t in fromServer()))

        yield client.stopService()
        yield until(lambda: len(self.said("lost")) >= 2)
        yield server.stopService()
        self.assertEqual([e for e in self.events if e.get("isError") or e.get("log_failure")], [])
