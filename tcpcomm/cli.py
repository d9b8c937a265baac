"""
The C{tcpcomm} command line: a small client of a running daemon's admin API
(C{--admin}), so that operators can list, message and disconnect clients
without writing HTTP requests by hand.

It makes one blocking request with C{urllib} and exits: a short-lived
command gains nothing from the reactor. C{--admin} is a URL, or the
C{unix:PATH} endpoint of a daemon whose admin API is on a UNIX socket (the
same string as the daemon's own C{--admin}).

Each command is one entry in L{parser}: the request it makes (a L{Call})
and how to show its answer (a L{Show}). Every failure an operator can cause
(a daemon that is down, a wrong URL or token, an unknown client) ends with
one clear message and a documented exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from http.client import HTTPConnection, HTTPException
from typing import Any, NamedTuple
from urllib.error import HTTPError, URLError
from urllib.parse import quote, urlsplit
from urllib.request import HTTPHandler, ProxyHandler, Request, build_opener

from tcpcomm import __version__
from tcpcomm.tokens import TokenFileError, readTokenFile

DEFAULT_ADMIN = "http://127.0.0.1:9528"
DEFAULT_TIMEOUT = 10.0

#: Exit statuses, documented in C{--help} and the README.
OK = 0
API_ERROR = 1  # the daemon answered with an error
USAGE = 2  # what argparse uses for a bad command line
UNREACHABLE = 3  # no tcpcomm admin API answered at the URL
INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT

EPILOG = """\
environment:
  TCPCOMM_ADMIN       default for --admin (a URL, or unix:PATH for a UNIX socket)
  TCPCOMM_TOKEN_FILE  default for --token-file

exit status:
  0  success
  1  the daemon answered with an error (unknown client, bad token, ...)
  2  bad command line, a bad token file (unreadable, empty, not one ASCII token), or
     (check-config) a bad config file
  3  the daemon cannot be reached (down, wrong URL, timeout, not an admin API)
"""


class Failed(Exception):
    """
    Why the command stops early: a message for people and the exit status
    that tells scripts which kind of failure it was.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Answer(NamedTuple):
    """
    A successful answer: its JSON decoded for display, and its text kept
    as is for C{--json}.
    """

    data: Any
    text: str


def _reason(error: BaseException, timeout: float) -> str:
    """
    An operating-system error as people read it: C{Connection refused},
    not C{[Errno 111] Connection refused}.
    """
    if isinstance(error, TimeoutError):
        return f"no answer within {timeout:g} s (--timeout)"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def unixSocket(text: str) -> str | None:
    """
    The socket's path if C{--admin} names a UNIX socket as the daemon's
    C{--admin} does (C{unix:/run/tcpcomm/admin.sock}, or
    C{unix:address=PATH:mode=660:lockfile=1}, colons in the path escaped as
    C{\\:}), else L{None}.
    """
    kind, _, rest = text.strip().partition(":")
    if kind != "unix":
        return None
    path = ""
    for index, part in enumerate(re.split(r"(?<!\\):", rest)):
        name, equals, value = part.partition("=")
        if equals and name == "address":
            path = value
        elif index == 0 and not equals:
            path = part
    path = path.replace("\\:", ":")
    if not path:
        raise Failed(USAGE, f"--admin {text!r} names no socket; give unix:PATH")
    return path


def adminURL(text: str) -> str:
    """
    The base URL of the admin API, from C{--admin}: C{http://} is assumed
    when no scheme is given, since C{127.0.0.1:9528} is what people type.
    """
    given = text.strip()
    if given.split(":", 1)[0] in ("tcp", "tcp6", "ssl", "systemd"):
        raise Failed(
            UNREACHABLE,
            f"--admin {text!r} is an endpoint description, as the daemon takes it; "
            f"give the URL to reach it instead, such as {DEFAULT_ADMIN} (or unix:PATH "
            "for an admin API on a UNIX socket)",
        )
    url = given if "://" in given else "http://" + given
    if not _usable(url):
        raise Failed(
            UNREACHABLE,
            f"--admin {text!r} is not an http:// or https:// URL such as {DEFAULT_ADMIN}",
        )
    return url.rstrip("/")


