"""
Reloading on SIGHUP: in-process against a memory reactor (what each reload
changes, keeps and reports), and with real daemons (a changed config file,
a bad one, a daemonized server, and a replaced TLS certificate).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.application.service import MultiService
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from tcpcomm import tap
from tcpcomm.control.admin import AdminResource
from tcpcomm.options import Options
from tcpcomm.reload import Live, ReloadableServerTLS, Reloader, ReloadService
from tcpcomm.wire.protocol import FramedProtocol, MessageFactory

from .certs import Authority
from .processes import (
    LOCAL_SERVER,
    WAIT,
    Daemon,
    Twistd,
    environment,
    localServer,
    scratch,
    waitForFile,
)
from .support import NOON, hubOf

ADMIN_PORT = r"listening on 127\.0\.0\.1:(\d+) \(admin API"


def write(path: str, text: str) -> None:
    """
    Replace the file at C{path} at once, as an editor or a deployment does.
    """
    with open(path + ".new", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".new", path)


class Running:
    """
    A side built by L{tap.makeService} on a memory reactor and started,
    with handles on its parts.
    """

    def __init__(self, case: SynchronousTestCase, *args: str) -> None:
        options = Options()
        options.parseOptions(list(args))
        self.reactor = MemoryReactorClock()
        self.reactor.advance(NOON)
        self.service: MultiService = tap.makeService(options, self.reactor)
        self.service.startService()
        case.addCleanup(self.service.stopService)
        [reloads] = [s for s in self.service if isinstance(s, ReloadService)]
        self.reloader: Reloader = reloads.reloader
        factories = [s[1] for s in self.reactor.tcpServers + self.reactor.sslServers]
        self.factory: MessageFactory | None = next(
            (f for f in factories if isinstance(f, MessageFactory)), None
        )
        self.admin: AdminResource | None = next(
            (
                f.resource
                for f in factories
                if isinstance(getattr(f, "resource", None), AdminResource)
            ),
            None,
        )

    def connect(self, port: int = 40000) -> tuple[FramedProtocol, StringTransport]:
        """
        A peer connected to the server's factory.
        """
        assert self.factory is not None
        address = IPv4Address("TCP", "127.0.0.1", port)
        protocol = self.factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        return protocol, transport

    def get(self, path: str, token: str | None = None) -> tuple[int, bytes]:
        """
        C{GET path} on the admin API, in-process.
        """
        assert self.admin is not None
        request: Any = DummyRequest(path.lstrip("/").encode().split(b"/"))
        request.path = path.encode()
        if token is not None:
            request.requestHeaders.addRawHeader(b"authorization", f"Bearer {token}".encode())
        body = self.admin.render(request)
        assert isinstance(body, bytes)
        return request.responseCode or 200, body


class ServerReloadTests(SynchronousTestCase):
    """
    What a reload changes in a running server, and what it keeps.
    """

    def setUp(self) -> None:
        self.folder = scratch(self)
        self.config = os.path.join(self.folder, "server.toml")
        write(self.config, '[server]\nreply = "old {time}"\nreply-delay = 5\n')

    def test_textsForNewMessages(self) -> None:
        """New --reply and --reply-delay apply to the next message of a connection made before."""
        server = Running(self, "server", "--config", self.config)
        _, transport = server.connect()
        write(self.config, '[server]\nreply = "new"\nreply-delay = 1\n')
        server.reloader.reload()
        transport.clear()
        assert server.factory is not None
        hubOf(server.factory).get("127.0.0.1:40000").peer.dataReceived(b"hi\n")  # type: ignore[union-attr]
        server.reactor.advance(0.9)
        self.assertEqual(transport.value(), b"")
        server.reactor.advance(0.2)
        self.assertEqual(transport.value(), b"new\n")
        self.assertFalse(transport.disconnecting)

    def test_owedRepliesKept(self) -> None:
        """A reply already owed when the reload comes is sent as it was timed."""
        server = Running(self, "server", "--config", self.config)
        protocol, transport = server.connect()
        protocol.dataReceived(b"hi\n")
        write(self.config, '[server]\nreply = "new"\nreply-delay = 1\n')
        server.reloader.reload()
        server.reactor.advance(5)
        self.assertRegex(transport.value(), rb"^old \d{4}-")

    def test_limitsForNewConnections(self) -> None:
        """A new --idle-timeout applies to connections made after the reload only."""
        server = Running(self, "server", "--config", self.config)
        _, before = server.connect(40000)
        write(self.config, "[server]\nidle-timeout = 5\n")
        server.reloader.reload()
        _, after = server.connect(40001)
        server.reactor.advance(6)
        self.assertTrue(after.disconnecting or after.disconnected)
        self.assertFalse(before.disconnecting)

    def test_badFileKeepsSettings(self) -> None:
        """A reload of a bad file is logged with file, key and value, and changes nothing."""
        server = Running(self, "server", "--config", self.config)
        assert server.factory is not None
        texts, limits = hubOf(server.factory).texts, server.factory.limits
        write(self.config, '[server]\nreply = "new"\nmax-message-size = 0\n')
        server.reactor.advance(10)
        with capturedLogs() as events:
            server.reloader.reload()
        self.assertIs(hubOf(server.factory).texts, texts)
        self.assertIs(server.factory.limits, limits)
        [failed] = [e for e in events if e.get("event") == "reload-failed"]
        self.assertIn(f"{self.config}: [server] max-message-size = 0: ", failed["reason"])
        status = server.reloader.status
        self.assertEqual((status.ok, status.time), (False, NOON + 10))
        self.assertEqual(status.error, failed["reason"])

    def test_restartNeeded(self) -> None:
        """What a running server cannot change is logged as needing a restart; the rest applies."""
        server = Running(self, "server", "-i", "127.0.0.1", "--config", self.config)
        assert server.factory is not None
        write(self.config, '[server]\nreply = "new"\nport = 1\nframing = "netstring"\n')
        with capturedLogs() as events:
            server.reloader.reload()
        byEvent = {e.get("event"): e for e in events}
        self.assertIn("--reply", byEvent["reloaded"]["applied"])
        self.assertEqual(byEvent["reload-needs-restart"]["options"], ["framing", "port"])
        self.assertEqual(hubOf(server.factory).texts.reply.text, "new")
        self.assertEqual(len(server.reactor.tcpServers), 1)

    def test_commandLineStillWins(self) -> None:
        """An option given on the command line keeps its value whatever the file says."""
        server = Running(self, "server", "--reply-delay", "2", "--config", self.config)
        assert server.factory is not None
        write(self.config, '[server]\nreply = "old {time}"\nreply-delay = 9\n')
        with capturedLogs() as events:
            server.reloader.reload()
        self.assertEqual(hubOf(server.factory).texts.replyDelay, 2.0)
        [reloaded] = [e for e in events if e.get("event") == "reloaded"]
        self.assertEqual(reloaded["applied"], "nothing changed")

    def test_messageLog(self) -> None:
        """--no-message-log can be turned on and off by a reload."""
        server = Running(self, "server", "--config", self.config)
        assert server.factory is not None
        write(self.config, "[server]\nno-message-log = true\n")
        server.reloader.reload()
        self.assertFalse(hubOf(server.factory).logMessages)

    def test_withoutConfigFile(self) -> None:
        """Without --config a reload still works, and finds nothing changed."""
        server = Running(self, "server")
        with capturedLogs() as events:
            server.reloader.reload()
        self.assertEqual(
            [e["applied"] for e in events if e.get("event") == "reloaded"], ["nothing changed"]
        )
        self.assertTrue(server.reloader.status.ok)

    def test_anyLivePart(self) -> None:
        """An option a part added later reads is applied by a reload, not reported as a restart."""
        server = Running(self, "server", "--config", self.config)
        seen: list[float] = []
        server.reloader.add(
            Live("shutdown", lambda o: o["shutdown-timeout"], lambda v: seen.append(v))
        )
        write(self.config, "[server]\nshutdown-timeout = 3\n")
        with capturedLogs() as events:
            server.reloader.reload()
        self.assertEqual(seen, [3.0])
        self.assertEqual([e.get("event") for e in events], ["reloaded"])


class AdminReloadTests(SynchronousTestCase):
    """
    The admin API takes a new token on reload, and shows the last reload.
    """

    def setUp(self) -> None:
        self.folder = scratch(self)
        self.token = os.path.join(self.folder, "token")
        write(self.token, "first-token\n")
        self.server = Running(
            self, "server", "--admin", "tcp:0:interface=127.0.0.1", "--admin-token-file", self.token
        )

    def test_newToken(self) -> None:
        """After a reload the token file's new token is required, and the old one refused."""
        self.assertEqual(self.server.get("/clients", "first-token")[0], 200)
        write(self.token, "second-token\n")
        with capturedLogs() as events:
            self.server.reloader.reload()
        self.assertEqual(self.server.get("/clients", "first-token")[0], 401)
        self.assertEqual(self.server.get("/clients", "second-token")[0], 200)
        [reloaded] = [e for e in events if e.get("event") == "reloaded"]
        self.assertEqual(reloaded["applied"], "admin token")

    def test_badTokenFileKeepsToken(self) -> None:
        """A token file emptied by mistake fails the reload and the old token stays."""
        write(self.token, "")
        self.server.reloader.reload()
        self.assertFalse(self.server.reloader.status.ok)
        self.assertEqual(self.server.get("/clients", "first-token")[0], 200)

    def test_healthzAndMetrics(self) -> None:
        """/healthz and the metrics show the last reload's time and result."""
        status, body = self.server.get("/healthz")
        self.assertEqual(
            json.loads(body),
            {
                "status": "ok",
                "lastReload": {"time": "2026-11-28T12:00:00+00:00", "ok": True, "error": None},
            },
        )
        self.server.reactor.advance(60)
        write(self.token, "")
        self.server.reloader.reload()
        lastReload = json.loads(self.server.get("/healthz")[1])["lastReload"]
        self.assertEqual(
            (lastReload["time"], lastReload["ok"]), ("2026-11-28T12:01:00+00:00", False)
        )
        self.assertIn(self.token, lastReload["error"])
        metrics = self.metrics("first-token")
        self.assertEqual(metrics["tcpcomm_config_last_reload_success"], 0)
        self.assertEqual(metrics["tcpcomm_config_last_reload_timestamp_seconds"], NOON + 60)
        write(self.token, "first-token\n")
        self.server.reloader.reload()
        self.assertEqual(self.metrics("first-token")["tcpcomm_config_last_reload_success"], 1)

    def metrics(self, token: str) -> dict[str, float]:
        status, body = self.server.get("/metrics", token)
        self.assertEqual(status, 200)
        return {
            sample.name: sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
        }


