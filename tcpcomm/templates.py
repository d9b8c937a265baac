"""Message texts that may carry the local time, rendered once per second at most."""

from __future__ import annotations

import time
from dataclasses import dataclass
from string import Formatter

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


class TemplateError(ValueError):
    """A template names a field other than C{{time}} or does not parse."""


class Template:
    """
    A text with an optional C{{time}} field, encoded once per distinct second.

    Every message a peer answers passes through L{render}, so the encoded
    bytes are cached for the second they were made in.
    """

    __slots__ = ("text", "encoding", "_hasTime", "_second", "_cached")

    def __init__(self, text: str, encoding: str) -> None:
        try:
            fields = {name for _, name, _, _ in Formatter().parse(text) if name is not None}
        except ValueError as e:
            raise TemplateError(f"{text!r} is not a valid template: {e}") from None
        unknown = fields - {"time"}
        if unknown:
            raise TemplateError(
                f"{text!r} uses {', '.join(sorted('{' + f + '}' for f in unknown))}; "
                "only {time} is available"
            )
        self.text = text
        self.encoding = encoding
        self._hasTime = "time" in fields
        self._second = -1
        self._cached = b"" if self._hasTime else self._encode(text.format())

    def __eq__(self, other: object) -> bool:
        # Equal texts are the same setting (what a reload compares).
        if not isinstance(other, Template):
            return NotImplemented
        return (self.text, self.encoding) == (other.text, other.encoding)

    def __hash__(self) -> int:
        return hash((self.text, self.encoding))

    def _encode(self, text: str) -> bytes:
        try:
            return text.encode(self.encoding)
        except UnicodeEncodeError as e:
            raise TemplateError(
                f"{self.text!r} cannot be encoded as {self.encoding}: {e}"
            ) from None

    def render(self, seconds: float) -> bytes:
        """
        The encoded text with C{{time}} set to the local time at C{seconds}
        since the epoch.
        """
        if not self._hasTime:
            return self._cached
        second = int(seconds)
        if second != self._second:
            stamp = time.strftime(TIME_FORMAT, time.localtime(second))
            self._cached = self._encode(self.text.format(time=stamp))
            self._second = second
        return self._cached


@dataclass(frozen=True)
class Texts:
    """
    What a side says: C{--encoding}, C{--reply-delay}, C{--reply},
    C{--error-reply}, and the client's C{--greeting} or the server's
    C{--full-reply}.
    """

    encoding: str
    replyDelay: float
    reply: Template
    errorReply: Template
    greeting: Template | None = None
    fullReply: Template | None = None
