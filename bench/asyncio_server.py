"""
Baseline: an asyncio line server (a plain L{asyncio.Protocol}), doing the
work of C{twistd tcpcomm server --handler echo --reply-delay 0}: answer each
line at once with the same line, one write per line, as the Twisted servers
do; or with C{broadcast} that of C{--handler broadcast} (each line to every
other connection). An empty line is a line like any other here (tcpcomm
takes it as a heartbeat and does not answer it).

    python bench/asyncio_server.py PORT [BACKLOG [echo|broadcast]]

Prints C{listening on 127.0.0.1:PORT} once it listens; stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys

MAX_LENGTH = 65536  # tcpcomm's default --max-message-size


class Echo(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        lines = (self.buffer + data).split(b"\n")
        self.buffer = lines.pop()
        for line in lines:
            if len(line) > MAX_LENGTH:
                transport.close()
                return
            self.line_received(line)
        if len(self.buffer) > MAX_LENGTH:
            transport.close()

    def line_received(self, line: bytes) -> None:
        assert self.transport is not None
        self.transport.write(line + b"\n")


class Broadcast(Echo):
    """
    Each line to every other connection in C{peers}, shared by all of them.
    """

    def __init__(self, peers: set[Broadcast]) -> None:
        super().__init__()
        self.peers = peers

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.peers.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.peers.discard(self)

    def line_received(self, line: bytes) -> None:
        data = line + b"\n"
        for peer in self.peers:
            if peer is not self and peer.transport is not None:
                peer.transport.write(data)


async def serve(port: int, backlog: int, handler: str) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    loop.add_signal_handler(signal.SIGINT, stop.set_result, None)
    peers: set[Broadcast] = set()
    factory = Echo if handler == "echo" else (lambda: Broadcast(peers))
    server = await loop.create_server(factory, "127.0.0.1", port, backlog=backlog)
    actual = server.sockets[0].getsockname()[1]
    print(f"listening on 127.0.0.1:{actual} ({type(loop).__name__})", flush=True)
    await stop
    server.close()


def main() -> None:
    port = int(sys.argv[1])
    backlog = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    handler = sys.argv[3] if len(sys.argv) > 3 else "echo"
    if handler not in ("echo", "broadcast"):
        raise SystemExit(f"handler must be echo or broadcast, not {handler!r}")
    asyncio.run(serve(port, backlog, handler))


if __name__ == "__main__":
    main()
