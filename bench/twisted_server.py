"""
Baseline: a bare Twisted line server, doing the work of
C{twistd tcpcomm server --handler echo --reply-delay 0} (answer each line at
once with the same line), or with C{broadcast} that of C{--handler
broadcast} (send each line to every other connection), and nothing else: no
registry, no logging per message, no counters. An empty line is a line like
any other here (tcpcomm takes it as a heartbeat and does not answer it).

    python bench/twisted_server.py PORT [BACKLOG [echo|broadcast]]

Prints C{listening on 127.0.0.1:PORT} once it listens; stops on SIGTERM.
"""

from __future__ import annotations

import sys
from typing import cast

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IReactorCore, IReactorTCP, ITransport
from twisted.internet.protocol import ServerFactory
from twisted.protocols.basic import LineOnlyReceiver


class Echo(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 65536  # tcpcomm's default --max-message-size
    transport: ITransport

    def lineReceived(self, line: bytes) -> None:
        self.transport.write(line + b"\n")

    def lineLengthExceeded(self, line: bytes) -> None:
        self.transport.loseConnection()


class Broadcast(Echo):
    """
    Each line to every other connection: the set of them is the factory's.
    """

    factory: BroadcastFactory

    def connectionMade(self) -> None:
        self.factory.peers.add(self)

    def connectionLost(self, reason: object = None) -> None:
        self.factory.peers.discard(self)

    def lineReceived(self, line: bytes) -> None:
        data = line + b"\n"
        for peer in self.factory.peers:
            if peer is not self:
                peer.transport.write(data)


class BroadcastFactory(ServerFactory):
    def __init__(self) -> None:
        self.peers: set[Broadcast] = set()


def main() -> None:
    port = int(sys.argv[1])
    backlog = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    handler = sys.argv[3] if len(sys.argv) > 3 else "echo"
    if handler not in ("echo", "broadcast"):
        raise SystemExit(f"handler must be echo or broadcast, not {handler!r}")
    factory = BroadcastFactory() if handler == "broadcast" else ServerFactory()
    factory.protocol = Broadcast if handler == "broadcast" else Echo
    factory.noisy = False
    listening = cast(IReactorTCP, reactor).listenTCP(
        port, factory, backlog=backlog, interface="127.0.0.1"
    )
    address = cast(IPv4Address, listening.getHost())
    print(f"listening on 127.0.0.1:{address.port} ({type(reactor).__name__})", flush=True)
    cast(IReactorCore, reactor).run()


if __name__ == "__main__":
    main()