class TLSReloadTests(SynchronousTestCase):
    """
    New TLS handshakes use the certificate a reload read; connections made
    before keep theirs.
    """

    def test_newHandshakesOnly(self) -> None:
        """A connection made after the reload presents the new certificate, one made before the old."""
        folder = scratch(self)
        first = Authority(folder, "first")
        cert, key = first.issue("first", ["localhost"])
        served, servedKey = os.path.join(folder, "server.pem"), os.path.join(folder, "server.key")
        shutil.copy(cert, served)
        shutil.copy(key, servedKey)
        server = Running(self, "server", "--tls-cert", served, "--tls-key", servedKey)
        [(_, factory, context, _, _)] = server.reactor.sslServers
        self.assertIsInstance(context, ReloadableServerTLS)
        tls = TLSMemoryBIOFactory(context, False, factory)

        def presented() -> tuple[Any, str]:
            protocol = tls.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
            protocol.makeConnection(StringTransport())
            return protocol, protocol.getHandle().get_certificate().get_subject().commonName

        before, subject = presented()
        self.assertEqual(subject, "first")
        cert, key = Authority(folder, "second").issue("second", ["localhost"])
        shutil.copy(cert, served)
        shutil.copy(key, servedKey)
        with capturedLogs() as events:
            server.reloader.reload()
        self.assertEqual(presented()[1], "second")
        self.assertEqual(before.getHandle().get_certificate().get_subject().commonName, "first")
        [reloaded] = [e for e in events if e.get("event") == "reloaded"]
        self.assertIn("TLS certificate second (valid until ", reloaded["applied"])

    def test_badKeyKeepsCertificate(self) -> None:
        """A key that does not match the new certificate fails the reload; the old pair stays."""
        folder = scratch(self)
        authority = Authority(folder, "ca")
        cert, key = authority.issue("first", ["localhost"])
        server = Running(self, "server", "--tls-cert", cert, "--tls-key", key)
        other, _ = authority.issue("other", ["localhost"])
        shutil.copy(other, cert)
        server.reloader.reload()
        self.assertFalse(server.reloader.status.ok)
        self.assertIn("--tls-key", server.reloader.status.error or "")
        [(_, _, context, _, _)] = server.reactor.sslServers
        self.assertEqual(context.current.certificate.get_subject().commonName, "first")


