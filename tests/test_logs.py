"""
Tests for L{tcpcomm.logs}: the JSON shape of log events, text lines peers
cannot forge, the rate limiter and the warnings it limits, and how twistd
is given tcpcomm's observer.
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Application
from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import (
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    capturedLogs,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
)
from twisted.python.failure import Failure
from twisted.scripts._twistd_unix import ServerOptions as TwistdOptions
from twisted.trial.unittest import SynchronousTestCase

from tcpcomm import tap
from tcpcomm.logs import (
    _ESCAPES,
    JSONFormat,
    LineFormat,
    LogDestination,
    LogFile,
    RateLimiter,
    TextFormat,
    escapeControl,
    eventAsRecord,
    formatJSONLine,
    makeObserver,
)
from tcpcomm.wire.framing import FRAMINGS
from tcpcomm.wire.protocol import Limits, MessageFactory, Refusal

from .support import NOON, connect, hubOf, makeHub

#: What a peer sends to forge a log line and colour the operator's terminal.
FORGERY = "a\r\nfake [tcpcomm#info] line\x1b[31m"
FORGERY_ESCAPED = "a\\r\\nfake [tcpcomm#info] line\\x1b[31m"


def event(**fields: object) -> dict[str, Any]:
    base: dict[str, Any] = {
        "log_time": NOON,
        "log_level": LogLevel.info,
        "log_namespace": "tcpcomm.session",
        "log_format": "message from {peer}: {text}",
    }
    base.update(fields)
    return base


class EventAsRecordTests(SynchronousTestCase):
    """
    Events become flat JSON objects with stable names.
    """

    def test_fields(self) -> None:
        """The standard keys come first; a message's text is called message."""
        record = eventAsRecord(event(log_time=0.0, event="message", peer="127.0.0.1:1", text="hi"))
        self.assertEqual(
            record,
            {
                "time": "1970-01-01T00:00:00+00:00",
                "level": "info",
                "namespace": "tcpcomm.session",
                "event": "message",
                "text": "message from 127.0.0.1:1: hi",
                "peer": "127.0.0.1:1",
                "message": "hi",
            },
        )

    def test_unnamedEvent(self) -> None:
        """An event without a name (Twisted's own) is called log."""
        self.assertEqual(eventAsRecord(event(log_format="hello"))["event"], "log")

    def test_valuesMadeJSON(self) -> None:
        """Bytes become their repr and other objects their str, so every line is valid JSON."""
        line = formatJSONLine(event(data=b"\xff", address=object(), log_format="x"))
        record = json.loads(line)
        self.assertEqual(record["data"], "b'\\xff'")
        self.assertTrue(line.endswith("}\n"))
        self.assertEqual(line.count("\n"), 1)

    def test_failure(self) -> None:
        """A logged failure comes with its traceback."""
        failure = Failure(ZeroDivisionError("division by zero"))
        record = eventAsRecord(event(log_failure=failure, log_format="oops"))
        self.assertIn("ZeroDivisionError", record["traceback"])

    def test_forgeryStaysInItsField(self) -> None:
        """A peer's control characters stay inside one JSON line, escaped by JSON itself."""
        line = formatJSONLine(event(peer="127.0.0.1:1", text=FORGERY))
        self.assertEqual(line.count("\n"), 1)
        self.assertNotIn("\r", line)
        self.assertNotIn("\x1b", line)
        self.assertEqual(json.loads(line)["message"], FORGERY)


