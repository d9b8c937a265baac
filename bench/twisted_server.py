"""
Baseline: a bare Twisted line echo server, doing the work of
C{twistd tcpcomm server --handler echo --framing line --reply-delay 0}
(answer each line at once with the same line) and nothing else: no
registry, no logging per message, no counters.

    python bench/twisted_server.py PORT [BACKLOG]

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


def main() -> None:
    port = int(sys.argv[1])
    backlog = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    factory = ServerFactory()
    factory.protocol = Echo
    factory.noisy = False
    listening = cast(IReactorTCP, reactor).listenTCP(
        port, factory, backlog=backlog, interface="127.0.0.1"
    )
    address = cast(IPv4Address, listening.getHost())
    print(f"listening on 127.0.0.1:{address.port} ({type(reactor).__name__})", flush=True)
    cast(IReactorCore, reactor).run()


if __name__ == "__main__":
    main()
