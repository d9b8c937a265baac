"""
Bad input, property-based: every framing is fed random, truncated, oversized
and malformed byte streams in random chunkings, through the in-memory
helpers of L{tests.support}; an independent model of each framing says what
must come out.
"""

from __future__ import annotations

import math
import os
import re
import struct
from typing import cast

from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tcpcomm.handlers import Echo
from tcpcomm.wire.protocol import FramedProtocol

from .support import Recorder, connect, makeHub
from .test_framing import frame

FRAMINGS = ["line", "netstring", "int32", "raw"]
STREAMED = ["line", "netstring", "int32"]
#: What a receiver may hold beyond --max-message-size: a netstring's length
#: digits, colon and comma, an int32 prefix, a line's CR.
OVERHEAD = 16


def fuzzSettings(examples: int, shrink: bool = True) -> settings:
    """
    Deterministic and bounded, for CI: a fixed sequence of examples, no
    per-example deadline (the machine may be busy), no example database.
    """
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=phases,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


#: The fuzz run's examples (about 7 ms each); TCPCOMM_FUZZ_EXAMPLES=20000
#: digs deeper by hand.
FUZZ_EXAMPLES = int(os.environ.get("TCPCOMM_FUZZ_EXAMPLES", "500"))


# A model of each framing, written from the README rather than from Twisted's
# receivers: what a whole stream must deliver, and whether it breaks the peer.


def modelLine(stream: bytes, limit: int) -> tuple[list[bytes], bool]:
    *lines, rest = stream.split(b"\n")
    out: list[bytes] = []
    for line in lines:
        message = line[:-1] if line.endswith(b"\r") else line
        if len(message) > limit:
            return out, True
        out.append(message)
    # An unfinished line may hold limit + 1 bytes: its last may be the CR
    # of a CRLF.
    return out, len(rest) > limit + 1


def lineAmbiguous(stream: bytes, limit: int) -> bool:
    """
    Whether C{stream} holds a line of exactly C{limit} bytes plus a CR, which
    tcpcomm refuses today although the README allows it (see
    L{LineLimitTests}); the general properties leave those to that test.
    """
    return any(len(line) == limit + 1 and line.endswith(b"\r") for line in stream.split(b"\n"))


def modelNetstring(stream: bytes, limit: int) -> tuple[list[bytes], bool]:
    maxDigits = math.ceil(math.log10(limit)) + 1  # as NetstringReceiver bounds them
    out: list[bytes] = []
    i, n = 0, len(stream)
    while i < n:
        digits = re.match(rb"[0-9]*", stream[i:])
        assert digits is not None
        j = i + digits.end()
        number = stream[i:j]
        if (
            (len(number) > 1 and number.startswith(b"0"))
            or len(number) > maxDigits
            or (number and int(number) > limit)
        ):
            return out, True
        if j == n:
            return out, False  # unfinished length
        if not number or stream[j : j + 1] != b":":
            return out, True
        length = int(number)
        end = j + 1 + length
        if end >= n:
            return out, False  # unfinished payload or comma
        if stream[end : end + 1] != b",":
            return out, True
        out.append(stream[j + 1 : end])
        i = end + 1
    return out, False


def modelInt32(stream: bytes, limit: int) -> tuple[list[bytes], bool]:
    out: list[bytes] = []
    i = 0
    while len(stream) - i >= 4:
        (length,) = struct.unpack("!I", stream[i : i + 4])
        if length > limit:
            return out, True
        if len(stream) - i - 4 < length:
            break
        out.append(stream[i + 4 : i + 4 + length])
        i += 4 + length
    return out, False


def modelRaw(chunks: list[bytes], limit: int) -> tuple[list[bytes], bool]:
    out: list[bytes] = []
    for chunk in chunks:
        if len(chunk) > limit:
            return out, True
        out.append(chunk)
    return out, False


def model(framing: str, chunks: list[bytes], limit: int) -> tuple[list[bytes], bool]:
    """
    The messages C{chunks} must deliver, in order, and whether the peer must
    be closed (after which nothing more is delivered).
    """
    if framing == "raw":
        return modelRaw(chunks, limit)
    stream = b"".join(chunks)
    if framing == "line":
        return modelLine(stream, limit)
    if framing == "netstring":
        return modelNetstring(stream, limit)
    return modelInt32(stream, limit)


def buffered(protocol: FramedProtocol) -> int:
    """
    Bytes a framing holds for an unfinished message (what C{hasPartial()}
    reads).
    """
    return len(protocol._buffer)


# Strategies.

limits = st.one_of(
    st.sampled_from([1, 2, 9, 10, 11, 99, 100, 101]),  # netstring's digit bounds
    st.integers(min_value=1, max_value=300),
)


def message(framing: str, maxSize: int, minSize: int = 0) -> st.SearchStrategy[bytes]:
    """
    A message C{framing} can carry: no newline for lines.
    """
    data = st.binary(min_size=minSize, max_size=maxSize)
    if framing == "line":
        data = data.map(lambda m: m.replace(b"\n", b"."))
    return data