def _usable(url: str) -> bool:
    """
    Whether urllib can make a request of C{url}: checked here so that a
    typo gets a message about C{--admin} rather than urllib's own words.
    """
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def clientPath(clientId: str, action: str = "") -> str:
    """
    The path of one client's route: ids hold characters that mean
    something in a URL (C{unix#1}, C{[::1]:5}), so every one is quoted.
    """
    return "/clients/" + quote(clientId, safe="") + action


class UnixConnection(HTTPConnection):
    """
    HTTP over the UNIX socket at C{path}, whatever host the URL names.
    """

    def __init__(self, path: str, host: str, timeout: float | None = None) -> None:
        super().__init__(host, timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class UnixHandler(HTTPHandler):
    """
    urllib's C{http:} handler, reaching the daemon through its UNIX socket.
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def http_open(self, req: Request) -> Any:
        def connection(host: str, timeout: float | None = None, **kwargs: Any) -> UnixConnection:
            return UnixConnection(self.path, host, timeout)

        return self.do_open(connection, req)


class Admin:
    """
    One daemon's admin API: where it is (C{url}, or the UNIX socket
    C{socketPath}), the token to show it, and how long to wait for it.
    """

    def __init__(
        self, url: str, token: str | None, timeout: float, socketPath: str | None = None
    ) -> None:
        self.token = token
        self.timeout = timeout
        # The admin API is nearly always on loopback or a private network;
        # an http_proxy meant for the Internet must not swallow its requests.
        handlers: list[Any] = [ProxyHandler({})]
        self.url = url
        self._base = url
        if socketPath is not None:
            self._base = "http://localhost"
            handlers.append(UnixHandler(socketPath))
        self._opener = build_opener(*handlers)

    def call(self, method: str, path: str, body: str | None = None) -> Answer:
        """
        Make one request and decode its JSON answer, or raise L{Failed}.
        """
        headers = {"Accept": "application/json", "User-Agent": f"tcpcomm/{__version__}"}
        data = None
        if method == "POST":
            data = _utf8(body or "")
            headers["Content-Type"] = "text/plain; charset=utf-8"
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        request = Request(self._base + path, data=data, headers=headers, method=method)
        where = f"{self.url} ({method} {path})"
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                raw = response.read()
        except HTTPError as e:
            raise self._error(e) from None
        except URLError as e:
            reason = e.reason
            if isinstance(reason, BaseException):
                text = _reason(reason, self.timeout)
            else:
                text = str(reason)
            raise _unreachable(where, text) from None
        except OSError as e:  # a timeout while reading the answer
            raise _unreachable(where, _reason(e, self.timeout)) from None
        except HTTPException:
            raise _unreachable(where, "the answer is not HTTP (the message port?)") from None
        except ValueError as e:  # what urllib raises for a URL it cannot use
            raise _unreachable(where, str(e)) from None
        try:
            text = raw.decode("utf-8")
            return Answer(json.loads(text), text)
        except ValueError:
            raise _unreachable(where, "the answer is not JSON") from None

    def _error(self, error: HTTPError) -> Failed:
        """
        The daemon's own C{{"error": ...}} message, with a hint for the
        mistakes people make most.
        """
        message = error.reason if isinstance(error.reason, str) else str(error.reason)
        try:
            body = json.loads(error.read().decode("utf-8"))
            if isinstance(body, dict) and isinstance(body.get("error"), str):
                message = body["error"]
        except (OSError, HTTPException, ValueError):
            pass
        finally:
            error.close()
        text = f"{message} (HTTP {error.code})"
        if error.code == 401:
            if self.token is None:
                text += "\nthe daemon requires a token: give it with --token-file PATH (or TCPCOMM_TOKEN_FILE)"
            else:
                text += "\nthe daemon refused the token in --token-file"
        elif error.code == 404 and message.startswith("no such route"):
            text += (
                f"\nis {self.url} the right daemon? clients, send, broadcast, kick, queues and "
                "drain talk to a server's admin API, status to a client's"
            )
        return Failed(API_ERROR, text)


def _unreachable(where: str, reason: str) -> Failed:
    return Failed(
        UNREACHABLE,
        f"cannot reach the tcpcomm admin API at {where}: {reason}\n"
        "is the daemon running with --admin? point at it with --admin URL (or TCPCOMM_ADMIN)",
    )


def _utf8(text: str) -> bytes:
    """
    C{text} as the API takes it; a command-line argument that is not
    valid UTF-8 reaches Python as lone surrogates, which cannot be sent.
    """
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise Failed(USAGE, "TEXT is not valid UTF-8") from None


# Showing answers to people.


def localTime(iso: str | None) -> str:
    """
    An API time (UTC, ISO 8601) in the local time zone, as the daemons'
    message templates write times; C{-} for none.
    """
    if iso is None:
        return "-"
    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso


def size(count: int) -> str:
    """
    A byte count short enough for a table column.
    """
    value = float(count)
    unit = "B"
    for larger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"


def table(rows: Sequence[Sequence[str]]) -> str:
    """
    Rows in aligned columns, the first row being the headings.
    """
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def showClients(clients: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """
    C{GET /clients} as a table, local times and short sizes: what an
    operator scans for, where scripts use C{--json}.
    """
    if not clients:
        return "no clients connected"
    # A fleet's (--backplane) names the node of each; another node's have no counts.
    fleet = any("node" in c for c in clients)
    headings = ["ID", "PEER", "TLS SUBJECT", "CONNECTED SINCE", "LAST MESSAGE"]
    rows = [
        [*headings[:1], *(["NODE"] if fleet else []), *headings[1:], "MSGS IN/OUT", "BYTES IN/OUT"]
    ]
    for c in clients:
        counted = c["messagesIn"] is not None
        rows.append(
            [
                c["id"],
                *([c.get("node") or "-"] if fleet else []),
                c["peer"],
                c["tlsSubject"] or "-",
                localTime(c["connectedSince"]),
                localTime(c["lastMessage"]),
                f"{c['messagesIn']}/{c['messagesOut']}" if counted else "-",
                f"{size(c['bytesIn'])}/{size(c['bytesOut'])}" if counted else "-",
            ]
        )
    count = len(clients)
    return table(rows) + f"\n{count} client{'' if count == 1 else 's'} connected"


def showStatus(status: dict[str, Any], args: argparse.Namespace) -> str:
    """
    C{GET /status} as one labelled line per fact.
    """
    if status["connected"]:
        state = f"connected since {localTime(status['since'])}"
    else:
        state = "not connected"
    reconnects = status["reconnects"]
    lines = [
        ("server", status["server"]),
        ("state", state),
        (
            "connections",
            f"{status['connections']} ({reconnects} reconnect{'' if reconnects == 1 else 's'})",
        ),
        ("failed attempts", str(status["failedAttempts"])),
        ("last error", status["lastError"] or "-"),
        ("messages", f"{status['messagesIn']} in, {status['messagesOut']} out"),
    ]
    return "\n".join(f"{name + ':':<17}{value}" for name, value in lines)


def showSent(answer: dict[str, Any], args: argparse.Namespace) -> str:
    if answer.get("queued"):
        return f"queued for {answer['id']} (position {answer['position']})"
    return f"sent to {answer['id']}"


def showQueues(answer: dict[str, Any], args: argparse.Namespace) -> str:
    """
    C{GET /queues} as a table: who has messages waiting, and since when.
    """
    queues = answer["queues"]
    if not queues:
        return "no messages waiting"
    rows = [["ID", "MESSAGES", "BYTES", "OLDEST"]]
    for q in queues:
        rows.append([q["id"], str(q["messages"]), size(q["bytes"]), age(q["oldestAgeSeconds"])])
    total = sum(q["messages"] for q in queues)
    return table(rows) + (
        f"\n{total} message{'' if total == 1 else 's'} waiting for "
        f"{len(queues)} client{'' if len(queues) == 1 else 's'}"
    )


def age(seconds: float) -> str:
    """
    An age short enough for a table column: C{42s}, C{3m05s}, C{2h10m}.
    """
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole // 60 % 60:02d}m"


def showBroadcast(answer: dict[str, Any], args: argparse.Namespace) -> str:
    count = answer["received"]
    return f"sent to {count} client{'' if count == 1 else 's'}"


def showKicked(answer: dict[str, Any], args: argparse.Namespace) -> str:
    return f"disconnecting {answer['id']}"


def showDrain(answer: dict[str, Any], args: argparse.Namespace) -> str:
    """
    C{POST /drain}: what the server does now, or how far the drain it was
    already doing has got.
    """
    count = answer["clients"]
    clients = f"{count} client{'' if count == 1 else 's'}"
    if answer["already"]:
        return (
            f"already draining: closed {answer['closed']} of {clients}, "
            f"stopping in {answer['secondsLeft']:.1f} s"
        )
    period = answer["periodSeconds"]
    return f"draining: stopped listening; closing {clients} over {period:g} s, then stopping"


# The commands: what each asks the daemon. Each subcommand names its call
# and how to show the answer, so that --json is handled once, in run().

Call = Callable[[Admin, argparse.Namespace], Answer]
Show = Callable[[Any, argparse.Namespace], str]


def callClients(admin: Admin, args: argparse.Namespace) -> Answer:
    return admin.call("GET", "/clients")


def callSend(admin: Admin, args: argparse.Namespace) -> Answer:
    query = "" if args.ttl is None else f"?ttl={args.ttl!r}"
    return admin.call("POST", clientPath(args.id, "/messages") + query, args.text)


def callQueues(admin: Admin, args: argparse.Namespace) -> Answer:
    return admin.call("GET", "/queues")


def callBroadcast(admin: Admin, args: argparse.Namespace) -> Answer:
    return admin.call("POST", "/broadcast", args.text)


def callKick(admin: Admin, args: argparse.Namespace) -> Answer:
    return admin.call("POST", clientPath(args.id, "/disconnect"))


def callDrain(admin: Admin, args: argparse.Namespace) -> Answer:
    return admin.call("POST", "/drain")


def callStatus(admin: Admin, args: argparse.Namespace) -> Answer:
    return admin.call("GET", "/status")


def checkConfig(args: argparse.Namespace) -> str:
    """
    C{tcpcomm check-config FILE}: parse each table of a C{--config} file as
    the daemon would (the same code, reading the files it names), starting
    nothing.
    """
    from twisted.python.usage import UsageError

    from tcpcomm.config import readConfig
    from tcpcomm.options import ClientOptions, ServerOptions

    path = args.file
    try:
        tables = readConfig(path)
        if not tables:
            raise UsageError(f"{path}: no [server] or [client] table")
        for side in tables:
            options = ServerOptions() if side == "server" else ClientOptions()
            options.parseOptions(["--config", path])
    except UsageError as e:
        raise Failed(USAGE, str(e)) from None
    return f"{path}: {' and '.join(f'[{side}]' for side in tables)} ok"


def timeout(text: str) -> float:
    """
    C{--timeout}: a number of seconds that a socket can wait for.
    """
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return seconds


def parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """
    The command line. The global options are accepted after the command
    too (each subcommand knows them, with defaults suppressed so that they
    do not undo the ones given before it).
    """

    def addGlobals(p: argparse.ArgumentParser, suppress: bool) -> None:
        def default(value: object) -> object:
            return argparse.SUPPRESS if suppress else value

        p.add_argument(
            "--admin",
            metavar="URL",
            default=default(environ.get("TCPCOMM_ADMIN") or DEFAULT_ADMIN),
            help="the daemon's admin API: a URL, or unix:PATH for one on a UNIX socket "
            f"(default: $TCPCOMM_ADMIN or {DEFAULT_ADMIN})",
        )
        p.add_argument(
            "--token-file",
            metavar="PATH",
            default=default(environ.get("TCPCOMM_TOKEN_FILE") or None),
            help="file holding the admin token, for a daemon that requires one "
            "(default: $TCPCOMM_TOKEN_FILE)",
        )
        p.add_argument(
            "--json",
            action="store_true",
            default=default(False),
            help="print the API's JSON answer as is, for scripts",
        )
        p.add_argument(
            "--timeout",
            metavar="SECONDS",
            type=timeout,
            default=default(DEFAULT_TIMEOUT),
            help=f"how long to wait for the daemon (default: {DEFAULT_TIMEOUT:g})",
        )

    top = argparse.ArgumentParser(
        prog="tcpcomm",
        description="Talk to a running tcpcomm daemon through its admin API\n"
        "(started with twistd tcpcomm server|client --admin ...).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"tcpcomm {__version__}")
    addGlobals(top, suppress=False)
    commands = top.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(name: str, help: str, call: Call, show: Show) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        addGlobals(sub, suppress=True)
        sub.set_defaults(call=call, show=show)
        return sub

    command("clients", "list the clients connected to a server", callClients, showClients)
    send = command("send", "send one message to one client of a server", callSend, showSent)
    send.add_argument("id", metavar="ID", help="the client's id, as `tcpcomm clients` lists it")
    send.add_argument("text", metavar="TEXT", help="the message")
    send.add_argument(
        "--ttl",
        metavar="SECONDS",
        type=timeout,
        default=None,
        help="if the client is away, queue the message for it for this many seconds",
    )
    broadcast = command(
        "broadcast", "send one message to every client of a server", callBroadcast, showBroadcast
    )
    broadcast.add_argument("text", metavar="TEXT", help="the message")
    kick = command("kick", "disconnect one client of a server", callKick, showKicked)
    kick.add_argument("id", metavar="ID", help="the client's id, as `tcpcomm clients` lists it")
    command("queues", "list the messages waiting for clients that are away", callQueues, showQueues)
    command(
        "drain",
        "make a server stop accepting, close its clients over its --drain-period, and stop",
        callDrain,
        showDrain,
    )
    command("status", "show how a client daemon's connection is doing", callStatus, showStatus)
    check = commands.add_parser(
        "check-config",
        help="check a daemon's --config file without starting anything",
        description="Check the [server] and [client] tables of a --config file as the daemon "
        "would read them, with the files they name; print what is wrong and exit 2, or exit 0.",
    )
    check.add_argument("file", metavar="FILE", help="the TOML file")
    check.set_defaults(local=checkConfig)
    return top


def run(args: argparse.Namespace) -> str:
    """
    Carry out the parsed command; what to print on success.
    """
    local = getattr(args, "local", None)
    if local is not None:  # a command that needs no daemon
        return str(local(args))
    try:
        token = readTokenFile(args.token_file) if args.token_file else None
    except TokenFileError as e:
        raise Failed(USAGE, str(e)) from None
    socketPath = unixSocket(args.admin)
    url = adminURL(args.admin) if socketPath is None else "unix:" + socketPath
    admin = Admin(url, token, args.timeout, socketPath)
    answer: Answer = args.call(admin, args)
    if args.json:
        return answer.text.rstrip("\n")
    try:
        return str(args.show(answer.data, args))
    except (KeyError, TypeError, AttributeError):
        raise Failed(
            UNREACHABLE,
            f"{admin.url} answered something a tcpcomm admin API would not: {answer.text!r:.200}",
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    """
    The C{tcpcomm} console script; returns the exit status. Usage errors
    exit with status 2 through argparse.
    """
    args = parser(os.environ).parse_args(argv)
    try:
        output = run(args)
    except Failed as e:
        for line in e.message.splitlines():
            print(f"tcpcomm: {line}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        return INTERRUPTED
    try:
        print(output)
        sys.stdout.flush()
    except BrokenPipeError:
        # Whoever read the output (say, head) has gone; the request was made,
        # and Python must not complain again when it flushes at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return OK
