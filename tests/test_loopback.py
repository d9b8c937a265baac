"""
Integration: a server and a client built by L{tcpcomm.tap.makeService},
talking over real loopback sockets in this process's reactor.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Generator
from typing import Any, cast

from twisted.internet import reactor
from twisted.internet.address import IPv6Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import (
    IHostnameResolver,
    IHostResolution,
    IReactorPluggableNameResolver,
    IResolutionReceiver,
)
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer

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


@implementer(IHostResolution)
class HostResolution:
    """
    The one resolution L{IPv6OnlyResolver} makes.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass


@implementer(IHostnameResolver)
class IPv6OnlyResolver:
    """
    A resolver that knows one name, which resolves to ::1 only.
    """

    name = "tcpcomm-ipv6.test"

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Any = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        resolution = HostResolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        if hostName == self.name:
            resolutionReceiver.addressResolved(IPv6Address("TCP", "::1", portNumber))
        resolutionReceiver.resolutionComplete()
        return resolution


class IPv6NameTests(TestCase):
    """
    --host takes a name that resolves to an IPv6 address only.
    """

    timeout = 30

    def setUp(self) -> None:
        try:
            with socket.socket(socket.AF_INET6) as s:
                s.bind(("::1", 0))
        except OSError as e:
            raise SkipTest(f"no IPv6 loopback here: {e}") from None
        self.events: list[LogEvent] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        pluggable = cast(IReactorPluggableNameResolver, reactor)
        previous = pluggable.installNameResolver(IPv6OnlyResolver())
        self.addCleanup(pluggable.installNameResolver, previous)

    @inlineCallbacks
    def test_nameResolvingToIPv6(self) -> Generator[Deferred[Any], Any, None]:
        """A client given a name that resolves to ::1 reaches a server listening on ::1 only."""
        server = build("server", "--port", "0", "--interface", "::1", "--reply-delay", "0")
        server.startService()
        self.addCleanup(lambda: server.running and server.stopService())
        [listening] = yield until(lambda: [e for e in self.events if e.get("event") == "listening"])
        port = listening["address"].rsplit(":", 1)[1]
        client = build(
            "client", "--host", IPv6OnlyResolver.name, "--port", port, "--reply-delay", "0"
        )
        client.startService()
        self.addCleanup(lambda: client.running and client.stopService())
        [connected] = yield until(
            lambda: [
                e for e in self.events if e.get("event") == "connected" and "]:" + port in e["peer"]
            ]
        )
        self.assertEqual(connected["peer"], f"[::1]:{port}")
        yield client.stopService()
        yield server.stopService()
