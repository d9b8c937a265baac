"""
Command-line options of C{twistd tcpcomm}: each validates and coerces its own
value, so a bad one is refused, naming the option and the value, before
anything listens or connects.
"""

from __future__ import annotations

import codecs
import ipaddress
import math
import socket
import sqlite3
import sys
from collections.abc import Callable, Sequence
from typing import Any, Self

from twisted.internet.endpoints import clientFromString, quoteStringArgument, serverFromString
from twisted.internet.testing import MemoryReactor
from twisted.python import usage

from tcpcomm.config import ConfigFile, givenOptions
from tcpcomm.fleet.settings import checkNodeName, checkPrefix, parseRedisURL
from tcpcomm.handlers import HandlerNotFound, findHandler
from tcpcomm.hub.identity import ClientTokens
from tcpcomm.hub.queuestore import checkQueueDir
from tcpcomm.server import systemBacklog
from tcpcomm.templates import Template, TemplateError
from tcpcomm.tokens import NAME_RULE, TokenFileError, isName, readClientTokens, readTokenFile
from tcpcomm.wire.framing import FRAMINGS
from tcpcomm.wire.tls import TLS_VERSIONS, TLSFileError, clientCreator, serverOptions


def _number(
    option: str, kind: Callable[[str], Any], minimum: float, maximum: float | None = None
) -> Callable[[str], Any]:
    """
    A coercer to C{kind} that refuses values outside C{[minimum, maximum]}.
    """
    what = "an integer" if kind is int else "a number"
    bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"

    def coerce(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            number = None
        if (
            number is None
            or not math.isfinite(number)
            or number < minimum
            or (maximum is not None and number > maximum)
        ):
            raise ValueError(f"{option} must be {what} {bounds}, not {value!r}")
        return number

    coerce.coerceDoc = f"({what} {bounds})"  # type: ignore[attr-defined]
    return coerce


def _choice(option: str, choices: list[str]) -> Callable[[str], str]:
    def coerce(value: str) -> str:
        if value not in choices:
            raise ValueError(f"{option} must be one of {', '.join(choices)}; not {value!r}")
        return value

    coerce.coerceDoc = f"(one of: {', '.join(choices)})"  # type: ignore[attr-defined]
    return coerce


def _encoding(value: str) -> str:
    try:
        return codecs.lookup(value).name
    except LookupError:
        raise ValueError(f"--encoding {value!r} is not an encoding Python knows") from None


_encoding.coerceDoc = "(any Python codec name)"  # type: ignore[attr-defined]


def _hostPort(option: str) -> Callable[[str], tuple[str, int]]:
    def coerce(value: str) -> tuple[str, int]:
        host, sep, port = value.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"{option} must be HOST:PORT (or [IPV6]:PORT), not {value!r}")
        return host, int(port)

    coerce.coerceDoc = "(HOST:PORT, or [IPV6]:PORT)"  # type: ignore[attr-defined]
    return coerce


def _reachableOnlyLocally(option: str, descriptions: list[str]) -> bool:
    """
    Whether every server endpoint in C{descriptions} (given as C{option})
    listens on loopback addresses or UNIX sockets only.
    """
    reactor = MemoryReactor()
    for description in descriptions:
        try:
            serverFromString(reactor, description).listen(None)
        except Exception as e:
            raise usage.UsageError(
                f"{option} {description!r} is not a server endpoint: {e}"
            ) from None
    return _onlyLocal(reactor)


def _onlyLocal(reactor: MemoryReactor) -> bool:
    """
    Whether everything C{reactor} was asked to listen on is reachable from
    this machine only: loopback addresses and UNIX sockets.
    """
    interfaces = [s[3] for s in reactor.tcpServers] + [s[4] for s in reactor.sslServers]
    if len(interfaces) + len(reactor.unixServers) == 0:
        return False  # some other kind of endpoint: assume the worst
    for interface in interfaces:
        try:
            if not ipaddress.ip_address(interface).is_loopback:
                return False
        except ValueError:
            if interface != "localhost":
                return False
    return True


