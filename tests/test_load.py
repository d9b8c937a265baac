"""
Load, end to end: a real C{twistd} echo server and 2,000 concurrent clients
driven from the test with non-blocking sockets, counting every message;
3,000 clients connecting at once to a server with default options; and 400
at once to a server that may open only 256 files.
"""

from __future__ import annotations

import errno
import json
import re
import resource
import selectors
import socket
import time
import urllib.request
from collections import deque
from typing import Any, cast

from twisted.logger import Logger
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tcpcomm.descriptors import HEADROOM

from .processes import WAIT, Twistd, assertCleanLog, localServer

ADMIN_PORT = r"listening on 127\.0\.0\.1:(\d+) \(admin API"
CLIENTS = 2000
DURATION = 6.0  # seconds of traffic
WINDOW = 3  # messages each client keeps in flight
SETTLE = 60.0  # bound on connecting, draining and leaving, each
# RSS does not go back exactly to where it was: a closed connection's
# protocol and session refer to each other, so they are freed by CPython's
# cyclic collector, whose full collections can come thousands of connections
# later, and CPython's arenas and glibc's heap keep freed memory for reuse.
# 2,000 connections weigh about 8 MB here, and rounds of them leave about
# 5 MB more each until a full collection; 20 MB allows for that on any
# machine, while a leak of 10 KB or more per connection goes over.
RSS_SLACK = 20 << 20


def getJSON(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=WAIT) as response:
        return json.loads(response.read())


def rss(pid: int) -> int:
    """
    The resident memory of process C{pid}, in bytes (VmRSS).
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def raiseFileLimit(case: SynchronousTestCase, needed: int) -> None:
    """
    Let this process (and the server it starts) open C{needed} files, or
    skip the test saying why it cannot.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            except (ValueError, OSError) as e:
                raise SkipTest(f"RLIMIT_NOFILE is {soft}/{hard}, under {needed}: {e}") from None
        else:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        case.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))


class Peer:
    """
    One client: numbered messages out, and the echoes it still expects.
    """

    __slots__ = ("sock", "prefix", "sent", "answered", "owed", "inbox", "outbox", "writing")

    def __init__(self, sock: socket.socket, index: int) -> None:
        self.sock = sock
        self.prefix = b"client %04d message " % index
        self.sent = self.answered = 0
        self.owed: deque[bytes] = deque()
        self.inbox = self.outbox = b""
        self.writing = False

    @property
    def id(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"{host}:{port}"

    def queue(self) -> None:
        line = self.prefix + b"%07d\n" % self.sent
        self.sent += 1
        self.owed.append(line)
        self.outbox += line

    def flush(self) -> bool:
        """
        Send what the socket takes; whether anything is left.
        """
        try:
            n = self.sock.send(self.outbox)
        except BlockingIOError:
            n = 0
        self.outbox = self.outbox[n:]
        return bool(self.outbox)


class Load:
    """
    Drives many peers with one selector.
    """

    def __init__(self, peers: list[Peer]) -> None:
        self.peers = peers
        self.selector = selectors.DefaultSelector()
        self.wrong: list[str] = []
        for peer in peers:
            peer.sock.setblocking(False)
            self.selector.register(peer.sock, selectors.EVENT_READ, peer)

    def close(self) -> None:
        self.selector.close()

    def send(self, peer: Peer) -> None:
        if peer.flush() != peer.writing:
            peer.writing = not peer.writing
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if peer.writing else 0)
            self.selector.modify(peer.sock, events, peer)

    def outstanding(self) -> int:
        return sum(len(peer.owed) for peer in self.peers)

    def run(self, duration: float, drain: float) -> None:
        """
        Keep C{WINDOW} messages in flight per peer for C{duration} seconds,
        then wait (at most C{drain} seconds) for every echo still owed.
        """
        for peer in self.peers:
            for _ in range(WINDOW):
                peer.queue()
            self.send(peer)
        stop = time.monotonic() + duration
        deadline = stop + drain
        owed = self.outstanding()
        while owed and time.monotonic() < deadline and len(self.wrong) < 10:
            sending = time.monotonic() < stop
            for key, events in self.selector.select(timeout=0.2):
                peer = key.data
                if events & selectors.EVENT_WRITE:
                    self.send(peer)
                if not events & selectors.EVENT_READ:
                    continue
                try:
                    data = peer.sock.recv(65536)
                except BlockingIOError:
                    continue
                if not data:
                    self.wrong.append(f"{peer.id}: closed by the server")
                    self.selector.unregister(peer.sock)
                    owed -= len(peer.owed)
                    peer.owed.clear()
                    continue
                *lines, peer.inbox = (peer.inbox + data).split(b"\n")
                for line in lines:
                    expected = peer.owed.popleft() if peer.owed else b"(nothing)"
                    owed -= 1
                    if line + b"\n" != expected:
                        self.wrong.append(f"{peer.id}: got {line!r}, expected {expected!r}")
                    peer.answered += 1
                    if sending:
                        peer.queue()
                        owed += 1
                if peer.outbox and not peer.writing:
                    self.send(peer)


