"""
The admin API's HTTP layer in memory: L{AdminChannel} on a
L{StringTransport}, driven by a L{Clock}, judging each request on its
headers before reading its body, and bounding what one client can hold.
"""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from tcpcomm.control.admin import AdminChannel, AdminResource, AdminSite, Outgoing, makeAdminSite
from tcpcomm.control.metrics import makeRegistry

from .support import connect, makeHub

TOKEN = "correct-horse"
AUTH = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
CHUNKED = b"Transfer-Encoding: chunked\r\n\r\n"


def dummy(path: bytes) -> Any:
    """
    A L{DummyRequest} for C{GET path}, with the C{path} that a real
    request has.
    """
    request = DummyRequest(path[1:].split(b"/"))
    request.path = path  # type: ignore[attr-defined]
    return request


def response(data: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    """
    The status, headers (lower-cased names) and body of the first response
    in C{data}.
    """
    head, _, body = data.partition(b"\r\n\r\n")
    statusLine, *lines = head.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return int(statusLine.split()[1]), headers, body


class ChannelTestCase(SynchronousTestCase):
    """
    A server's admin site with a token and a 32-byte --max-message-size, on
    a clock, and connections to it over L{StringTransport}s.
    """

    maxConnections = 64

    def setUp(self) -> None:
        self.clock = Clock()
        self.hub = makeHub(self.clock)
        self.site = makeAdminSite(
            self.hub,
            makeRegistry(self.hub),
            Outgoing("utf-8", "line", 32),
            self.clock,
            TOKEN,
            dashboard=b"<html></html>",
            maxConnections=self.maxConnections,
        )
        self.port = 50000

    def open(self) -> tuple[Any, StringTransport]:
        """
        A new connection to the site: its protocol and transport.
        """
        self.port += 1
        address = IPv4Address("TCP", "127.0.0.1", self.port)
        protocol = self.site.buildProtocol(address)
        assert protocol is not None
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        return protocol, transport

    def close(self, protocol: Any) -> None:
        protocol.connectionLost(Failure(ConnectionDone()))

    def peer(self) -> StringTransport:
        """
        A message-port peer of the hub, to see what the API sends it.
        """
        _, transport, _, _ = connect(hub=self.hub, clock=self.clock)
        return transport


class RefuseBeforeReadingTests(ChannelTestCase):
    """
    A request the API will refuse is answered as soon as its headers are in,
    without reading its body, and the connection is closed.
    """

    def test_noTokenHugeBody(self) -> None:
        """A POST without the token declaring 1 GiB is answered 401 at once, with Connection: close."""
        channel, transport = self.open()
        channel.dataReceived(
            b"POST /broadcast HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n"
            + b"x" * 4096
        )
        status, headers, body = response(transport.value())
        self.assertEqual(status, 401)
        self.assertEqual(headers[b"connection"], b"close")
        self.assertIn(b"Bearer", headers[b"www-authenticate"])
        self.assertIn("Authorization", json.loads(body)["error"])
        self.assertTrue(transport.disconnecting)

    def test_noContinueWhenRefused(self) -> None:
        """Expect: 100-continue without the token gets the 401 and never a 100 Continue."""
        channel, transport = self.open()
        channel.dataReceived(
            b"POST /broadcast HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: 10\r\n\r\n"
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 401 "), transport.value())
        self.assertNotIn(b"100 Continue", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_continueWhenAdmitted(self) -> None:
        """With the token and a body it takes, Expect: 100-continue gets 100 Continue, then the answer."""
        peer = self.peer()
        channel, transport = self.open()
        channel.dataReceived(
            b"POST /broadcast HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Expect: 100-continue\r\n"
            b"Content-Length: 5\r\n\r\n"
        )
        self.assertEqual(transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        transport.clear()
        channel.dataReceived(b"hello")
        status, _, body = response(transport.value())
        self.assertEqual((status, json.loads(body)), (200, {"received": 1}))
        self.assertEqual(peer.value(), b"hello\n")
        self.assertFalse(transport.disconnecting)

    def test_declaredTooLarge(self) -> None:
        """With the token, a Content-Length of 200 MB is answered 413 at once, naming --max-message-size."""
        channel, transport = self.open()
        channel.dataReceived(
            b"POST /broadcast HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Content-Length: 200000000\r\n\r\n"
        )
        status, headers, body = response(transport.value())
        self.assertEqual(status, 413)
        self.assertEqual(headers[b"connection"], b"close")
        self.assertEqual(
            json.loads(body)["error"],
            "the message is 200000000 bytes, over --max-message-size 32",
        )
        self.assertTrue(transport.disconnecting)

    def test_chunkedCut(self) -> None:
        """A chunked body is answered 413 as soon as it grows past --max-message-size, and nothing is sent."""
        peer = self.peer()
        channel, transport = self.open()
        chunked = b"POST /broadcast HTTP/1.1\r\nHost: x\r\n" + AUTH + CHUNKED
        channel.dataReceived(chunked + b"14\r\n" + b"a" * 20 + b"\r\n")
        self.assertEqual(transport.value(), b"")
        channel.dataReceived(b"14\r\n" + b"b" * 20 + b"\r\n" + b"14\r\n" + b"c" * 20 + b"\r\n")
        status, headers, body = response(transport.value())
        self.assertEqual(status, 413)
        self.assertEqual(headers[b"connection"], b"close")
        self.assertIn("--max-message-size 32", json.loads(body)["error"])
        self.assertTrue(transport.disconnecting)
        written = transport.value()
        channel.dataReceived(b"14\r\n" + b"d" * 20 + b"\r\n0\r\n\r\n")
        self.assertEqual(transport.value(), written)
        self.assertEqual(peer.value(), b"")

    def test_chunkedWithin(self) -> None:
        """A chunked body within --max-message-size is delivered as one message."""
        peer = self.peer()
        channel, transport = self.open()
        chunked = b"POST /broadcast HTTP/1.1\r\nHost: x\r\n" + AUTH + CHUNKED
        channel.dataReceived(chunked + b"5\r\nhello\r\n6\r\n there\r\n0\r\n\r\n")
        self.assertEqual(response(transport.value())[0], 200)
        self.assertEqual(peer.value(), b"hello there\n")

    def test_neverOnDisk(self) -> None:
        """A body the route takes is kept in memory however large, never in a temporary file."""
        self.site.resource.maxBody = 1 << 20
        channel, transport = self.open()
        channel.dataReceived(
            b"POST /broadcast HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Content-Length: 500000\r\n\r\n"
        )
        [request] = channel.requests
        self.assertIsInstance(request.content, BytesIO)

    def test_bodylessRoute(self) -> None:
        """A body sent to a route that takes none is answered 413 at once."""
        channel, transport = self.open()
        head = b"POST /clients/x/disconnect HTTP/1.1\r\nHost: x\r\n" + AUTH
        channel.dataReceived(head + b"Content-Length: 100000\r\n\r\n")
        status, _, body = response(transport.value())
        self.assertEqual(status, 413)
        self.assertEqual(json.loads(body)["error"], "this route takes no request body")
        self.assertTrue(transport.disconnecting)

    def test_noRouteForBody(self) -> None:
        """A body sent to an unknown path, or with the wrong method, is answered 404 or 405 at once."""
        for line, status in ((b"POST /nowhere", 404), (b"PUT /broadcast", 405)):
            channel, transport = self.open()
            head = line + b" HTTP/1.1\r\nHost: x\r\n" + AUTH
            channel.dataReceived(head + b"Content-Length: 9999\r\n\r\n")
            got, headers, _ = response(transport.value())
            self.assertEqual(got, status, line)
            self.assertTrue(transport.disconnecting)
        self.assertEqual(headers[b"allow"], b"POST")

    def test_publicNeedsNoToken(self) -> None:
        """/healthz and the dashboard page answer without the token and keep the connection open."""
        channel, transport = self.open()
        for path in (b"/healthz", b"/"):
            transport.clear()
            channel.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertEqual(response(transport.value())[0], 200, path)
        self.assertFalse(transport.disconnecting)

    def test_keepAlive(self) -> None:
        """Admitted requests on one connection are all answered, and it stays open."""
        channel, transport = self.open()
        request = b"GET /clients HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n"
        channel.dataReceived(request * 3)
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 3)
        self.assertFalse(transport.disconnecting)

    def test_renderChecksTheToken(self) -> None:
        """render() itself refuses a request without the token, as admit() does."""
        resource = self.site.resource
        request = dummy(b"/clients")
        resource.render(request)
        self.assertEqual(request.responseCode, 401)
        request = dummy(b"/healthz")
        body = resource.render(request)
        assert isinstance(body, bytes)
        self.assertEqual(json.loads(body), {"status": "ok"})

    def test_clientRootNeedsToken(self) -> None:
        """On a client, which has no dashboard page, / is not public: the route table says so."""
        hub = makeHub(self.clock)
        resource = AdminResource({}, makeRegistry(hub), "client", TOKEN, 32)
        request = dummy(b"/")
        resource.render(request)
        self.assertEqual(request.responseCode, 401)


class HeadersDeadlineTests(ChannelTestCase):
    """
    A request's line and headers must arrive within 5 s, however they trickle.
    """

    def test_trickle(self) -> None:
        """A client sending one header byte a second is answered 408 and closed after 5 s."""
        channel, transport = self.open()
        channel.dataReceived(b"GET /healthz HTTP/1.1\r\n")
        with capturedLogs() as events:
            for _ in range(4):
                self.clock.advance(1)
                channel.dataReceived(b"X")
            self.assertFalse(transport.disconnecting)
            self.clock.advance(1)
        self.assertEqual(response(transport.value())[0], 408)
        self.assertTrue(transport.disconnecting)
        [event] = [e for e in events if e.get("event") == "admin-request-timeout"]
        self.assertEqual(event["peer"], f"127.0.0.1:{self.port}")

    def test_idle(self) -> None:
        """A connection that sends nothing is closed after 5 s without an answer or a log line."""
        channel, transport = self.open()
        with capturedLogs() as events:
            self.clock.advance(4.9)
            self.assertFalse(transport.disconnecting)
            self.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        self.assertEqual([e for e in events if "event" in e], [])

    def test_fromLastResponse(self) -> None:
        """On a kept-alive connection the 5 s start again after each response."""
        channel, transport = self.open()
        self.clock.advance(4)
        channel.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(4)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1.1)
        self.assertTrue(transport.disconnecting)

    def test_bodyMayTakeLonger(self) -> None:
        """The deadline is for the headers: a body that keeps coming may take longer."""
        peer = self.peer()
        channel, transport = self.open()
        channel.dataReceived(
            b"POST /broadcast HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Content-Length: 10\r\n\r\n"
        )
        for byte in b"0123456789":
            self.clock.advance(1)
            channel.dataReceived(bytes([byte]))
        self.assertEqual(response(transport.value())[0], 200)
        self.assertEqual(peer.value(), b"0123456789\n")

    def test_stalledBody(self) -> None:
        """A body that stops arriving is closed after the 60 s idle timeout."""
        channel, transport = self.open()
        channel.dataReceived(
            b"POST /broadcast HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Content-Length: 10\r\n\r\nab"
        )
        self.clock.advance(59)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(2)
        self.assertTrue(transport.disconnecting)


class LineLengthTests(ChannelTestCase):
    """
    Over-long request lines and header lines are answered, not just dropped.
    """

    def test_uriTooLong(self) -> None:
        """A request line over 8 KiB is answered 414 and closed, whether or not its end has come."""
        for tail in (b" HTTP/1.1\r\n\r\n", b""):
            channel, transport = self.open()
            channel.dataReceived(b"GET /" + b"a" * 9000 + tail)
            status, headers, body = response(transport.value())
            self.assertEqual(status, 414, tail)
            self.assertEqual(headers[b"connection"], b"close")
            self.assertIn("8192", json.loads(body)["error"])
            self.assertTrue(transport.disconnecting)

    def test_headerTooLong(self) -> None:
        """A header line over 8 KiB is answered 431 and closed."""
        channel, transport = self.open()
        channel.dataReceived(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
        self.assertEqual(response(transport.value())[0], 431)
        self.assertTrue(transport.disconnecting)


class ConnectionCapTests(ChannelTestCase):
    """
    At most --admin-max-connections admin connections are open at once.
    """

    maxConnections = 3

    def test_oneTooMany(self) -> None:
        """One more connection is answered 503, closed and logged; the others are untouched."""
        channels = [self.open() for _ in range(3)]
        with capturedLogs() as events:
            extra, transport = self.open()
        self.assertNotIsInstance(extra, AdminChannel)
        self.assertEqual(response(transport.value())[0], 503)
        self.assertTrue(transport.disconnecting)
        [event] = [e for e in events if e.get("event") == "admin-full"]
        self.assertEqual((event["peer"], event["count"]), (f"127.0.0.1:{self.port}", 3))
        channel, open = channels[0]
        channel.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(response(open.value())[0], 200)

    def test_freedSlot(self) -> None:
        """Once a connection closes, a new one is served again."""
        channels = [self.open() for _ in range(3)]
        self.close(channels[0][0])
        channel, transport = self.open()
        self.assertIsInstance(channel, AdminChannel)
        self.assertEqual(len(self.site.channels), 3)

    def test_siteType(self) -> None:
        """makeAdminSite builds an AdminSite that offers HTTP/1.1 only."""
        self.assertIsInstance(self.site, AdminSite)
        self.assertEqual(self.site.acceptableProtocols(), [b"http/1.1"])
