"""
End to end: real C{twistd} processes of the installed package, over loopback.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import socket
import subprocess
import time
from typing import cast

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from .processes import (
    LOCAL_SERVER,
    STOPPED,
    WAIT,
    Daemon,
    Twistd,
    assertCleanLog,
    environment,
    freePort,
    readUntilClosed,
    run,
    scratch,
    waitForFile,
)

REPLY = re.compile(rb"^response from server \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\n$")


def server(case: SynchronousTestCase, *args: str) -> tuple[Twistd, int]:
    """
    A server on a free loopback port, and that port.
    """
    process = Twistd(case, "tcpcomm", "server", "--port", "0", "--interface", "127.0.0.1", *args)
    return process, process.listeningPort()


def dial(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    return sock


class PackagingTests(SynchronousTestCase):
    """
    The installed package answers twistd from any folder.
    """

    def test_twistdListsPlugin(self) -> None:
        """twistd --help lists tcpcomm."""
        result = run(self, "--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(result.stdout, r"\n\s+tcpcomm\s+A framed TCP message server")

    def test_help(self) -> None:
        """twistd tcpcomm server --help describes each option with its default."""
        result = run(self, "tcpcomm", "server", "--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        text = " ".join(result.stdout.split())
        for option in ["--port=", "[default: 9527]", "--reply-delay=", "--framing=", "--listen="]:
            self.assertIn(option, text)

    def test_badOption(self) -> None:
        """A bad value exits non-zero naming the option and the value, before listening."""
        result = run(self, "-n", "tcpcomm", "server", "--port", "70000")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(
            "--port must be an integer from 0 to 65535, not '70000'", result.stdout + result.stderr
        )


class ServerTests(SynchronousTestCase):
    """
    A real server answers plain sockets and nc.
    """

    def test_halfClosedPeerGetsReply(self) -> None:
        """A peer that sends a line and shuts its sending side gets one reply, then EOF."""
        process, port = server(self, "--reply-delay", "0")
        with dial(port) as sock:
            sock.sendall(b"hi\n")
            sock.shutdown(socket.SHUT_WR)
            self.assertRegex(readUntilClosed(sock), REPLY)
        process.waitFor(r"lost 127\.0\.0\.1:\d+")
        log = process.output()
        self.assertRegex(log, r"connected 127\.0\.0\.1:\d+")
        self.assertRegex(log, r"message from 127\.0\.0\.1:\d+: hi\n")

    def test_halfClosedPeerGetsDelayedReplies(self) -> None:
        """Replies owed after the delay still arrive after the peer stops sending."""
        process, port = server(self, "--reply-delay", "0.5")
        with dial(port) as sock:
            sock.sendall(b"one\r\ntwo\n")
            sock.shutdown(socket.SHUT_WR)
            started = time.monotonic()
            data = readUntilClosed(sock)
            self.assertGreaterEqual(time.monotonic() - started, 0.45)
        self.assertEqual(data.count(b"response from server"), 2)

    def test_nc(self) -> None:
        """printf 'hi\\n' | nc -N 127.0.0.1 PORT prints one reply line."""
        nc = shutil.which("nc")
        if nc is None:
            raise SkipTest("nc (netcat-openbsd) is not installed")
        process, port = server(self, "--reply-delay", "0")
        result = subprocess.run(
            f"printf 'hi\\n' | {nc} -N 127.0.0.1 {port}",
            shell=True,
            capture_output=True,
            timeout=WAIT,
            env=environment(),
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(result.stdout, REPLY)

    def test_undecodable(self) -> None:
        """Undecodable bytes get the error reply and the connection stays up."""
        process, port = server(self, "--reply-delay", "0")
        with dial(port) as sock:
            sock.sendall(b"\xff\xfe\n")
            self.assertTrue(sock.recv(100).startswith(b"server error "))
            sock.sendall(b"ok\n")
            self.assertTrue(sock.recv(100).startswith(b"response from server "))
        process.waitFor(r"undecodable message from 127\.0\.0\.1:\d+: b'\\xff\\xfe'")

    def test_oversizeDisconnectsOnlyThatPeer(self) -> None:
        """A peer over --max-message-size is cut off; another peer is still answered."""
        process, port = server(self, "--reply-delay", "0", "--max-message-size", "16")
        with dial(port) as good, dial(port) as bad:
            bad.sendall(b"x" * 100 + b"\n")
            self.assertEqual(readUntilClosed(bad), b"")
            good.sendall(b"still here\n")
            self.assertTrue(good.recv(100).startswith(b"response from server"))
        process.waitFor(r"exceeds --max-message-size 16")

    def test_hundredClientsInParallel(self) -> None:
        """100 clients that each send one message all get their reply 1 to 2 s later."""
        process, port = server(self, "--reply-delay", "1")
        selector = selectors.DefaultSelector()
        socks = [dial(port) for _ in range(100)]
        sent: dict[socket.socket, float] = {}
        latency: dict[socket.socket, float] = {}
        try:
            for sock in socks:
                sent[sock] = time.monotonic()  # before: the server may read it at once
                sock.sendall(b"ping\n")
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ)
            deadline = time.monotonic() + WAIT
            buffers = {sock: b"" for sock in socks}
            while len(latency) < len(socks) and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=0.5):
                    sock = cast(socket.socket, key.fileobj)
                    buffers[sock] += sock.recv(1000)
                    if buffers[sock].endswith(b"\n") and sock not in latency:
                        latency[sock] = time.monotonic() - sent[sock]
        finally:
            selector.close()
            for sock in socks:
                sock.close()
        self.assertEqual(len(latency), 100)
        # The reactor's timers run on the wall clock, this on the monotonic one.
        self.assertGreaterEqual(min(latency.values()), 0.99)
        self.assertLess(max(latency.values()), 2.0)
        self.assertTrue(all(REPLY.match(b) for b in buffers.values()))

    def test_rawFraming(self) -> None:
        """With --framing raw, a chunk without delimiter is a message and the reply has none."""
        process, port = server(self, "--reply-delay", "0", "--framing", "raw")
        with dial(port) as sock:
            sock.sendall("你好服务器".encode())
            reply = sock.recv(100)
        self.assertRegex(reply, rb"^response from server [\d:\- ]+$")
        process.waitFor("message from 127\\.0\\.0\\.1:\\d+: 你好服务器")

    def test_sigtermClosesPeersCleanly(self) -> None:
        """SIGTERM closes every peer, drops owed replies quietly, and exits 0 without a traceback."""
        process, port = server(self, "--reply-delay", "30")
        with dial(port) as a, dial(port) as b:
            a.sendall(b"owed\n")
            b.sendall(b"owed\n")
            process.waitFor(r"message from .*\n(.|\n)*message from ")
            started = time.monotonic()
            self.assertIn(process.stop(), STOPPED)
            self.assertLess(time.monotonic() - started, 5)
            self.assertEqual(readUntilClosed(a), b"")
            self.assertEqual(readUntilClosed(b), b"")
        log = process.output()
        self.assertIn("closing 2 connection(s)", log)
        assertCleanLog(self, log)


class PortInUseTests(SynchronousTestCase):
    """
    A busy port makes twistd fail loudly, never a silent success.
    """

    def setUp(self) -> None:
        self.busy = socket.socket()
        self.busy.bind(("127.0.0.1", 0))
        self.busy.listen(1)
        self.addCleanup(self.busy.close)
        self.port = str(self.busy.getsockname()[1])

    def test_foreground(self) -> None:
        """In the foreground twistd exits non-zero and says the address is in use."""
        result = run(
            self, "-n", "--pidfile=", "tcpcomm", "server", "-p", self.port, "-i", "127.0.0.1"
        )
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("Address already in use", result.stdout + result.stderr)

    def test_daemonized(self) -> None:
        """Daemonized, twistd exits non-zero and says the address is in use."""
        folder = scratch(self)
        pidfile = os.path.join(folder, "server.pid")
        result = run(
            self,
            "--pidfile",
            pidfile,
            "--logfile",
            os.path.join(folder, "server.log"),
            "tcpcomm",
            "server",
            "-p",
            self.port,
            "-i",
            "127.0.0.1",
        )
        # twistd cuts the child's error to 100 bytes and points at the log file.
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("CannotListenError", result.stdout + result.stderr)
        # The child finishes writing its traceback after the parent has exited.
        waitForFile(os.path.join(folder, "server.log"), "Address already in use")
        self.assertFalse(os.path.exists(pidfile))


class DaemonTests(SynchronousTestCase):
    """
    Daemonized with --pidfile and --logfile, as the README says.
    """

    def test_daemonServesAndStops(self) -> None:
        """The daemon writes its pid, serves, and on SIGTERM stops and removes the pidfile."""
        daemon = Daemon(self, scratch(self), "server", *LOCAL_SERVER, "--reply-delay", "0")
        port = int(waitForFile(daemon.logfile, r"listening on [\d.]+:(\d+)").group(1))
        with dial(port) as sock:
            sock.sendall(b"hi\n")
            sock.shutdown(socket.SHUT_WR)
            self.assertRegex(readUntilClosed(sock), REPLY)
        daemon.stop()
        self.assertFalse(os.path.exists(daemon.pidfile))
        waitForFile(daemon.logfile, "Server Shut Down")
        assertCleanLog(self, daemon.log())


class ClientTests(SynchronousTestCase):
    """
    A real client keeps its connection to a real server.
    """

    def test_clientBeforeServerAndAfterRestart(self) -> None:
        """A client started first connects once the server is up, and again after a restart."""
        port = str(freePort())
        client = Twistd(
            self,
            "tcpcomm",
            "client",
            "--port",
            port,
            "--retry-initial",
            "0.2",
            "--retry-max",
            "1",
            "--reply-delay",
            "0.2",
        )
        client.waitFor("cannot connect to 127.0.0.1:" + port)
        serverArgs = ("tcpcomm", "server", "-p", port, "-i", "127.0.0.1", "--reply-delay", "0.2")
        first = Twistd(self, *serverArgs)
        first.listeningPort()
        up = time.monotonic()
        client.waitFor("connected 127.0.0.1:" + port)
        self.assertLess(time.monotonic() - up, 1 + 1)  # --retry-max, and a second to spare
        first.waitFor("message from 127.0.0.1:\\d+: hello server, this is the client ")
        first.waitFor("message from 127.0.0.1:\\d+: response from client ")
        client.waitFor(f"message from 127.0.0.1:{port}: response from server ")
        mark = len(client.output())
        self.assertIn(first.stop(), STOPPED)
        client.waitFor("lost 127.0.0.1:" + port, after=mark)
        second = Twistd(self, *serverArgs, cwd=first.cwd)
        second.listeningPort()
        client.waitFor("connected 127.0.0.1:" + port, after=mark)
        second.waitFor("message from 127.0.0.1:\\d+: hello server")
        self.assertIn(client.stop(), STOPPED)
        second.waitFor("lost 127.0.0.1:")
        for process in (client, first, second):
            assertCleanLog(self, process.output())

    def test_clientStopsWhileRetrying(self) -> None:
        """A client with no server stops promptly on SIGTERM, without a traceback."""
        client = Twistd(
            self, "tcpcomm", "client", "--port", str(freePort()), "--retry-initial", "5"
        )
        client.waitFor("cannot connect")
        started = time.monotonic()
        self.assertIn(client.stop(), STOPPED)
        self.assertLess(time.monotonic() - started, 5)
        assertCleanLog(self, client.output())
