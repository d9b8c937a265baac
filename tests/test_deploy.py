"""
Deployment paths end to end: IPv6, UNIX sockets, several listeners, daemons
side by side, shutdown with a peer that stops reading, and JSON logs.
"""

from __future__ import annotations

import json
import os
import random
import re
import selectors
import signal
import socket
import stat
import time
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from .processes import (
    LOCAL_SERVER,
    STOPPED,
    WAIT,
    Daemon,
    Twistd,
    assertCleanLog,
    localServer,
    readUntilClosed,
    scratch,
    signalWhenHandled,
    waitForFile,
)


def ipv6Loopback() -> None:
    """
    Skip unless this machine can listen on ::1.
    """
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError as e:
        raise SkipTest(f"no IPv6 loopback here: {e}") from None


class IPv6Tests(SynchronousTestCase):
    """
    The server listens on IPv6 and the client reaches IPv6 addresses.
    """

    def test_serverAndClientOverIPv6(self) -> None:
        """A server on ::1 answers an IPv6 socket and a client given --host ::1."""
        ipv6Loopback()
        server = Twistd(self, "tcpcomm", "server", "-p", "0", "-i", "::1", "--reply-delay", "0.2")
        port = server.listeningPort()
        server.waitFor(rf"listening on \[::1\]:{port}")
        with socket.create_connection(("::1", port), timeout=WAIT) as sock:
            sock.sendall(b"hi\n")
            sock.shutdown(socket.SHUT_WR)
            self.assertIn(b"response from server", readUntilClosed(sock))
        server.waitFor(r"connected \[::1\]:\d+")
        client = Twistd(
            self, "tcpcomm", "client", "--host", "::1", "-p", str(port), "--reply-delay", "0.2"
        )
        client.waitFor(rf"message from \[::1\]:{port}: response from server")

    def test_dualStack(self) -> None:
        """With --interface ::, an IPv4 client is served too where the system allows it."""
        ipv6Loopback()
        with open("/proc/sys/net/ipv6/bindv6only") as f:
            if f.read().strip() != "0":
                raise SkipTest("net.ipv6.bindv6only is set: :: does not take IPv4 here")
        server = Twistd(self, "tcpcomm", "server", "-p", "0", "-i", "::", "--reply-delay", "0")
        port = server.listeningPort()
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            sock.sendall(b"hi\n")
            sock.shutdown(socket.SHUT_WR)
            self.assertIn(b"response from server", readUntilClosed(sock))
        server.waitFor(r"connected \[::ffff:127\.0\.0\.1\]:\d+")


class UNIXSocketTests(SynchronousTestCase):
    """
    Servers listen on, and clients connect to, UNIX sockets.
    """

    def test_unixListenAndConnect(self) -> None:
        """--listen unix:PATH:mode=660 makes a socket of that mode; --connect unix:PATH uses it."""
        path = os.path.join(scratch(self), "tcpcomm.sock")
        server = Twistd(
            self, "tcpcomm", "server", "--listen", f"unix:{path}:mode=660", "--reply-delay", "0.2"
        )
        server.waitFor(f"listening on unix:{path}")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o660)
        client = Twistd(
            self, "tcpcomm", "client", "--connect", f"unix:{path}", "--reply-delay", "0.2"
        )
        server.waitFor(r"connected unix#1")
        server.waitFor(r"message from unix#1: hello server")
        client.waitFor(r"message from unix#\d+: response from server")

    def test_listenersShareRegistry(self) -> None:
        """TCP and UNIX listeners given together feed one registry."""
        path = os.path.join(scratch(self), "tcpcomm.sock")
        server = Twistd(
            self,
            "tcpcomm",
            "server",
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--listen",
            f"unix:{path}",
        )
        port = server.listeningPort()
        server.waitFor(f"listening on unix:{path}")
        with (
            socket.create_connection(("127.0.0.1", port), timeout=WAIT),
            socket.socket(socket.AF_UNIX) as local,
        ):
            local.connect(path)
            server.waitFor(r"connected unix#1")
            server.waitFor(r"connected 127\.0\.0\.1:\d+")
            self.assertIn(server.stop(), STOPPED)
        self.assertIn("closing 2 connection(s)", server.output())


class DaemonsSideBySideTests(SynchronousTestCase):
    """
    A daemonized server and client in one folder, each with its own files.
    """

    def test_sideBySide(self) -> None:
        """Both start, talk, and stop cleanly, removing their own pidfiles."""
        folder = scratch(self)
        server = Daemon(self, folder, "server", *LOCAL_SERVER, "--reply-delay", "0.2")
        port = waitForFile(server.logfile, r"listening on [\d.]+:(\d+)").group(1)
        client = Daemon(
            self, folder, "client", "tcpcomm", "client", "-p", port, "--reply-delay", "0.2"
        )
        self.assertNotEqual(server.pid, client.pid)
        waitForFile(client.logfile, rf"message from 127\.0\.0\.1:{port}: response from server")
        waitForFile(server.logfile, r"message from 127\.0\.0\.1:\d+: response from client")
        for daemon in (client, server):
            daemon.stop()
            self.assertFalse(os.path.exists(daemon.pidfile), daemon.pidfile)
            waitForFile(daemon.logfile, "Server Shut Down")
            assertCleanLog(self, daemon.log())