class ClientReloadTests(SynchronousTestCase):
    """
    A client reloads too: texts and limits for what comes next, TLS for the
    next connection.
    """

    def test_greeting(self) -> None:
        """A new --greeting is what the next connection says."""
        config = os.path.join(scratch(self), "client.toml")
        write(config, '[client]\ngreeting = "hello"\n')
        client = Running(self, "client", "--config", config)
        write(config, '[client]\ngreeting = "hello again"\n')
        client.reloader.reload()
        [(_, _, factory, _, _)] = client.reactor.tcpClients
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 9527))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 9527))
        assert protocol is not None
        protocol.makeConnection(transport)
        self.assertEqual(transport.value(), b"hello again\n")

    def test_tlsFollowsHost(self) -> None:
        """New TLS settings wait for a restart when --host changed, since they check the host."""
        folder = scratch(self)
        authority = Authority(folder, "ca")
        config = os.path.join(folder, "client.toml")
        write(config, f'[client]\ntls = true\ntls-ca = "{authority.path}"\nhost = "a.example"\n')
        client = Running(self, "client", "--config", config)
        [part] = [p for p in client.reloader.parts if p.name == "TLS settings"]
        before = part.current
        client.reloader.reload()
        self.assertIsNot(part.current, before)
        swapped = part.current
        write(config, f'[client]\ntls = true\ntls-ca = "{authority.path}"\nhost = "b.example"\n')
        with capturedLogs() as events:
            client.reloader.reload()
        self.assertIs(part.current, swapped)
        [restart] = [e for e in events if e.get("event") == "reload-needs-restart"]
        self.assertEqual(restart["options"], ["host"])
        self.assertIn("TLS settings (it follows --host)", restart["reasons"])


