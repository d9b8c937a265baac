"""
Faults, end to end: real C{twistd} processes of the installed package whose
server dies, whose peers vanish or stop reading or flood it, and whose
network goes away. Every wait is bounded and every process is stopped by
its pid.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
import urllib.request
from typing import IO, Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from .certs import Authority
from .processes import (
    STOPPED,
    TWISTD,
    WAIT,
    Twistd,
    assertCleanLog,
    environment,
    freePort,
    readUntilClosed,
    scratch,
)

ADMIN_PORT = r"listening on 127\.0\.0\.1:(\d+) \(admin API"


def getJSON(port: int, path: str) -> Any:
    """
    C{GET path} on the admin API at C{port}, decoded.
    """
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=WAIT) as response:
        return json.loads(response.read())


def waitUntil(what: str, check: Any, timeout: float = WAIT, every: float = 0.05) -> Any:
    """
    Call C{check} until it returns something true, for at most C{timeout}
    seconds; return that.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout} s (last: {result!r})")
        time.sleep(every)


def waitForCount(process: Twistd, pattern: str, count: int, timeout: float = WAIT) -> None:
    """
    Wait until C{process} has logged C{pattern} at least C{count} times.
    """
    waitUntil(
        f"{count} times {pattern!r}",
        lambda: len(re.findall(pattern, process.output())) >= count,
        timeout,
    )


def clientIds(admin: int) -> set[str]:
    return {c["id"] for c in getJSON(admin, "/clients")}


