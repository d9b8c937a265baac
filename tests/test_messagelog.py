"""
Tests for L{tcpcomm.messagelog}: each message's line, written in batches
through tcpcomm's observer, is the line its event would have made, in the
log's order, once; and an event wherever tcpcomm does not own the observer.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import struct
import threading
from typing import Any

from twisted.application.service import Application
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel, capturedLogs, formatTime
from twisted.scripts._twistd_unix import ServerOptions as TwistdOptions
from twisted.trial.unittest import SynchronousTestCase

from tcpcomm import tap
from tcpcomm.logs import (
    MESSAGE,
    Format,
    JSONFormat,
    LineFormat,
    LogDestination,
    LogFile,
    LogObserver,
    TextFormat,
    escapeControl,
    formatJSONLine,
    makeObserver,
)
from tcpcomm.messagelog import MessageLog

from .processes import LOCAL_SERVER, WAIT, Daemon, assertCleanLog, scratch, waitForFile
from .support import NOON, connect, hubOf
from .test_logs import FORGERY, FORGERY_ESCAPED, FakeReactor, twistedAcceptErrors

PEERS = ["127.0.0.1:40522", "[::1]:9527", "unix#3"]

#: Texts a peer may send: plain, non-ASCII, forged lines, every kind of
#: control character, and what looks like a format or an escape.
TEXTS = [
    "hi",
    "héllo 日本 ☃",
    FORGERY,
    "a\tb\x00c\x7fd\x85e\x9bf\u2028g\u2029h",
    "{peer} {text!r} %s \\n \\x1b",
    '"quoted" and \\ back',
    "\xa0no-break\ufeff",
]


def slowEvent(peer: str, text: str, when: float) -> LogEvent:
    """
    The event the message log emits for a message where it has no observer
    of its own, logged at C{when}.
    """
    with capturedLogs() as events:
        MessageLog(Clock()).message(peer, text)
    [event] = events
    event["log_time"] = when
    return event


class CountingFile(io.StringIO):
    """
    A text file that counts its writes and flushes.
    """

    writes = flushes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)

    def flush(self) -> None:
        self.flushes += 1


class CountingClock(Clock):
    """
    A clock that counts how often it is read.
    """

    reads = 0

    def seconds(self) -> float:
        self.reads += 1
        return super().seconds()


class SameLineTests(SynchronousTestCase):
    """
    A message's line from the batch is byte for byte the line its event makes.
    """

    def test_fallbackEvent(self) -> None:
        """Without an observer of its own, a message is an info event of tcpcomm.session named message, with peer and text."""
        event = slowEvent("127.0.0.1:1", "hi", NOON)
        self.assertEqual(
            (event["log_namespace"], event["log_level"], event["log_format"], event["event"]),
            ("tcpcomm.session", LogLevel.info, MESSAGE, "message"),
        )
        self.assertEqual((event["peer"], event["text"]), ("127.0.0.1:1", "hi"))

    def test_text(self) -> None:
        """The text line is the event's, control characters escaped alike, for every peer and text."""
        for when in [NOON, NOON + 0.999, NOON - 86400 * 180]:
            for peer in PEERS:
                for text in TEXTS:
                    slow = TextFormat()(slowEvent(peer, text, when))
                    fast = TextFormat().messageLines(when, [(peer, text)])
                    self.assertEqual(fast, slow, (peer, text))
                    self.assertEqual(fast.count("\n"), 1)

    def test_forgeryEscaped(self) -> None:
        """A forged line stays one line, escaped as the observer escapes it."""
        line = TextFormat().messageLines(NOON, [("127.0.0.1:1", FORGERY)])
        self.assertEqual(
            line,
            f"{formatTime(NOON)} [tcpcomm.session#info] message from 127.0.0.1:1: "
            f"{FORGERY_ESCAPED}\n",
        )

    def test_json(self) -> None:
        """The JSON line is the event's, key for key and character for character."""
        for when in [NOON, NOON + 0.123456, 0.0]:
            for peer in PEERS:
                for text in TEXTS:
                    slow = formatJSONLine(slowEvent(peer, text, when))
                    fast = JSONFormat().messageLines(when, [(peer, text)])
                    self.assertEqual(fast, slow, (peer, text))
                    self.assertEqual(json.loads(fast)["message"], text)

    def test_batch(self) -> None:
        """A batch is the lines of its messages in order, only those that need it escaped; an empty one writes nothing."""
        batch = [(PEERS[i % 3], text) for i, text in enumerate(TEXTS * 2)]
        formats: list[Format] = [TextFormat(), JSONFormat()]
        for format in formats:
            self.assertEqual(
                format.messageLines(NOON, batch),
                "".join(format.messageLines(NOON, [message]) for message in batch),
            )
        out = io.StringIO()
        LogObserver(out, LineFormat(TextFormat())).writeMessages(NOON, [])
        self.assertEqual(out.getvalue(), "")
        plain = TextFormat().messageLines(NOON, [("p", "a"), ("p", "b")])
        self.assertEqual(plain.count("\n"), 2)
        self.assertNotIn("\\", plain)