def segment(framing: str, limit: int) -> st.SearchStrategy[bytes]:
    """
    One piece of a stream: a good frame, an oversized one, a truncated one,
    random bytes, or something this framing finds hard.
    """
    good = message(framing, limit).map(lambda m: frame(framing, m))
    tricky: list[bytes] = {
        "line": [b"\r\n", b"\n", b"\r", b"\r\r\n", b"\x00\n", b"\xff\xfe\n"],
        "netstring": [
            b"0:,",
            b"01:a,",
            b"-1:",
            b":",
            b",",
            b"1:ab",
            b"3:abc;",
            b"99999999999999999999:",
            b"%d:" % (limit + 1),
            b"%d:" % limit,
            b"1",
            b"12\n",
            b" 1:a,",
        ],
        "int32": [
            b"\x00\x00\x00\x00",
            b"\xff\xff\xff\xff",
            b"\x80\x00\x00\x00",
            struct.pack("!I", limit + 1),
            struct.pack("!I", limit),
            b"\x00\x00",
        ],
        "raw": [b""],
    }[framing]
    return st.one_of(
        good,
        good,
        message(framing, limit + 40, limit + 1).map(lambda m: frame(framing, m)),
        st.tuples(good, st.integers(min_value=0)).map(lambda t: t[0][: t[1] % (len(t[0]) + 1)]),
        st.binary(max_size=24),
        st.sampled_from(tricky),
        message(framing, limit).map(lambda m: m + b"\r\n") if framing == "line" else good,
    )


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """
    C{data} cut at the given offsets (any integers, taken modulo its
    length), into non-empty chunks, as TCP may deliver it.
    """
    if not data:
        return []
    points = sorted({c % len(data) for c in cuts} - {0})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False)]


@st.composite
def badStreams(draw: st.DrawFn, framing: str) -> tuple[int, list[bytes], bool]:
    """
    A limit, a stream of segments cut into chunks, and whether the receiver
    is watched (--message-timeout on).
    """
    limit = draw(limits)
    stream = b"".join(draw(st.lists(segment(framing, limit), max_size=12)))
    cuts = draw(st.lists(st.integers(min_value=0, max_value=10**6), max_size=12))
    chunks = split(stream, cuts)
    if framing == "raw":
        chunks = [c for c in chunks if c]
    return limit, chunks, draw(st.booleans())


class Properties(SynchronousTestCase):
    """
    The two properties every framing must have, for the tests below.
    """

    def feed(self, framing: str, limit: int, chunks: list[bytes], watched: bool) -> None:
        """
        Feed C{chunks} to a recording receiver and check it against the model.
        """
        if framing == "line":
            assume(not lineAmbiguous(b"".join(chunks), limit))
        protocol, transport, clock, factory = connect(
            framing, maxMessageSize=limit, record=True, messageTimeout=30.0 if watched else 0.0
        )
        received = cast(Recorder, protocol.conversation).messages
        expected, broken = model(framing, chunks, limit)
        for chunk in chunks:
            protocol.dataReceived(chunk)  # never raises
            self.assertEqual(received, expected[: len(received)])
            if transport.disconnecting:
                # A closing TCP transport reads no more; what is held goes
                # with the connection.
                break
            self.assertLessEqual(buffered(protocol), limit + OVERHEAD)
        self.assertEqual(received, expected)
        self.assertEqual(transport.disconnecting, broken)
        stats = factory.stats
        self.assertEqual(stats.oversized + stats.framingErrors, int(broken))
        self.assertEqual(transport.value(), b"")

    def roundTrip(self, framing: str, data: st.DataObject) -> None:
        """
        Send a random list of messages with C{sendMessage}, cut the wire at
        random, and feed it to a receiver.
        """
        limit = data.draw(limits, label="limit")
        sender, sent, _, _ = connect(framing, maxMessageSize=limit, record=True)
        if framing == "raw":
            # Each chunk is a message: what arrives is the bytes sent, cut
            # and glued anywhere.
            chunks = data.draw(st.lists(st.binary(min_size=1, max_size=limit), max_size=20))
            for chunk in chunks:
                sender.sendMessage(chunk)
            wire = sent.value()
            self.assertEqual(wire, b"".join(chunks))
            pieces = split(wire, data.draw(st.lists(st.integers(0, 10**6), max_size=20)))
            pieces = [p for p in pieces if len(p) <= limit]
            receiver, transport, _, _ = connect(framing, maxMessageSize=limit, record=True)
            for piece in pieces:
                receiver.dataReceived(piece)
            self.assertEqual(cast(Recorder, receiver.conversation).messages, pieces)
            self.assertFalse(transport.disconnecting)
            return
        messages = data.draw(
            st.lists(
                message(framing, limit, minSize=1).filter(lambda m: not m.endswith(b"\r"))
                if framing == "line"
                else message(framing, limit, minSize=1),
                max_size=30,
            ),
            label="messages",
        )
        for m in messages:
            sender.sendMessage(m)
        wire = sent.value()
        receiver, transport, _, _ = connect(framing, maxMessageSize=limit, record=True)
        received = cast(Recorder, receiver.conversation).messages
        for piece in split(wire, data.draw(st.lists(st.integers(0, 10**6), max_size=40))):
            receiver.dataReceived(piece)
            self.assertFalse(transport.disconnecting)
            self.assertLessEqual(buffered(receiver), limit + OVERHEAD)
        self.assertEqual(received, messages)
        self.assertFalse(receiver.hasPartial())


