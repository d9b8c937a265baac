"""
C{--proxy-protocol} in memory: the PROXY header read however it is split,
v1 and v2, LOCAL health checks, bad headers and the deadline.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Generator
from typing import Any, cast

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tcpcomm.handlers import Echo
from tcpcomm.options import Options
from tcpcomm.tap import serverEndpoints
from tcpcomm.wire.framing import FRAMINGS
from tcpcomm.wire.protocol import FramedProtocol, Limits, MessageFactory
from tcpcomm.wire.proxy import (
    BadHeader,
    ProxyHeaderEndpoint,
    ProxyHeaderFactory,
    ProxyHeaderProtocol,
    parseHeader,
)

from .support import NOON, hubOf, makeHub
from .test_loopback import until

HAPROXY = IPv4Address("TCP", "10.0.0.2", 51000)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(source: str = "203.0.113.7", port: int = 4242, family: str = "TCP4") -> bytes:
    destination = "198.51.100.1" if family == "TCP4" else "2001:db8::1"
    return f"PROXY {family} {source} {destination} {port} 9527\r\n".encode()


def v2(source: str = "203.0.113.7", port: int = 4242, command: int = 1, tlvs: bytes = b"") -> bytes:
    """
    A PROXY v2 header (TCP over IPv4, or IPv6 when C{source} has a colon).
    """
    if ":" in source:
        family, packed = 0x21, socket.inet_pton(socket.AF_INET6, source) * 2
    else:
        family, packed = 0x11, socket.inet_aton(source) * 2
    body = packed + struct.pack("!HH", port, 9527) + tlvs
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


V2_LOCAL = V2_SIGNATURE + b"\x20\x00\x00\x00"


class Connection:
    """
    A proxied connection to an echo server, on a transport that hands its
    reads to whichever protocol it holds, as a reactor's connection does.
    """

    def __init__(self, clock: Clock | None = None, handshakeTimeout: float = 10.0) -> None:
        self.clock = clock or Clock()
        if self.clock.seconds() == 0:
            self.clock.advance(NOON)
        self.factory = MessageFactory(
            FRAMINGS["line"],
            makeHub(self.clock, delay=0, handler=Echo),
            Limits(handshakeTimeout=handshakeTimeout),
        )
        self.hub = hubOf(self.factory)
        self.proxyFactory = ProxyHeaderFactory(
            self.factory,
            self.clock,
            lambda: self.factory.limits.handshakeTimeout,
            self.factory.stats,
        )
        self.transport = StringTransport(peerAddress=HAPROXY)
        protocol = self.proxyFactory.buildProtocol(HAPROXY)
        self.transport.protocol = protocol  # type: ignore[attr-defined]
        protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.transport.protocol.dataReceived(data)  # type: ignore[attr-defined]


class ParseHeaderTests(SynchronousTestCase):
    """
    L{parseHeader} on the bytes a connection has sent so far.
    """

    def test_everyPrefixWaits(self) -> None:
        """
        Every proper prefix of a v1 or v2 header asks for more rather than failing.
        """
        for header in (v1(), v2(), v2("2001:db8::7"), V2_LOCAL, v2(tlvs=b"\x04\x00\x01x")):
            for end in range(len(header)):
                self.assertIsNone(parseHeader(header[:end]), (header, end))

    def test_v2IPv6Compressed(self) -> None:
        """
        A v2 IPv6 source is written compressed, as the registry writes addresses.
        """
        header = parseHeader(v2("2001:db8::7") + b"rest")
        assert header is not None
        self.assertEqual(header.source, IPv6Address("TCP", "2001:db8::7", 4242))
        self.assertEqual(header.rest, b"rest")

    def test_badHeaders(self) -> None:
        """
        Bytes that are not a valid header, or a v1 address that is not an IP address, raise BadHeader.
        """
        for data in (
            b"hello\n",
            b"GET / HTTP/1.1\r\n",
            b"PROXY TCP4 nope 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 203.0.113.7 198.51.100.1 x 2\r\n",
            b"PROXY TCP4 203.0.113.7 198.51.100.1 70000 2\r\n",
            b"PROXY TCP4 2001:db8::7 198.51.100.1 1 2\r\n",
            b"PROXY TCP5 203.0.113.7 198.51.100.1 1 2\r\n",
            b"PROXY " + b"x" * 200,
            V2_SIGNATURE + b"\x10\x11\x00\x0c" + b"\x00" * 12,
            V2_SIGNATURE + b"\x2f\x11\x00\x0c" + b"\x00" * 12,
            V2_SIGNATURE + b"\x21\x11\x00\x02" + b"\x00" * 2,
        ):
            self.assertRaises(BadHeader, parseHeader, data)
        e = self.assertRaises(BadHeader, parseHeader, b"PROXY TCP5 1 2 3 4\r\n")
        self.assertEqual(str(e), "a PROXY header with an unknown protocol or address family")


class ProxyHeaderTests(SynchronousTestCase):
    """
    A connection behind C{--proxy-protocol}.
    """

    def assertServedAs(self, c: Connection, peerId: str) -> None:
        protocol = c.transport.protocol  # type: ignore[attr-defined]
        self.assertIsInstance(protocol, FramedProtocol)
        self.assertEqual(protocol.id, peerId)
        self.assertIn(peerId, c.hub.registry)
        self.assertEqual(c.transport.value(), b"hi\n")
        self.assertFalse(c.transport.disconnecting)

    def test_everySplit(self) -> None:
        """
        A v1 or v2 header followed by a message, split in two at any byte, gives a session under the real address that gets the message.
        """
        for header, peerId in (
            (v1(), "203.0.113.7:4242"),
            (v1("2001:db8::7", family="TCP6"), "[2001:db8::7]:4242"),
            (v2(), "203.0.113.7:4242"),
            (v2("2001:db8::7"), "[2001:db8::7]:4242"),
            (v2(tlvs=b"\x05\x00\x04abcd"), "203.0.113.7:4242"),
        ):
            data = header + b"hi\n"
            for cut in range(1, len(data)):
                c = Connection()
                c.send(data[:cut])
                c.send(data[cut:])
                self.assertServedAs(c, peerId)

    def test_byteByByte(self) -> None:
        """
        A header that arrives one byte per read makes no session until its last byte.
        """
        data = v2() + b"hi\n"
        c = Connection()
        with capturedLogs() as events:
            for i in range(len(v2()) - 1):
                c.send(data[i : i + 1])
                self.assertEqual(len(c.hub.registry), 0)
                self.assertIsInstance(c.transport.protocol, ProxyHeaderProtocol)  # type: ignore[attr-defined]
        self.assertEqual([e for e in events if e.get("event") == "connected"], [])
        for i in range(len(v2()) - 1, len(data)):
            c.send(data[i : i + 1])
        self.assertServedAs(c, "203.0.113.7:4242")

    def test_noCallAddedAfterTheHeader(self) -> None:
        """
        Once the header is read, the transport hands its reads to the session's protocol itself.
        """
        c = Connection()
        c.send(v1())
        protocol = c.transport.protocol  # type: ignore[attr-defined]
        self.assertIsInstance(protocol, FramedProtocol)
        self.assertIs(protocol.transport, c.transport)
        self.assertEqual(c.transport.getPeer(), IPv4Address("TCP", "203.0.113.7", 4242))

    def test_otherTransport(self) -> None:
        """
        On a transport that cannot be handed on, reads and the loss still reach the session.
        """
        c = Connection()
        transport = StringTransport(peerAddress=HAPROXY)
        protocol = c.proxyFactory.buildProtocol(HAPROXY)
        protocol.makeConnection(transport)
        protocol.dataReceived(v1() + b"h")
        protocol.dataReceived(b"i\n")
        self.assertEqual(transport.value(), b"hi\n")
        self.assertIn("203.0.113.7:4242", c.hub.registry)
        protocol.connectionLost()
        self.assertEqual(len(c.hub.registry), 0)

    def test_local(self) -> None:
        """
        A LOCAL header (HAProxy's health check) is closed quietly, never registered.
        """
        for header in (V2_LOCAL, b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"):
            c = Connection()
            with capturedLogs() as events:
                c.send(header)
            self.assertTrue(c.transport.disconnecting)
            self.assertFalse(c.transport.disconnected)
            self.assertEqual(len(c.hub.registry), 0)
            self.assertEqual(c.factory.side.connectionCount(), 0)
            self.assertEqual(list(events), [])
            self.assertEqual(c.clock.getDelayedCalls(), [])

    def test_badHeader(self) -> None:
        """
        A connection that does not start with a valid header is dropped and logged with HAProxy's address, at most once per 10 s.
        """
        clock = Clock()
        with capturedLogs() as events:
            first = Connection(clock)
            first.send(b"hello\n")
            c = Connection(clock)
            c.proxyFactory.refusedLines = first.proxyFactory.refusedLines
            c.send(b"PROXY TCP4 nope")
            c.send(b" 1.2.3.4 1 2\r\n")
        for conn in (first, c):
            self.assertTrue(conn.transport.disconnected)
            self.assertEqual(len(conn.hub.registry), 0)
        calls = [getattr(d, "func", None) for d in clock.getDelayedCalls()]
        self.assertEqual([f for f in calls if getattr(f, "__name__", "") == "_timedOut"], [])
        refused = [e for e in events if e.get("event") == "proxy-refused"]
        self.assertEqual(len(refused), 1)
        self.assertEqual(refused[0]["peer"], "10.0.0.2:51000")
        self.assertEqual(refused[0]["why"], "not a PROXY header")

    def test_timeout(self) -> None:
        """
        A header not whole within --handshake-timeout is dropped, counted and logged.
        """
        c = Connection(handshakeTimeout=3)
        with capturedLogs() as events:
            c.send(v2()[:20])
            c.clock.advance(2.9)
            self.assertFalse(c.transport.disconnecting)
            c.clock.advance(0.2)
        self.assertTrue(c.transport.disconnected)
        self.assertEqual(c.factory.stats.handshakeTimeouts, 1)
        [line] = [e for e in events if e.get("event") == "handshake-timeout"]
        self.assertEqual(line["peer"], "10.0.0.2:51000")
        self.assertEqual(line["waitingFor"], "the PROXY header")
        c.send(v2()[20:] + b"hi\n")
        self.assertEqual(len(c.hub.registry), 0)

    def test_timeoutReloaded(self) -> None:
        """
        The deadline is the --handshake-timeout the factory has when the connection is made; 0 is none.
        """
        c = Connection(handshakeTimeout=0)
        self.assertEqual(c.clock.getDelayedCalls(), [])
        c.factory.setLimits(Limits(handshakeTimeout=2))
        later = c.proxyFactory.buildProtocol(HAPROXY)
        later.makeConnection(StringTransport(peerAddress=HAPROXY))
        [deadline] = c.clock.getDelayedCalls()
        self.assertEqual(deadline.getTime(), c.clock.seconds() + 2)

    def test_headerThenLost(self) -> None:
        """
        A connection lost before its header ends leaves no deadline and no session.
        """
        c = Connection()
        c.send(v1()[:10])
        c.transport.protocol.connectionLost()  # type: ignore[attr-defined]
        self.assertEqual(c.clock.getDelayedCalls(), [])
        self.assertEqual(len(c.hub.registry), 0)

    def test_waitingMakeRoom(self) -> None:
        """
        When the server is full, a new connection takes the place of the oldest one still waiting for its header.
        """
        c = Connection()
        c.factory.setLimits(Limits(maxConnections=2))
        c.proxyFactory.occupancy = lambda: (
            c.factory.side.connectionCount() + len(c.factory.waiting),
            c.factory.connectionLimit,
        )
        c.send(v1() + b"hi\n")  # one client
        transports = []
        with capturedLogs() as events:
            for _ in range(3):
                protocol = c.proxyFactory.buildProtocol(HAPROXY)
                transport = StringTransport(peerAddress=HAPROXY)
                protocol.makeConnection(transport)
                transports.append(transport)
        self.assertEqual([t.disconnected for t in transports], [True, True, False])
        self.assertEqual(c.factory.stats.handshakeEvictions, 2)
        [line] = [e for e in events if e.get("event") == "handshake-evicted"]
        self.assertEqual(line["waitingFor"], "the PROXY header")
        self.assertEqual(len(c.proxyFactory.waiting), 1)
        self.assertIn("203.0.113.7:4242", c.hub.registry)

    def test_waitingForgotten(self) -> None:
        """
        A connection leaves the factory's waiting list however its header ends: read, refused, timed out or lost.
        """
        ends = {
            "read": lambda c: c.send(v1()),
            "local": lambda c: c.send(V2_LOCAL),
            "refused": lambda c: c.send(b"nope\n"),
            "timed out": lambda c: c.clock.advance(10),
            "lost": lambda c: c.transport.protocol.connectionLost(),
        }
        for what, end in ends.items():
            c = Connection()
            self.assertEqual(len(c.proxyFactory.waiting), 1, what)
            end(c)
            self.assertEqual(len(c.proxyFactory.waiting), 0, what)


class Speaker(Protocol):
    """
    A raw peer that keeps what it is sent.
    """

    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class ProxyHeaderLoopbackTests(TestCase):
    """
    Behind C{--proxy-protocol} on a real socket in this process's reactor.
    """

    timeout = 30

    @inlineCallbacks
    def test_sessionOwnsTheSocket(self) -> Generator[Deferred[Any], Any, None]:
        """After the header the reactor's connection reads straight into the session's protocol, which writes straight to the socket."""
        factory = MessageFactory(
            FRAMINGS["line"], makeHub(cast(Clock, reactor), delay=0, handler=Echo), Limits()
        )
        endpoint = ProxyHeaderEndpoint(
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), reactor, lambda: 10.0
        )
        port = yield endpoint.listen(factory)
        self.addCleanup(port.stopListening)
        speaker = Speaker()
        yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), speaker
        )
        assert speaker.transport is not None
        self.addCleanup(speaker.transport.loseConnection)
        speaker.transport.write(v2("192.0.2.44", 4000) + b"hi\n")
        yield until(lambda: speaker.received == b"hi\n")
        session = hubOf(factory).registry.get("192.0.2.44:4000")
        assert session is not None
        peer = session.peer
        assert isinstance(peer, FramedProtocol)
        self.assertIs(peer.transport.protocol, peer)  # type: ignore[attr-defined]
        self.assertTrue(peer.eager)
        self.assertEqual(peer.address, "192.0.2.44:4000")


class ProxyOptionsTests(SynchronousTestCase):
    """
    C{--proxy-protocol} on the command line and in the listeners built.
    """

    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(["server", *args])
        return options

    def test_default(self) -> None:
        """
        Without --proxy-protocol the listeners are the plain endpoints.
        """
        sub = self.parse().subOptions
        self.assertFalse(sub["proxy-protocol"])
        [(endpoint, _)] = serverEndpoints(sub, MemoryReactorClock())
        self.assertNotIsInstance(endpoint, ProxyHeaderEndpoint)

    def test_everyListener(self) -> None:
        """
        --proxy-protocol wraps every --listen endpoint, and its description says so.
        """
        sub = self.parse(
            "--proxy-protocol", "--listen", "tcp:0:interface=127.0.0.1", "--listen", "unix:/x.sock"
        ).subOptions
        reactor = MemoryReactorClock()
        listeners = serverEndpoints(sub, reactor)
        self.assertEqual(len(listeners), 2)
        for endpoint, description in listeners:
            self.assertIsInstance(endpoint, ProxyHeaderEndpoint)
            self.assertIn("PROXY header first", description)
            endpoint.listen(MessageFactory(FRAMINGS["line"], makeHub(Clock()), Limits()))
        self.assertIsInstance(reactor.tcpServers[0][1], ProxyHeaderFactory)
        self.assertIsInstance(reactor.unixServers[0][1], ProxyHeaderFactory)

    def test_tlsInside(self) -> None:
        """
        With --tls-cert, TLS comes after the header: a TCP listener whose header reader wraps TLS.
        """
        from .certs import Authority
        from .processes import scratch

        authority = Authority(scratch(self), "ca")
        cert, key = authority.issue("localhost", ["127.0.0.1"])
        sub = self.parse("--proxy-protocol", "--tls-cert", cert, "--tls-key", key).subOptions
        reactor = MemoryReactorClock()
        [(endpoint, description)] = serverEndpoints(sub, reactor)
        endpoint.listen(MessageFactory(FRAMINGS["line"], makeHub(Clock()), Limits()))
        self.assertEqual(reactor.sslServers, [])
        factory = reactor.tcpServers[0][1]
        assert isinstance(factory, ProxyHeaderFactory)
        self.assertIsInstance(factory.wrappedFactory, TLSMemoryBIOFactory)
        self.assertIn("TLS", description)

    def test_sslListenRefused(self) -> None:
        """
        --proxy-protocol with an ssl: or tls: --listen is refused, naming both.
        """
        from .certs import Authority
        from .processes import scratch

        cert, key = Authority(scratch(self), "ca").issue("localhost", ["127.0.0.1"])
        description = f"ssl:0:privateKey={key}:certKey={cert}"
        with self.assertRaises(UsageError) as e:
            self.parse("--proxy-protocol", "--listen", description)
        self.assertIn("--proxy-protocol", str(e.exception))
        self.assertIn(repr(description), str(e.exception))

    def test_helloNeedsTokens(self) -> None:
        """
        --client-id hello behind --proxy-protocol needs --client-tokens even on loopback: the proxy lets in anyone.
        """
        with self.assertRaises(UsageError) as e:
            self.parse("--proxy-protocol", "-i", "127.0.0.1", "--client-id", "hello")
        self.assertIn("--client-tokens", str(e.exception))
        self.assertIn("--proxy-protocol", str(e.exception))
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("agent-7 secret\n")
        self.parse("--proxy-protocol", "--client-id", "hello", "--client-tokens", path)