class MessageLogTests(SynchronousTestCase):
    """
    Attached to tcpcomm's observer, the lines of a reactor turn are written at
    its end in one write, before anything else the observer writes.
    """

    def setUp(self) -> None:
        self.clock = CountingClock()
        self.clock.advance(NOON)
        self.out = CountingFile()
        self.observer = LogObserver(self.out, LineFormat(TextFormat()))
        self.log = MessageLog(self.clock)
        self.log.attach(self.observer)
        self.logger = Logger(namespace="tcpcomm.protocol", observer=self.observer)

    def lines(self) -> list[str]:
        return self.out.getvalue().splitlines()

    def test_heldUntilTurnEnds(self) -> None:
        """The lines of a turn are written when it ends, in order, in one write and one flush."""
        for i in range(100):
            self.log.message("127.0.0.1:1", f"m{i}")
        self.assertEqual(self.out.getvalue(), "")
        self.clock.advance(0)
        self.assertEqual(
            [line.rsplit(" ", 1)[1] for line in self.lines()], [f"m{i}" for i in range(100)]
        )
        self.assertEqual((self.out.writes, self.out.flushes), (1, 1))
        self.clock.advance(0)
        self.assertEqual(self.out.writes, 1)

    def test_oneClockReadOneTimerPerTurn(self) -> None:
        """A turn's messages read the clock once and schedule one flush; the next turn again once."""
        reads = self.clock.reads
        for _ in range(1000):
            self.log.message("127.0.0.1:1", "hi")
        self.assertEqual(self.clock.reads - reads, 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.log.message("127.0.0.1:1", "hi")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_timeOfTurn(self) -> None:
        """Each line has the time its turn began, whenever it is written."""
        self.clock.advance(0.5)
        self.log.message("127.0.0.1:1", "hi")
        self.clock.advance(2)
        self.assertEqual(
            self.out.getvalue(), TextFormat()(slowEvent("127.0.0.1:1", "hi", NOON + 0.5))
        )

    def test_orderWithOtherEvents(self) -> None:
        """Another event's line comes after the messages before it and before those after it."""
        reads = self.clock.reads
        self.log.message("127.0.0.1:1", "before")
        self.logger.info("lost {peer}: {reason}", event="lost", peer="127.0.0.1:1", reason="x")
        self.log.message("127.0.0.2:2", "after")
        self.assertEqual(self.clock.reads - reads, 1)
        self.clock.advance(0)
        self.assertEqual(
            [line.split("] ", 1)[1] for line in self.lines()],
            [
                "message from 127.0.0.1:1: before",
                "lost 127.0.0.1:1: x",
                "message from 127.0.0.2:2: after",
            ],
        )

    def test_otherThreadWaits(self) -> None:
        """An event from another thread is written at once, without taking the reactor's lines."""
        self.log.message("127.0.0.1:1", "reactor")
        thread = threading.Thread(
            target=self.logger.info, args=("from a thread",), kwargs={"event": "x"}
        )
        thread.start()
        thread.join(WAIT)
        self.assertEqual(len(self.lines()), 1)
        self.assertTrue(self.lines()[0].endswith("from a thread"))
        self.clock.advance(0)
        self.assertTrue(self.lines()[1].endswith("message from 127.0.0.1:1: reactor"))

    def test_json(self) -> None:
        """In JSON, a turn's lines are the events' records, in order."""
        out = io.StringIO()
        messageLog = MessageLog(self.clock)
        messageLog.attach(LogObserver(out, LineFormat(JSONFormat())))
        for text in TEXTS:
            messageLog.message("127.0.0.1:1", text)
        self.clock.advance(0)
        self.assertEqual(
            out.getvalue(),
            "".join(formatJSONLine(slowEvent("127.0.0.1:1", text, NOON)) for text in TEXTS),
        )

    def test_fallbackUntilAttached(self) -> None:
        """Before an observer is attached each message is an event at once, and no timer is started."""
        messageLog = MessageLog(self.clock)
        with capturedLogs() as events:
            messageLog.message("127.0.0.1:1", "hi")
        self.assertEqual([(e["event"], e["text"]) for e in events], [("message", "hi")])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_sessionUsesHubsLog(self) -> None:
        """A session logs each message through its hub's message log, unless --no-message-log."""
        protocol, _, clock, factory = connect(clock=self.clock)
        hubOf(factory).messageLog = self.log
        protocol.dataReceived(b"one\ntwo\n")
        hubOf(factory).logMessages = False
        protocol.dataReceived(b"three\n")
        clock.advance(0)
        self.assertEqual(
            [line.split("] ", 1)[1] for line in self.lines()],
            ["message from 127.0.0.1:40000: one", "message from 127.0.0.1:40000: two"],
        )

    def test_boundedBatch(self) -> None:
        """Within one turn, the lines held are written before the reads they came from pass 64 KiB, in order and each once."""
        protocols = [connect(clock=self.clock) for _ in range(3)]
        sent = []
        for n, (protocol, _, _, factory) in enumerate(protocols):
            hubOf(factory).messageLog = self.log
            messages = [f"{n}-{i}-" + "x" * 1000 for i in range(30)]
            sent += messages
            protocol.dataReceived("".join(f"{m}\n" for m in messages).encode())
        # Three reads of 30 KiB each: the first two written when the third came.
        self.assertEqual(self.out.writes, 1)
        self.assertEqual(len(self.lines()), 60)
        self.clock.advance(0)
        self.assertEqual(self.out.writes, 2)
        self.assertEqual([line.rsplit(": ", 1)[1] for line in self.lines()], sent)

    def test_shutdownFlushes(self) -> None:
        """What a turn holds is written when the reactor shuts down, and only once."""
        reactor = MemoryReactorClock()
        reactor.advance(NOON)
        messageLog = MessageLog(reactor)
        out = io.StringIO()
        messageLog.attach(LogObserver(out, LineFormat(TextFormat())))
        messageLog.message("127.0.0.1:1", "last")
        [(flush, args, kwargs)] = reactor.triggers["after"]["shutdown"]
        flush(*args, **kwargs)
        self.assertEqual(out.getvalue().count("message from 127.0.0.1:1: last"), 1)
        reactor.advance(0)
        flush(*args, **kwargs)
        self.assertEqual(out.getvalue().count("\n"), 1)

    def test_acceptErrorsCountedFirst(self) -> None:
        """The count of accept errors held back, when due, comes before a batch, once."""
        format = LineFormat(TextFormat())
        out = io.StringIO()
        observer = LogObserver(out, format)
        messageLog = MessageLog(self.clock)
        messageLog.attach(observer)
        errors = twistedAcceptErrors(waiting=3)
        for e in errors:
            e["log_time"] = NOON
            observer(e)
        self.clock.advance(11)
        messageLog.message("127.0.0.1:1", "hi")
        self.clock.advance(0)
        *_, summary, line = out.getvalue().splitlines()
        self.assertIn(f"{len(errors) - 1} more accept errors suppressed", summary)
        self.assertTrue(line.endswith("message from 127.0.0.1:1: hi"))
        messageLog.message("127.0.0.1:1", "again")
        self.clock.advance(0)
        self.assertEqual(out.getvalue().count("suppressed"), 1)


class RotationTests(SynchronousTestCase):
    """
    Rotating the log file loses no message line and writes none twice.
    """

    def setUp(self) -> None:
        previous = signal.getsignal(signal.SIGUSR1)
        self.addCleanup(signal.signal, signal.SIGUSR1, previous)
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        self.folder = os.path.abspath(self.mktemp())
        os.mkdir(self.folder)
        self.path = os.path.join(self.folder, "server.log")
        self.clock = Clock()
        self.clock.advance(NOON)
        self.log = MessageLog(self.clock)

    def read(self, path: str) -> list[str]:
        with open(path, encoding="utf-8") as f:
            return [line.rsplit(": ", 1)[1] for line in f.read().splitlines()]

    def test_sigusr1(self) -> None:
        """On SIGUSR1 the lines held back go to the old file, those after to the new one."""
        observer = makeObserver(LogDestination(self.path, False), reactor=FakeReactor())
        self.log.attach(observer)
        self.log.message("127.0.0.1:1", "before")
        handler = signal.getsignal(signal.SIGUSR1)
        assert callable(handler)
        handler(signal.SIGUSR1, None)
        self.log.message("127.0.0.1:1", "after")
        self.clock.advance(0)
        self.assertEqual(self.read(self.path + ".1"), ["before"])
        self.assertEqual(self.read(self.path), ["after"])

    def test_size(self) -> None:
        """When the file passes 1 MB it rotates between batches: every line once, in order."""
        logFile = LogFile.fromFullPath(self.path)
        self.addCleanup(logFile.close)
        self.log.attach(LogObserver(logFile, LineFormat(TextFormat()), logFile.rotate))
        sent = []
        for turn in range(15):
            for i in range(1000):
                sent.append(f"{turn}-{i}")
                self.log.message("127.0.0.1:40522", sent[-1])
            self.clock.advance(0)
        self.assertTrue(os.path.exists(self.path + ".1"))
        self.assertFalse(os.path.exists(self.path + ".2"))
        self.assertEqual(self.read(self.path + ".1") + self.read(self.path), sent)


class TwistdTests(SynchronousTestCase):
    """
    Under twistd, messages go the cheap way exactly when tcpcomm owns the observer.
    """

    def setUp(self) -> None:
        previous = signal.getsignal(signal.SIGUSR1)
        self.addCleanup(signal.signal, signal.SIGUSR1, previous)
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        self.folder = os.path.abspath(self.mktemp())
        os.mkdir(self.folder)
        self.path = os.path.join(self.folder, "server.log")

    def serve(self, *argv: str) -> tuple[Any, MemoryReactorClock]:
        """
        Build the application twistd would from C{argv}, start it on a memory
        reactor, and send it a message.
        """
        config = TwistdOptions()
        config.parseOptions(list(argv))
        reactor = MemoryReactorClock()
        reactor.advance(NOON)
        application = Application("tcpcomm")
        service = tap.makeService(config.subOptions, reactor)
        service.setServiceParent(application)
        service.startService()
        self.addCleanup(service.stopService)
        factory = reactor.tcpServers[0][1]
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40522))
        assert protocol is not None
        protocol.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40522)))
        with capturedLogs() as self.events:
            protocol.dataReceived(b"hi\n")
        return application, reactor

    def test_ownObserver(self) -> None:
        """With tcpcomm's observer, a message is no event: its line is in the file at the turn's end."""
        for logFormat in ["text", "json"]:
            application, reactor = self.serve(
                "--logfile", self.path, "tcpcomm", "server", "-p", "0", "--log-format", logFormat
            )
            self.assertNotIn("message", [e.get("event") for e in self.events])
            reactor.advance(0)
        with open(self.path, encoding="utf-8") as f:
            # The connections' lines are held with the messages too.
            text, line = [n for n in f.read().splitlines() if "message from" in n]
        self.assertTrue(text.endswith("[tcpcomm.session#info] message from 127.0.0.1:40522: hi"))
        self.assertEqual(json.loads(line)["message"], "hi")

    def test_userLogger(self) -> None:
        """With twistd's --logger, each message is an event for the user's observer."""
        application, _ = self.serve(
            "-n", "--logger", "tests.test_logs.nullObserver", "tcpcomm", "server", "-p", "0"
        )
        self.assertIsNone(application.getComponent(ILogObserver))
        self.assertEqual(
            [(e["peer"], e["text"]) for e in self.events if e.get("event") == "message"],
            [("127.0.0.1:40522", "hi")],
        )


