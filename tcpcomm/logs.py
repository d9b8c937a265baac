"""
tcpcomm's own log observer for twistd, in text or JSON (C{--log-format}),
written where twistd would have written its log (standard output with C{-n}
or C{--logfile -}, else C{--logfile}, default C{twistd.log}, rotated at 1 MB
and on SIGUSR1 without renaming older files), and the rate limiter for log lines peers can repeat at will.

Owning the observer is what lets tcpcomm escape control characters in text
lines (a peer's text must not forge a line or drive a terminal) and hold
back Twisted's own storms of accept errors.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import IO, Any, Protocol, cast

from twisted.application.service import IServiceCollection, MultiService
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import ILogObserver, LogEvent, Logger, formatEvent, formatTime
from twisted.python import logfile, threadable
from twisted.python.compat import ioType
from twisted.python.components import Componentized
from twisted.python.failure import Failure
from zope.interface import implementer

log = Logger()

#: The window of L{RateLimiter}, in seconds.
WINDOW = 10.0

#: Keys of legacy C{twisted.python.log} events, and of the logger's own
#: bookkeeping, which are not fields of the event.
_NOT_FIELDS = frozenset(
    {"message", "format", "system", "isError", "time", "why", "failure", "printed", "log_trace"}
)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, bytes):
        return repr(value)
    return str(value)


def eventAsRecord(event: LogEvent) -> dict[str, Any]:
    """
    The stable JSON shape of a log event: C{time} (ISO 8601, UTC), C{level},
    C{namespace}, C{event} (a short name such as C{connected}, C{message},
    C{lost}; C{log} for events that have none), C{text} (the line a text log
    would show), then the event's own fields, the message text as
    C{message}.
    """
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), UTC).isoformat(),
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace", event.get("system", "-")),
        "event": event.get("event", "log"),
        "text": formatEvent(event),
    }
    for key, value in event.items():
        if key == "text":
            record["message"] = _jsonable(value)
        elif not (key.startswith("log_") or key in _NOT_FIELDS or key in record):
            record[key] = _jsonable(value)
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return record


def formatJSONLine(event: LogEvent) -> str:
    return json.dumps(eventAsRecord(event), ensure_ascii=False) + "\n"


# Message lines: what the text and JSON formats write for the event C{message}
# (namespace C{tcpcomm.session}, fields C{peer} and C{text}) that
# L{tcpcomm.messagelog.MessageLog} hands the observer in batches, made
# without an event: byte for byte what formatting that event would make.

#: What the event C{message} says.
MESSAGE = "message from {peer}: {text}"

#: The namespace of the event C{message}.
MESSAGE_NAMESPACE = "tcpcomm.session"

#: Message lines: C{(peer, text)} for each message received.
Batch = Sequence[tuple[str, str]]


class JSONFormat:
    """
    The JSON line of an event (L{formatJSONLine}), and of a batch of message
    lines.
    """

    def __call__(self, event: LogEvent) -> str:
        return formatJSONLine(event)

    def messageLines(self, when: float, batch: Batch) -> str:
        """
        The lines L{formatJSONLine} makes for the events C{message} of
        C{batch}, all logged at C{when}: L{eventAsRecord}'s keys in its order,
        each string escaped as C{json.dumps} escapes it.
        """
        head = (
            f'{{"time": {encode_basestring(datetime.fromtimestamp(when, UTC).isoformat())}, '
            f'"level": "info", "namespace": "{MESSAGE_NAMESPACE}", "event": "message", '
            '"text": "message from '
        )
        lines = []
        for peer, text in batch:
            p, t = encode_basestring(peer), encode_basestring(text)
            lines.append(f'{head}{p[1:-1]}: {t[1:-1]}", "peer": {p}, "message": {t}}}\n')
        return "".join(lines)


# Text lines.

#: Every C0 and C1 control character, DEL, and the two Unicode line
#: separators, as the escapes Python writes them with.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_ESCAPES.update({0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r", 0x2028: "\\u2028", 0x2029: "\\u2029"})


_ASCII_CONTROLS = bytes(range(0x20)) + b"\x7f"
_CONTROL_CHARACTERS = tuple(map(chr, _ASCII_CONTROLS))


def _plain(text: str) -> bool:
    """
    Whether C{text} has nothing to escape; it may say L{False} of some text
    that has nothing to escape all the same.
    """
    if text.isascii():  # known without a scan
        if len(text) > 2048:
            # A batch of lines: one memchr per control character is about
            # twice as fast as a pass through a translation table.
            for character in _CONTROL_CHARACTERS:
                if character in text:
                    return False
            return True
        # Three times faster than isprintable, for the text most peers send.
        data = text.encode("ascii")
        return len(data.translate(None, _ASCII_CONTROLS)) == len(data)
    # str.isprintable is False for every character escaped.
    return text.isprintable()


def escapeControl(text: str) -> str:
    """
    C{text} with its control characters escaped (C{\\n}, C{\\r}, C{\\x1b},
    ...), so that it stays one line and cannot drive a terminal.
    """
    if _plain(text):
        return text
    return text.translate(_ESCAPES)


class TextFormat:
    """
    twistd's text line for an event (C{2026-11-28T12:00:00+0000
    [namespace#level] text}), with control characters in the line escaped;
    a logged failure's traceback follows on lines of its own, each begun
    with a tab, as twistd writes it.
    """

    def __init__(self) -> None:
        # The last second formatted and its text (one tuple, so that a
        # thread logging meanwhile never sees half of it).
        self._stamp: tuple[int, str] = (-1, "")

    def _timestamp(self, when: float | None) -> str:
        if when is None:
            return "-"
        second = int(when)
        cached, text = self._stamp
        if second != cached:
            text = formatTime(second)
            self._stamp = (second, text)
        return text

    def __call__(self, event: LogEvent) -> str | None:
        text = formatEvent(event)
        failure = event.get("log_failure")
        if not text and failure is None:
            return None
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{'-' if level is None else level.name}"
        line = escapeControl(f"{self._timestamp(event.get('log_time'))} [{system}] {text}")
        if failure is not None:
            line = f"{line}\n{_traceback(failure)}".replace("\n", "\n\t")
        return line + "\n"

    def messageLines(self, when: float, batch: Batch) -> str:
        """
        The lines this format writes for the events C{message} of C{batch},
        all logged at C{when}.
        """
        prefix = f"{self._timestamp(when)} [{MESSAGE_NAMESPACE}#info] message from "
        bodies = [f"{peer}: {text}" for peer, text in batch]
        # Escaping goes character by character, so each body can be escaped
        # on its own; one check finds whether any needs it.
        if not _plain("".join(bodies)):
            bodies = [escapeControl(body) for body in bodies]
        return prefix + f"\n{prefix}".join(bodies) + "\n"


def _traceback(failure: Failure) -> str:
    try:
        return failure.getTraceback()
    except BaseException as e:
        return f"(UNABLE TO OBTAIN TRACEBACK FROM EVENT): {e}"


# Rate limiting.


class _Window:
    __slots__ = ("start", "held", "timer")

    def __init__(self, start: float) -> None:
        self.start = start
        self.held = 0
        self.timer: IDelayedCall | None = None


class RateLimiter:
    """
    At most one log line per key (a peer, or L{None} for a whole server) per
    C{window} seconds, then one line saying how many were held back: call
    L{allow} before logging a line that a peer, or a storm, could repeat at
    will, and log it only if it says so.

    With a clock, the count is logged when the window ends; without one (in
    a log observer, which must not start timers), on the first L{allow} or
    L{flush} after it ended. Call L{forget} when a key's peer goes, so that
    nothing is kept for it.
    """

    def __init__(
        self,
        of: str,
        what: str,
        clock: IReactorTime | None = None,
        window: float = WINDOW,
        keyName: str = "peer",
        logger: Logger = log,
    ) -> None:
        """
        @param of: the event name of the lines limited (the summary's C{of}).
        @param what: what they are, for the summary's text, such as
            C{"undecodable messages from {peer}"}; the key is the field
            C{keyName}.
        """
        self.of = of
        self.window = window
        self._summary = "{count} more " + what + " suppressed in the last {window:g} s"
        self._clock = clock
        self._keyName = keyName
        self._log = logger
        self._windows: dict[Hashable, _Window] = {}

    @property
    def active(self) -> bool:
        """
        Whether a window is open for any key.
        """
        return bool(self._windows)

    def allow(self, key: Hashable = None, now: float | None = None) -> bool:
        """
        Whether to log a line for C{key} now (C{now} defaults to the clock's
        time); if not, count it.
        """
        if now is None:
            assert self._clock is not None
            now = self._clock.seconds()
        window = self._windows.get(key)
        if window is not None:
            if now < window.start + self.window:
                if not window.held and self._clock is not None:
                    window.timer = self._clock.callLater(
                        window.start + self.window - now, self._end, key, None
                    )
                window.held += 1
                return False
            self._end(key, now)
        self._windows[key] = _Window(now)
        return True

    def flush(self, now: float) -> None:
        """
        End every window that is over by C{now}.
        """
        for key, window in list(self._windows.items()):
            if now >= window.start + self.window:
                self._end(key, now)

    def forget(self, key: Hashable) -> None:
        """
        C{key} is gone: say what was held back for it, and keep nothing.
        """
        if key in self._windows:
            self._end(key, None)

    def _end(self, key: Hashable, now: float | None) -> None:
        window = self._windows.pop(key)
        if window.timer is not None and window.timer.active():
            window.timer.cancel()
        if not window.held:
            return
        if now is None:
            now = self._clock.seconds() if self._clock is not None else window.start
        span = round(min(max(now - window.start, 0.0), self.window), 1)
        fields = {} if key is None else {self._keyName: key}
        self._log.warn(
            self._summary, event="suppressed", of=self.of, count=window.held, window=span, **fields
        )


# The observer.

#: What Twisted's TCP ports log when accepting fails, as they do in storms
#: when file descriptors run out (twisted.internet.tcp._accept).
ACCEPT_ERRORS = frozenset(
    {
        "Could not accept new connection ({acceptError})",
        "EMFILE encountered; releasing reserved file descriptor.",
        "EMFILE recovery: Closed socket from {address}",
        "Re-reserving EMFILE recovery file descriptor.",
    }
)


class Format(Protocol):
    """
    A format of tcpcomm's observer (L{TextFormat}, L{JSONFormat}).
    """

    def __call__(self, event: LogEvent) -> str | None:
        """
        The line(s) of C{event}, or L{None} to write nothing.
        """

    def messageLines(self, when: float, batch: Batch) -> str:
        """
        The lines of the events C{message} of C{batch}, logged at C{when}.
        """


class LineFormat:
    """
    The formatter of tcpcomm's observer: each event as C{format} writes it,
    but Twisted's accept errors at most one line per window, then how many
    were held back, before the next line.
    """

    def __init__(self, format: Format, window: float = WINDOW) -> None:
        self._format = format
        self._held: list[LogEvent] = []
        self._acceptErrors = RateLimiter(
            "accept-error",
            "accept errors",
            window=window,
            logger=Logger(namespace=__name__, observer=cast(ILogObserver, self._held.append)),
        )

    def __call__(self, event: LogEvent) -> str | None:
        limiter = self._acceptErrors
        isAcceptError = event.get("log_format") in ACCEPT_ERRORS
        if not (isAcceptError or limiter.active):
            return self._format(event)
        now = event.get("log_time", 0.0)
        limiter.flush(now)
        line = self._format(event) if not isAcceptError or limiter.allow(None, now) else None
        if self._held:
            line = self._summaries(now) + (line or "")
        return line or None

    def messageLines(self, when: float, batch: Batch) -> str:
        """
        The lines of a batch of messages, after the count of accept errors
        held back if it is due.
        """
        lines = self._format.messageLines(when, batch)
        if self._acceptErrors.active:
            self._acceptErrors.flush(when)
            if self._held:
                lines = self._summaries(when) + lines
        return lines

    def _summaries(self, now: float) -> str:
        held = self._held[:]
        self._held.clear()
        for summary in held:
            summary["log_time"] = now
        return "".join(filter(None, map(self._format, held)))


@dataclass(frozen=True)
class LogDestination:
    """
    Where twistd would write its log, from its C{--logfile} and
    C{--nodaemon}: standard output with C{-n} and no C{--logfile}, or with
    C{--logfile -}; else the file (default C{twistd.log}).
    """

    logfile: str | None = None
    nodaemon: bool = False

    @property
    def stdout(self) -> bool:
        return self.logfile == "-" or (self.nodaemon and not self.logfile)


@implementer(ILogObserver)
class LogObserver:
    """
    tcpcomm's observer: each event as its L{LineFormat} writes it, written
    and flushed to C{out} (as Twisted's C{FileLogObserver} does), and the
    batches of message lines a L{tcpcomm.messagelog.MessageLog} hands it,
    each in one write.
    """

    def __init__(
        self, out: IO[Any], format: LineFormat, rotate: Callable[[], object] | None = None
    ) -> None:
        self._out = out
        self._encoding = "utf-8" if ioType(out) is not str else None
        self._format = format
        self._rotate = rotate
        #: Called before anything else is written (by the message log that
        #: writes through this observer), so that lines it holds back come
        #: first and the log keeps its order.
        self.beforeWrite: Callable[[], None] | None = None

    def __call__(self, event: LogEvent) -> None:
        if self.beforeWrite is not None:
            self.beforeWrite()
        text = self._format(event)
        if text:
            self._write(text)

    def writeMessages(self, when: float, batch: Batch, mixed: bool = False) -> None:
        """
        Write the lines of the events C{message} of C{batch}, logged at
        C{when}; if C{mixed}, some of its items are whole events (dicts,
        see L{tcpcomm.messagelog.MessageLog.event}), written in their place.
        """
        if not batch:
            return
        if not mixed:
            self._write(self._format.messageLines(when, batch))
            return
        parts: list[str] = []
        run: list[tuple[str, str]] = []
        for item in batch:
            if isinstance(item, dict):
                if run:
                    parts.append(self._format.messageLines(when, run))
                    run = []
                parts.append(self._format(item) or "")
            else:
                run.append(item)
        if run:
            parts.append(self._format.messageLines(when, run))
        self._write("".join(parts))

    def rotate(self) -> None:
        """
        Rotate the log file (on SIGUSR1), after what is held back is written
        to the old one.
        """
        if self.beforeWrite is not None:
            self.beforeWrite()
        if self._rotate is not None:
            self._rotate()

    def _write(self, text: str) -> None:
        out = self._out
        out.write(text if self._encoding is None else text.encode(self._encoding))
        out.flush()


class LogFile(logfile.LogFile):
    """
    twistd's log file, rotated at 1 MB and on demand, but to the next number
    up: the live file becomes C{NAME.N+1}, the highest number is the newest,
    and no older file is touched.

    twistd's own renames every older file one number up at each rotation,
    which costs a rename per file ever rotated: a daemon that logs each
    message rotates every second or so, and after a day each rotation would
    stall the reactor for the better part of a second.
    """

    # Its own rotate, under the lock that twistd's write already takes.
    synchronized = ["rotate"]

    def __init__(self, name: str, directory: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(name, directory, *args, **kwargs)
        self._next = max(self.listLogs(), default=0) + 1

    def rotate(self) -> None:
        """
        Close the live file, rename it to the next free number, and open a
        new one; as twistd's, nothing happens where the file or its folder
        cannot be written.
        """
        if not (os.access(self.directory, os.W_OK) and os.access(self.path, os.W_OK)):
            return
        while os.path.exists(f"{self.path}.{self._next}"):
            self._next += 1  # made by someone else meanwhile: never overwritten
        self._file.close()
        os.rename(self.path, f"{self.path}.{self._next}")
        self._next += 1
        self._openFile()


# As twistd's: a line from another thread never meets a rotation half done.
threadable.synchronize(LogFile)


def makeObserver(
    destination: LogDestination, logFormat: str = "text", reactor: Any = None
) -> LogObserver:
    """
    tcpcomm's log observer: C{logFormat} lines (C{text} or C{json}) written
    to C{destination}. A file rotates at 1 MB and on SIGUSR1, as twistd's
    own does; standard output has nothing to rotate, and SIGUSR1, which
    would otherwise end the process, only says so (once). Either way only
    where nothing else handles SIGUSR1 already.
    """
    out: IO[Any]
    format = LineFormat(TextFormat() if logFormat == "text" else JSONFormat())
    if destination.stdout:
        if not destination.nodaemon:
            sys.exit("Daemons cannot log to stdout, exiting!")  # as twistd says it
        out = sys.stdout
        onSIGUSR1(_NothingToRotate(), reactor)
        return LogObserver(out, format)
    logFile = LogFile.fromFullPath(destination.logfile or "twistd.log")
    observer = LogObserver(logFile, format, logFile.rotate)
    onSIGUSR1(observer.rotate, reactor)
    return observer


class _NothingToRotate:
    said = False

    def __call__(self) -> None:
        if not self.said:
            self.said = True
            log.info(
                "SIGUSR1: there is no log file to rotate (the log goes to standard output "
                "or syslog); ignoring it",
                event="no-rotation",
            )


def onSIGUSR1(action: Callable[[], object], reactor: Any = None) -> None:
    """
    Run C{action} in the reactor on SIGUSR1, unless something else already
    handles it (as twistd does for its own log file).
    """
    if signal.getsignal(signal.SIGUSR1) not in (None, signal.SIG_DFL):
        return

    def handler(signum: int, frame: object) -> None:
        target = reactor
        if target is None:
            from twisted.internet import reactor as target
        target.callFromThread(action)

    signal.signal(signal.SIGUSR1, handler)


class _ObservedService(MultiService):
    """
    The top of a twistd application that logs through tcpcomm's observer:
    twistd logs to its application's L{ILogObserver} component (unless
    C{--logger} names another), which this sets when twistd makes it part
    of the application, after C{makeService} and before logging begins.
    """

    def __init__(self, makeObserver: Callable[[], ILogObserver]) -> None:
        super().__init__()
        self._makeObserver = makeObserver

    def setServiceParent(self, parent: IServiceCollection) -> None:
        super().setServiceParent(parent)
        if isinstance(parent, Componentized) and parent.getComponent(ILogObserver) is None:
            parent.setComponent(ILogObserver, self._makeObserver())


def loggedByTcpcomm(
    twistd: Any,
    logFormat: str,
    service: MultiService,
    attach: Callable[[LogObserver], object] | None = None,
) -> MultiService:
    """
    C{service}, made to log through tcpcomm's observer when twistd, whose
    parsed options are C{twistd}, runs it: to the same destination twistd's
    own observer would use, and C{attach} (the message log's) is called
    with the observer once twistd takes it. With twistd's C{--logger} or
    C{--syslog}, the user's choice stands (and SIGUSR1 is only kept from
    ending the process where there is no file).
    """
    if twistd is None or "nodaemon" not in twistd or twistd.get("logger") is not None:
        return service
    if twistd.get("syslog"):
        onSIGUSR1(_NothingToRotate())
        return service
    destination = LogDestination(twistd.get("logfile"), bool(twistd.get("nodaemon")))

    def observer() -> LogObserver:
        made = makeObserver(destination, logFormat)
        if attach is not None:
            attach(made)
        return made

    top = _ObservedService(observer)
    service.setServiceParent(top)
    return top
