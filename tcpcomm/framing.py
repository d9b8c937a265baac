"""
Bytes to messages: one protocol class per C{--framing}, each built on a
receiver from L{twisted.protocols.basic}. Every message passes through here,
so each path is kept to the receiver's own work plus one call.
"""

from __future__ import annotations

import struct

from twisted.protocols.basic import Int32StringReceiver, LineOnlyReceiver, NetstringReceiver

from tcpcomm.protocol import FramedProtocol, log

# hasPartial() reads the receivers' buffers (_buffer, _remainingData, _state,
# _unprocessed): Twisted has kept them for over a decade, and
# tests/test_framing.py fails if that changes.


class LineFraming(FramedProtocol, LineOnlyReceiver):
    """
    Lines ending in C{\\n}; a C{\\r} before it is dropped, so C{nc}, C{socat}
    and C{telnet} users can type messages by hand.
    """

    delimiter = b"\n"
    # The receiver counts a line's "\r" against MAX_LENGTH: allow one byte
    # for it, and hold a line without one to the limit in lineReceived.
    slack = 1

    @staticmethod
    def frame(message: bytes) -> bytes:
        return message + b"\n"

    def hasPartial(self) -> bool:
        return bool(self._buffer)

    def lineReceived(self, line: bytes) -> None:
        if line[-1:] == b"\r":
            line = line[:-1]
        elif len(line) == self.MAX_LENGTH:
            self.tooLong(len(line))
            return
        self.conversation.messageReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.tooLong(len(line))

    def sendMessage(self, message: bytes) -> None:
        self.transport.write(message + b"\n")
        if self.writePaused:
            self.overdue(len(message) + 1)


class NetstringFraming(FramedProtocol, NetstringReceiver):
    """
    Netstrings (C{5:hello,}).
    """

    @staticmethod
    def frame(message: bytes) -> bytes:
        return b"%d:%s," % (len(message), message)

    def hasPartial(self) -> bool:
        return bool(self._remainingData) or self._state == self._PARSING_PAYLOAD

    def stringReceived(self, string: bytes) -> None:
        self.conversation.messageReceived(string)

    def dataReceived(self, data: bytes) -> None:
        if self.brokenPeer:
            return
        NetstringReceiver.dataReceived(self, data)
        if self.brokenPeer:
            self.close()
            self.factory.hub.stats.framingErrors += 1
            log.warn(
                "disconnecting {peer}: not a netstring, or one longer than "
                "--max-message-size {limit}",
                event="bad-framing",
                peer=self.id,
                limit=self.MAX_LENGTH,
            )

    def sendMessage(self, message: bytes) -> None:
        self.sendString(message)
        if self.writePaused:
            self.overdue(len(message) + 12)


class Int32Framing(FramedProtocol, Int32StringReceiver):
    """
    Messages behind a 4-byte big-endian length.
    """

    @staticmethod
    def frame(message: bytes) -> bytes:
        return struct.pack("!I", len(message)) + message

    def hasPartial(self) -> bool:
        return bool(self._unprocessed)

    def stringReceived(self, string: bytes) -> None:
        self.conversation.messageReceived(string)

    def lengthLimitExceeded(self, length: int) -> None:
        self.tooLong(length)

    def sendMessage(self, message: bytes) -> None:
        self.sendString(message)
        if self.writePaused:
            self.overdue(len(message) + 4)


class RawFraming(FramedProtocol):
    """
    Each received chunk is one message, as the original tutorial's programs
    assumed. TCP splits and merges chunks at will, so this is only for peers
    that send no delimiter at all.
    """

    @staticmethod
    def frame(message: bytes) -> bytes:
        return message

    def dataReceived(self, data: bytes) -> None:
        if len(data) > self.MAX_LENGTH:
            self.tooLong(len(data))
            return
        self.conversation.messageReceived(data)

    def sendMessage(self, message: bytes) -> None:
        self.transport.write(message)
        if self.writePaused:
            self.overdue(len(message))


FRAMINGS: dict[str, type[FramedProtocol]] = {
    "line": LineFraming,
    "netstring": NetstringFraming,
    "int32": Int32Framing,
    "raw": RawFraming,
}
