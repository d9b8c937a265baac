"""
The log line of each message received (C{message from PEER: TEXT}, namespace
C{tcpcomm.session}, event C{message}), at a cost the message path can bear.

A L{twisted.logger} event per message costs some twenty times the rest of a
message's handling. Where tcpcomm writes its own log (L{tcpcomm.logs}), the
lines are instead held for the rest of the reactor turn and written in one
batch, with one clock reading per turn and no event: the same bytes, in the
same order, at a fraction of the cost. Elsewhere (twistd's C{--logger} or
C{--syslog}, tests, embedders) each message is a normal event, so that any
observer still sees it.
"""

from __future__ import annotations

from threading import get_ident
from typing import Any

from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.logger import Logger, LogLevel

from tcpcomm.logs import MESSAGE, MESSAGE_NAMESPACE, LogObserver

log = Logger(namespace=MESSAGE_NAMESPACE)

#: Held lines are written once the reads they came from pass this many
#: bytes, even within a turn: a turn of many busy peers would otherwise
#: build its batch as one string of megabytes, which the allocator maps
#: afresh (and the kernel zeroes page by page) several times per write.
FLUSH_BYTES = 64 * 1024


class MessageLog:
    """
    Logs each message received: through L{twisted.logger} until L{attach}
    gives it tcpcomm's observer, then in batches written at the end of each
    reactor turn of C{clock}, and before anything else the observer writes.
    """

    __slots__ = ("_clock", "_observer", "_lines", "_size", "_when", "_thread", "_mixed")

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._observer: LogObserver | None = None
        #: C{(peer, text)} for each message, and whole events (see L{event}).
        self._lines: list[Any] = []
        # The bytes of the reads whose lines are held.
        self._size = 0
        self._mixed = False
        # The time of this turn's lines while their flush is due, else None.
        self._when: float | None = None
        # The thread that logs messages (the reactor's).
        self._thread = 0

    def attach(self, observer: LogObserver) -> None:
        """
        Write through C{observer} (tcpcomm's, which twistd logs to) from now
        on; what is held back is also written when the reactor stops.
        """
        self._observer = observer
        observer.beforeWrite = self._beforeWrite
        if IReactorCore.providedBy(self._clock):
            self._clock.addSystemEventTrigger("after", "shutdown", self.flush)

    def message(self, peer: str, text: str) -> None:
        """
        Log a message received: C{text}, decoded, from the session C{peer}.
        """
        if self._when is None:
            if self._observer is None:
                log.info(MESSAGE, event="message", peer=peer, text=text)
                return
            self._startTurn()
        self._lines.append((peer, text))

    def event(self, logger: Logger, format: str, **fields: object) -> None:
        """
        Log an info event of C{logger} that comes with the traffic (a
        connection made or lost): held with the messages, in order, where
        they are held, so that it costs no write of its own.
        """
        if self._when is None:
            if self._observer is None:
                logger.info(format, **fields)
                return
            self._startTurn()
        fields.update(
            log_format=format,
            log_namespace=logger.namespace,
            log_level=LogLevel.info,
            log_time=self._when,
            log_source=None,
            log_logger=logger,
        )
        self._lines.append(fields)
        self._mixed = True

    def heldLines(self, size: int = 0) -> list[Any] | None:
        """
        The list that this turn's lines are held in, for a caller with many
        to log (the session, a read of C{size} bytes) to append C{(peer,
        text)} to; L{None} where each message must go through L{message}
        instead. What is held is written first if this read would take it
        past L{FLUSH_BYTES}.
        """
        if self._when is None:
            if self._observer is None:
                return None
            self._startTurn()
        elif self._size + size > FLUSH_BYTES:
            self.flush()
        self._size += size
        return self._lines

    def flush(self) -> None:
        """
        Write the lines held back, if any.
        """
        lines, when = self._lines, self._when
        if lines and when is not None and self._observer is not None:
            batch = lines[:]
            lines.clear()  # the same list: a caller of heldLines may still append to it
            self._size = 0
            mixed, self._mixed = self._mixed, False
            self._observer.writeMessages(when, batch, mixed)

    def _startTurn(self) -> None:
        # The first message of a turn: its one flush, run by the reactor
        # before it waits for more input, and its time, which is when that
        # flush is due (so the clock is read once, by callLater).
        self._when = self._clock.callLater(0, self._endTurn).getTime()
        self._thread = get_ident()

    def _endTurn(self) -> None:
        try:
            self.flush()
        finally:
            self._when = None
            self._size = 0

    def _beforeWrite(self) -> None:
        # Another line is about to be written: the lines held back go first,
        # unless that line comes from another thread, whose order against
        # the reactor's is no one's to keep (and whose flush could race it).
        if self._lines and get_ident() == self._thread:
            self.flush()
