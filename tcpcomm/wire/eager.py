"""
Writes that leave at once. Twisted's C{transport.write} only queues: the
bytes wait for the next reactor turn, which costs a turn and two
C{epoll_ctl} calls per reply. When nothing is queued in the transport, the
bytes can go to the socket straight away, and only what the kernel does not
take is queued the usual way.

This reads C{twisted.internet.tcp.Connection}'s private buffer attributes;
everything that does is in this module. Callers use plain C{transport.write}
for any transport L{canWriteEagerly} refuses (TLS, test doubles) and for a
Twisted whose connections no longer look as expected, and
C{tests/test_eager.py} fails loudly when a Twisted release changes them.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp

#: What L{_send} reads of a TCP connection.
ATTRIBUTES = (
    "socket",
    "connected",
    "disconnecting",
    "dataBuffer",
    "_tempDataLen",
    "_writeDisconnected",
)


def canWriteEagerly(transport: Any) -> bool:
    """
    Whether L{writeEagerly} may write to C{transport}: a plain TCP or UNIX
    connection of a Twisted that still looks as this module expects.
    """
    return (
        isinstance(transport, tcp.Connection)
        and not getattr(transport, "TLS", False)  # startTLS'd: bytes go through the TLS layer
        and all(hasattr(transport, name) for name in ATTRIBUTES)
    )


def writeEagerly(transport: Any, data: bytes) -> None:
    """
    Write C{data} to C{transport} (one L{canWriteEagerly} accepted): to its
    socket at once when nothing is queued, else behind what is.
    """
    if (
        transport.dataBuffer
        or transport._tempDataLen
        or transport.disconnecting
        or not transport.connected
        or transport._writeDisconnected
    ):
        transport.write(data)  # keep the order behind what is queued, or let Twisted refuse
        return
    try:
        sent = transport.socket.send(data)
    except BlockingIOError:
        sent = 0
    except OSError:
        # Reset, broken pipe...: queue it, and let Twisted's own write find
        # the error and end the connection the usual way (never from here,
        # which may be inside the protocol's own dataReceived).
        transport.write(data)
        return
    if sent < len(data):
        transport.write(data[sent:])
