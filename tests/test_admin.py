"""
The admin HTTP API: every route's success and errors, the token and the
metrics in process (the admin site over L{StringTransport}s, on a clock),
and what only a daemon shows with real daemons and real HTTP over loopback:
routes reaching real sockets, schemathesis and promtool against the running
API, requests refused before their body is read, the connection cap.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tcpcomm.client import ClientStatus
from tcpcomm.control.admin import Outgoing, makeAdminSite
from tcpcomm.control.metrics import makeRegistry
from tcpcomm.reload import ReloadStatus

from .processes import BIN, WAIT, Twistd, environment, localServer, readUntilClosed, run, scratch
from .support import NOON, callSite, connect, makeHub

ADMIN_PORT = r"listening on 127\.0\.0\.1:(\d+) \(admin API"


def call(
    port: int, method: str, path: str, body: bytes | None = None, token: str | None = None
) -> tuple[int, Any, dict[str, str]]:
    """
    One HTTP request to a real daemon's admin API: status, decoded JSON (or
    text) body, and headers.
    """
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        request.add_header("Content-Type", "text/plain; charset=utf-8")
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            status, raw, headers = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as e:
        status, raw, headers = e.code, e.read(), dict(e.headers)
    if headers.get("Content-Type", "").startswith("application/json"):
        return status, json.loads(raw), headers
    return status, raw.decode(), headers


class InProcessTestCase(SynchronousTestCase):
    """
    A server's admin site in memory, as a daemon started with
    C{--reply-delay 0 --max-message-size 32} builds it, on a clock; peers of
    its hub on L{StringTransport}s.
    """

    token: str | None = None

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOON)
        self.hub = makeHub(self.clock, delay=0)
        reloads = ReloadStatus(self.clock.seconds())
        self.site = makeAdminSite(
            self.hub,
            makeRegistry(self.hub, None, reloads),
            Outgoing("utf-8", "line", 32),
            self.clock,
            self.token,
            dashboard=b"<html></html>",
            reloads=reloads,
        )
        self.ports = iter(range(40001, 41000))

    def call(
        self, method: str, path: str, body: bytes | None = None, token: str | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        return callSite(self.site, method, path, body, token)

    def peer(self, **limits: Any) -> tuple[Any, StringTransport, str]:
        """
        A connected peer of the hub: its protocol, transport and id.
        """
        port = next(self.ports)
        protocol, transport, _, _ = connect(hub=self.hub, clock=self.clock, port=port, **limits)
        return protocol, transport, f"127.0.0.1:{port}"

    def say(self, protocol: Any, data: bytes) -> None:
        """
        C{data} from a peer, and the replies it is owed.
        """
        protocol.dataReceived(data)
        self.clock.advance(0)


class ServerRouteTests(InProcessTestCase):
    """
    Each server route, with its success and its errors.
    """

    def test_healthz(self) -> None:
        """/healthz says ok, and how the last load of the settings went."""
        status, body, _ = self.call("GET", "/healthz")
        self.assertEqual((status, body["status"], body["lastReload"]["ok"]), (200, "ok", True))

    def test_clients(self) -> None:
        """GET /clients lists each client with its address and counters."""
        protocol, transport, peerId = self.peer()
        self.say(protocol, b"hi\n")
        self.assertTrue(transport.value().startswith(b"reply "))
        status, clients, _ = self.call("GET", "/clients")
        self.assertEqual(status, 200)
        [client] = clients
        self.assertEqual(client["id"], peerId)
        self.assertEqual(client["peer"], peerId)
        self.assertIsNone(client["tlsSubject"])
        self.assertEqual((client["messagesIn"], client["bytesIn"]), (1, 2))
        self.assertEqual(client["messagesOut"], 1)
        self.assertRegex(client["connectedSince"], r"^\d{4}-\d\d-\d\dT")
        self.assertIsNotNone(client["lastMessage"])

    def test_oneClient(self) -> None:
        """GET /clients/{id} shows one client; an unknown id is 404."""
        _, _, peerId = self.peer()
        status, client, _ = self.call("GET", "/clients/" + quote(peerId))
        self.assertEqual((status, client["id"]), (200, peerId))
        status, error, _ = self.call("GET", "/clients/" + quote("10.0.0.1:1"))
        self.assertEqual(status, 404)
        self.assertIn("10.0.0.1:1", error["error"])

    def test_sendMessage(self) -> None:
        """POST /clients/{id}/messages delivers the body as one message, and logs it."""
        _, transport, peerId = self.peer()
        with capturedLogs() as events:
            status, body, _ = self.call("POST", f"/clients/{peerId}/messages", "héllo".encode())
        self.assertEqual((status, body), (200, {"id": peerId, "sent": 1}))
        self.assertEqual(transport.value(), "héllo\n".encode())
        [sent] = [e for e in events if e.get("event") == "admin-send"]
        self.assertEqual(sent["peer"], peerId)

    def test_sendErrors(self) -> None:
        """Unknown client 404; over --max-message-size 413; newline, empty or not UTF-8 400."""
        protocol, transport, peerId = self.peer()
        path = f"/clients/{peerId}/messages"
        self.assertEqual(self.call("POST", "/clients/nobody/messages", b"x")[0], 404)
        status, error, _ = self.call("POST", path, b"x" * 33)
        self.assertEqual(status, 413)
        self.assertIn("--max-message-size 32", error["error"])
        for body in (b"two\nlines", b"", b"\xff"):
            self.assertEqual(self.call("POST", path, body)[0], 400, body)
        self.assertEqual(transport.value(), b"")
        self.say(protocol, b"still here\n")
        self.assertTrue(transport.value().startswith(b"reply "))

    def test_broadcast(self) -> None:
        """POST /broadcast reaches every client and says how many."""
        (_, one, _), (_, two, _) = self.peer(), self.peer()
        status, body, _ = self.call("POST", "/broadcast", b"to all")
        self.assertEqual((status, body), (200, {"received": 2}))
        self.assertEqual(one.value(), b"to all\n")
        self.assertEqual(two.value(), b"to all\n")

    def test_disconnect(self) -> None:
        """POST /clients/{id}/disconnect closes that client only; unknown is 404."""
        (oneProtocol, one, oneId), (_, two, twoId) = self.peer(), self.peer()
        status, body, _ = self.call("POST", f"/clients/{oneId}/disconnect", b"")
        self.assertEqual((status, body), (200, {"id": oneId, "disconnected": True}))
        self.assertTrue(one.disconnecting)
        self.assertFalse(two.disconnecting)
        oneProtocol.connectionLost(Failure(ConnectionDone()))
        ids = [c["id"] for c in self.call("GET", "/clients")[1]]
        self.assertEqual(ids, [twoId])
        self.assertEqual(self.call("POST", "/clients/nobody/disconnect", b"")[0], 404)

    def test_wrongMethodAndPath(self) -> None:
        """A known path with another method is 405 with Allow; an unknown path is 404."""
        status, error, headers = self.call("DELETE", "/clients")
        self.assertEqual(status, 405)
        self.assertEqual(headers["Allow"], "GET")
        self.assertEqual(self.call("GET", "/nowhere")[0], 404)

    def test_openapi(self) -> None:
        """/openapi.json describes every server route."""
        status, spec, _ = self.call("GET", "/openapi.json")
        self.assertEqual(status, 200)
        self.assertEqual(spec["openapi"], "3.0.3")
        for path in ["/clients", "/clients/{id}", "/clients/{id}/messages", "/broadcast"]:
            self.assertIn(path, spec["paths"])

    def test_counts(self) -> None:
        """Connections, messages, bytes, decode errors and oversize disconnects are counted."""
        protocol, _, _ = self.peer(maxMessageSize=32)
        self.say(protocol, b"hi\n\xff\n")
        other, otherTransport, _ = self.peer(maxMessageSize=32)
        other.dataReceived(b"x" * 40 + b"\n")
        self.assertTrue(otherTransport.disconnecting)
        other.connectionLost(Failure(ConnectionDone()))
        status, text, headers = self.call("GET", "/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(headers["Content-Type"].startswith("text/plain"))
        values = {
            sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        self.assertEqual(values["tcpcomm_connections"], 1)
        self.assertEqual(values["tcpcomm_connections_opened_total"], 2)
        self.assertEqual(values["tcpcomm_messages_received_total"], 2)
        self.assertEqual(values["tcpcomm_messages_sent_total"], 2)
        self.assertEqual(values["tcpcomm_received_bytes_total"], 3)
        self.assertEqual(values["tcpcomm_decode_errors_total"], 1)
        self.assertEqual(values["tcpcomm_oversize_disconnects_total"], 1)
        self.assertGreater(values["process_resident_memory_bytes"], 0)


class InProcessTokenTests(InProcessTestCase):
    """
    A token guards every route but /healthz and the dashboard.
    """

    token = "correct-horse"

    def test_required(self) -> None:
        """Without the token, or with a wrong one, the answer is 401 with a challenge."""
        for token in (None, "wrong", "correct-hors", "correct-horse2"):
            status, error, headers = self.call("GET", "/clients", token=token)
            self.assertEqual(status, 401, token)
            self.assertIn("Bearer", headers["Www-Authenticate"])
            self.assertIn("Authorization", error["error"])
        self.assertEqual(self.call("GET", "/metrics")[0], 401)
        self.assertEqual(self.call("POST", "/broadcast", b"x")[0], 401)

    def test_accepted(self) -> None:
        """With the token every route answers; /healthz and the page never need it."""
        self.assertEqual(self.call("GET", "/clients", token="correct-horse")[:2], (200, []))
        self.assertEqual(self.call("GET", "/metrics", token="correct-horse")[0], 200)
        self.assertEqual(self.call("GET", "/healthz")[0], 200)
        self.assertEqual(self.call("GET", "/")[0], 200)


class ServerAPITestCase(SynchronousTestCase):
    """
    A real server with an admin API on loopback, and helpers to reach both.
    """

    extra: tuple[str, ...] = ()

    def setUp(self) -> None:
        self.server = localServer(
            self,
            "--reply-delay",
            "0",
            "--max-message-size",
            "32",
            "--admin",
            "tcp:0:interface=127.0.0.1",
            *self.extra,
        )
        self.port = self.server.listeningPort()
        self.admin = int(self.server.waitFor(ADMIN_PORT).group(1))

    def peer(self) -> tuple[socket.socket, str]:
        """
        A connected plain client and its id.
        """
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=WAIT)
        self.addCleanup(sock.close)
        peerId = f"127.0.0.1:{sock.getsockname()[1]}"
        self.server.waitFor("connected " + peerId.replace(".", r"\."))
        return sock, peerId


class RealDaemonRouteTests(ServerAPITestCase):
    """
    What only a daemon shows: its admin API answers over real HTTP on the
    port it logs, and its routes reach real sockets.
    """

    def test_sendAndHealth(self) -> None:
        """A real server answers /healthz, lists a socket client and sends to it over loopback."""
        status, body, _ = call(self.admin, "GET", "/healthz")
        self.assertEqual((status, body["status"], body["lastReload"]["ok"]), (200, "ok", True))
        sock, peerId = self.peer()
        self.assertEqual([c["id"] for c in call(self.admin, "GET", "/clients")[1]], [peerId])
        status, body, _ = call(self.admin, "POST", f"/clients/{peerId}/messages", "héllo".encode())
        self.assertEqual((status, body), (200, {"id": peerId, "sent": 1}))
        self.assertEqual(sock.recv(100), "héllo\n".encode())
        self.server.waitFor("admin: sent a message to " + peerId.replace(".", r"\."))

    def test_disconnect(self) -> None:
        """POST /clients/{id}/disconnect closes the real socket, and the client leaves the list."""
        sock, peerId = self.peer()
        status, _, _ = call(self.admin, "POST", f"/clients/{peerId}/disconnect", b"")
        self.assertEqual(status, 200)
        self.assertEqual(readUntilClosed(sock), b"")
        self.server.waitFor("lost " + peerId.replace(".", r"\."))
        self.assertEqual(call(self.admin, "GET", "/clients")[1], [])


class MetricsTests(ServerAPITestCase):
    """
    A real daemon's /metrics passes promtool.
    """

    def test_promtool(self) -> None:
        """promtool (Debian's prometheus package) finds nothing wrong with the metrics."""
        promtool = shutil.which("promtool")
        if promtool is None:
            raise SkipTest("promtool is not installed")
        text = call(self.admin, "GET", "/metrics")[1]
        result = subprocess.run(
            [promtool, "check", "metrics"],
            input=text,
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)


#: A message is at most --max-message-size bytes once encoded: a limit in bytes,
#: which JSON Schema's maxLength (in characters) cannot state, so the sending
#: routes may refuse a schema-valid text with their documented 413 (the daemon
#: answers it from Content-Length, before looking the client up). Nor can the
#: schema say that --framing line refuses a newline (the documented 400).
SCHEMATHESIS_CONFIG = """\
[[operations]]
include-operation-id = ["sendToClient", "broadcast"]
checks.positive_data_acceptance.expected-statuses = [
  "2xx", "3xx", "400", "401", "403", "404", "409", "413", "429", "5xx",
]
"""


class TokenTests(ServerAPITestCase):
    """
    A real daemon with --admin-token-file, checked by schemathesis from its
    own /openapi.json.
    """

    def setUp(self) -> None:
        folder = scratch(self)
        self.tokenFile = os.path.join(folder, "token")
        with open(self.tokenFile, "w") as f:
            f.write("correct-horse\n")
        self.extra = ("--admin-token-file", self.tokenFile)
        super().setUp()

    def test_schemathesis(self) -> None:
        """schemathesis, driven by /openapi.json, finds no response that breaks the document."""
        schemathesis = os.path.join(BIN, "schemathesis")
        if not os.path.exists(schemathesis):
            raise SkipTest("schemathesis is not installed")
        for _ in range(2):
            self.peer()
        folder = scratch(self)
        config = os.path.join(folder, "schemathesis.toml")
        with open(config, "w") as f:
            f.write(SCHEMATHESIS_CONFIG)
        result = subprocess.run(
            [
                schemathesis,
                "--config-file",
                config,
                "run",
                f"http://127.0.0.1:{self.admin}/openapi.json",
                "--header",
                "Authorization: Bearer correct-horse",
                "--checks",
                "all",
                "--exclude-path",
                "/events",
                "--exclude-path",
                "/drain",  # it would stop the daemon under test (tests.test_drain has its own)
                "--max-examples",
                "30",
                "--seed",
                "1",
                "--no-color",
            ],
            cwd=folder,
            env=environment(),
            capture_output=True,
            text=True,
            timeout=240,
        )
        self.assertEqual(result.returncode, 0, result.stdout[-5000:] + result.stderr[-2000:])
        self.assertNotIn("Traceback", self.server.output())


class AbuseTests(ServerAPITestCase):
    """
    A daemon with a token refuses what it will not take as soon as the
    headers are in, and closes clients that trickle them.
    """

    def setUp(self) -> None:
        folder = scratch(self)
        self.tokenFile = os.path.join(folder, "token")
        with open(self.tokenFile, "w") as f:
            f.write("correct-horse\n")
        self.extra = ("--admin-token-file", self.tokenFile)
        super().setUp()

    def dial(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.admin), timeout=WAIT)
        self.addCleanup(sock.close)
        return sock

    def test_hugePostWithoutToken(self) -> None:
        """A POST of 1 GiB without the token is answered 401 after 4 KiB of it, then not read."""
        sock = self.dial()
        sock.sendall(
            b"POST /broadcast HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 1073741824\r\n\r\n" + b"x" * 4096
        )
        answer = readUntilClosed(sock)
        self.assertTrue(answer.startswith(b"HTTP/1.1 401 "), answer)
        self.assertIn(b"\r\nConnection: close\r\n", answer)
        with self.assertRaises(OSError):  # the daemon closed its end: it reads no more
            for _ in range(256):
                sock.sendall(b"x" * 65536)
        self.assertEqual(call(self.admin, "GET", "/healthz")[0], 200)
        self.assertNotIn("Traceback", self.server.output())

    def test_expectContinueWithoutToken(self) -> None:
        """Expect: 100-continue without the token is answered 401, never 100 Continue."""
        sock = self.dial()
        sock.sendall(
            b"POST /broadcast HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\n"
            b"Content-Length: 1073741824\r\n\r\n"
        )
        answer = readUntilClosed(sock)
        self.assertTrue(answer.startswith(b"HTTP/1.1 401 "), answer)
        self.assertNotIn(b"100 Continue", answer)

    def test_hugePostWithToken(self) -> None:
        """With the token, a POST declaring 200 MB is answered 413 at once, naming --max-message-size."""
        sock = self.dial()
        head = (
            b"POST /broadcast HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer correct-horse\r\nContent-Length: 200000000\r\n\r\n"
        )
        sock.sendall(head + b"x" * 4096)
        answer = readUntilClosed(sock)
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer)
        self.assertIn(b"--max-message-size 32", answer)

    def test_trickledHeaders(self) -> None:
        """A client that sends one header byte a second is answered 408 and closed within 10 s."""
        sock = self.dial()
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
        sock.settimeout(1)
        answer = b""
        while time.monotonic() - started < WAIT:
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                sock.sendall(b"x")
                continue
            if not chunk:
                break
            answer += chunk
        elapsed = time.monotonic() - started
        self.assertLess(elapsed, 10, answer)
        self.assertTrue(answer.startswith(b"HTTP/1.1 408 "), answer)
        self.server.waitFor(r"closing 127\.0\.0\.1:\d+: no complete request within 5(\.0)? s")


