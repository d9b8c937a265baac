"""
The twistd entry point: L{Options} and L{makeService}, which only builds
endpoints, factories and services. Nothing listens, connects or starts a
timer here: twistd may fork after this returns, so all of that happens when
the services start.
"""

from __future__ import annotations

import importlib.resources
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.endpoints import (
    HostnameEndpoint,
    SSL4ServerEndpoint,
    clientFromString,
    serverFromString,
    wrapClientTLS,
)
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint, IStreamServerEndpoint

from tcpcomm.admin import Outgoing, makeAdminSite
from tcpcomm.client import ClientFactory, ClientStatus, RetryPolicy, makeClientService
from tcpcomm.framing import FRAMINGS
from tcpcomm.hub import Hub, Texts
from tcpcomm.metrics import makeRegistry
from tcpcomm.options import ClientOptions, Options, ServerOptions
from tcpcomm.protocol import Limits, MessageFactory
from tcpcomm.server import listeningService, makeServerService

__all__ = ["Options", "makeService"]

DASHBOARD = importlib.resources.files("tcpcomm").joinpath("dashboard.html")


def makeHub(options: ServerOptions | ClientOptions, clock: IReactorTime, client: bool) -> Hub:
    """
    The hub of one side: its texts and its handler.
    """
    texts = Texts(
        encoding=options["encoding"],
        replyDelay=options["reply-delay"],
        reply=options["reply"],
        errorReply=options["error-reply"],
        greeting=options["greeting"] if client else None,
        fullReply=None if client else options["full-reply"],
    )
    return Hub(clock, texts, options["handler"], logMessages=not options["no-message-log"])


def makeLimits(options: ServerOptions | ClientOptions, client: bool) -> Limits:
    """
    What the side allows its peers.
    """
    return Limits(
        maxMessageSize=options["max-message-size"],
        maxPendingBytes=options["max-pending-bytes"],
        maxConnections=None if client else options["max-connections"],
        idleTimeout=options["idle-timeout"],
        messageTimeout=options["message-timeout"],
        heartbeat=options["heartbeat"],
        keepalive=options["keepalive"],
    )


def makeServer(options: ServerOptions, reactor: Any) -> MultiService:
    """
    The server: its listeners, and the hub of its peers.
    """
    hub = makeHub(options, reactor, client=False)
    factory = MessageFactory(FRAMINGS[options["framing"]], hub, makeLimits(options, client=False))
    top = makeServerService(
        serverEndpoints(options, reactor),
        factory,
        hub.registry,
        reactor,
        options["shutdown-timeout"],
        adminConnections(options),
    )
    addAdmin(top, options, hub, reactor)
    return top


def adminConnections(options: ServerOptions) -> int:
    """
    How many connections the admin API may hold open at once, for the
    descriptor budget: none without C{--admin}.
    """
    if options["admin"] is None:
        return 0
    return int(options.get("admin-max-connections", 64))


def addAdmin(
    top: MultiService,
    options: ServerOptions | ClientOptions,
    hub: Hub,
    reactor: Any,
    status: ClientStatus | None = None,
) -> None:
    """
    Serve the admin API on C{--admin}, if given.
    """
    description = options["admin"]
    if description is None:
        return
    site = makeAdminSite(
        hub,
        makeRegistry(hub, status),
        Outgoing(options["encoding"], options["framing"], options["max-message-size"]),
        reactor,
        options["admin-token"],
        status,
        dashboard=None if status is not None else DASHBOARD.read_bytes(),
    )
    endpoint = serverFromString(reactor, description)
    listeningService(endpoint, f"admin API {description}", site).setServiceParent(top)


def serverEndpoints(
    options: ServerOptions, reactor: Any
) -> list[tuple[IStreamServerEndpoint, str]]:
    """
    Each endpoint the server listens on, with the description to log it by.
    """
    if options["tls"] is not None:
        port, backlog, interface = options["port"], options["backlog"], options["interface"]
        endpoint = SSL4ServerEndpoint(reactor, port, options["tls"], backlog, interface)
        mutual = " with client certificates" if options["tls-client-ca"] else ""
        return [(endpoint, f"TLS{mutual} on port {port}")]
    return [(serverFromString(reactor, d), d) for d in options.listenDescriptions()]


def makeClient(options: ClientOptions, reactor: Any) -> MultiService:
    """
    The client: one connection kept up by a L{ClientService}.
    """
    endpoint: IStreamClientEndpoint
    if options["connect"] is not None:
        description = options["connect"]
        endpoint = clientFromString(reactor, description)
    else:
        host, port = options["host"], options["port"]
        description = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        endpoint = HostnameEndpoint(
            reactor, host, port, timeout=options["timeout"], bindAddress=options["bind-address"]
        )
        if options["tls-creator"] is not None:
            endpoint = wrapClientTLS(options["tls-creator"], endpoint)
            description = f"tls:{description}"
    policy = RetryPolicy(
        reactor, options["retry-initial"], options["retry-max"], options["retry-reset"]
    )
    hub = makeHub(options, reactor, client=True)
    status = ClientStatus(description)
    factory = ClientFactory(
        FRAMINGS[options["framing"]], hub, makeLimits(options, client=True), policy, status
    )
    top = MultiService()
    makeClientService(endpoint, factory, reactor).setServiceParent(top)
    addAdmin(top, options, hub, reactor, status)
    return top


def makeService(options: Options, reactor: Any = None) -> MultiService:
    """
    Build the server or client that C{options} describe.
    """
    if reactor is None:
        from twisted.internet import reactor
    if options.subCommand == "server":
        return makeServer(options.subOptions, reactor)
    return makeClient(options.subOptions, reactor)