class ReloadServiceTests(SynchronousTestCase):
    """
    SIGHUP is handled while the service runs, by handing the reload to the
    reactor.
    """

    def test_signal(self) -> None:
        """Starting installs a SIGHUP handler that schedules a reload; stopping puts back the old one."""
        installed: dict[int, Any] = {signal.SIGHUP: "previous"}
        scheduled: list[Any] = []
        reloads: list[str] = []

        def install(number: int, handler: Any) -> Any:
            previous, installed[number] = installed[number], handler
            return previous

        class Recorder:
            def reload(self) -> None:
                reloads.append("reload")

        service = ReloadService(Recorder(), scheduled.append, install)  # type: ignore[arg-type]
        service.startService()
        handler = installed[signal.SIGHUP]
        handler(signal.SIGHUP, None)
        self.assertEqual(reloads, [])  # never inside the signal handler
        [call] = scheduled
        call()
        self.assertEqual(reloads, ["reload"])
        service.stopService()
        self.assertEqual(installed[signal.SIGHUP], "previous")

    def test_noThreads(self) -> None:
        """Under a reactor that cannot be called from a signal handler, no handler is installed."""
        before = signal.getsignal(signal.SIGHUP)
        Running(self, "server")
        self.assertEqual(signal.getsignal(signal.SIGHUP), before)