class LoadTests(SynchronousTestCase):
    """
    Many clients at once against one real server.
    """

    def test_twoThousandClients(self) -> None:
        """2,000 concurrent clients exchange numbered messages with an echo server: each is answered once and in order, and once they leave the registry is empty and the server's memory is back."""
        raiseFileLimit(self, CLIENTS + 256)
        server = Twistd(
            self,
            "tcpcomm",
            "server",
            "-p",
            "0",
            "-i",
            "127.0.0.1",
            "--handler",
            "echo",
            "--backlog",
            "2048",
            "--admin",
            "tcp:0:interface=127.0.0.1",
        )
        port = server.listeningPort()
        admin = int(server.waitFor(ADMIN_PORT).group(1))
        self.assertEqual(getJSON(admin, "/clients"), [])
        start = rss(server.pid)
        result = self.round(server.pid, port, admin, DURATION)
        mb = 1 << 20
        report = (
            f"{result['messages']} messages in {result['seconds']:.1f} s; RSS "
            f"{start / mb:.1f} MB at start, {result['connected'] / mb:.1f} MB with 2,000 "
            f"connected, {result['busy'] / mb:.1f} MB after the traffic, "
            f"{result['left'] / mb:.1f} MB after they left"
        )
        Logger().info("{report}", report=report)  # in _trial_temp/test.log
        self.assertLessEqual(result["left"], start + RSS_SLACK, report)
        assertCleanLog(self, server.output())

    def round(self, pid: int, port: int, admin: int, duration: float) -> dict[str, float]:
        """
        Connect 2,000 clients, have them talk for C{duration} seconds and
        check every echo and the server's counts, then have them leave.
        """
        socks: list[socket.socket] = []

        def closeAll() -> None:
            for sock in socks:
                sock.close()

        self.addCleanup(closeAll)
        for _ in range(CLIENTS):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=WAIT))
        peers = [Peer(sock, i) for i, sock in enumerate(socks)]
        ids = {peer.id for peer in peers}
        self.waitUntil(
            "all 2,000 listed", lambda: {c["id"] for c in getJSON(admin, "/clients")} == ids
        )
        connected = rss(pid)

        load = Load(peers)
        self.addCleanup(load.close)
        started = time.monotonic()
        load.run(duration, SETTLE)
        elapsed = time.monotonic() - started
        self.assertEqual(load.wrong, [])
        self.assertEqual(load.outstanding(), 0, "echoes missing")
        total = sum(peer.sent for peer in peers)
        self.assertEqual(sum(peer.answered for peer in peers), total)
        self.assertGreaterEqual(min(peer.answered for peer in peers), WINDOW)

        # The server counted the same: each client's messages in and out.
        counts = {c["id"]: (c["messagesIn"], c["messagesOut"]) for c in getJSON(admin, "/clients")}
        self.assertEqual(counts, {peer.id: (peer.sent, peer.sent) for peer in peers})
        busy = rss(pid)

        load.close()
        closeAll()
        self.waitUntil("the registry empty", lambda: getJSON(admin, "/clients") == [])
        return {
            "messages": total,
            "seconds": elapsed,
            "connected": connected,
            "busy": busy,
            "left": rss(pid),
        }

    def waitUntil(self, what: str, check: Any, timeout: float = SETTLE) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                self.fail(f"not {what} within {timeout} s")
            time.sleep(0.2)