class EscapeControlTests(SynchronousTestCase):
    """
    Control characters are escaped; everything else is left as it is.
    """

    def test_printableUnchanged(self) -> None:
        """Printable text, non-ASCII included, comes back as the same object."""
        for text in ["message from 127.0.0.1:1: hi", "héllo 日本 \\n"]:
            self.assertIs(escapeControl(text), text)

    def test_controlsEscaped(self) -> None:
        """Newline, carriage return, tab, NUL, ESC, DEL, C1 and the Unicode line separators are escaped."""
        self.assertEqual(
            escapeControl("a\nb\rc\td\x00e\x1b[31mf\x7fg\x85h\x9bi\u2028j\u2029k"),
            "a\\nb\\rc\\td\\x00e\\x1b[31mf\\x7fg\\x85h\\x9bi\\u2028j\\u2029k",
        )

    def test_longText(self) -> None:
        """In long ASCII text, as a batch of message lines is, each control character is found wherever it is."""
        long = "x" * 5000
        self.assertIs(escapeControl(long), long)
        for control in [*range(0x20), 0x7F]:
            for where in (0, 2500, 4999):
                text = long[:where] + chr(control) + long[where + 1 :]
                self.assertEqual(escapeControl(text), text.translate(_ESCAPES))

    def test_otherNonPrintablesKept(self) -> None:
        """Characters that are not control characters, such as a no-break space, are kept."""
        self.assertEqual(escapeControl("a\xa0b\x1b"), "a\xa0b\\x1b")


class TextFormatTests(SynchronousTestCase):
    """
    Text lines are twistd's, with the event's text kept to one line.
    """

    def test_twistdFormat(self) -> None:
        """Plain events come out exactly as twistd's own text observer writes them."""
        format = TextFormat()
        for e in [
            event(peer="127.0.0.1:1", text="héllo"),
            event(log_format="Server Shut Down.", log_namespace="twisted.scripts"),
            {"log_format": "no time, no level", "log_namespace": "x"},
            event(log_system="MessageFactory,3,127.0.0.1", log_format="legacy"),
        ]:
            self.assertEqual(format(e), formatEventAsClassicLogText(e), e)

    def test_forgeryIsOneLine(self) -> None:
        """A peer's newline, carriage return and terminal escape are written escaped, in one line."""
        line = TextFormat()(event(peer="127.0.0.1:1", text=FORGERY))
        self.assertEqual(
            line,
            f"{formatTime(NOON)} [tcpcomm.session#info] message from 127.0.0.1:1: "
            f"{FORGERY_ESCAPED}\n",
        )

    def test_tracebackStaysMultiLine(self) -> None:
        """A failure's traceback follows on lines of its own, begun with a tab as twistd does."""
        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError:
            failure = Failure()
        plain = event(log_failure=failure, log_format="handler failed: {text}", text="x")
        self.assertEqual(TextFormat()(plain), formatEventAsClassicLogText(plain))
        line = TextFormat()(dict(plain, text="x\ny"))
        assert line is not None
        first, *rest = line.splitlines()
        self.assertTrue(first.endswith("handler failed: x\\ny"), first)
        self.assertTrue(rest and all(r.startswith("\t") for r in rest), rest)
        self.assertIn("ZeroDivisionError", line)

    def test_nothingToSay(self) -> None:
        """An event without text or failure writes no line."""
        self.assertIsNone(TextFormat()(event(log_format=None)))

    def test_timestamps(self) -> None:
        """Each line has its own second, whatever was formatted before it."""
        format = TextFormat()
        for when in [NOON, NOON + 0.5, NOON + 1, NOON - 3600, NOON + 1]:
            line = format(event(log_time=when, log_format="x"))
            assert line is not None
            self.assertTrue(line.startswith(formatTime(when) + " "), (when, line))