def dial(port: int) -> tuple[socket.socket, str]:
    """
    A connection to the server on C{port}, and the id the server gives it.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    return sock, f"127.0.0.1:{sock.getsockname()[1]}"


def reset(sock: socket.socket) -> None:
    """
    Close C{sock} with a reset, so that the server sees it go at once.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class DaemonTests(SynchronousTestCase):
    """
    A daemonized server with its default options logs each message once, in order.
    """

    def conversation(self, logFormat: str) -> tuple[str, list[tuple[str, str, str]]]:
        """
        Two clients take turns talking to a daemon logging in C{logFormat},
        each step awaited in its log; the daemon's log once stopped, and the
        C{(event, peer, text)} expected of it.
        """
        daemon = Daemon(self, scratch(self), "server", *LOCAL_SERVER, "--log-format", logFormat)
        port = int(waitForFile(daemon.logfile, r"listening on [\d.]+:(\d+)").group(1))
        expected: list[tuple[str, str, str]] = []

        def shown(event: str, peer: str, text: str = "") -> None:
            # Wait for the event's line: its text, as the format writes it.
            line = {"connected": f"connected {peer}", "lost": f"lost {peer}: "}.get(
                event, f"message from {peer}: {text}"
            )
            if logFormat == "text":
                line = escapeControl(line)
            else:
                line = '"text": ' + json.dumps(line, ensure_ascii=False)[:-1]
            waitForFile(daemon.logfile, re.escape(line))

        def step(event: str, peer: str, text: str = "") -> None:
            expected.append((event, peer, text))
            shown(event, peer, text)

        first, a = dial(port)
        step("connected", a)
        for text in ["one", "two"]:
            first.sendall(text.encode() + b"\n")
            step("message", a, text)
        second, b = dial(port)
        step("connected", b)
        second.sendall("héllo\x1b[31m\n".encode())
        step("message", b, "héllo\x1b[31m")
        first.sendall(b"three\nfour\n")
        expected += [("message", a, "three"), ("message", a, "four")]
        reset(first)
        step("lost", a)
        second.sendall(b"five\n")
        step("message", b, "five")
        reset(second)
        step("lost", b)
        daemon.stop()
        waitForFile(daemon.logfile, "Server Shut Down")
        return daemon.log(), expected

    def test_text(self) -> None:
        """The text log shows each message line once, in order with connected and lost."""
        log, expected = self.conversation("text")
        assertCleanLog(self, log)
        seen = []
        for line in log.splitlines():
            match = re.search(
                r"\] (connected|message from|lost) (127\.0\.0\.1:\d+)(?:: (.*))?", line
            )
            if match:
                event, peer, rest = match.groups()
                text = rest.replace("\\x1b", "\x1b") if event == "message from" else ""
                seen.append((event.split()[0], peer, text))
        self.assertEqual(seen, expected)

    def test_json(self) -> None:
        """The JSON log has each message's record once, in order with connected and lost."""
        log, expected = self.conversation("json")
        records = [json.loads(line) for line in log.splitlines()]
        self.assertEqual(
            [
                (r["event"], r["peer"], r.get("message", ""))
                for r in records
                if r["event"] in ("connected", "message", "lost")
            ],
            expected,
        )
        message = next(r for r in records if r["event"] == "message")
        self.assertEqual(
            {k: message[k] for k in ("level", "namespace", "text")},
            {
                "level": "info",
                "namespace": "tcpcomm.session",
                "text": f"message from {message['peer']}: one",
            },
        )