def _checkMinVersionUnused(
    options: usage.Options, tlsOption: str, endpointOption: str, endpoint: object
) -> None:
    """
    Refuse a raised C{--tls-min-version} on a side without the TLS it
    applies to, rather than ignore it: endpoint strings build their own
    context, with Twisted's defaults.
    """
    version = options["tls-min-version"]
    if version == "1.2":
        return
    if endpoint:
        raise usage.UsageError(
            f"--tls-min-version {version!r} applies to {tlsOption}, not to {endpointOption} "
            "endpoint strings, which keep Twisted's own TLS defaults"
        )
    raise usage.UsageError(f"--tls-min-version {version!r} needs {tlsOption}")


class _CommonOptions(usage.Options):
    """
    Options shared by server and client.

    @ivar argv: the command line these options were parsed from, to parse
        again on a reload.
    """

    #: The config file's table for this side.
    side = ""
    #: Options that may be given more than once (arrays in a config file).
    repeatable: tuple[str, ...] = ()
    argv: list[str] = []

    optFlags = [
        [
            "no-message-log",
            None,
            "Do not log each message received (connections, errors and admin actions still "
            "are): a log line per message costs more than the rest of its handling.",
        ],
    ]

    optParameters: list[list[Any]] = [
        [
            "framing",
            None,
            "line",
            "How messages are delimited on the wire.",
            _choice("--framing", list(FRAMINGS)),
        ],
        ["encoding", None, "utf-8", "Text encoding of messages.", _encoding],
        [
            "reply-delay",
            None,
            5.0,
            "Seconds to wait before answering each message.",
            _number("--reply-delay", float, 0),
        ],
        [
            "max-message-size",
            None,
            65536,
            "Largest message in bytes; a peer that sends a larger one is disconnected.",
            _number("--max-message-size", int, 1, 2**31 - 1),
        ],
        [
            "max-pending-bytes",
            None,
            1 << 20,
            "Bytes that may wait to be sent to a peer that does not read (beyond the "
            "transport's own 64 KiB) before it is disconnected.",
            _number("--max-pending-bytes", int, 1),
        ],
        [
            "idle-timeout",
            None,
            0.0,
            "Disconnect a peer that sends nothing (heartbeats count) for this many seconds; "
            "0 is never.",
            _number("--idle-timeout", float, 0),
        ],
        [
            "message-timeout",
            None,
            60.0,
            "Disconnect a peer that begins a message and does not finish it within this many "
            "seconds; 0 is never.",
            _number("--message-timeout", float, 0),
        ],
        [
            "heartbeat",
            None,
            0.0,
            "Send an empty message after this many seconds of sending nothing, drop a peer "
            "heard nothing from for --heartbeat-timeout, and have the kernel drop the "
            "connection when what was sent stays unacknowledged this long; 0 is off. Give "
            "both sides --heartbeat.",
            _number("--heartbeat", float, 0),
        ],
        [
            "heartbeat-timeout",
            None,
            None,
            "With --heartbeat: disconnect a peer heard nothing from, heartbeats included, for "
            "this many seconds (default: 3 x --heartbeat); more than --heartbeat",
            _number("--heartbeat-timeout", float, 0),
        ],
        [
            "keepalive",
            None,
            60.0,
            "TCP keep-alive: first probe after this many idle seconds; 0 turns it off.",
            _number("--keepalive", float, 0),
        ],
        [
            "handshake-timeout",
            None,
            10.0,
            "Drop a connection whose TLS handshake has not finished within this many seconds; "
            "0 is never.",
            _number("--handshake-timeout", float, 0),
        ],
        [
            "tls-min-version",
            None,
            "1.2",
            "Oldest TLS version to accept (for --tls-cert on a server, --tls on a client).",
            _choice("--tls-min-version", list(TLS_VERSIONS)),
        ],
        [
            "handler",
            None,
            "delayed-reply",
            "What to do with messages: delayed-reply (answer after --reply-delay), echo, "
            "broadcast (to every other peer), chat (the same, after the sender's id), or "
            "package.module:factory for your own.",
        ],
        [
            "admin",
            None,
            None,
            "Serve the admin HTTP API (and the server's dashboard) on this Twisted server "
            "endpoint, such as tcp:9528:interface=127.0.0.1; off when not given.",
        ],
        [
            "admin-token-file",
            None,
            None,
            "File holding the token every admin request but /healthz must bear "
            "(Authorization: Bearer TOKEN); required when --admin listens beyond loopback.",
        ],
        [
            "admin-max-connections",
            None,
            64,
            "Most admin API connections at once; one more is answered 503 and closed, so "
            "admin sockets never take the descriptors the message port needs.",
            _number("--admin-max-connections", int, 1),
        ],
        [
            "log-format",
            None,
            "text",
            "twistd's log as text lines, or as one JSON object per line.",
            _choice("--log-format", ["text", "json"]),
        ],
        [
            "config",
            None,
            None,
            "TOML file of settings: a [server] or [client] table whose keys are the long "
            "option names (reply-delay = 0.5); the command line wins over it. Re-read, with "
            "every other file named here, on SIGHUP.",
        ],
    ]

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """
        Parse C{options}, after the settings of C{--config FILE} when it is
        given, so that the command line wins.
        """
        argv = list(sys.argv[1:] if options is None else options)
        self.argv = argv
        given = givenOptions(self, argv)
        if given is None or "config" not in given or {"help", "version"} & set(given):
            super().parseOptions(argv)
            return
        config = ConfigFile(given["config"], self.side, self)
        try:
            super().parseOptions(config.arguments(given) + argv)
        except usage.UsageError as e:
            raise config.blame(e, given) from None

    def reparsed(self) -> Self:
        """
        New options parsed from the same command line, which reads
        C{--config} and every file the options name again; raises
        L{usage.UsageError} as the first parse would have.
        """
        fresh = type(self)()
        fresh.parseOptions(self.argv)
        return fresh

    def postOptions(self) -> None:
        if isinstance(self["handler"], str):
            try:
                self["handler"] = findHandler(self["handler"])
            except HandlerNotFound as e:
                raise usage.UsageError(str(e)) from None
        self._checkAdmin()
        if self["heartbeat"] > 0 and self["framing"] == "raw":
            raise usage.UsageError(
                f"--heartbeat {self['heartbeat']} needs a framing with empty messages; "
                "--framing raw has none"
            )
        self._checkHeartbeat()
        encoding = self["encoding"]
        if self["framing"] == "line" and "\n".encode(encoding) != b"\n":
            raise usage.UsageError(
                f"--encoding {encoding!r} does not write newlines as b'\\n', "
                "which --framing line needs"
            )
        for name in self.templateOptions():
            text = self[name]
            if isinstance(text, Template):
                continue
            if self["framing"] == "line" and "\n" in text:
                raise usage.UsageError(
                    f"--{name} {text!r} holds a newline, which --framing line cannot carry"
                )
            try:
                self[name] = Template(text, encoding)
                self[name].render(0)
            except TemplateError as e:
                raise usage.UsageError(f"--{name}: {e}") from None

    def templateOptions(self) -> list[str]:
        return ["reply", "error-reply"]

    def _checkHeartbeat(self) -> None:
        """
        Settle C{--heartbeat-timeout}: 3 heartbeat intervals unless given, 0
        without heartbeats; refuse one that a peer sending heartbeats as
        often would still trip.
        """
        heartbeat, timeout = self["heartbeat"], self["heartbeat-timeout"]
        if heartbeat == 0:
            if timeout is not None:
                raise usage.UsageError(
                    f"--heartbeat-timeout {timeout:g} needs --heartbeat (without heartbeats, "
                    "--idle-timeout drops silent peers)"
                )
            self["heartbeat-timeout"] = 0.0
        elif timeout is None:
            self["heartbeat-timeout"] = 3 * heartbeat
        elif timeout <= heartbeat:
            raise usage.UsageError(
                f"--heartbeat-timeout {timeout:g} must be more than --heartbeat {heartbeat:g}: "
                "a peer that sends a heartbeat every interval would be dropped"
            )

    def _checkAdmin(self) -> None:
        """
        Read the admin token, and refuse an admin API that anyone on the
        network could reach without one.
        """
        tokenFile = self["admin-token-file"]
        self["admin-token"] = None
        if tokenFile is not None:
            if self["admin"] is None:
                raise usage.UsageError(f"--admin-token-file {tokenFile!r} needs --admin")
            try:
                self["admin-token"] = readTokenFile(tokenFile)
            except TokenFileError as e:
                raise usage.UsageError(f"--admin-token-file {tokenFile!r}: {e.reason}") from None
        description = self["admin"]
        if description is None:
            return
        local = _reachableOnlyLocally("--admin", [description])
        if self["admin-token"] is None and not local:
            raise usage.UsageError(
                f"--admin {description!r} can be reached from other machines; give it "
                "interface=127.0.0.1 (or ::1, or a unix: socket), or require a token with "
                "--admin-token-file"
            )


