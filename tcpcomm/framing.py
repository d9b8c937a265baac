"""
Bytes to messages: one protocol class per C{--framing}, each built on a
receiver from L{twisted.protocols.basic}. Every message passes through here,
so each path is kept to the receiver's own work plus one call.
"""

from __future__ import annotations

import struct

from twisted.protocols.basic import (
    IncompleteNetstring,
    Int32StringReceiver,
    LineOnlyReceiver,
    NetstringParseError,
    NetstringReceiver,
)

from tcpcomm.protocol import MESSAGES_PER_TURN, FramedProtocol, log

# hasPartial() and the per-turn bound read the receivers' state (_buffer,
# _remainingData, _state, _consumeData, _unprocessed, paused): Twisted has
# kept it for over a decade, and tests/test_framing.py fails if that changes.
#
# Each streamed framing delivers at most MESSAGES_PER_TURN messages per call
# and calls holdInput() when it stops there; while input is held, data that
# arrives is only buffered, and dataReceived(b"") takes the next batch.


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

    #: While input is held: the lines of the read, and where the next batch starts.
    _held: list[bytes] | None = None
    _start = 0

    def hasPartial(self) -> bool:
        return bool(self._buffer)

    def dataReceived(self, data: bytes) -> None:
        # LineOnlyReceiver.dataReceived, taking at most MESSAGES_PER_TURN
        # lines: the bound costs nothing per line.
        held = self._held
        if held is None:
            lines = (self._buffer + data).split(b"\n")
            self._buffer = lines.pop()
            start = 0
        elif data:
            more = (self._buffer + data).split(b"\n")
            self._buffer = more.pop()
            held.extend(more)
            return
        else:
            lines, start = held, self._start
        stop = start + MESSAGES_PER_TURN
        if len(lines) > stop:
            self._held, self._start = lines, stop
            self.holdInput()
            lines = lines[start:stop]
        elif held is not None:
            self._held = None
            lines = lines[start:]
        for line in lines:
            if self.transport.disconnecting:  # type: ignore[attr-defined]
                return  # the rest of a read goes with a closed connection
            if len(line) > self.MAX_LENGTH:
                self.lineLengthExceeded(line)
                return
            self.lineReceived(line)
        if self._held is None and len(self._buffer) > self.MAX_LENGTH:
            self.lineLengthExceeded(self._buffer)

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
        self._remainingData += data
        if self.inputHeld and data:
            return
        # NetstringReceiver.dataReceived, taking at most MESSAGES_PER_TURN
        # netstrings: each _consumeData() that returns delivered one.
        left = MESSAGES_PER_TURN
        while self._remainingData:
            if not left:
                self.holdInput()
                break
            try:
                self._consumeData()
            except IncompleteNetstring:
                break
            except NetstringParseError:
                self._handleParseError()
                break
            left -= 1
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

    _left = MESSAGES_PER_TURN

    def hasPartial(self) -> bool:
        return bool(self._unprocessed)

    def dataReceived(self, data: bytes) -> None:
        # Twisted's receiver stops at "paused" and keeps the rest in
        # _unprocessed; stringReceived sets it after MESSAGES_PER_TURN.
        if self.paused and data:
            self._unprocessed += data
            return
        self.paused = False
        self._left = MESSAGES_PER_TURN
        Int32StringReceiver.dataReceived(self, data)
        if self.paused:
            if self._unprocessed:
                self.holdInput()
            else:
                self.paused = False

    def stringReceived(self, string: bytes) -> None:
        self.conversation.messageReceived(string)
        self._left -= 1
        if not self._left:
            self.paused = True

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
