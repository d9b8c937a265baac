"""
Bytes to messages and back: one protocol class per C{--framing}. Each read
is split whole (C{bytes.split}, C{find}, C{unpack_from} loops) into at most
L{MESSAGES_PER_TURN} messages, which go to the conversation in one call;
what remains, a message begun but not finished, waits for the next read.
"""

from __future__ import annotations

import re
import struct

from tcpcomm.wire.protocol import MESSAGES_PER_TURN, FramedProtocol, Split

_LENGTH = struct.Struct("!I")
_DIGITS = re.compile(rb"[0-9]*")


class LineFraming(FramedProtocol):
    """
    Lines ending in C{\\n}; a C{\\r} before it is dropped, so C{nc}, C{socat}
    and C{telnet} users can type messages by hand.
    """

    @staticmethod
    def frame(message: bytes) -> bytes:
        return message + b"\n"

    def frameAll(self, messages: list[bytes]) -> bytes:
        return b"\n".join(messages) + b"\n"

    def split(self, data: bytes) -> Split:
        lines = data.split(b"\n")
        rest = lines.pop()
        bounded = len(lines) > MESSAGES_PER_TURN
        if bounded:
            rest = b"\n".join(lines[MESSAGES_PER_TURN:]) + b"\n" + rest
            del lines[MESSAGES_PER_TURN:]
        limit = self.maxMessageSize
        if lines:
            if b"\r" in data:
                lines = [line[:-1] if line[-1:] == b"\r" else line for line in lines]
            # No line of a read within the limit can be over it.
            if len(data) > limit and max(map(len, lines)) > limit:
                for i, line in enumerate(lines):
                    if len(line) > limit:
                        return lines[:i], b"", False, len(line)
        # An unfinished line may hold one byte more: the "\r" of a "\r\n".
        if not bounded and len(rest) > limit + 1:
            return lines, b"", False, len(rest)
        return lines, rest, bounded, 0


class NetstringFraming(FramedProtocol):
    """
    Netstrings (C{5:hello,}).
    """

    @staticmethod
    def frame(message: bytes) -> bytes:
        return b"%d:%s," % (len(message), message)

    def split(self, data: bytes) -> Split:
        messages: list[bytes] = []
        limit = self.maxMessageSize
        digits = len(str(limit))
        match = _DIGITS.match
        position, size = 0, len(data)
        while position < size:
            if len(messages) == MESSAGES_PER_TURN:
                return messages, data[position:], True, 0
            colon = match(data, position, position + digits + 1).end()  # type: ignore[union-attr]
            prefix = data[position:colon]
            if prefix and ((prefix[0] == 48 and len(prefix) > 1) or int(prefix) > limit):
                return messages, b"", False, -1  # a leading zero, or over the limit
            if colon == size:
                break  # the length is still arriving
            if not prefix or data[colon] != 58:  # ":"
                return messages, b"", False, -1
            end = colon + 1 + int(prefix)
            if end >= size:
                break
            if data[end] != 44:  # ","
                return messages, b"", False, -1
            messages.append(data[colon + 1 : end])
            position = end + 1
        return messages, data[position:], False, 0


class Int32Framing(FramedProtocol):
    """
    Messages behind a 4-byte big-endian length.
    """

    @staticmethod
    def frame(message: bytes) -> bytes:
        return _LENGTH.pack(len(message)) + message

    def split(self, data: bytes) -> Split:
        messages: list[bytes] = []
        limit = self.maxMessageSize
        unpack = _LENGTH.unpack_from
        position, size = 0, len(data)
        while position + 4 <= size:
            if len(messages) == MESSAGES_PER_TURN:
                return messages, data[position:], True, 0
            (length,) = unpack(data, position)
            if length > limit:
                return messages, b"", False, length
            end = position + 4 + length
            if end > size:
                break
            messages.append(data[position + 4 : end])
            position = end
        return messages, data[position:], False, 0


class RawFraming(FramedProtocol):
    """
    Each received chunk is one message, as the original tutorial's programs
    assumed. TCP splits and merges chunks at will, so this is only for peers
    that send no delimiter at all.
    """

    @staticmethod
    def frame(message: bytes) -> bytes:
        return message

    def split(self, data: bytes) -> Split:
        if len(data) > self.maxMessageSize:
            return [], b"", False, len(data)
        return [data], b"", False, 0


FRAMINGS: dict[str, type[FramedProtocol]] = {
    "line": LineFraming,
    "netstring": NetstringFraming,
    "int32": Int32Framing,
    "raw": RawFraming,
}
