"""
What logging one message costs, in microseconds, in text and JSON, with
tcpcomm's own observer writing to a log file in a scratch folder (as a
daemon's does):

- C{event}: a C{twisted.logger} event per message through the global
  publisher (how every message was logged before the message log, and how
  it still is under C{--logger} or C{--syslog});
- C{message()}: L{tcpcomm.messagelog.MessageLog.message} alone, 1,000 lines
  to a turn;
- C{flush}: the end of such a turn (the batch's formatting, one write, one
  flush, the timer's call), per line;
- their sum, what a message costs in a busy turn;
- C{one per turn}: a turn with a single message, flush and timer included.

    python bench/messagelog.py [--number 20000]

Run it with the Python of the environment tcpcomm is installed in. Each
figure is the best of its runs (five, or one per turn of 1,000 messages).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import timeit
from collections.abc import Callable

from twisted.internet.task import Clock
from twisted.logger import Logger, globalLogBeginner, globalLogPublisher

from tcpcomm.logs import MESSAGE, MESSAGE_NAMESPACE, LogDestination, makeObserver
from tcpcomm.messagelog import MessageLog

PEER = "127.0.0.1:40522"
TEXT = "hello"
TURN = 1000
REPEAT = 5


def best(run: Callable[[], object], number: int) -> float:
    """
    The best time of C{run}, in microseconds per call.
    """
    return min(timeit.repeat(run, number=number, repeat=REPEAT)) / number * 1e6


def measure(folder: str, logFormat: str, number: int) -> dict[str, float]:
    observer = makeObserver(LogDestination(os.path.join(folder, f"{logFormat}.log")), logFormat)
    log = Logger(namespace=MESSAGE_NAMESPACE)
    globalLogPublisher.addObserver(observer)
    try:
        event = best(lambda: log.info(MESSAGE, event="message", peer=PEER, text=TEXT), number)
    finally:
        globalLogPublisher.removeObserver(observer)

    clock = Clock()
    clock.advance(1795867200.0)
    messageLog = MessageLog(clock)
    messageLog.attach(observer)
    message = messageLog.message

    def turn() -> None:
        for _ in range(TURN):
            message(PEER, TEXT)

    def flush() -> None:
        clock.advance(0)

    held, flushed = [], []
    for _ in range(REPEAT * max(1, number // TURN)):
        held.append(timeit.timeit(turn, number=1) / TURN * 1e6)
        flushed.append(timeit.timeit(flush, number=1) / TURN * 1e6)

    def onePerTurn() -> None:
        message(PEER, TEXT)
        clock.advance(0)

    return {
        "event": event,
        "message()": min(held),
        "flush": min(flushed),
        "one per turn": best(onePerTurn, number),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=20000, help="messages per run")
    number = parser.parse_args().number
    # As twistd does: the global publisher's observers only, no start-up buffer.
    globalLogBeginner.beginLoggingTo([], discardBuffer=True, redirectStandardIO=False)
    with tempfile.TemporaryDirectory(prefix="tcpcomm-messagelog-") as folder:
        for logFormat in ["text", "json"]:
            figures = measure(folder, logFormat, number)
            print(
                f"{logFormat:4}  event {figures['event']:.2f} us;  message() {figures['message()']:.3f}"
                f" + flush {figures['flush']:.3f} = {figures['message()'] + figures['flush']:.3f}"
                " us per message"
                f" ({TURN} to a turn);  one per turn {figures['one per turn']:.2f} us"
            )


if __name__ == "__main__":
    main()
