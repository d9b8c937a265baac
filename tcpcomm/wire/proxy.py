"""
C{--proxy-protocol}: the PROXY header (v1 or v2) that HAProxy sends first on
every connection, read before the connection is handed on.

Twisted's C{proxyEndpoint} starts the protocol it wraps as soon as the
connection is made, before the header has arrived (Twisted issue 12501), so
the session would be made, registered and logged under HAProxy's address.
Here nothing is built until the header is whole: then the wrapped factory
builds its protocol for the real client address, the transport answers
C{getPeer} with that address (so ids, logs, the admin API and a TLS layer
above all see it), and the transport hands its reads to that protocol
directly. Past the header the connection is exactly what it is without
C{--proxy-protocol}: no call is added to any read or write.

The header is parsed by Twisted's own parsers
(L{twisted.protocols.haproxy}); this module only gathers its bytes however
they are split across reads, since those parsers' C{feed} assumes a v2
header's first 16 bytes come in one read.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.haproxy._exceptions import (
    InvalidNetworkProtocol,
    InvalidProxyHeader,
    MissingAddressData,
)
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from tcpcomm.interfaces import IStats
from tcpcomm.logs import RateLimiter
from tcpcomm.wire.address import addressText

log = Logger(namespace="tcpcomm.proxy")

#: The longest v1 header, its CRLF included (the PROXY protocol's own limit).
V1_MAX = 107
_V1_SIGNATURE = b"PROXY "
_V2_SIGNATURE = V2Parser.PREFIX


class BadHeader(Exception):
    """
    The bytes a connection began with are not a PROXY header; the message
    says why.
    """


@dataclass(frozen=True)
class Header:
    """
    A whole PROXY header: the client's address (L{None} for a LOCAL header,
    HAProxy's own health check, or one that names no address), and the bytes
    that followed it.
    """

    source: IAddress | None
    rest: bytes


def _checkedSource(source: IAddress | None) -> IAddress | None:
    """
    C{source} with its host checked and written the usual way (v2 gives
    IPv6 hosts uncompressed, v1 takes any word).
    """
    if not isinstance(source, (IPv4Address, IPv6Address)):
        return source
    try:
        host = ipaddress.ip_address(source.host)
    except ValueError:
        raise BadHeader(f"source address {source.host!r} is not an IP address") from None
    if (host.version == 4) != isinstance(source, IPv4Address):
        raise BadHeader(f"source address {source.host!r} is not of the family the header names")
    if not 0 <= source.port <= 65535:
        raise BadHeader(f"source port {source.port} is out of range")
    return type(source)(source.type, host.compressed, source.port)


def parseHeader(data: bytes | bytearray) -> Header | None:
    """
    The PROXY header that C{data} (all a connection has sent so far) begins
    with, or L{None} while it may still become one.

    @raise BadHeader: C{data} cannot begin with a valid header.
    """
    if len(data) < len(_V2_SIGNATURE) and _V2_SIGNATURE.startswith(data):
        return None
    if len(data) < len(_V1_SIGNATURE) and _V1_SIGNATURE.startswith(data):
        return None
    try:
        if data.startswith(_V2_SIGNATURE):
            return _parseV2(data)
        if data.startswith(_V1_SIGNATURE):
            return _parseV1(data)
    except InvalidNetworkProtocol:
        raise BadHeader("a PROXY header with an unknown protocol or address family") from None
    except MissingAddressData:
        raise BadHeader("a PROXY header without all its addresses and ports") from None
    except (InvalidProxyHeader, ValueError, KeyError):
        raise BadHeader("not a valid PROXY header") from None
    raise BadHeader("not a PROXY header")


def _parseV1(data: bytes | bytearray) -> Header | None:
    end = data.find(b"\r\n")
    if end < 0:
        if len(data) >= V1_MAX:
            raise BadHeader(f"no end of line in the first {V1_MAX} bytes of a PROXY v1 header")
        return None
    if end + 2 > V1_MAX:
        raise BadHeader(f"PROXY v1 header longer than {V1_MAX} bytes")
    line = bytes(data[:end])
    if line == b"PROXY UNKNOWN" or line.startswith(b"PROXY UNKNOWN "):
        # Twisted's parser wants fields after UNKNOWN, which the protocol
        # does not require (and which say nothing: the source is unknown).
        return Header(None, bytes(data[end + 2 :]))
    info = V1Parser.parse(line)
    return Header(_checkedSource(info.source), bytes(data[end + 2 :]))


def _parseV2(data: bytes | bytearray) -> Header | None:
    if len(data) < 16:
        return None
    if data[12] & 0xF0 != 0x20:
        raise BadHeader(f"PROXY v2 signature with version {data[12] >> 4}, not 2")
    size = 16 + int.from_bytes(data[14:16], "big")
    if len(data) < size:
        return None
    info = V2Parser.parse(bytes(data[:size]))
    local = data[12] & 0x0F == 0
    source = None if local else _checkedSource(info.source)
    return Header(source, bytes(data[size:]))


class ProxyHeaderProtocol(Protocol):
    """
    A connection until its PROXY header is whole: then it builds the wrapped
    factory's protocol for the real address and steps out of the way.
    """

    factory: ProxyHeaderFactory
    _deadline: IDelayedCall | None = None
    #: The protocol the connection was handed to, once the header was read.
    inner: IProtocol | None = None
    _done: bool = False

    def __init__(self) -> None:
        self._buffer = bytearray()

    def connectionMade(self) -> None:
        timeout = self.factory.timeout()
        if timeout > 0:
            self._deadline = self.factory.clock.callLater(timeout, self._timedOut, timeout)

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)  # only where the transport could not be handed on
            return
        if self._done:
            return
        self._buffer += data
        try:
            header = parseHeader(self._buffer)
        except BadHeader as e:
            self._refuse(str(e))
            return
        if header is not None:
            self._finish()
            self._handOn(header)

    def _handOn(self, header: Header) -> None:
        transport = self.transport
        assert transport is not None
        source = header.source
        if source is None:
            # HAProxy's health check (LOCAL): nothing to serve, nothing to log.
            transport.loseConnection()
            return
        inner = self.factory.wrappedFactory.buildProtocol(source)
        if inner is None:
            transport.loseConnection()
            return
        transport.getPeer = lambda: source  # type: ignore[method-assign]
        if getattr(transport, "protocol", None) is self:
            # A reactor's connection: it reads its protocol anew for every
            # read, so from now on its reads go straight to the new one.
            transport.protocol = inner  # type: ignore[attr-defined]
            if hasattr(transport, "logstr"):
                transport.logstr = transport.logstr.replace(
                    type(self).__name__, type(inner).__name__, 1
                )
        else:
            self.inner = inner
        inner.makeConnection(transport)
        if header.rest and not getattr(transport, "disconnecting", False):
            inner.dataReceived(header.rest)

    def _finish(self) -> None:
        """
        Reading the header is over, whichever way it ended.
        """
        self._stopDeadline()
        self._done = True
        self._buffer = bytearray()
        self.factory.waiting.pop(self, None)

    def evict(self) -> None:
        """
        Drop this connection, still without its header, to make room.
        """
        self._finish()
        assert self.transport is not None
        self.transport.abortConnection()  # type: ignore[attr-defined]

    def _refuse(self, why: str) -> None:
        self._finish()
        transport = self.transport
        assert transport is not None
        factory = self.factory
        if factory.refusedLines.allow():
            log.warn(
                "refusing {peer}: {why} (--proxy-protocol)",
                event="proxy-refused",
                peer=addressText(transport.getPeer()),
                why=why,
            )
        transport.abortConnection()  # type: ignore[attr-defined]

    def _timedOut(self, timeout: float) -> None:
        self._deadline = None
        self._finish()
        transport = self.transport
        assert transport is not None
        factory = self.factory
        if factory.stats is not None:
            factory.stats.handshakeTimeouts += 1
        transport.abortConnection()  # type: ignore[attr-defined]
        if factory.handshakeLines.allow():
            log.warn(
                "disconnecting {peer}: the PROXY header did not arrive within {timeout} s "
                "(--handshake-timeout)",
                event="handshake-timeout",
                peer=addressText(transport.getPeer()),
                waitingFor="the PROXY header",
                timeout=timeout,
            )

    def _stopDeadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._finish()
        if self.inner is not None:
            self.inner.connectionLost(reason)


#: What a listener holds and allows: the connections that count against
#: C{--max-connections} (clients, and those in their TLS handshake), and that
#: limit (L{None}: none).
Occupancy = Callable[[], tuple[int, "int | None"]]


class ProxyHeaderFactory(Factory[ProxyHeaderProtocol]):
    """
    Wraps a listener's factory: each connection reads its PROXY header within
    C{timeout()} seconds (0: no limit; read at each connection, so a reload
    of C{--handshake-timeout} counts) before C{wrappedFactory} sees it.

    A connection still without its header holds a file descriptor, as one in
    its TLS handshake does, and is treated the same: with C{occupancy}, when
    the server is full a new connection takes the place of the oldest one
    still waiting for its header, so that peers that connect and say nothing
    cannot use up the descriptors clients need.
    """

    protocol = ProxyHeaderProtocol
    noisy = False

    def __init__(
        self,
        wrappedFactory: IProtocolFactory,
        clock: IReactorTime,
        timeout: Callable[[], float],
        stats: IStats | None = None,
        occupancy: Occupancy | None = None,
    ) -> None:
        self.wrappedFactory = wrappedFactory
        self.clock = clock
        self.timeout = timeout
        self.stats = stats
        self.occupancy = occupancy
        #: Connections still reading their header, oldest first.
        self.waiting: dict[ProxyHeaderProtocol, None] = {}
        #: At most one line per 10 s for each kind a storm can repeat.
        self.refusedLines = RateLimiter(
            "proxy-refused", "connections without a valid PROXY header", clock
        )
        self.handshakeLines = RateLimiter(
            "handshake-timeout", "connections whose PROXY header did not arrive in time", clock
        )

    def buildProtocol(self, addr: IAddress | None) -> ProxyHeaderProtocol:
        if self.waiting and self.occupancy is not None:
            held, limit = self.occupancy()
            if limit is not None and held + len(self.waiting) >= limit:
                self._evictOldest(limit)
        protocol = ProxyHeaderProtocol()
        protocol.factory = self
        self.waiting[protocol] = None
        return protocol

    def _evictOldest(self, limit: int) -> None:
        oldest = next(iter(self.waiting))
        transport = oldest.transport
        oldest.evict()
        if self.stats is not None:
            self.stats.handshakeEvictions += 1
        if transport is None or not self.handshakeLines.allow():
            return
        log.warn(
            "disconnecting {peer} to make room: --max-connections {limit} reached, and it "
            "is the oldest connection still waiting for {waitingFor}",
            event="handshake-evicted",
            peer=addressText(transport.getPeer()),
            limit=limit,
            waitingFor="the PROXY header",
        )

    def doStart(self) -> None:
        self.wrappedFactory.doStart()
        super().doStart()

    def doStop(self) -> None:
        super().doStop()
        self.wrappedFactory.doStop()

    def logPrefix(self) -> str:
        return "PROXY"


@implementer(IStreamServerEndpoint)
class ProxyHeaderEndpoint:
    """
    A server endpoint whose connections begin with a PROXY header; with
    C{tls}, TLS (server side, C{tls} its context factory) follows the header,
    which HAProxy in TCP passthrough sends in clear before the client's
    handshake. (Twisted's C{haproxy:ssl:} strings nest the other way round,
    TLS outside the header: Twisted issue 9041.)
    """

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        clock: IReactorTime,
        timeout: Callable[[], float],
        stats: IStats | None = None,
        tls: Any = None,
        occupancy: Occupancy | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._clock = clock
        self._timeout = timeout
        self._stats = stats
        self._tls = tls
        self._occupancy = occupancy

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        wrapped = factory
        if self._tls is not None:
            wrapped = TLSMemoryBIOFactory(self._tls, False, factory)
        return self._endpoint.listen(
            ProxyHeaderFactory(wrapped, self._clock, self._timeout, self._stats, self._occupancy)
        )