class ShutdownTests(SynchronousTestCase):
    """
    Stopping never hangs on a peer that stops reading.
    """

    def test_peerThatStopsReading(self) -> None:
        """A peer with unread replies piling up is dropped after --shutdown-timeout."""
        server = localServer(
            self,
            "--reply-delay",
            "0",
            "--shutdown-timeout",
            "1",
            # Room for every unread reply, so that shutdown, not the
            # slow-consumer limit, is what drops this peer.
            "--max-pending-bytes",
            "100000000",
        )
        port = server.listeningPort()
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(WAIT)
            sock.connect(("127.0.0.1", port))
            # About 8 MB of replies that this peer will never read.
            burst = b"x\n" * 100_000
            for _ in range(2):
                sock.sendall(burst)
            deadline = time.monotonic() + WAIT
            while server.output().count("message from") < 100_000 and time.monotonic() < deadline:
                time.sleep(0.05)
            started = time.monotonic()
            self.assertIn(server.stop(), STOPPED)
            elapsed = time.monotonic() - started
        log = server.output()
        self.assertIn("aborting 1 connection(s) still open after 1.0 s", log)
        self.assertGreaterEqual(elapsed, 1.0)
        self.assertLess(elapsed, 1.0 + 5)
        assertCleanLog(self, log)