AT_ONCE = 3000
#: The default --reply-delay is 5 s: each client must be answered within 10 s
#: of connecting.
ANSWERED_WITHIN = 10.0


class BacklogTests(SynchronousTestCase):
    """
    Thousands of clients connecting at the same moment, as after a restart.
    """

    def test_threeThousandAtOnce(self) -> None:
        """3,000 clients that connect at once to a server with default options (but its port and interface) are each answered within 10 s of connecting."""
        raiseFileLimit(self, AT_ONCE + 256)
        server = localServer(self)
        port = server.listeningPort()
        selector = selectors.DefaultSelector()
        self.addCleanup(selector.close)
        socks: dict[socket.socket, float] = {}

        def closeAll() -> None:
            for sock in socks:
                sock.close()

        self.addCleanup(closeAll)
        for _ in range(AT_ONCE):
            sock = socket.socket()
            sock.setblocking(False)
            socks[sock] = time.monotonic()
            code = sock.connect_ex(("127.0.0.1", port))
            self.assertIn(code, (0, errno.EINPROGRESS))
            selector.register(sock, selectors.EVENT_WRITE, b"")
        answered: dict[socket.socket, float] = {}
        deadline = time.monotonic() + ANSWERED_WITHIN
        while len(answered) < AT_ONCE and time.monotonic() < deadline:
            for key, events in selector.select(timeout=0.2):
                sock = cast(socket.socket, key.fileobj)
                if events & selectors.EVENT_WRITE:
                    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    self.assertEqual(error, 0, errno.errorcode.get(error))
                    sock.send(b"hi\n")
                    selector.modify(sock, selectors.EVENT_READ, b"")
                    continue
                data = key.data + sock.recv(4096)
                self.assertNotEqual(data, key.data, "closed by the server")
                if data.endswith(b"\n"):
                    self.assertTrue(data.startswith(b"response from server "), data)
                    answered[sock] = time.monotonic()
                    selector.unregister(sock)
                else:
                    selector.modify(sock, selectors.EVENT_READ, data)
        late = sorted(
            answered[s] - socks[s] for s in answered if answered[s] - socks[s] > ANSWERED_WITHIN
        )
        self.assertEqual(
            (AT_ONCE - len(answered), late),
            (0, []),
            f"{AT_ONCE - len(answered)} of {AT_ONCE} unanswered after {ANSWERED_WITHIN} s",
        )
        slowest = max(answered[s] - socks[s] for s in answered)
        Logger().info(
            "3,000 at once: slowest answered {slowest:.1f} s after connecting", slowest=slowest
        )
        assertCleanLog(self, server.output())


FILES = 256  # the server's RLIMIT_NOFILE, soft and hard
DIALS = 400
ADMIN_CONNECTIONS = 64  # --admin-max-connections' default


def metric(port: int, name: str) -> float:
    """
    One sample of the admin API's /metrics at C{port}.
    """
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=WAIT) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


def dialAll(port: int, count: int) -> list[socket.socket]:
    """
    C{count} non-blocking connections to C{port}, all begun at once.
    """
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        code = sock.connect_ex(("127.0.0.1", port))
        if code not in (0, errno.EINPROGRESS):
            raise AssertionError(f"connect: {errno.errorcode.get(code)}")
        socks.append(sock)
    return socks