class AdminConnectionCapTests(ServerAPITestCase):
    """
    --admin-max-connections reaches the admin site.
    """

    extra = ("--admin-max-connections", "2")

    def test_oneTooMany(self) -> None:
        """With two admin connections open, a third is answered 503 and the refusal logged."""
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", self.admin), timeout=WAIT)
            self.addCleanup(sock.close)
        self.assertEqual(call(self.admin, "GET", "/healthz")[0], 503)
        self.server.waitFor(r"refused a connection from 127\.0\.0\.1:\d+: 2 open already")


class AdminOptionTests(SynchronousTestCase):
    """
    An admin API that other machines could reach needs a token.
    """

    def test_exposedWithoutToken(self) -> None:
        """--admin on every address without a token is refused at start, naming the option."""
        from twisted.python.usage import UsageError

        from tcpcomm.options import Options

        for description in ("tcp:0", "tcp:0:interface=0.0.0.0", "tcp6:0"):
            error = self.assertRaises(
                UsageError, Options().parseOptions, ["server", "--admin", description]
            )
            self.assertIn(f"--admin '{description}' can be reached from other machines", str(error))

    def test_exposedRefusedByTwistd(self) -> None:
        """twistd itself stops at start, with the message, for an exposed --admin without a token."""
        result = run(self, "-n", "--pidfile=", "tcpcomm", "server", "--admin", "tcp:0")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(
            "--admin 'tcp:0' can be reached from other machines", result.stdout + result.stderr
        )

    def test_localWithoutToken(self) -> None:
        """Loopback and UNIX sockets need no token."""
        from tcpcomm.options import Options

        for description in (
            "tcp:0:interface=127.0.0.1",
            "tcp6:0:interface=\\:\\:1",
            "unix:/tmp/x.sock",
        ):
            options = Options()
            options.parseOptions(["server", "--admin", description])
            self.assertIsNone(options.subOptions["admin-token"])

    def test_badTokenFile(self) -> None:
        """A missing, blank or not printable-ASCII token file is refused at start, naming it."""
        from twisted.python.usage import UsageError

        from tcpcomm.options import Options

        folder = scratch(self)
        files = {"/nonexistent/token": "cannot read it"}
        for name, text, reason in (
            ("blank", "\n", "empty"),
            ("accented", "correct-hórse\n", "not printable ASCII"),
        ):
            files[os.path.join(folder, name)] = reason
            with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
                f.write(text)
        for path, reason in files.items():
            error = self.assertRaises(
                UsageError,
                Options().parseOptions,
                ["server", "--admin", "tcp:0", "--admin-token-file", path],
            )
            self.assertIn(f"--admin-token-file {path!r}: ", str(error))
            self.assertIn(reason, str(error))

    def test_tokenFileByteOrderMark(self) -> None:
        """A token file that starts with a UTF-8 byte order mark gives the token without it."""
        from tcpcomm.options import Options

        path = os.path.join(scratch(self), "token")
        with open(path, "w", encoding="utf-8-sig") as f:
            f.write("correct-horse\r\n")
        options = Options()
        options.parseOptions(["server", "--admin", "tcp:0", "--admin-token-file", path])
        self.assertEqual(options.subOptions["admin-token"], "correct-horse")

    def test_maxConnections(self) -> None:
        """--admin-max-connections is 64 by default, and must be a positive integer."""
        from twisted.python.usage import UsageError

        from tcpcomm.options import Options

        for side in ("server", "client"):
            options = Options()
            options.parseOptions([side])
            self.assertEqual(options.subOptions["admin-max-connections"], 64)
            options = Options()
            options.parseOptions([side, "--admin-max-connections", "5"])
            self.assertEqual(options.subOptions["admin-max-connections"], 5)
        error = self.assertRaises(
            UsageError, Options().parseOptions, ["server", "--admin-max-connections", "0"]
        )
        self.assertIn("--admin-max-connections must be an integer >= 1, not '0'", str(error))