def dial(port: int, host: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection((host, port), timeout=WAIT)


def localId(sock: socket.socket) -> str:
    """
    The server's id for the peer at this end of C{sock}.
    """
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def readLine(sock: socket.socket, timeout: float = WAIT) -> bytes:
    """
    One line from a blocking socket, read a byte at a time so nothing after
    it is consumed.
    """
    sock.settimeout(timeout)
    line = b""
    while not line.endswith(b"\n"):
        byte = sock.recv(1)
        if not byte:
            raise AssertionError(f"closed after {line!r}")
        line += byte
    return line


def kernelSendBufferMax() -> int:
    """
    The most a TCP socket's send buffer may grow to (net.ipv4.tcp_wmem).
    """
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            return int(f.read().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 << 20


def reset(sock: socket.socket) -> None:
    """
    Close C{sock} with a TCP RST rather than a FIN.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class ServerCase(SynchronousTestCase):
    """
    A real server on loopback with its admin API.
    """

    def server(self, *args: str, cwd: str | None = None) -> tuple[Twistd, int, int]:
        """
        A server on a free loopback port, that port, and its admin port.
        """
        process = Twistd(
            self,
            "tcpcomm",
            "server",
            "-p",
            "0",
            "-i",
            "127.0.0.1",
            "--admin",
            "tcp:0:interface=127.0.0.1",
            *args,
            cwd=cwd,
        )
        return process, process.listeningPort(), int(process.waitFor(ADMIN_PORT).group(1))


class ServerDeathTests(SynchronousTestCase):
    """
    A server killed without warning, and started again.
    """

    def test_killedAndRestarted(self) -> None:
        """Real clients of a server killed with SIGKILL reconnect by themselves to its restart on the same port, which lists them all."""
        port = str(freePort())
        serverArgs = (
            "tcpcomm",
            "server",
            "-p",
            port,
            "-i",
            "127.0.0.1",
            "--reply-delay",
            "1",
            "--admin",
            "tcp:0:interface=127.0.0.1",
        )
        first = Twistd(self, *serverArgs)
        first.listeningPort()
        clients = [
            Twistd(
                self,
                "tcpcomm",
                "client",
                "-p",
                port,
                "--retry-initial",
                "0.2",
                "--retry-max",
                "1",
                "--reply-delay",
                "1",
            )
            for _ in range(3)
        ]
        connected = rf"connected 127\.0\.0\.1:{port}\n"
        for client in clients:
            client.waitFor(connected)
        waitForCount(first, r"connected 127\.0\.0\.1:\d+\n", 3)
        marks = [len(client.output()) for client in clients]
        self.assertEqual(first.stop(signal.SIGKILL), -signal.SIGKILL)
        for client, mark in zip(clients, marks, strict=True):
            client.waitFor(rf"lost 127\.0\.0\.1:{port}: ", after=mark)
        second = Twistd(self, *serverArgs, cwd=first.cwd)
        second.listeningPort()
        admin = int(second.waitFor(ADMIN_PORT).group(1))
        for client, mark in zip(clients, marks, strict=True):
            client.waitFor(connected, after=mark)
            self.assertEqual(len(re.findall(connected, client.output())), 2)
        ids = waitUntil("all three listed", lambda: len(clientIds(admin)) == 3 and clientIds(admin))
        logged = set(re.findall(r"connected (127\.0\.0\.1:\d+)\n", second.output()))
        self.assertEqual(ids, logged)
        for process in (second, *clients):
            assertCleanLog(self, process.output())


class VanishingPeerTests(ServerCase):
    """
    Peers that go without a word: a TCP RST in the middle of a message.
    """

    def test_resetMidMessage(self) -> None:
        """Clients that vanish mid-message with a TCP RST leave no registry entry, and the server carries on without a traceback."""
        server, port, admin = self.server("--handler", "echo")
        socks = [dial(port) for _ in range(20)]
        for sock in socks:
            self.addCleanup(sock.close)
        ids = {localId(s) for s in socks}
        waitUntil("all listed", lambda: clientIds(admin) == ids)
        for i, sock in enumerate(socks):
            if i % 2:
                # The server has read the half message before the RST comes.
                sock.sendall(b"whole message %d\nhalf a mess" % i)
                self.assertEqual(readLine(sock), b"whole message %d\n" % i)
            else:
                # An echo is owed when the RST comes.
                sock.sendall(b"whole message %d\nhalf a mess" % i)
            reset(sock)
        waitUntil("the registry empty", lambda: getJSON(admin, "/clients") == [])
        waitForCount(server, r"lost 127\.0\.0\.1:\d+: ", 20)
        with dial(port) as sock:
            sock.sendall(b"still there?\n")
            self.assertEqual(readLine(sock), b"still there?\n")
            self.assertEqual(clientIds(admin), {localId(sock)})
        assertCleanLog(self, server.output())


class SlowConsumerTests(ServerCase):
    """
    A peer that stops reading, among peers that read.
    """

    def test_cutAtMaxPendingBytes(self) -> None:
        """A peer that stops reading is cut at --max-pending-bytes, while a reading peer gets every broadcast message."""
        server, port, admin = self.server("--handler", "broadcast", "--max-pending-bytes", "65536")
        stuck = socket.socket()
        self.addCleanup(stuck.close)
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fill up fast
        stuck.settimeout(WAIT)
        stuck.connect(("127.0.0.1", port))
        reader = dial(port)
        sender = dial(port)
        for sock in (reader, sender):
            self.addCleanup(sock.close)
        stuckId = localId(stuck)
        waitUntil("all listed", lambda: len(clientIds(admin)) == 3)
        reader.setblocking(False)
        sent = received = 0
        pending = b""
        window = 64  # messages the reader may lag behind: it never becomes slow itself
        cutAt = None
        checked = time.monotonic()
        deadline = time.monotonic() + 30
        # Enough to fill a non-reader's buffers many times over (the cut comes
        # after a few hundred KiB), bounded so a missing cut fails quickly.
        limit = 8 << 20
        size = 1000
        after = 50  # messages sent once the stuck peer is gone
        while time.monotonic() < deadline:
            if cutAt is None and sent * size > limit:
                # The admin API is asked every 0.25 s: the cut may have
                # come since the last time; look once more, then give up.
                wait = time.monotonic() + 2
                while stuckId in clientIds(admin) and time.monotonic() < wait:
                    time.sleep(0.05)
                if stuckId in clientIds(admin):
                    break
                cutAt = sent
            if cutAt is not None and sent >= cutAt + after and received == sent:
                break
            if sent - received < window and (cutAt is None or sent < cutAt + after):
                sender.sendall(b"%08d" % sent + b"." * (size - 9) + b"\n")
                sent += 1
            try:
                chunk = reader.recv(65536)
            except BlockingIOError:
                chunk = b""
                if sent - received >= window or cutAt is not None:
                    time.sleep(0.001)
            if chunk:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self.assertEqual(line[:8], b"%08d" % received)
                    self.assertEqual(len(line), size - 1)
                    received += 1
            if cutAt is None and time.monotonic() - checked > 0.25:
                checked = time.monotonic()
                if stuckId not in clientIds(admin):
                    cutAt = sent
        self.assertIsNotNone(cutAt, f"{stuckId} not cut after {sent * size} bytes")
        self.assertEqual(received, sent)
        self.assertGreaterEqual(sent, (cutAt or 0) + after)
        cut = server.waitFor(r"disconnecting " + re.escape(stuckId) + r": it does not read.*")
        self.assertIn("--max-pending-bytes 65536", cut.group(0))
        self.assertEqual(clientIds(admin), {localId(reader), localId(sender)})
        assertCleanLog(self, server.output())


class ConnectionFloodTests(ServerCase):
    """
    More connections than --max-connections.
    """

    def test_overMaxConnections(self) -> None:
        """Of 80 connections against --max-connections 50, the last 30 each get --full-reply and are closed (counted, and logged once) while the first 50 stay and are answered."""
        server, port, admin = self.server(
            "--handler",
            "echo",
            "--max-connections",
            "50",
            "--full-reply",
            "full, come back later",
            "--backlog",
            "128",
        )
        socks = [dial(port) for _ in range(80)]
        for sock in socks:
            self.addCleanup(sock.close)
        kept, extra = socks[:50], socks[50:]
        for sock in extra:
            self.assertEqual(readUntilClosed(sock), b"full, come back later\n")
        for i, sock in enumerate(kept):
            sock.sendall(b"still here %d\n" % i)
        for i, sock in enumerate(kept):
            self.assertEqual(readLine(sock), b"still here %d\n" % i)
        self.assertEqual(clientIds(admin), {localId(s) for s in kept})
        # One line for the lot (at most one per 10 s); the metric counts each.
        self.assertEqual(len(re.findall(r"refusing 127\.0\.0\.1:\d+: ", server.output())), 1)
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=WAIT) as r:
            self.assertIn("\ntcpcomm_refused_connections_total 30.0\n", r.read().decode())
        # Room again once one leaves.
        kept[0].close()
        waitUntil("49 left", lambda: len(clientIds(admin)) == 49)
        with dial(port) as sock:
            sock.sendall(b"room now\n")
            self.assertEqual(readLine(sock), b"room now\n")
        assertCleanLog(self, server.output())


class BackedUpCloseTests(ServerCase):
    """
    Closing a connection whose output is backed up.
    """

    def test_halfCloseWhileBackedUp(self) -> None:
        """A peer that half-closes while its echoes are backed up gets every one, then the end of the stream."""
        # A short --shutdown-timeout: a connection left open by the bug would
        # hold the server's stop for the default 10 s.
        server, port, admin = self.server(
            "--handler", "echo", "--max-pending-bytes", str(1 << 30), "--shutdown-timeout", "1"
        )
        sock = socket.socket()
        self.addCleanup(sock.close)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(WAIT)
        sock.connect(("127.0.0.1", port))
        # More than the kernel's send buffer can take, so that Twisted's own
        # buffer is full (and its producer paused) when the peer half-closes.
        size = 50_000
        count = (2 * kernelSendBufferMax() + (2 << 20)) // size + 1
        sock.sendall(b"".join(b"%08d" % i + b"." * (size - 9) + b"\n" for i in range(count)))
        sock.shutdown(socket.SHUT_WR)
        # Let the server read it all (and so fill its buffer) before reading.
        waitUntil(
            "every message read",
            lambda: [c["messagesIn"] for c in getJSON(admin, "/clients")] == [count],
        )
        sock.settimeout(3)
        data = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            self.fail(f"no end of stream within 3 s after {len(data)} of {count * size} bytes")
        self.assertEqual(len(data), count * size)
        waitUntil("the registry empty", lambda: getJSON(admin, "/clients") == [])


class TLSFaultTests(ServerCase):
    """
    The same faults over TLS, where closing goes through the TLS layer.
    """

    def setUp(self) -> None:
        folder = scratch(self)
        self.ca = Authority(folder, "faults")
        self.cert, self.key = self.ca.issue("localhost", ["localhost", "127.0.0.1"])

    def tlsServer(self, *args: str) -> tuple[Twistd, int]:
        process = Twistd(
            self,
            "tcpcomm",
            "server",
            "-p",
            "0",
            "-i",
            "127.0.0.1",
            "--tls-cert",
            self.cert,
            "--tls-key",
            self.key,
            "--shutdown-timeout",
            "2",
            *args,
        )
        return process, process.listeningPort()

    def test_oversizedOverTLS(self) -> None:
        """A TLS peer that sends a message over --max-message-size is disconnected, as a plain one is."""
        server, port = self.tlsServer("--reply-delay", "0", "--max-message-size", "16")
        context = ssl.create_default_context(cafile=self.ca.path)
        with context.wrap_socket(dial(port), server_hostname="127.0.0.1") as sock:
            sock.sendall(b"hi\n")
            self.assertTrue(readLine(sock).startswith(b"response from server"))
            sock.sendall(b"x" * 100 + b"\n")
            server.waitFor(r"exceeds --max-message-size 16")
            sock.settimeout(3)
            try:
                data = sock.recv(100)
            except TimeoutError:
                self.fail("still connected 3 s after an oversized message")
            except (ssl.SSLError, OSError):
                data = b""
            self.assertEqual(data, b"")
        server.waitFor(r"lost 127\.0\.0\.1:\d+")

    def test_tlsClientStops(self) -> None:
        """A TLS client stops promptly on SIGTERM, closing its connection."""
        server, port = self.tlsServer("--reply-delay", "1")
        client = Twistd(
            self,
            "tcpcomm",
            "client",
            "-p",
            str(port),
            "--tls",
            "--tls-ca",
            self.ca.path,
            "--reply-delay",
            "1",
        )
        client.waitFor(r"secured 127\.0\.0\.1:\d+")
        started = time.monotonic()
        os.kill(client.pid, signal.SIGTERM)
        try:
            client.process.wait(3)
        except subprocess.TimeoutExpired:
            client.stop(signal.SIGKILL)
            self.fail("the TLS client was still running 3 s after SIGTERM")
        self.assertIn(client.stop(), STOPPED)
        self.assertLess(time.monotonic() - started, 3)
        server.waitFor(r"lost 127\.0\.0\.1:\d+: Connection was closed cleanly")


class NetnsTwistd(Twistd):
    """
    A C{twistd -n} process run in a network namespace by C{ip netns exec},
    which execs it: the pid is twistd's own.
    """

    def __init__(self, case: SynchronousTestCase, namespace: str, *args: str) -> None:
        self.cwd = scratch(case)
        self.logPath = os.path.join(self.cwd, f"twistd-{time.monotonic_ns()}.log")
        self._out: IO[bytes] = open(self.logPath, "wb")
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, TWISTD, "-n", "--pidfile=", *args],
            cwd=self.cwd,
            env=environment(),
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        case.addCleanup(self.stop)


def ip(*args: str) -> None:
    """
    Run C{ip args}; raise with its message if it fails.
    """
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=WAIT)
    if result.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {result.stderr.strip()}")


class NetworkCutTests(SynchronousTestCase):
    """
    A real network cut, between two network namespaces joined by a veth pair.
    """

    HEARTBEAT = 1.0
    SLACK = 3.0  # a busy 2-core machine; the kernel's retransmission timer rounds up

    def namespaces(self) -> tuple[str, str, str]:
        """
        Two new namespaces, joined by a veth pair whose server end is
        returned, with 10.213.77.1 and .2/30 in them (and nowhere else);
        deleted after the test whatever happens.
        """
        if sys.platform != "linux" or os.geteuid() != 0:
            raise SkipTest("network namespaces need root on Linux")
        if shutil.which("ip") is None:
            raise SkipTest("ip (iproute2) is not installed")
        tag = f"{os.getpid()}{os.urandom(2).hex()}"
        server, client = f"tcpc{tag}s", f"tcpc{tag}c"
        try:
            ip("netns", "add", server)
        except OSError as e:
            raise SkipTest(f"cannot create a network namespace: {e}") from None
        self.addCleanup(subprocess.run, ["ip", "netns", "del", server], timeout=WAIT)
        ip("netns", "add", client)
        self.addCleanup(subprocess.run, ["ip", "netns", "del", client], timeout=WAIT)
        serverEnd, clientEnd = f"tv{tag}s"[:15], f"tv{tag}c"[:15]
        ip("-n", server, "link", "add", serverEnd, "type", "veth", "peer", "name", clientEnd)
        ip("-n", server, "link", "set", clientEnd, "netns", client)
        ip("-n", server, "addr", "add", "10.213.77.1/30", "dev", serverEnd)
        ip("-n", client, "addr", "add", "10.213.77.2/30", "dev", clientEnd)
        for namespace, end in ((server, serverEnd), (client, clientEnd)):
            ip("-n", namespace, "link", "set", end, "up")
            ip("-n", namespace, "link", "set", "lo", "up")
        return server, client, serverEnd

    def test_cutAndRestored(self) -> None:
        """A client with --heartbeat notices a cut link within two intervals, and reconnects once it is back."""
        serverNS, clientNS, serverEnd = self.namespaces()
        beat = str(self.HEARTBEAT)
        server = NetnsTwistd(
            self,
            serverNS,
            "tcpcomm",
            "server",
            "-p",
            "9527",
            "-i",
            "10.213.77.1",
            "--heartbeat",
            beat,
            "--reply-delay",
            "1",
        )
        server.waitFor(r"listening on 10\.213\.77\.1:9527")
        client = NetnsTwistd(
            self,
            clientNS,
            "tcpcomm",
            "client",
            "--host",
            "10.213.77.1",
            "-p",
            "9527",
            "--heartbeat",
            beat,
            "--timeout",
            "2",
            "--retry-initial",
            "0.2",
            "--retry-max",
            "1",
            "--reply-delay",
            "1",
        )
        connected = r"connected 10\.213\.77\.1:9527\n"
        client.waitFor(connected)
        server.waitFor(r"message from 10\.213\.77\.2:\d+: hello server")
        mark = len(client.output())
        ip("-n", serverNS, "link", "set", serverEnd, "down")
        cut = time.monotonic()
        client.waitFor(r"lost 10\.213\.77\.1:9527: ", after=mark, timeout=WAIT)
        noticed = time.monotonic() - cut
        self.assertLess(noticed, 2 * self.HEARTBEAT + self.SLACK)
        mark = len(client.output())
        ip("-n", serverNS, "link", "set", serverEnd, "up")
        client.waitFor(connected, after=mark, timeout=WAIT)
        waitForCount(server, r"connected 10\.213\.77\.2:\d+\n", 2)
        for process in (server, client):
            assertCleanLog(self, process.output())
