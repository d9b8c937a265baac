"""
Baseline: an asyncio line echo server (a plain L{asyncio.Protocol}), doing
the work of C{twistd tcpcomm server --handler echo --framing line
--reply-delay 0}: answer each line at once with the same line, one write per
line, as the Twisted servers do.

    python bench/asyncio_server.py PORT [BACKLOG]

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
            transport.write(line + b"\n")
        if len(self.buffer) > MAX_LENGTH:
            transport.close()


async def serve(port: int, backlog: int) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    loop.add_signal_handler(signal.SIGINT, stop.set_result, None)
    server = await loop.create_server(Echo, "127.0.0.1", port, backlog=backlog)
    actual = server.sockets[0].getsockname()[1]
    print(f"listening on 127.0.0.1:{actual} ({type(loop).__name__})", flush=True)
    await stop
    server.close()


def main() -> None:
    port = int(sys.argv[1])
    backlog = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    asyncio.run(serve(port, backlog))


if __name__ == "__main__":
    main()