class ClientRouteTests(SynchronousTestCase):
    """
    The client's routes in process: its status, and sending to its server.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOON)
        self.hub = makeHub(self.clock)
        self.status = ClientStatus("127.0.0.1:9527")
        self.site = makeAdminSite(
            self.hub,
            makeRegistry(self.hub, self.status),
            Outgoing("utf-8", "line", 32),
            self.clock,
            None,
            self.status,
        )

    def test_notConnected(self) -> None:
        """Not connected, /status says why and POST /messages is 503."""
        self.status.failedAttempts = 2
        self.status.lastError = "Connection was refused by other side"
        status, body, _ = callSite(self.site, "GET", "/status")
        self.assertEqual(status, 200)
        self.assertEqual(
            (body["connected"], body["server"], body["since"], body["failedAttempts"]),
            (False, "127.0.0.1:9527", None, 2),
        )
        self.assertIn("refused", body["lastError"])
        status, error, _ = callSite(self.site, "POST", "/messages", b"hello?")
        self.assertEqual(status, 503)
        self.assertIn("not connected to 127.0.0.1:9527", error["error"])

    def test_connected(self) -> None:
        """Connected, /status says since when, and POST /messages sends to the server."""
        self.status.connections = 2
        _, transport, _, _ = connect(hub=self.hub, clock=self.clock)
        status, body, _ = callSite(self.site, "GET", "/status")
        self.assertTrue(body["connected"])
        self.assertEqual((body["connections"], body["reconnects"]), (2, 1))
        self.assertRegex(body["since"], r"^\d{4}-")
        status, sent, _ = callSite(self.site, "POST", "/messages", b"from the operator")
        self.assertEqual((status, sent), (200, {"server": "127.0.0.1:9527", "sent": 1}))
        self.assertEqual(transport.value(), b"from the operator\n")

    def test_noServerRoutes(self) -> None:
        """A client has no /clients, and its document does not list it."""
        self.assertEqual(callSite(self.site, "GET", "/clients")[0], 404)
        self.assertNotIn("/clients", callSite(self.site, "GET", "/openapi.json")[1]["paths"])


class ClientAPITests(SynchronousTestCase):
    """
    A real client daemon's admin API: its real connection attempts and
    connection show in its status.
    """

    def client(self, port: int) -> tuple[Twistd, int]:
        client = Twistd(
            self,
            "tcpcomm",
            "client",
            "-p",
            str(port),
            "--retry-initial",
            "0.2",
            "--retry-max",
            "0.5",
            "--reply-delay",
            "30",
            "--admin",
            "tcp:0:interface=127.0.0.1",
        )
        return client, int(client.waitFor(ADMIN_PORT).group(1))

    def test_notConnected(self) -> None:
        """With no server, /status says why and POST /messages is 503."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        client, admin = self.client(port)
        client.waitFor("cannot connect")
        status, body, _ = call(admin, "GET", "/status")
        self.assertEqual(status, 200)
        self.assertFalse(body["connected"])
        self.assertEqual(body["server"], f"127.0.0.1:{port}")
        self.assertGreaterEqual(body["failedAttempts"], 1)
        self.assertIn("refused", body["lastError"])
        status, error, _ = call(admin, "POST", "/messages", b"hello?")
        self.assertEqual(status, 503)
        self.assertIn("not connected", error["error"])

    def test_connected(self) -> None:
        """Connected, /status says since when, and POST /messages reaches the server."""
        server = localServer(self)
        port = server.listeningPort()
        client, admin = self.client(port)
        client.waitFor(f"connected 127.0.0.1:{port}")
        status, body, _ = call(admin, "GET", "/status")
        self.assertTrue(body["connected"])
        self.assertEqual((body["connections"], body["reconnects"]), (1, 0))
        self.assertRegex(body["since"], r"^\d{4}-")
        status, sent, _ = call(admin, "POST", "/messages", b"from the operator")
        self.assertEqual((status, sent["sent"]), (200, 1))
        server.waitFor(r"message from 127\.0\.0\.1:\d+: from the operator")
        self.assertNotIn("/clients", call(admin, "GET", "/openapi.json")[1]["paths"])
