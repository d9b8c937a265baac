"""
C{--log-format json}: one JSON object per line for each log event, written
where twistd would have written its text log (standard output with C{-n},
else C{--logfile}, default C{twistd.log}, rotated as twistd rotates it).
"""

from __future__ import annotations

import json
import signal
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, LogEvent, formatEvent
from twisted.python.logfile import LogFile

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


#: Where L{jsonObserver} writes: twistd's C{--logfile} and C{--nodaemon}.
#: twistd names its C{--logger} factory by import path and calls it with no
#: arguments, so L{useJSON} leaves the destination here for it.
_destination: tuple[str | None, bool] = ("-", True)


def jsonObserver() -> ILogObserver:
    """
    twistd's C{--logger} factory for JSON lines, written where twistd's own
    text observer would have written them (rotated the same way).
    """
    logfile, nodaemon = _destination
    out: IO[Any]
    if logfile == "-" or (nodaemon and not logfile):
        out = sys.stdout
    else:
        rotating = LogFile.fromFullPath(logfile or "twistd.log")
        _rotateOnSIGUSR1(rotating)
        out = rotating
    return FileLogObserver(out, formatJSONLine)


def _rotateOnSIGUSR1(logFile: LogFile) -> None:
    """
    Rotate C{logFile} on SIGUSR1, as twistd does for its text log.
    """
    if signal.getsignal(signal.SIGUSR1) in (None, signal.SIG_DFL):

        def rotate(signum: int, frame: object) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(logFile.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)


def useJSON(twistdOptions: Any) -> None:
    """
    Make twistd, whose parsed options are C{twistdOptions}, log JSON lines.
    """
    global _destination
    _destination = (twistdOptions.get("logfile"), bool(twistdOptions.get("nodaemon")))
    twistdOptions["logger"] = f"{__name__}.jsonObserver"
