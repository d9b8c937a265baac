"""
Liveness both ways, end to end: real C{twistd} processes with
C{--heartbeat} notice a peer that hangs without closing. Every wait is
bounded, and every process is resumed and stopped by its pid whatever the
outcome.
"""

from __future__ import annotations

import os
import signal
import socket
import time

from twisted.trial.unittest import SynchronousTestCase

from .processes import WAIT, Twistd, assertCleanLog, localServer

#: Seconds between heartbeats, and the timeout (three of them) both sides use.
HEARTBEAT = 1.0
TIMEOUT = 3 * HEARTBEAT


def resume(pid: int) -> None:
    """
    Let a stopped process run again (so that it can be stopped), if it is
    still there.
    """
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


class HungServerTests(SynchronousTestCase):
    """
    A client with --heartbeat notices a server that stops without closing,
    and reconnects once it runs again.
    """

    def test_stoppedServer(self) -> None:
        """A client notices a kill -STOPped server within --heartbeat-timeout + 1 s, logged as timeout, and talks to it again after kill -CONT."""
        beat = f"{HEARTBEAT:g}"
        server = localServer(self, "--heartbeat", beat, "--reply-delay", "0.2")
        port = server.listeningPort()
        client = Twistd(
            self,
            "tcpcomm",
            "client",
            "--port",
            str(port),
            "--heartbeat",
            beat,
            "--reply-delay",
            "30",  # it greets, and answers the reply too late to matter: heartbeats flow
            "--retry-initial",
            "0.2",
            "--retry-max",
            "1",
        )
        self.addCleanup(resume, server.pid)  # runs before the server is stopped
        reply = rf"message from 127\.0\.0\.1:{port}: response from server"
        client.waitFor(reply)
        # Heartbeats both ways keep the quiet connection up past the timeout.
        time.sleep(TIMEOUT + 1)
        for process in (server, client):
            self.assertNotIn("heard nothing", process.output())
        self.assertNotIn("lost 127.0.0.1", client.output())

        mark = len(client.output())
        os.kill(server.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        client.waitFor(
            rf"disconnecting 127\.0\.0\.1:{port}: heard nothing, heartbeats included, for 3 s "
            r"\(--heartbeat-timeout\); if it is alive, give the other side --heartbeat 1 too",
            after=mark,
            timeout=WAIT,
        )
        noticed = time.monotonic() - stopped
        self.assertLess(noticed, TIMEOUT + 1)

        mark = len(client.output())
        os.kill(server.pid, signal.SIGCONT)
        client.waitFor(reply, after=mark, timeout=WAIT)
        for process in (server, client):
            assertCleanLog(self, process.output())


class SilentPeerTests(SynchronousTestCase):
    """
    A server with --heartbeat closes a peer that never sends, and only that
    one.
    """

    def test_silentSocketClosed(self) -> None:
        """A raw socket that never reads or sends is closed at --heartbeat-timeout, while a peer that sends heartbeats stays."""
        server = localServer(
            self, "--heartbeat", "1", "--heartbeat-timeout", "2", "--reply-delay", "0"
        )
        port = server.listeningPort()
        silent = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.addCleanup(silent.close)
        talking = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.addCleanup(talking.close)
        opened = time.monotonic()
        silentId = rf"127\.0\.0\.1:{silent.getsockname()[1]}"
        server.waitFor(rf"connected {silentId}\n")
        timedOut = rf"disconnecting {silentId}: heard nothing, heartbeats included, for 2 s"
        deadline = opened + WAIT
        while time.monotonic() < deadline:
            talking.sendall(b"\n")  # a heartbeat, as a tcpcomm client would send
            try:
                server.waitFor(timedOut, timeout=0.5)
                break
            except AssertionError:
                continue
        closedAfter = time.monotonic() - opened
        # The timeout, a second of slack for a busy machine, and one for polling the log.
        self.assertLess(closedAfter, 2 + 1 + 1, server.output())
        self.assertNotIn(f"disconnecting 127.0.0.1:{talking.getsockname()[1]}", server.output())
        # What the silent peer was sent: heartbeats only, then the end.
        received = b""
        silent.settimeout(WAIT)
        try:
            while chunk := silent.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
        self.assertEqual(received.strip(b"\n"), b"")
        # The other peer is still served.
        talking.settimeout(WAIT)
        talking.sendall(b"ping\n")
        answer = b""
        while b"response from server" not in answer:
            chunk = talking.recv(65536)
            self.assertTrue(chunk, "the talking peer was closed")
            answer += chunk
        assertCleanLog(self, server.output())