class ServerOptions(_CommonOptions):
    """
    C{twistd tcpcomm server}.
    """

    synopsis = "[options]"
    description = (
        "Accept many clients, keep a registry of who is connected, and answer "
        "each message after --reply-delay seconds."
    )
    side = "server"
    repeatable = ("listen",)
    optFlags = [
        [
            "proxy-protocol",
            None,
            "Expect a PROXY header (v1 or v2, as HAProxy's send-proxy-v2 sends) first on every "
            "connection, on every listener, and know each client by the address it names.",
        ],
    ]
    optParameters = [
        [
            "port",
            "p",
            9527,
            "TCP port to listen on (0 picks a free one).",
            _number("--port", int, 0, 65535),
        ],
        [
            "interface",
            "i",
            "",
            "Address to listen on: '' is every IPv4 address, '::' IPv6 (and IPv4 where the system allows).",
        ],
        [
            "backlog",
            None,
            None,
            "Length of the queue of connections not yet accepted on --port (default: the "
            "system's maximum, net.core.somaxconn on Linux); --listen strings carry their own "
            "(backlog=, 50 if not given)",
            _number("--backlog", int, 1),
        ],
        [
            "reply",
            None,
            "response from server {time}",
            "Reply text; {time} is the local time the message arrived.",
        ],
        [
            "error-reply",
            None,
            "server error {time}",
            "Text sent at once for a message that does not decode.",
        ],
        [
            "max-connections",
            None,
            10000,
            "Most clients at once; one more gets --full-reply and is disconnected.",
            _number("--max-connections", int, 1),
        ],
        [
            "full-reply",
            None,
            "server full {time}",
            "Text sent to a client over --max-connections before it is disconnected.",
        ],
        ["tls-cert", None, None, "PEM certificate (and chain) to serve TLS on --port with."],
        ["tls-key", None, None, "PEM private key of --tls-cert (default: read from --tls-cert)."],
        [
            "tls-client-ca",
            None,
            None,
            "PEM CA certificate(s): require every client to present a certificate they signed.",
        ],
        [
            "shutdown-timeout",
            None,
            10.0,
            "Seconds to wait for peers to close when stopping before dropping them.",
            _number("--shutdown-timeout", float, 0),
        ],
        [
            "drain-period",
            None,
            30.0,
            "Seconds a drain (POST /drain, tcpcomm drain) spreads the closing of the clients "
            "over, after it stops listening and before the server stops.",
            _number("--drain-period", float, 0),
        ],
        [
            "queue-max-messages",
            None,
            1000,
            "Most messages that may wait (sends with ?ttl=) for one client that is away.",
            _number("--queue-max-messages", int, 1),
        ],
        [
            "queue-max-bytes",
            None,
            1 << 20,
            "Most bytes of messages that may wait for one client that is away.",
            _number("--queue-max-bytes", int, 1),
        ],
        [
            "queue-total-bytes",
            None,
            64 << 20,
            "Most bytes of messages that may wait for all clients together.",
            _number("--queue-total-bytes", int, 1),
        ],
        [
            "queue-dir",
            None,
            None,
            "Folder of the SQLite file that keeps waiting messages across restarts (made if "
            "missing); without it they wait in memory and die with the process.",
        ],
        [
            "client-id",
            None,
            "address",
            "What a client is known by: its address, the common name of its certificate "
            "(tls, needs --tls-client-ca), or the name its first message gives "
            "(hello: 'hello NAME [TOKEN]').",
            _choice("--client-id", ["address", "tls", "hello"]),
        ],
        [
            "hello-timeout",
            None,
            10.0,
            "With --client-id hello: seconds a client has to send its hello before it is "
            "told so and disconnected; 0 is never.",
            _number("--hello-timeout", float, 0),
        ],
        [
            "client-tokens",
            None,
            None,
            "With --client-id hello: file of 'NAME TOKEN' lines (TOKEN plain or "
            "sha256:HEX); a hello must carry its name's token. Re-read on SIGHUP.",
        ],
        [
            "backplane",
            None,
            None,
            "Redis that joins this server to a fleet: redis://[USER[:PASSWORD]@]HOST:PORT/DB, "
            "or rediss:// for TLS.",
        ],
        [
            "backplane-password-file",
            None,
            None,
            "File whose first line is the Redis password (instead of one in --backplane).",
        ],
        [
            "backplane-prefix",
            None,
            "tcpcomm:",
            "Prefix of this fleet's Redis keys and channels, so that fleets can share a Redis.",
        ],
        [
            "node-name",
            None,
            None,
            "This server's name in the fleet (default: the host name and --port).",
        ],
        [
            "backplane-ttl",
            None,
            30.0,
            "Seconds a node's clients stay in the fleet view after it stops refreshing them "
            "(a node that died).",
            _number("--backplane-ttl", float, 1),
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["tls"] = None

    def postOptions(self) -> None:
        super().postOptions()
        if self["backlog"] is None:
            self["backlog"] = systemBacklog()
        self._checkQueueDir()
        self._checkTLS()
        self._checkIdentity()
        self._checkProxyProtocol()
        self._checkBackplane()

    def _checkProxyProtocol(self) -> None:
        """
        Refuse listeners whose TLS would come before the PROXY header:
        HAProxy in TCP passthrough sends the header in clear, then the
        client's TLS, which only C{--tls-cert} handles in that order.
        """
        if not self["proxy-protocol"]:
            return
        for description in self["listen"]:
            if description.startswith(("ssl:", "tls:")):
                raise usage.UsageError(
                    f"--proxy-protocol cannot read the PROXY header before the TLS of --listen "
                    f"{description!r}: HAProxy sends it in clear first; use --tls-cert (with "
                    "--port) for TLS behind HAProxy"
                )

    def _checkBackplane(self) -> None:
        """
        Parse C{--backplane}, read its password file, and name the node;
        refuse the backplane options without it, and C{--queue-dir} with it.
        """
        url, passwordFile = self["backplane"], self["backplane-password-file"]
        self["backplane-address"] = None
        if url is None:
            for name in ("backplane-password-file", "node-name"):
                if self[name] is not None:
                    raise usage.UsageError(f"--{name} {self[name]!r} needs --backplane")
            return
        try:
            address = parseRedisURL(url)
        except ValueError as e:
            raise usage.UsageError(f"--backplane {url!r}: {e}") from None
        if self["queue-dir"] is not None:
            raise usage.UsageError(
                f"--queue-dir {self['queue-dir']!r} cannot be combined with --backplane "
                f"{str(address)!r}: a fleet's queues are not kept in a node's own file"
            )
        if passwordFile is not None:
            try:
                with open(passwordFile, encoding="utf-8") as f:
                    password = f.readline().rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as e:
                reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                raise usage.UsageError(
                    f"--backplane-password-file {passwordFile!r}: {reason}"
                ) from None
            if not password:
                raise usage.UsageError(
                    f"--backplane-password-file {passwordFile!r}: its first line is empty"
                )
            address = address.withPassword(password)
        self["backplane-address"] = address
        for option, check in (("backplane-prefix", checkPrefix), ("node-name", checkNodeName)):
            value = self[option]
            if value is None:
                continue
            try:
                check(value)
            except ValueError as e:
                raise usage.UsageError(f"--{option} {value!r}: {e}") from None
        if self["node-name"] is None:
            self["node-name"] = f"{socket.gethostname()}:{self.listeningPort()}"

    def listeningPort(self) -> str:
        """
        The port that names this node by default: C{--port}, or that of the
        first C{--listen} that has one.
        """
        for description in self["listen"]:
            for part in description.split(":")[1:]:
                key, _, value = part.rpartition("=")
                if key in ("", "port") and value.isdigit():
                    return value
        return str(self["port"])

    def _checkIdentity(self) -> None:
        """
        Read C{--client-tokens}, and refuse identities that cannot be
        established, or that anyone on the network could claim.
        """
        clientId, path = self["client-id"], self["client-tokens"]
        self["client-token-table"] = None
        if path is not None:
            if clientId != "hello":
                raise usage.UsageError(f"--client-tokens {path!r} needs --client-id hello")
            try:
                self["client-token-table"] = ClientTokens(readClientTokens(path))
            except TokenFileError as e:
                raise usage.UsageError(f"--client-tokens {path!r}: {e.reason}") from None
        if clientId == "tls" and self["tls-client-ca"] is None:
            raise usage.UsageError(
                "--client-id tls needs --tls-client-ca: the id is the common name of a "
                "client certificate it verified"
            )
        if clientId != "hello":
            return
        if self["framing"] == "raw":
            raise usage.UsageError(
                "--client-id hello needs a framing that delimits the hello; --framing raw has none"
            )
        if path is None and self["proxy-protocol"]:
            raise usage.UsageError(
                "--client-id hello without --client-tokens lets anyone claim any name, and "
                "--proxy-protocol serves whoever the proxy in front lets in, from anywhere; "
                "require tokens with --client-tokens"
            )
        if path is None and not _reachableOnlyLocally("--listen", self.listenDescriptions()):
            raise usage.UsageError(
                "--client-id hello without --client-tokens lets anyone claim any name, and the "
                "server can be reached from other machines; listen on 127.0.0.1 (or ::1, or "
                "a unix: socket), or require tokens with --client-tokens"
            )

    def _checkTLS(self) -> None:
        cert, key, clientCA = self["tls-cert"], self["tls-key"], self["tls-client-ca"]
        if cert is None:
            for name, value in (("tls-key", key), ("tls-client-ca", clientCA)):
                if value is not None:
                    raise usage.UsageError(f"--{name} {value!r} needs --tls-cert")
            _checkMinVersionUnused(self, "--tls-cert", "--listen", self["listen"] or None)
            return
        if self["listen"]:
            raise usage.UsageError(
                f"--tls-cert {cert!r} turns on TLS for --port, which --listen replaces; "
                "give --listen an ssl: or tls: endpoint instead"
            )
        try:
            self["tls"] = serverOptions(
                cert, key, clientCA, self["tls-min-version"], self["client-id"] == "tls"
            )
        except TLSFileError as e:
            raise usage.UsageError(str(e)) from None

    def templateOptions(self) -> list[str]:
        return ["reply", "error-reply", "full-reply"]

    def _checkQueueDir(self) -> None:
        """
        Refuse a C{--queue-dir} the queue database cannot be kept in, now
        rather than at the first send.
        """
        path = self["queue-dir"]
        self["queue-database"] = None
        if path is None:
            return
        try:
            self["queue-database"] = checkQueueDir(path)
        except (OSError, sqlite3.Error) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise usage.UsageError(
                f"--queue-dir {path!r} cannot hold the queue database: {reason}"
            ) from None

    def opt_listen(self, description: str) -> None:
        """A Twisted server endpoint description to listen on, such as tcp:9527:interface=127.0.0.1 or unix:/tmp/tcpcomm.sock; may be given more than once; replaces --port, --interface and --backlog."""
        try:
            serverFromString(MemoryReactor(), description)
        except Exception as e:
            raise usage.UsageError(
                f"--listen {description!r} is not a server endpoint: {e}"
            ) from None
        self["listen"].append(description)

    def listenDescriptions(self) -> list[str]:
        """
        The endpoints to listen on: every C{--listen}, or the one that
        C{--port}, C{--interface} and C{--backlog} describe.
        """
        if self["listen"]:
            return list(self["listen"])
        return [
            f"tcp:port={self['port']}:backlog={self['backlog']}"
            f":interface={quoteStringArgument(self['interface'])}"
        ]


class ClientOptions(_CommonOptions):
    """
    C{twistd tcpcomm client}.
    """

    synopsis = "[options]"
    description = (
        "Keep one connection to a server, greet it, and answer each of its "
        "messages after --reply-delay seconds; reconnect with backoff when it goes."
    )
    side = "client"
    optParameters = [
        ["host", "h", "127.0.0.1", "Server host: a name, an IPv4 or an IPv6 address."],
        ["port", "p", 9527, "Server TCP port.", _number("--port", int, 1, 65535)],
        [
            "timeout",
            None,
            30.0,
            "Seconds to wait for a connection to open.",
            _number("--timeout", float, 0.001),
        ],
        [
            "bind-address",
            None,
            None,
            "Local HOST:PORT to connect from",
            _hostPort("--bind-address"),
        ],
        [
            "connect",
            None,
            None,
            "A Twisted client endpoint description, such as tcp:host=example.com:port=9527 "
            "or unix:path=/tmp/tcpcomm.sock; replaces --host, --port, --timeout and --bind-address.",
        ],
        [
            "retry-initial",
            None,
            1.0,
            "Seconds before the first reconnection attempt.",
            _number("--retry-initial", float, 0.001),
        ],
        [
            "retry-max",
            None,
            30.0,
            "Longest wait in seconds between reconnection attempts.",
            _number("--retry-max", float, 0.001),
        ],
        [
            "retry-reset",
            None,
            10.0,
            "Seconds a connection must stay up before the wait starts again from --retry-initial.",
            _number("--retry-reset", float, 0),
        ],
        [
            "tls-ca",
            None,
            None,
            "PEM CA certificate(s) to verify the server with, instead of the system's.",
        ],
        ["tls-cert", None, None, "PEM client certificate to present to the server."],
        ["tls-key", None, None, "PEM private key of --tls-cert (default: read from --tls-cert)."],
        [
            "name",
            None,
            None,
            "Name to give a server run with --client-id hello: 'hello NAME' is sent first "
            "on every connection, before the greeting.",
        ],
        [
            "token-file",
            None,
            None,
            "File holding this client's token, sent in the hello (needs --name).",
        ],
        [
            "greeting",
            None,
            "hello server, this is the client {time}",
            "Text sent on connecting; {time} is the local time.",
        ],
        [
            "reply",
            None,
            "response from client {time}",
            "Reply text; {time} is the local time the message arrived.",
        ],
        [
            "error-reply",
            None,
            "client error {time}",
            "Text sent at once for a message that does not decode.",
        ],
    ]

    optFlags = [
        ["tls", None, "Connect with TLS, verifying the server's certificate and host name."],
    ]

    def templateOptions(self) -> list[str]:
        return ["greeting", "reply", "error-reply"]

    def postOptions(self) -> None:
        super().postOptions()
        self._checkName()
        self["tls-creator"] = None
        tlsFiles = [(n, self[n]) for n in ("tls-ca", "tls-cert", "tls-key") if self[n] is not None]
        if tlsFiles and not self["tls"]:
            name, value = tlsFiles[0]
            raise usage.UsageError(f"--{name} {value!r} needs --tls")
        if self["tls"] and self["connect"] is not None:
            raise usage.UsageError(
                f"--tls applies to --host, which --connect {self['connect']!r} replaces; "
                "use a tls: endpoint in --connect instead"
            )
        if self["tls-key"] is not None and self["tls-cert"] is None:
            raise usage.UsageError(f"--tls-key {self['tls-key']!r} needs --tls-cert")
        if not self["tls"]:
            _checkMinVersionUnused(self, "--tls", "--connect", self["connect"])
        if self["tls"]:
            try:
                self["tls-creator"] = clientCreator(
                    self["host"],
                    self["tls-ca"],
                    self["tls-cert"],
                    self["tls-key"],
                    self["tls-min-version"],
                )
            except TLSFileError as e:
                raise usage.UsageError(str(e)) from None
        if self["retry-max"] < self["retry-initial"]:
            raise usage.UsageError(
                f"--retry-max {self['retry-max']} is less than --retry-initial {self['retry-initial']}"
            )
        if self["connect"] is not None:
            try:
                clientFromString(MemoryReactor(), self["connect"])
            except Exception as e:
                raise usage.UsageError(
                    f"--connect {self['connect']!r} is not a client endpoint: {e}"
                ) from None

    def _checkName(self) -> None:
        """
        Make the hello (C{--name}, C{--token-file}) the client sends first.
        """
        name, path = self["name"], self["token-file"]
        self["hello"] = None
        if name is None:
            if path is not None:
                raise usage.UsageError(f"--token-file {path!r} needs --name")
            return
        if not isName(name):
            raise usage.UsageError(f"--name {name!r} is not a name: a name is {NAME_RULE}")
        if self["framing"] == "raw":
            raise usage.UsageError(
                f"--name {name!r} needs a framing that delimits the hello; --framing raw has none"
            )
        hello = f"hello {name}"
        if path is not None:
            try:
                hello += " " + readTokenFile(path)
            except TokenFileError as e:
                raise usage.UsageError(f"--token-file {path!r}: {e.reason}") from None
        self["hello"] = hello


class Options(usage.Options):
    """
    C{twistd tcpcomm}: pick C{server} or C{client}.
    """

    synopsis = ""
    description = "A framed TCP message server and a self-healing client."
    subCommands = [
        ["server", None, ServerOptions, "Run a server that many clients connect to."],
        ["client", None, ClientOptions, "Run a client that keeps a connection to a server."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError(
                "choose a mode: 'twistd tcpcomm server' or 'twistd tcpcomm client'"
            )
