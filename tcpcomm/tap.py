"""
The twistd entry point: L{Options} and L{makeService}, which only builds
endpoints, factories and services. Nothing listens, connects or starts a
timer here: twistd may fork after this returns, so all of that happens when
the services start.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from twisted.application.service import MultiService
from twisted.internet.endpoints import (
    HostnameEndpoint,
    SSL4ServerEndpoint,
    TCP4ServerEndpoint,
    clientFromString,
    serverFromString,
    wrapClientTLS,
)
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint, IStreamServerEndpoint

from tcpcomm.client import ClientFactory, ClientStatus, RetryPolicy, makeClientService
from tcpcomm.control.admin import AdminResource, Outgoing, makeAdminSite
from tcpcomm.control.metrics import makeRegistry
from tcpcomm.drain import Drain
from tcpcomm.hub.hub import Hub
from tcpcomm.hub.identity import HelloIdentity, tlsIdentity
from tcpcomm.hub.queues import Queues, QueueService
from tcpcomm.logs import loggedByTcpcomm
from tcpcomm.messagelog import MessageLog
from tcpcomm.options import ClientOptions, Options, ServerOptions
from tcpcomm.reload import (
    Live,
    ReloadableClientTLS,
    ReloadableServerTLS,
    Reloader,
    ReloadService,
    describeCertificate,
)
from tcpcomm.server import listeningService, makeServerService
from tcpcomm.templates import Texts
from tcpcomm.wire.framing import FRAMINGS
from tcpcomm.wire.protocol import Limits, MessageFactory
from tcpcomm.wire.proxy import ProxyHeaderEndpoint

if TYPE_CHECKING:
    from tcpcomm.fleet.backplane import Backplane

__all__ = ["Options", "makeService"]

DASHBOARD = importlib.resources.files("tcpcomm.control").joinpath("dashboard.html")


def makeTexts(options: Mapping[str, Any], client: bool) -> Texts:
    """
    What the side says.
    """
    return Texts(
        encoding=options["encoding"],
        replyDelay=options["reply-delay"],
        reply=options["reply"],
        errorReply=options["error-reply"],
        greeting=options["greeting"] if client else None,
        fullReply=None if client else options["full-reply"],
    )


def makeHub(
    options: ServerOptions | ClientOptions,
    clock: IReactorTime,
    client: bool,
    messageLog: MessageLog | None = None,
) -> Hub:
    """
    The hub of one side: its texts, its handler and its message log.
    """
    texts = makeTexts(options, client)
    return Hub(
        clock,
        texts,
        options["handler"],
        logMessages=not options["no-message-log"],
        messageLog=messageLog,
    )


def makeLimits(options: Mapping[str, Any], client: bool) -> Limits:
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
        heartbeatTimeout=options["heartbeat-timeout"],
        keepalive=options["keepalive"],
        handshakeTimeout=options["handshake-timeout"],
    )


def makeReloader(
    options: ServerOptions | ClientOptions,
    hub: Hub,
    factory: MessageFactory,
    reactor: Any,
    client: bool,
) -> Reloader:
    """
    What a reload changes on either side: texts for new messages, limits
    for new connections, whether messages are logged. Whatever else the
    options feed is added where it is built.
    """
    reloader = Reloader(options, reactor)
    reloader.add(Live("texts", partial(makeTexts, client=client), partial(setattr, hub, "texts")))
    reloader.add(Live("limits", partial(makeLimits, client=client), factory.setLimits))
    reloader.add(
        Live(
            "message log",
            lambda o: not o["no-message-log"],
            partial(setattr, hub, "logMessages"),
        )
    )
    return reloader


def _tlsFile(name: str) -> bool:
    """
    Whether option C{name} feeds the TLS settings that C{postOptions}
    builds from files (C{--tls-cert}, C{--tls-key}, ...).
    """
    return name.startswith("tls-")


def _useTLS(tls: ReloadableServerTLS | ReloadableClientTLS, new: Any) -> str | None:
    """
    Put new TLS settings in place; TLS that the options now turn off stays
    on until a restart, since the listener or endpoint was built for it.
    """
    if new is None:
        return "turning TLS off"
    tls.current = new
    return None


def _liveTLS(
    name: str,
    option: str,
    tls: ReloadableServerTLS | ReloadableClientTLS,
    describe: Callable[[Any], str],
    keeps: tuple[str, ...] = (),
) -> Live:
    """
    The TLS settings that C{option} holds, built from files: read again on
    every reload, whether or not an option changed, and put in place in
    C{tls} for the next handshakes.
    """
    return Live(
        name,
        lambda o: o[option],
        partial(_useTLS, tls),
        sources=_tlsFile,
        always=True,
        describe=describe,
        keeps=keeps,
    )


def addReloadService(top: MultiService, reloader: Reloader, reactor: Any) -> None:
    """
    Reload on SIGHUP, where the reactor can be called from a signal handler
    (a test's memory reactor cannot).
    """
    ReloadService(reloader, getattr(reactor, "callFromThread", None)).setServiceParent(top)


def makeServer(
    options: ServerOptions, reactor: Any, messageLog: MessageLog | None = None
) -> MultiService:
    """
    The server: its listeners, and the hub of its peers.
    """
    hub = makeHub(options, reactor, client=False, messageLog=messageLog)
    factory = MessageFactory(FRAMINGS[options["framing"]], hub, makeLimits(options, client=False))
    reloader = makeReloader(options, hub, factory, reactor, client=False)
    addIdentity(options, hub, reloader)
    tls = None
    if options["tls"] is not None:
        tls = ReloadableServerTLS(options["tls"])
        reloader.add(_liveTLS("TLS certificate", "tls", tls, describeCertificate))
    reloader.notes += [
        f"--listen {d!r} (an ssl: endpoint reads its certificate at start only)"
        for d in options["listen"]
        if d.startswith("ssl:")
    ]
    top = makeServerService(
        serverEndpoints(options, reactor, tls, factory),
        factory,
        hub.registry,
        reactor,
        options["shutdown-timeout"],
        adminConnections(options),
    )
    hub.queues = makeQueues(options, reactor)
    QueueService(hub.queues).setServiceParent(top)
    drain = Drain(hub.registry, top.listeners, reactor, options["drain-period"], reactor.stop)
    drain.setServiceParent(top)
    reloader.add(
        Live("drain period", lambda o: o["drain-period"], partial(setattr, drain, "period"))
    )
    backplane = addBackplane(top, options, hub, reactor)
    addAdmin(top, options, hub, reactor, reloader, drain=drain, backplane=backplane)
    addReloadService(top, reloader, reactor)
    return top


def addBackplane(
    top: MultiService, options: ServerOptions, hub: Hub, reactor: Any
) -> Backplane | None:
    """
    Join the fleet of C{--backplane}, if given: the L{Backplane}, or L{None}.
    """
    address = options["backplane-address"]
    if address is None:
        return None
    # Imported only for a fleet: the Redis client imports the reactor.
    from tcpcomm.fleet.backplane import Backplane, backplaneService
    from tcpcomm.fleet.node import FleetNode

    backplane = Backplane(
        reactor,
        address,
        options["node-name"],
        options["backplane-prefix"],
        options["backplane-ttl"],
        named=options["client-id"] != "address",
    )
    hub.fleet = FleetNode(hub, backplane, hub.replacedElsewhere)
    backplaneService(backplane, reactor).setServiceParent(top)
    return backplane


def makeQueues(options: ServerOptions, reactor: Any) -> Queues:
    """
    The messages that wait for clients that are away: in the SQLite file of
    C{--queue-dir}, or in memory.
    """
    store = None
    if options["queue-database"] is not None:
        from tcpcomm.hub.queuestore import SQLiteStore

        store = SQLiteStore(options["queue-database"], reactor)
    return Queues(
        reactor,
        store,
        options["queue-max-messages"],
        options["queue-max-bytes"],
        options["queue-total-bytes"],
    )


def addIdentity(options: ServerOptions, hub: Hub, reloader: Reloader) -> None:
    """
    How the server's clients are known (C{--client-id}); with C{hello},
    C{--hello-timeout} and C{--client-tokens} are reloaded, and a reload
    disconnects the clients whose token went.
    """
    if options["client-id"] == "tls":
        hub.identify = tlsIdentity
    if options["client-id"] != "hello":
        return
    identity = HelloIdentity(hub, options["hello-timeout"], options["client-token-table"])
    hub.identify = identity
    reloader.add(
        Live("hello timeout", lambda o: o["hello-timeout"], partial(setattr, identity, "timeout"))
    )
    reloader.add(
        Live(
            "client tokens",
            lambda o: o["client-token-table"],
            identity.setTokens,
            sources=lambda name: name == "client-tokens",
        )
    )


def _useOutgoing(outgoing: Outgoing, resource: AdminResource, settings: tuple[str, int]) -> None:
    outgoing.encoding, outgoing.maxMessageSize = settings
    resource.maxBody = outgoing.maxMessageSize


def adminConnections(options: ServerOptions) -> int:
    """
    How many connections the admin API may hold open at once, for the
    descriptor budget: none without C{--admin}.
    """
    if options["admin"] is None:
        return 0
    return int(options["admin-max-connections"])


def addAdmin(
    top: MultiService,
    options: ServerOptions | ClientOptions,
    hub: Hub,
    reactor: Any,
    reloader: Reloader,
    status: ClientStatus | None = None,
    drain: Drain | None = None,
    backplane: Backplane | None = None,
) -> None:
    """
    Serve the admin API on C{--admin}, if given; a server's can start its
    C{drain}, and with C{backplane} sees and reaches the whole fleet.
    """
    description = options["admin"]
    if description is None:
        return
    outgoing = Outgoing(options["encoding"], options["framing"], options["max-message-size"])
    site = makeAdminSite(
        hub,
        makeRegistry(hub, status, reloader.status, drain, backplane),
        outgoing,
        reactor,
        options["admin-token"],
        status,
        dashboard=None if status is not None else DASHBOARD.read_bytes(),
        maxConnections=options["admin-max-connections"],
        reloads=reloader.status,
        drain=drain,
        backplane=backplane,
    )
    resource = cast(AdminResource, site.resource)
    reloader.add(
        Live(
            "admin token",
            lambda o: o["admin-token"],
            resource.setToken,
            sources=lambda name: name == "admin-token-file",
        )
    )
    reloader.add(
        Live(
            "admin messages",
            lambda o: (o["encoding"], o["max-message-size"]),
            partial(_useOutgoing, outgoing, resource),
        )
    )
    endpoint = serverFromString(reactor, description)
    listeningService(endpoint, f"admin API {description}", site).setServiceParent(top)


def serverEndpoints(
    options: ServerOptions,
    reactor: Any,
    tls: ReloadableServerTLS | None = None,
    factory: MessageFactory | None = None,
) -> list[tuple[IStreamServerEndpoint, str]]:
    """
    Each endpoint the server listens on, with the description to log it by;
    C{tls} holds the TLS settings of C{--tls-cert}, which a reload replaces.
    With C{--proxy-protocol} every one reads the PROXY header first, within
    the C{--handshake-timeout} of C{factory}'s current limits.
    """
    proxy = options["proxy-protocol"]

    def behindProxy(endpoint: IStreamServerEndpoint, context: Any = None) -> ProxyHeaderEndpoint:
        if factory is None:
            fixed = options["handshake-timeout"]
            return ProxyHeaderEndpoint(endpoint, reactor, lambda: fixed, tls=context)
        return ProxyHeaderEndpoint(
            endpoint,
            reactor,
            lambda: factory.limits.handshakeTimeout,
            factory.stats,
            tls=context,
            occupancy=lambda: (
                factory.side.connectionCount() + len(factory.waiting),
                factory.connectionLimit,
            ),
        )

    if options["tls"] is not None:
        port, backlog, interface = options["port"], options["backlog"], options["interface"]
        context = tls if tls is not None else options["tls"]
        mutual = " with client certificates" if options["tls-client-ca"] else ""
        if proxy:
            tcp = TCP4ServerEndpoint(reactor, port, backlog, interface)
            return [(behindProxy(tcp, context), f"TLS{mutual} on port {port}, PROXY header first")]
        endpoint = SSL4ServerEndpoint(reactor, port, context, backlog, interface)
        return [(endpoint, f"TLS{mutual} on port {port}")]
    if proxy:
        return [
            (behindProxy(serverFromString(reactor, d)), f"{d}, PROXY header first")
            for d in options.listenDescriptions()
        ]
    return [(serverFromString(reactor, d), d) for d in options.listenDescriptions()]


def _helloBytes(options: Mapping[str, Any]) -> bytes | None:
    """
    The client's hello (C{--name}, C{--token-file}), encoded, or L{None}.
    """
    hello = options["hello"]
    return None if hello is None else hello.encode(options["encoding"])


def makeClient(
    options: ClientOptions, reactor: Any, messageLog: MessageLog | None = None
) -> MultiService:
    """
    The client: one connection kept up by a L{ClientService}.
    """
    endpoint: IStreamClientEndpoint
    tls = None
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
            tls = ReloadableClientTLS(options["tls-creator"])
            endpoint = wrapClientTLS(tls, endpoint)
            description = f"tls:{description}"
    policy = RetryPolicy(
        reactor, options["retry-initial"], options["retry-max"], options["retry-reset"]
    )
    hub = makeHub(options, reactor, client=True, messageLog=messageLog)
    status = ClientStatus(description)
    factory = ClientFactory(
        FRAMINGS[options["framing"]], hub, makeLimits(options, client=True), policy, status
    )
    reloader = makeReloader(options, hub, factory, reactor, client=True)
    hub.hello = _helloBytes(options)
    reloader.add(
        Live(
            "hello",
            _helloBytes,
            partial(setattr, hub, "hello"),
            sources=lambda name: name in ("name", "token-file"),
        )
    )
    if tls is not None:
        reloader.add(
            _liveTLS(
                "TLS settings",
                "tls-creator",
                tls,
                lambda creator: "TLS settings (for the next connection)",
                keeps=("host",),
            )
        )
    connect = options["connect"] or ""
    if connect.startswith(("ssl:", "tls:")):
        reloader.notes.append(f"--connect {connect!r} (its TLS settings are read at start only)")
    top = MultiService()
    makeClientService(endpoint, factory, reactor).setServiceParent(top)
    addAdmin(top, options, hub, reactor, reloader, status)
    addReloadService(top, reloader, reactor)
    return top


def makeService(options: Options, reactor: Any = None) -> MultiService:
    """
    Build the server or client that C{options} describe, logging through
    tcpcomm's observer when twistd (C{options.parent}) runs it, each message
    received too.
    """
    if reactor is None:
        from twisted.internet import reactor
    messageLog = MessageLog(reactor)
    if options.subCommand == "server":
        service = makeServer(options.subOptions, reactor, messageLog)
    else:
        service = makeClient(options.subOptions, reactor, messageLog)
    return loggedByTcpcomm(
        options.parent, options.subOptions["log-format"], service, messageLog.attach
    )