# Real daemons.


def exchange(sock: socket.socket, line: bytes) -> bytes:
    """
    Send a line and read the one line that answers it.
    """
    sock.sendall(line)
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"closed after {data!r}")
        data += chunk
    return data


def admin(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=WAIT) as response:
        body = response.read().decode()
    return json.loads(body) if path == "/healthz" else body


def place(issued: tuple[str, str], cert: str, key: str) -> None:
    """
    Put an issued certificate and its key where the server reads them.
    """
    shutil.copy(issued[0], cert)
    shutil.copy(issued[1], key)


def hangUp(server: Twistd, count: int) -> None:
    """
    SIGHUP C{server} and wait for its C{count}-th reload to be logged.
    """
    os.kill(server.pid, signal.SIGHUP)
    deadline = time.monotonic() + WAIT
    while len(re.findall(r"reloaded settings|reload failed", server.output())) < count:
        if time.monotonic() > deadline or server.process.poll() is not None:
            raise AssertionError(f"no reload {count}:\n{server.output()}")
        time.sleep(0.02)


class DaemonReloadTests(SynchronousTestCase):
    """
    SIGHUP to a real twistd reloads its settings; it never stops the daemon.
    """

    def setUp(self) -> None:
        self.folder = scratch(self)
        self.config = os.path.join(self.folder, "server.toml")
        write(self.config, '[server]\nreply = "first"\nreply-delay = 0\n')

    def test_changedReply(self) -> None:
        """A new reply and reply delay apply to new messages of a connection made before SIGHUP."""
        server = localServer(self, "--config", self.config, cwd=self.folder)
        port = server.listeningPort()
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            sock.settimeout(WAIT)
            self.assertEqual(exchange(sock, b"one\n"), b"first\n")
            write(self.config, '[server]\nreply = "second"\nreply-delay = 1\n')
            hangUp(server, 1)
            started = time.monotonic()
            self.assertEqual(exchange(sock, b"two\n"), b"second\n")
            self.assertGreaterEqual(time.monotonic() - started, 1.0)
        log = server.output()
        self.assertIn("reloaded settings: --reply-delay, --reply", log)
        self.assertEqual(log.count("connected 127.0.0.1"), 1)
        self.assertNotIn("Traceback", log)

    def test_badFile(self) -> None:
        """A bad file at SIGHUP is logged and the old settings kept; /healthz and the metric say so."""
        server = localServer(
            self, "--config", self.config, "--admin", "tcp:0:interface=127.0.0.1", cwd=self.folder
        )
        port = server.listeningPort()
        adminPort = int(server.waitFor(ADMIN_PORT).group(1))
        started = admin(adminPort, "/healthz")["lastReload"]
        write(self.config, '[server]\nreply = "second"\nreply-dely = 1\n')
        hangUp(server, 1)
        self.assertRegex(
            server.output(),
            r"reload failed, keeping the settings in force: \S*server\.toml: "
            r"\[server\] reply-dely = 1: not an option",
        )
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            sock.settimeout(WAIT)
            self.assertEqual(exchange(sock, b"hi\n"), b"first\n")
        failed = admin(adminPort, "/healthz")["lastReload"]
        self.assertFalse(failed["ok"])
        self.assertIn("reply-dely = 1", failed["error"])
        self.assertGreater(failed["time"], started["time"])
        self.assertIn("\ntcpcomm_config_last_reload_success 0.0\n", admin(adminPort, "/metrics"))
        write(self.config, '[server]\nreply = "second"\n')
        hangUp(server, 2)
        self.assertTrue(admin(adminPort, "/healthz")["lastReload"]["ok"])
        self.assertIn("\ntcpcomm_config_last_reload_success 1.0\n", admin(adminPort, "/metrics"))
        self.assertIn(server.process.poll(), (None,))

    def test_foreground(self) -> None:
        """A foreground server without --config logs SIGHUP as a reload and keeps serving."""
        server = localServer(self, "--reply-delay", "0", cwd=self.folder)
        port = server.listeningPort()
        hangUp(server, 1)
        self.assertIn("reloaded settings: nothing changed", server.output())
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            sock.settimeout(WAIT)
            self.assertIn(b"response from server", exchange(sock, b"hi\n"))

    def test_daemonized(self) -> None:
        """A daemonized server keeps running with its pidfile after SIGHUP, and keeps serving."""
        daemon = Daemon(self, self.folder, "server", *LOCAL_SERVER, "--reply-delay", "0")
        port = int(waitForFile(daemon.logfile, r"listening on [\d.]+:(\d+)").group(1))
        os.kill(daemon.pid, signal.SIGHUP)
        waitForFile(daemon.logfile, "reloaded settings: nothing changed")
        os.kill(daemon.pid, 0)  # still there
        with open(daemon.pidfile) as f:
            self.assertEqual(int(f.read()), daemon.pid)
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            sock.settimeout(WAIT)
            self.assertIn(b"response from server", exchange(sock, b"hi\n"))

    def test_daemonizedConfig(self) -> None:
        """A daemonized server re-reads its config file on SIGHUP."""
        daemon = Daemon(self, self.folder, "server", *LOCAL_SERVER, "--config", self.config)
        port = int(waitForFile(daemon.logfile, r"listening on [\d.]+:(\d+)").group(1))
        write(self.config, '[server]\nreply = "second"\nreply-delay = 0\n')
        os.kill(daemon.pid, signal.SIGHUP)
        waitForFile(daemon.logfile, "reloaded settings: --reply")
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            sock.settimeout(WAIT)
            self.assertEqual(exchange(sock, b"hi\n"), b"second\n")

    def test_changedCertificate(self) -> None:
        """After SIGHUP a new handshake sees the replaced certificate; a connection made before is still served."""
        openssl = shutil.which("openssl")
        if openssl is None:
            raise SkipTest("openssl is not installed")
        first = Authority(self.folder, "first CA")
        second = Authority(self.folder, "second CA")
        served, servedKey = (os.path.join(self.folder, n) for n in ("server.pem", "server.key"))
        place(first.issue("first", ["127.0.0.1"]), served, servedKey)
        server = localServer(
            self,
            "--tls-cert",
            served,
            "--tls-key",
            servedKey,
            "--reply-delay",
            "0",
            cwd=self.folder,
        )
        port = server.listeningPort()

        def handshake(authority: Authority) -> str:
            result = subprocess.run(
                [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", authority.path],
                env=environment(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=WAIT,
            )
            return result.stdout

        self.assertRegex(handshake(first), r"subject=\s*CN\s*=\s*first")
        context = ssl.create_default_context(cafile=first.path)
        with context.wrap_socket(
            socket.create_connection(("127.0.0.1", port), timeout=WAIT), server_hostname="127.0.0.1"
        ) as before:
            before.settimeout(WAIT)
            self.assertIn(b"response from server", exchange(before, b"one\n"))
            place(second.issue("second", ["127.0.0.1"]), served, servedKey)
            hangUp(server, 1)
            output = handshake(second)
            self.assertRegex(output, r"subject=\s*CN\s*=\s*second")
            self.assertIn("Verify return code: 0 (ok)", output)
            self.assertIn(b"response from server", exchange(before, b"two\n"))
        self.assertIn("reloaded settings: TLS certificate second", server.output())