class BadInputTests(Properties):
    """
    Whatever bytes arrive, in whatever chunks, a receiver delivers exactly
    the good messages before the first bad one, holds no more than its limit,
    and closes the peer at the first bad one.
    """

    @fuzzSettings(250)
    @given(stream=badStreams("line"))
    def test_line(self, stream: tuple[int, list[bytes], bool]) -> None:
        """Line framing delivers the good lines before the first bad one and holds at most the limit."""
        self.feed("line", *stream)

    @fuzzSettings(250)
    @given(stream=badStreams("netstring"))
    def test_netstring(self, stream: tuple[int, list[bytes], bool]) -> None:
        """Netstring framing delivers the good netstrings before the first bad one and holds at most the limit."""
        self.feed("netstring", *stream)

    @fuzzSettings(250)
    @given(stream=badStreams("int32"))
    def test_int32(self, stream: tuple[int, list[bytes], bool]) -> None:
        """Int32 framing delivers the good messages before the first bad length and holds at most the limit."""
        self.feed("int32", *stream)

    @fuzzSettings(150)
    @given(stream=badStreams("raw"))
    def test_raw(self, stream: tuple[int, list[bytes], bool]) -> None:
        """Raw framing delivers each chunk up to the first oversized one."""
        self.feed("raw", *stream)

    @fuzzSettings(FUZZ_EXAMPLES)
    @given(data=st.data())
    def test_fuzzRun(self, data: st.DataObject) -> None:
        """A longer fuzz run across all framings, bad streams and round trips alike."""
        framing = data.draw(st.sampled_from(FRAMINGS))
        if data.draw(st.booleans()):
            self.feed(framing, *data.draw(badStreams(framing)))
        else:
            self.roundTrip(framing, data)

    @fuzzSettings(150)
    @given(data=st.data())
    def test_realSession(self, data: st.DataObject) -> None:
        """With a real session and the echo handler, bad input never raises, and each good message is echoed or refused as undecodable."""
        framing = data.draw(st.sampled_from(FRAMINGS))
        limit, chunks, watched = data.draw(badStreams(framing))
        if framing == "line":
            assume(not lineAmbiguous(b"".join(chunks), limit))
        clock = Clock()
        hub = makeHub(clock, delay=0, handler=Echo)
        protocol, transport, _, _ = connect(
            framing, maxMessageSize=limit, hub=hub, messageTimeout=30.0 if watched else 0.0
        )
        for chunk in chunks:
            protocol.dataReceived(chunk)
            if transport.disconnecting:
                break
        expected, broken = model(framing, chunks, limit)
        wire = b""
        for m in expected:
            if not m:
                continue  # a heartbeat: never answered
            try:
                m.decode("utf-8")
            except UnicodeDecodeError:
                m = hub.texts.errorReply.render(clock.seconds())
            wire += frame(framing, m)
        self.assertEqual(transport.value(), wire)
        self.assertEqual(transport.disconnecting, broken)
        self.assertEqual(hub.stats.heartbeatsIn, expected.count(b""))


class RoundTripTests(Properties):
    """
    What one side sends, the other receives, however TCP cuts it.
    """

    @fuzzSettings(150)
    @given(framing=st.sampled_from(STREAMED), data=st.data())
    def test_roundTrip(self, framing: str, data: st.DataObject) -> None:
        """Random non-empty messages, framed by sendMessage and split anywhere, arrive exactly."""
        self.roundTrip(framing, data)

    @fuzzSettings(60)
    @given(data=st.data())
    def test_rawRoundTrip(self, data: st.DataObject) -> None:
        """In raw framing the bytes arrive exactly, each chunk as one message."""
        self.roundTrip("raw", data)


class LineLimitTests(SynchronousTestCase):
    """
    The README: a message longer than --max-message-size disconnects the
    peer, and a CR right before the LF is dropped, so a message of exactly
    the limit typed with CRLF (telnet, nc -C) is a message within the limit.
    """

    @fuzzSettings(25, shrink=False)
    @given(limit=limits, data=st.data())
    def test_crlfAtLimit(self, limit: int, data: st.DataObject) -> None:
        """A message of exactly the limit ended by CRLF is delivered, in one chunk or two."""
        text = data.draw(message("line", limit, limit).filter(lambda m: not m.endswith(b"\r")))
        wire = text + b"\r\n"
        protocol, transport, _, _ = connect("line", maxMessageSize=limit, record=True)
        for chunk in split(wire, data.draw(st.lists(st.integers(0, 10**6), max_size=3))):
            protocol.dataReceived(chunk)
        self.assertEqual(cast(Recorder, protocol.conversation).messages, [text])
        self.assertFalse(transport.disconnecting)