def jsonLines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class JSONLogTests(SynchronousTestCase):
    """
    --log-format json writes one JSON object per event with stable fields.
    """

    def test_foreground(self) -> None:
        """In the foreground every line of output is a JSON event, named and with its fields."""
        server = localServer(
            self,
            "--reply-delay",
            "0",
            "--log-format",
            "json",
        )
        port = int(
            server.waitFor(r'"event": "listening".*"address": "127\.0\.0\.1:(\d+)"').group(1)
        )
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            sock.sendall("héllo\n".encode())
            sock.shutdown(socket.SHUT_WR)
            readUntilClosed(sock)
        server.waitFor(r'"event": "lost"')
        self.assertIn(server.stop(), STOPPED)
        events = jsonLines(server.output())
        for event in events:
            self.assertTrue({"time", "level", "namespace", "event", "text"} <= set(event), event)
        byName = {e["event"]: e for e in events}
        self.assertEqual(byName["message"]["message"], "héllo")
        self.assertRegex(byName["message"]["peer"], r"^127\.0\.0\.1:\d+$")
        self.assertEqual(byName["connected"]["peer"], byName["message"]["peer"])
        self.assertIn("closed cleanly", byName["lost"]["reason"])
        self.assertEqual(byName["lost"]["level"], "info")
        self.assertRegex(byName["lost"]["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")

    def test_daemonLogfile(self) -> None:
        """Daemonized, the JSON lines go to --logfile."""
        daemon = Daemon(self, scratch(self), "server", *LOCAL_SERVER, "--log-format", "json")
        waitForFile(daemon.logfile, r'"event": "listening"')
        daemon.stop()
        waitForFile(daemon.logfile, r"Server Shut Down")
        self.assertIn("listening", [e["event"] for e in jsonLines(daemon.log())])


class SIGUSR1Tests(SynchronousTestCase):
    """
    SIGUSR1 rotates a log file, and never ends the process.
    """

    def test_foregroundOnStdout(self) -> None:
        """A twistd -n server logging to standard output survives SIGUSR1, keeps serving, and says once that there is nothing to rotate."""
        server = localServer(self, "--reply-delay", "0")
        port = server.listeningPort()
        signalWhenHandled(server.pid, signal.SIGUSR1)
        server.waitFor(r"\[tcpcomm\.logs#info\] SIGUSR1: there is no log file to rotate")
        signalWhenHandled(server.pid, signal.SIGUSR1)
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
                sock.sendall(b"hi\n")
                sock.shutdown(socket.SHUT_WR)
                self.assertIn(b"response from server", readUntilClosed(sock))
        self.assertIsNone(server.process.poll())
        self.assertIn(server.stop(), STOPPED)
        log = server.output()
        self.assertEqual(log.count("no log file to rotate"), 1)
        assertCleanLog(self, log)

    def test_daemonRotates(self) -> None:
        """SIGUSR1 to a daemon with --logfile moves its log to .1 and starts a new one, in text and JSON."""
        for logFormat in ["text", "json"]:
            daemon = Daemon(self, scratch(self), "server", *LOCAL_SERVER, "--log-format", logFormat)
            port = int(waitForFile(daemon.logfile, r"listening on 127\.0\.0\.1:(\d+)").group(1))
            signalWhenHandled(daemon.pid, signal.SIGUSR1)
            rotated = daemon.logfile + ".1"
            waitForFile(rotated, "listening on")
            with socket.create_connection(("127.0.0.1", port), timeout=WAIT):
                waitForFile(daemon.logfile, r"connected 127\.0\.0\.1:\d+")
            daemon.stop()
            waitForFile(daemon.logfile, "Server Shut Down")
            with open(rotated, encoding="utf-8") as f:
                old = f.read()
            self.assertNotIn("connected 127.0.0.1", old)
            for text in (old, daemon.log()):
                assertCleanLog(self, text)
                if logFormat == "json":
                    self.assertTrue(jsonLines(text), logFormat)


class HostilePeerLogTests(SynchronousTestCase):
    """
    What a hostile peer sends cannot forge lines in the text log, nor flood it.
    """

    def test_forgedLine(self) -> None:
        """A peer sending "a\\r\\nfake [tcpcomm#info] line\\x1b[31m" leaves one escaped line in the text log."""
        forgery = b"a\r\nfake [tcpcomm#info] line\x1b[31m"
        for framing, framed in [
            ("netstring", b"%d:%s," % (len(forgery), forgery)),
            ("line", forgery.replace(b"\r\n", b"\r") + b"\n"),
        ]:
            server = localServer(self, "--framing", framing, "--reply-delay", "0")
            port = server.listeningPort()
            with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
                sock.sendall(framed)
                sock.shutdown(socket.SHUT_WR)
                readUntilClosed(sock)
            server.waitFor(r"lost 127\.0\.0\.1")
            self.assertIn(server.stop(), STOPPED)
            with open(server.logPath, "rb") as f:
                log = f.read()
            self.assertNotIn(b"\r", log)
            self.assertNotIn(b"\x1b", log)
            lines = [line for line in log.split(b"\n") if b"fake" in line]
            escaped = (
                forgery.replace(b"\r", b"\\r").replace(b"\n", b"\\n").replace(b"\x1b", b"\\x1b")
            )
            if framing == "line":
                escaped = escaped.replace(b"\\r\\n", b"\\r")
            self.assertEqual(len(lines), 1, lines)
            self.assertRegex(
                lines[0].decode(),
                r"^\S+ \[tcpcomm\.session#info\] message from 127\.0\.0\.1:\d+: "
                + re.escape(escaped.decode())
                + "$",
            )

    def test_garbageStream(self) -> None:
        """A peer streaming 4 MB of undecodable lines gets every error reply but adds only a few lines to the log, the last counting what was left out."""
        server = localServer(self, "--reply-delay", "0")
        port = server.listeningPort()
        rng = random.Random(7)
        lines = [
            bytes(rng.randrange(0x80, 0x100) for _ in range(rng.randrange(100, 400))) + b"\n"
            for _ in range(16_000)
        ]
        garbage = b"".join(lines)
        server.waitFor("listening on")
        before = os.path.getsize(server.logPath)
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            replies = readWhileSending(sock, garbage)
        self.assertEqual(replies.count(b"server error "), len(lines))
        summary = server.waitFor(
            r"(\d+) more undecodable messages from 127\.0\.0\.1:\d+ suppressed"
        )
        self.assertEqual(int(summary.group(1)), len(lines) - 1)
        server.waitFor(r"lost 127\.0\.0\.1")
        grown = os.path.getsize(server.logPath) - before
        self.assertLess(grown, 4096, server.output()[-5000:])
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            sock.sendall(b"still here\n")
            sock.shutdown(socket.SHUT_WR)
            self.assertIn(b"response from server", readUntilClosed(sock))
        assertCleanLog(self, server.output())


def readWhileSending(sock: socket.socket, data: bytes) -> bytes:
    """
    Send C{data}, then end the sending side, reading all the while; return
    everything read until the other side closes (bounded by L{WAIT}).
    """
    sock.setblocking(False)
    received: list[bytes] = []
    view = memoryview(data)
    deadline = time.monotonic() + WAIT
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while time.monotonic() < deadline:
            for _, mask in selector.select(timeout=0.5):
                if mask & selectors.EVENT_READ:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return b"".join(received)
                    received.append(chunk)
                if mask & selectors.EVENT_WRITE and view:
                    view = view[sock.send(view[:65536]) :]
                    if not view:
                        sock.shutdown(socket.SHUT_WR)
                        selector.modify(sock, selectors.EVENT_READ)
    raise AssertionError(f"still open after {WAIT} s; {len(view)} bytes unsent")