def refusals(socks: list[socket.socket], expected: int) -> dict[socket.socket, bytes]:
    """
    Read C{socks} until C{expected} of them were closed by the server (within
    C{WAIT} seconds); what each of those received.
    """
    selector = selectors.DefaultSelector()
    received = {sock: b"" for sock in socks}
    closed: dict[socket.socket, bytes] = {}
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ)
    deadline = time.monotonic() + WAIT
    try:
        while len(closed) < expected and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.2):
                sock = cast(socket.socket, key.fileobj)
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    data, received[sock] = b"", received[sock] + b"<reset>"
                if data:
                    received[sock] += data
                else:
                    closed[sock] = received[sock]
                    selector.unregister(sock)
    finally:
        selector.close()
    if len(closed) < expected:
        raise AssertionError(f"{len(closed)} of {expected} refused within {WAIT} s")
    return closed


def echoes(socks: list[socket.socket]) -> None:
    """
    Each of C{socks} gets its own line echoed back.
    """
    for i, sock in enumerate(socks):
        sock.setblocking(True)
        sock.settimeout(WAIT)
        sock.sendall(b"still here %d\n" % i)
    for i, sock in enumerate(socks):
        line = b""
        while not line.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                raise AssertionError(f"connection {i} closed after {line!r}")
            line += chunk
        if line != b"still here %d\n" % i:
            raise AssertionError(f"connection {i} got {line!r}")


class FileLimitTests(SynchronousTestCase):
    """
    A server whose open-file limit cannot hold --max-connections.
    """

    def test_fourHundredUnder256(self) -> None:
        """Of 400 connections at once to a server under ulimit -n 256, those over the limit it lowers itself to get --full-reply and are counted, the others are answered, and room comes back as clients leave."""
        raiseFileLimit(self, DIALS + 256)

        def limitFiles() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (FILES, FILES))

        server = localServer(
            self,
            "--handler",
            "echo",
            "--admin",
            "tcp:0:interface=127.0.0.1",
            preexec=limitFiles,
        )
        port = server.listeningPort()
        admin = int(server.waitFor(ADMIN_PORT).group(1))
        allowed = int(server.waitFor(r"accepting at most (\d+) clients").group(1))
        self.assertEqual(allowed, FILES - ADMIN_CONNECTIONS - HEADROOM)

        socks = dialAll(port, DIALS)

        def closeAll() -> None:
            for sock in socks:
                sock.close()

        self.addCleanup(closeAll)
        refused = refusals(socks, DIALS - allowed)
        self.assertEqual(len(refused), DIALS - allowed)
        # Each got the one line, then the end of the stream (not a reset).
        full = re.compile(rb"server full [0-9: -]+\n")
        wrong = [data for data in refused.values() if not full.fullmatch(data)]
        self.assertEqual(wrong, [])
        kept = [sock for sock in socks if sock not in refused]
        echoes(kept)
        self.assertEqual(len(getJSON(admin, "/clients")), allowed)
        self.assertEqual(metric(admin, "tcpcomm_refused_connections_total"), DIALS - allowed)

        # Room again once clients leave: as many are accepted, one more is not.
        for sock in kept[:20]:
            sock.close()
        deadline = time.monotonic() + WAIT
        while len(getJSON(admin, "/clients")) > allowed - 20:
            self.assertLess(time.monotonic(), deadline, "the 20 not gone")
            time.sleep(0.05)
        again = dialAll(port, 21)
        socks.extend(again)
        last = refusals(again, 1)
        self.assertEqual([bool(full.fullmatch(data)) for data in last.values()], [True])
        echoes([sock for sock in again if sock not in last] + kept[20:])
        self.assertEqual(metric(admin, "tcpcomm_refused_connections_total"), DIALS - allowed + 1)

        output = server.output()
        self.assertNotIn("EMFILE", output)
        # Refusals are logged at most once per 10 s for the server (the
        # metric above counts each).
        self.assertEqual(len(re.findall(r"refusing 127\.0\.0\.1:\d+: ", output)), 1)
        assertCleanLog(self, output)
