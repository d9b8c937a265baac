"""
The server side's services: listeners that say where they listen, and a
service that closes every peer when the server stops.
"""

from __future__ import annotations

from typing import Any

from twisted.application import strports
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

from tcpcomm.registry import PeerRegistry, tcpAddress

log = Logger()


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
                address=tcpAddress(port.getHost()) or port.getHost(),
                description=self._description,
            )
            return port

        return self._endpoint.listen(factory).addCallback(announce)


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
        log.info("closing {count} connection(s)", count=len(self._registry))
        for peer in self._registry:
            peer.close()
        empty = self._registry.whenEmpty()
        deadline = self._clock.callLater(self._timeout, self._abortRemaining)
        return empty.addCallback(lambda _: deadline.cancel() if deadline.active() else None)

    def _abortRemaining(self) -> None:
        log.warn(
            "aborting {count} connection(s) still open after {timeout} s",
            count=len(self._registry),
            timeout=self._timeout,
        )
        for peer in self._registry:
            peer.abort()


def makeServerService(
    listen: list[str],
    factory: IProtocolFactory,
    registry: PeerRegistry,
    reactor: Any,
    shutdownTimeout: float,
) -> MultiService:
    """
    Listen on each endpoint description with C{factory}; closing peers is
    added first so that it runs after every listener has stopped accepting.
    """
    top = MultiService()
    DisconnectAllService(registry, reactor, shutdownTimeout).setServiceParent(top)
    for description in listen:
        # strports.service fails loudly (and twistd exits non-zero) when the
        # port is busy; a bare StreamServerEndpointService would not.
        listener = strports.service(description, factory, reactor=reactor)
        listener.endpoint = AnnouncingEndpoint(listener.endpoint, description)
        listener.setServiceParent(top)
    return top