class ConnectionEventTests(SynchronousTestCase):
    """
    Connections made and lost are held with the messages, in order, as the
    lines their events make.
    """

    def test_heldInOrder(self) -> None:
        """A connection's lines and its messages leave in one write, in order, each the line its event makes."""
        protocolLog = Logger(namespace="tcpcomm.protocol")
        formats: list[Format] = [TextFormat(), JSONFormat()]
        for logFormat in formats:
            clock = Clock()
            clock.advance(NOON)
            out = CountingFile()
            messages = MessageLog(clock)
            messages.attach(LogObserver(out, LineFormat(logFormat)))
            messages.event(protocolLog, "connected {peer}", event="connected", peer="127.0.0.1:1")
            messages.message("127.0.0.1:1", "hi")
            messages.event(
                protocolLog,
                "lost {peer}: {reason}",
                event="lost",
                peer="127.0.0.1:1",
                reason="gone",
            )
            clock.advance(0)
            with capturedLogs() as events:
                protocolLog.info("connected {peer}", event="connected", peer="127.0.0.1:1")
                protocolLog.info(
                    "lost {peer}: {reason}", event="lost", peer="127.0.0.1:1", reason="gone"
                )
            for event in events:
                event["log_time"] = NOON
            expected = (
                (logFormat(events[0]) or "")
                + logFormat.messageLines(NOON, [("127.0.0.1:1", "hi")])
                + (logFormat(events[1]) or "")
            )
            self.assertEqual(out.getvalue(), expected)
            self.assertEqual(out.writes, 1)

    def test_eventsWithoutObserver(self) -> None:
        """Without an observer of its own, a connection's line is the usual event."""
        with capturedLogs() as events:
            MessageLog(Clock()).event(
                Logger(namespace="tcpcomm.protocol"),
                "connected {peer}",
                event="connected",
                peer="127.0.0.1:1",
            )
        [event] = events
        self.assertEqual((event["event"], event["peer"]), ("connected", "127.0.0.1:1"))
        self.assertEqual(event["log_namespace"], "tcpcomm.protocol")