class RateLimiterTests(SynchronousTestCase):
    """
    One line per key per window, then how many were held back.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOON)
        self.limiter = RateLimiter("undecodable", "undecodable messages from {peer}", self.clock)

    def summaries(self, events: Sequence[LogEvent]) -> list[tuple[Any, ...]]:
        return [
            (e["of"], e.get("peer"), e["count"], e["window"])
            for e in events
            if e.get("event") == "suppressed"
        ]

    def test_oneLinePerWindow(self) -> None:
        """The first line of a window is allowed, the rest are held back until it ends."""
        allowed = []
        for _ in range(5):
            allowed.append(self.limiter.allow("a"))
            self.clock.advance(1)
        self.assertEqual(allowed, [True, False, False, False, False])
        self.clock.advance(5 - 0.001)
        self.assertFalse(self.limiter.allow("a"))

    def test_countAtWindowEnd(self) -> None:
        """When the window ends a line says how many were held back, and the next is allowed."""
        with capturedLogs() as events:
            for _ in range(4):
                self.limiter.allow("a")
            self.clock.advance(9.9)
            self.assertEqual(self.summaries(events), [])
            self.clock.advance(0.1)
            self.assertEqual(self.summaries(events), [("undecodable", "a", 3, 10)])
            self.assertTrue(self.limiter.allow("a"))
        summary = [e for e in events if e.get("event") == "suppressed"][0]
        self.assertEqual(summary["log_level"], LogLevel.warn)
        self.assertEqual(
            formatEvent(summary), "3 more undecodable messages from a suppressed in the last 10 s"
        )

    def test_nothingHeldNothingSaid(self) -> None:
        """A window with one line starts no timer and ends without a count."""
        with capturedLogs() as events:
            self.assertTrue(self.limiter.allow("a"))
            self.assertEqual(self.clock.getDelayedCalls(), [])
            self.clock.advance(10)
            self.assertTrue(self.limiter.allow("a"))
        self.assertEqual(self.summaries(events), [])

    def test_keysApart(self) -> None:
        """Each key has its own window."""
        self.assertTrue(self.limiter.allow("a"))
        self.assertTrue(self.limiter.allow("b"))
        self.assertFalse(self.limiter.allow("a"))
        self.assertFalse(self.limiter.allow("b"))

    def test_forget(self) -> None:
        """A forgotten key says at once what was held back for it, and leaves no state or timer."""
        with capturedLogs() as events:
            self.limiter.allow("a")
            self.clock.advance(2.5)
            self.limiter.allow("a")
            self.limiter.forget("a")
            self.limiter.forget("never seen")
        self.assertEqual(self.summaries(events), [("undecodable", "a", 1, 2.5)])
        self.assertFalse(self.limiter.active)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_withoutClock(self) -> None:
        """Without a clock, the count comes with the first call after the window, given the time."""
        limiter = RateLimiter("accept-error", "accept errors")
        with capturedLogs() as events:
            self.assertTrue(limiter.allow(None, now=100.0))
            self.assertFalse(limiter.allow(None, now=101.0))
            self.assertFalse(limiter.allow(None, now=109.0))
            limiter.flush(109.9)
            self.assertEqual(self.summaries(events), [])
            limiter.flush(125.0)
            self.assertEqual(self.summaries(events), [("accept-error", None, 2, 10)])
            self.assertFalse(limiter.active)
            self.assertTrue(limiter.allow(None, now=126.0))


class UndecodableWarningTests(SynchronousTestCase):
    """
    A peer's undecodable messages: one line per peer per 10 s, bounded in length.
    """

    def warnings(self, events: Sequence[LogEvent], name: str) -> list[LogEvent]:
        return [e for e in events if e.get("event") == name]

    def test_floodLoggedOncePerWindow(self) -> None:
        """A hundred undecodable messages in a window give one line and then the count; each is still answered."""
        protocol, transport, clock, factory = connect(delay=0)
        with capturedLogs() as events:
            protocol.dataReceived(b"\xff\n" * 100)
            self.assertEqual(transport.value().count(b"error "), 100)
            self.assertEqual(len(self.warnings(events, "undecodable")), 1)
            self.assertEqual(self.warnings(events, "suppressed"), [])
            clock.advance(10)
        [summary] = self.warnings(events, "suppressed")
        self.assertEqual(
            (summary["of"], summary["peer"], summary["count"]),
            ("undecodable", "127.0.0.1:40000", 99),
        )
        self.assertEqual(factory.stats.decodeErrors, 100)
        with capturedLogs() as events:
            protocol.dataReceived(b"\xff\n")
        self.assertEqual(len(self.warnings(events, "undecodable")), 1)

    def test_perPeer(self) -> None:
        """Another peer's first undecodable message is logged while the first peer's are held back."""
        first, _, clock, factory = connect(delay=0)
        second, _, _, _ = connect(delay=0, hub=hubOf(factory), port=40001)
        with capturedLogs() as events:
            first.dataReceived(b"\xff\n\xff\n")
            second.dataReceived(b"\xff\n")
        self.assertEqual(
            [e["peer"] for e in self.warnings(events, "undecodable")],
            ["127.0.0.1:40000", "127.0.0.1:40001"],
        )

    def test_bytesBounded(self) -> None:
        """A long undecodable message is logged by its first 64 bytes and its length."""
        protocol, _, _, _ = connect(delay=0)
        with capturedLogs() as events:
            protocol.dataReceived(b"\xff" * 60000 + b"\n")
        [warning] = self.warnings(events, "undecodable")
        self.assertEqual(warning["data"], b"\xff" * 64)
        self.assertEqual(warning["size"], 60000)
        line = TextFormat()(warning)
        assert line is not None
        self.assertLess(len(line), 500)
        self.assertIn("...", line)
        self.assertIn("60000 bytes", line)

    def test_disconnectForgets(self) -> None:
        """When the peer goes, what was held back is counted at once and nothing is kept for it."""
        protocol, _, clock, factory = connect(delay=0)
        with capturedLogs() as events:
            protocol.dataReceived(b"\xff\n" * 3)
            protocol.connectionLost(Failure(ConnectionDone()))
        [summary] = self.warnings(events, "suppressed")
        self.assertEqual(summary["count"], 2)
        self.assertFalse(hubOf(factory).undecodableLines.active)
        self.assertEqual(clock.getDelayedCalls(), [])


class RefusedWarningTests(SynchronousTestCase):
    """
    Refused connections: one line per 10 s for the whole server, then the count.
    """

    def test_refusalsLoggedOncePerWindow(self) -> None:
        """Of five refusals in a window one is logged, then the count of the other four; all are counted."""
        clock = Clock()
        clock.advance(NOON)
        hub = makeHub(clock)
        factory = MessageFactory(FRAMINGS["line"], hub, Limits(maxConnections=1))
        factory.buildProtocol(None).makeConnection(
            StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
        )
        with capturedLogs() as events:
            for port in range(2, 7):
                refusal = factory.buildProtocol(None)
                self.assertIsInstance(refusal, Refusal)
                refusal.makeConnection(
                    StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
                )
            clock.advance(10)
        self.assertEqual(
            [e["peer"] for e in events if e.get("event") == "refused"], ["127.0.0.1:2"]
        )
        [summary] = [e for e in events if e.get("event") == "suppressed"]
        self.assertEqual((summary["of"], summary["count"]), ("refused", 4))
        self.assertNotIn("peer", summary)
        self.assertEqual(hub.stats.refused, 5)


class EMFILEListener:
    """
    A listening socket that is out of file descriptors once, then has
    C{waiting} connections to accept.
    """

    def __init__(self, waiting: int) -> None:
        self.waiting = waiting
        self.failed = False

    def accept(self) -> tuple[Any, tuple[str, int]]:
        if not self.failed:
            self.failed = True
            raise OSError(errno.EMFILE, "Too many open files")
        if not self.waiting:
            raise OSError(errno.EAGAIN, "try again")
        self.waiting -= 1
        return io.BytesIO(), ("127.0.0.1", 50000 + self.waiting)


def twistedAcceptErrors(waiting: int) -> list[dict[str, Any]]:
    """
    What Twisted's own accept loop logs when it runs out of descriptors:
    with its reserved descriptor, then without.
    """
    events: list[dict[str, Any]] = []
    logger = Logger(namespace="twisted.internet.tcp.Port", observer=events.append)  # type: ignore[arg-type]
    reserved = tcp._FileDescriptorReservation(lambda: open(os.devnull))
    reserved.reserve()
    try:
        list(tcp._accept(logger, range(100), EMFILEListener(waiting), reserved))
    finally:
        if reserved.available():
            reserved._fileDescriptor.close()  # type: ignore[union-attr]
    list(tcp._accept(logger, range(100), EMFILEListener(0), tcp._NullFileDescriptorReservation()))
    return events


class AcceptErrorTests(SynchronousTestCase):
    """
    Twisted's storms of accept errors: one line per 10 s, then the count.
    """

    def test_storm(self) -> None:
        """Of every accept error Twisted logs in a window one line is written, then the count before the next line."""
        errors = twistedAcceptErrors(waiting=20)
        self.assertGreater(len(errors), 20)
        format = LineFormat(TextFormat())
        lines = []
        for i, e in enumerate(errors):
            e["log_time"] = NOON + i * 0.01
            lines.append(format(e))
        self.assertEqual(len([line for line in lines if line]), 1)
        self.assertIn("EMFILE", lines[0] or "")
        other = format(event(log_time=NOON + 5, peer="127.0.0.1:1", text="hi"))
        self.assertEqual(
            other, TextFormat()(event(log_time=NOON + 5, peer="127.0.0.1:1", text="hi"))
        )
        later = format(event(log_time=NOON + 11, peer="127.0.0.1:1", text="hi"))
        assert later is not None
        summary, line = later.splitlines()
        self.assertIn(
            f"[tcpcomm.logs#warn] {len(errors) - 1} more accept errors suppressed in the last 10 s",
            summary,
        )
        self.assertTrue(summary.startswith(formatTime(NOON + 11)))
        self.assertTrue(line.endswith("message from 127.0.0.1:1: hi"))

    def test_json(self) -> None:
        """The JSON log holds back the same lines, and names its count."""
        format = LineFormat(JSONFormat())
        errors = twistedAcceptErrors(waiting=3)
        for i, e in enumerate(errors):
            e["log_time"] = NOON + i
            format(e)
        later = format(event(log_time=NOON + 30, text="hi"))
        assert later is not None
        records = [json.loads(line) for line in later.splitlines()]
        self.assertEqual(
            [(r["event"], r.get("of"), r.get("count")) for r in records],
            [("suppressed", "accept-error", len(errors) - 1), ("log", None, None)],
        )


class FakeReactor:
    """
    Runs what is given to callFromThread at once.
    """

    def callFromThread(self, f: Callable[..., object], *args: object) -> None:
        f(*args)


class ObserverTests(SynchronousTestCase):
    """
    tcpcomm's observer writes where twistd would, and SIGUSR1 never ends the process.
    """

    def setUp(self) -> None:
        previous = signal.getsignal(signal.SIGUSR1)
        self.addCleanup(signal.signal, signal.SIGUSR1, previous)
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        self.folder = os.path.abspath(self.mktemp())
        os.mkdir(self.folder)

    def usr1(self) -> None:
        handler = signal.getsignal(signal.SIGUSR1)
        assert callable(handler)
        handler(signal.SIGUSR1, None)

    def test_stdout(self) -> None:
        """With -n and no --logfile, or --logfile -, lines go to standard output."""
        for destination in [LogDestination(None, True), LogDestination("-", True)]:
            out = io.StringIO()
            self.patch(sys, "stdout", out)
            makeObserver(destination)(event(peer="p", text=FORGERY))
            self.assertEqual(out.getvalue().count("\n"), 1)
            self.assertIn(FORGERY_ESCAPED, out.getvalue())

    def test_daemonCannotLogToStdout(self) -> None:
        """A daemon told --logfile - stops as twistd would."""
        with self.assertRaises(SystemExit) as e:
            makeObserver(LogDestination("-", False))
        self.assertEqual(e.exception.code, "Daemons cannot log to stdout, exiting!")

    def test_stdoutIgnoresSIGUSR1(self) -> None:
        """On standard output SIGUSR1 is handled, not fatal, and says once that there is nothing to rotate."""
        self.patch(sys, "stdout", io.StringIO())
        makeObserver(LogDestination(None, True), reactor=FakeReactor())
        with capturedLogs() as events:
            self.usr1()
            self.usr1()
        self.assertEqual([e["event"] for e in events], ["no-rotation"])

    def test_fileRotatesOnSIGUSR1(self) -> None:
        """A log file is written in the chosen format and rotated on SIGUSR1."""
        path = os.path.join(self.folder, "server.log")
        observer = makeObserver(LogDestination(path, False), "json", reactor=FakeReactor())
        observer(event(text="before"))
        self.usr1()
        observer(event(text="after"))
        with open(path + ".1") as f:
            self.assertEqual(json.loads(f.read())["message"], "before")
        with open(path) as f:
            self.assertEqual(json.loads(f.read())["message"], "after")

    def test_defaultFile(self) -> None:
        """A daemon without --logfile writes twistd.log in the current folder."""
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(self.folder)
        makeObserver(LogDestination(None, False))(event(text="hi"))
        with open(os.path.join(self.folder, "twistd.log")) as f:
            self.assertIn("message from", f.read())

    def test_existingHandlerKept(self) -> None:
        """Where something already handles SIGUSR1, it keeps it."""

        def mine(signum: int, frame: object) -> None:
            pass

        signal.signal(signal.SIGUSR1, mine)
        makeObserver(LogDestination(os.path.join(self.folder, "x.log"), False))
        self.assertIs(signal.getsignal(signal.SIGUSR1), mine)


def nullObserver() -> ILogObserver:
    """
    A log observer factory for C{--logger}.
    """
    return lambda event: None  # type: ignore[return-value]


class LogFileTests(SynchronousTestCase):
    """
    The log file rotates to the next number up and never renames an older file.
    """

    def setUp(self) -> None:
        self.folder = self.mktemp()
        os.mkdir(self.folder)
        self.path = os.path.join(self.folder, "server.log")

    def read(self, path: str) -> str:
        with open(path) as f:
            return f.read()

    def test_rotatesUpward(self) -> None:
        """Each rotation moves the live file to the next number, so the highest number holds the newest lines."""
        logFile = LogFile.fromFullPath(self.path)
        self.addCleanup(logFile.close)
        for text in ("first\n", "second\n", "third\n"):
            logFile.write(text)
            logFile.rotate()
        logFile.write("live\n")
        logFile.flush()
        self.assertEqual(
            [self.read(f"{self.path}.{n}") for n in (1, 2, 3)], ["first\n", "second\n", "third\n"]
        )
        self.assertEqual(self.read(self.path), "live\n")

    def test_olderFilesUntouched(self) -> None:
        """A rotation renames only the live file: the older files keep their names and their inodes."""
        logFile = LogFile.fromFullPath(self.path)
        self.addCleanup(logFile.close)
        logFile.write("a\n")
        logFile.rotate()
        before = os.stat(self.path + ".1").st_ino
        logFile.write("b\n")
        logFile.rotate()
        self.assertEqual(os.stat(self.path + ".1").st_ino, before)
        self.assertEqual(self.read(self.path + ".1"), "a\n")

    def test_continuesNumbering(self) -> None:
        """A log file opened beside rotated files rotates past the highest number, and never over a file made meanwhile."""
        for n in (1, 2, 7):
            with open(f"{self.path}.{n}", "w") as f:
                f.write(f"old {n}\n")
        logFile = LogFile.fromFullPath(self.path)
        self.addCleanup(logFile.close)
        with open(self.path + ".8", "w") as f:
            f.write("made meanwhile\n")
        logFile.write("new\n")
        logFile.rotate()
        self.assertEqual(self.read(self.path + ".8"), "made meanwhile\n")
        self.assertEqual(self.read(self.path + ".9"), "new\n")
        self.assertEqual(self.read(self.path + ".7"), "old 7\n")

    def test_rotatesAtSize(self) -> None:
        """Past 1 MB the next write goes to a new file, and the full one is kept whole."""
        logFile = LogFile.fromFullPath(self.path)
        self.addCleanup(logFile.close)
        line = "x" * 999 + "\n"
        for _ in range(1001):
            logFile.write(line)
        logFile.flush()
        self.assertEqual(os.path.getsize(self.path + ".1"), 1_000_000)
        self.assertEqual(self.read(self.path), line)


class TwistdChoiceTests(SynchronousTestCase):
    """
    Under twistd, tcpcomm's observer is the application's, unless the user chose another.
    """

    def setUp(self) -> None:
        previous = signal.getsignal(signal.SIGUSR1)
        self.addCleanup(signal.signal, signal.SIGUSR1, previous)
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        self.folder = self.mktemp()
        os.mkdir(self.folder)

    def application(self, *argv: str) -> Any:
        """
        The application twistd would make from C{argv}, as its runner does.
        """
        config = TwistdOptions()
        config.parseOptions(list(argv))
        application = Application("tcpcomm")
        tap.makeService(config.subOptions, MemoryReactorClock()).setServiceParent(application)
        return application

    def test_ownObserver(self) -> None:
        """twistd logs through tcpcomm's observer, in the chosen format, to --logfile."""
        path = os.path.join(self.folder, "server.log")
        for logFormat in ["text", "json"]:
            application = self.application(
                "--logfile", path, "tcpcomm", "server", "--log-format", logFormat
            )
            observer = application.getComponent(ILogObserver)
            self.assertTrue(ILogObserver.providedBy(observer))
            observer(event(peer="p", text=FORGERY))
        with open(path) as f:
            text, line = f.read().splitlines()
        self.assertIn(FORGERY_ESCAPED, text)
        self.assertEqual(json.loads(line)["message"], FORGERY)

    def test_parsingChangesNothing(self) -> None:
        """Parsing the options leaves twistd's own alone: nothing is chosen before makeService."""
        config = TwistdOptions()
        config.parseOptions(["-n", "tcpcomm", "server", "--log-format", "json"])
        self.assertIsNone(config["logger"])
        self.assertIs(signal.getsignal(signal.SIGUSR1), signal.SIG_DFL)

    def test_userLoggerWins(self) -> None:
        """With twistd's --logger, the user's observer is used and SIGUSR1 is left alone."""
        application = self.application(
            "-n",
            "--logger",
            f"{__name__}.nullObserver",
            "tcpcomm",
            "server",
            "--log-format",
            "json",
        )
        self.assertIsNone(application.getComponent(ILogObserver))
        self.assertIs(signal.getsignal(signal.SIGUSR1), signal.SIG_DFL)

    def test_syslog(self) -> None:
        """With twistd's --syslog, twistd's syslog observer stays and SIGUSR1 is made harmless."""
        application = self.application("-n", "--syslog", "tcpcomm", "client")
        self.assertIsNone(application.getComponent(ILogObserver))
        self.assertTrue(callable(signal.getsignal(signal.SIGUSR1)))

    def test_notUnderTwistd(self) -> None:
        """Built without twistd (as tests and embedders do), the service chooses no observer."""
        from tcpcomm.options import Options

        options = Options()
        options.parseOptions(["server"])
        application = Application("tcpcomm")
        tap.makeService(options, MemoryReactorClock()).setServiceParent(application)
        self.assertIsNone(application.getComponent(ILogObserver))
        self.assertIs(signal.getsignal(signal.SIGUSR1), signal.SIG_DFL)
