"""
What tcpcomm's own Python costs per message, in microseconds, with no
socket, no log and no reactor: one echo server connection on a transport
that drops what it is given, fed from a loop.

- C{pipelined}: a read of 1,000 32-byte lines, per line (the pipelined rows);
- C{one per read}: a read of one 32-byte line (the request/response rows,
  where this is all of tcpcomm's share: the rest of a round trip is the
  kernel's and the reactor's).

    python bench/messagepath.py [--number 200000]

Run it with the Python of the environment tcpcomm is installed in. Each
figure is the best of five runs.
"""

from __future__ import annotations

import argparse
import time

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from tcpcomm.handlers import Echo
from tcpcomm.hub.hub import Hub
from tcpcomm.templates import Template, Texts
from tcpcomm.wire.framing import FRAMINGS
from tcpcomm.wire.protocol import FramedProtocol, Limits, MessageFactory


class Sink(StringTransport):
    """
    A transport that keeps nothing.
    """

    def write(self, data: bytes) -> None:
        pass


def connection() -> FramedProtocol:
    """
    A server connection of the line framing with the echo handler, no
    message log, and tcpcomm's default --message-timeout.
    """
    clock = Clock()
    clock.advance(1e9)
    texts = Texts("utf-8", 0, Template("reply", "utf-8"), Template("error", "utf-8"))
    hub = Hub(clock, texts, Echo, logMessages=False)
    factory = MessageFactory(FRAMINGS["line"], hub, Limits(messageTimeout=60))
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(Sink(peerAddress=IPv4Address("TCP", "127.0.0.1", 40522)))
    return protocol


def best(protocol: FramedProtocol, data: bytes, reads: int) -> float:
    """
    The best of five runs of C{reads} reads of C{data}, in seconds per read.
    """
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(reads):
            protocol.dataReceived(data)
        times.append((time.perf_counter() - start) / reads)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--number", type=int, default=200000, help="messages per run")
    args = parser.parse_args()
    line = b"x" * 31 + b"\n"
    protocol = connection()
    pipelined = best(protocol, line * 1000, max(1, args.number // 1000)) / 1000
    single = best(protocol, line, args.number)
    print(f"pipelined     {pipelined * 1e6:.3f} us per message (reads of 1,000)")
    print(f"one per read  {single * 1e6:.3f} us per message")


if __name__ == "__main__":
    main()
