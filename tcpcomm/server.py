"""
The server side's services: listeners that fail loudly and say where they
listen, and a service that closes every peer when the server stops.
"""

from __future__ import annotations

import socket

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from zope.interface import implementer

from tcpcomm.descriptors import DescriptorBudget, FileLimit
from tcpcomm.hub.registry import PeerRegistry
from tcpcomm.wire.address import addressText
from tcpcomm.wire.protocol import MessageFactory

log = Logger()

SOMAXCONN_PATH = "/proc/sys/net/core/somaxconn"


def systemBacklog(path: str = SOMAXCONN_PATH) -> int:
    """
    The longest queue of connections not yet accepted that the system
    allows: Linux's C{net.core.somaxconn} (which caps any larger
    C{listen()} backlog), elsewhere the C{SOMAXCONN} Python was built with.
    Thousands of clients reconnecting at once overflow a short queue, and
    each one dropped waits for its SYN to be sent again, 1, 3, 7, 15 s on.
    """
    try:
        with open(path, encoding="ascii") as f:
            return max(1, int(f.read()))
    except (OSError, ValueError):
        return socket.SOMAXCONN


@implementer(IStreamServerEndpoint)
class AnnouncingEndpoint:
    """
    A server endpoint that logs the address it ends up listening on, which
    for port 0 is the only place a user learns the port.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, description: str) -> None:
        self._endpoint = endpoint
        self._description = description

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        def announce(port: IListeningPort) -> IListeningPort:
            log.info(
                "listening on {address} ({description})",
                event="listening",
                address=addressText(port.getHost()),
                description=self._description,
            )
            return port

        return self._endpoint.listen(factory).addCallback(announce)


def listeningService(
    endpoint: IStreamServerEndpoint, description: str, factory: IProtocolFactory
) -> StreamServerEndpointService:
    """
    A service that listens on C{endpoint} when it starts, and raises at once
    if it cannot, as C{strports.service} does: a bare
    L{StreamServerEndpointService} would only log the error, and a
    daemonized twistd would exit 0 without listening.
    """
    service = StreamServerEndpointService(AnnouncingEndpoint(endpoint, description), factory)
    service._raiseSynchronously = True  # a documented ivar; what strports.service sets
    return service


class DisconnectAllService(Service):
    """
    On stop, close every connected peer cleanly and abort those still there
    after C{timeout} seconds, so that stopping never hangs on a peer that
    does not read.
    """

    def __init__(self, registry: PeerRegistry, clock: IReactorTime, timeout: float) -> None:
        self._registry = registry
        self._clock = clock
        self._timeout = timeout

    def stopService(self) -> Deferred[None] | None:
        Service.stopService(self)
        if not self._registry:
            return None
        log.info("closing {count} connection(s)", event="closing", count=len(self._registry))
        for peer in self._registry:
            peer.close()
        empty = self._registry.whenEmpty()
        deadline = self._clock.callLater(self._timeout, self._abortRemaining)
        return empty.addCallback(lambda _: deadline.cancel() if deadline.active() else None)

    def _abortRemaining(self) -> None:
        log.warn(
            "aborting {count} connection(s) still open after {timeout} s",
            event="aborting",
            count=len(self._registry),
            timeout=self._timeout,
        )
        for peer in self._registry:
            peer.abort()


class ServerService(MultiService):
    """
    The server's services, with its message listeners named, so that a
    drain can stop listening and leave the rest (the admin API) running.
    """

    def __init__(self) -> None:
        super().__init__()
        self.listeners: list[StreamServerEndpointService] = []


def makeServerService(
    listeners: list[tuple[IStreamServerEndpoint, str]],
    factory: MessageFactory,
    registry: PeerRegistry,
    clock: IReactorTime,
    shutdownTimeout: float,
    adminConnections: int = 0,
    fileLimit: FileLimit | None = None,
) -> ServerService:
    """
    Listen on each C{(endpoint, description)} with C{factory}, within the
    file descriptors C{fileLimit} allows beside C{adminConnections}. Closing
    peers is added before the listeners so that it runs after every one of
    them has stopped accepting.
    """
    top = ServerService()
    DescriptorBudget(factory, adminConnections, fileLimit).setServiceParent(top)
    DisconnectAllService(registry, clock, shutdownTimeout).setServiceParent(top)
    for endpoint, description in listeners:
        listener = listeningService(endpoint, description, factory)
        listener.setServiceParent(top)
        top.listeners.append(listener)
    return top
