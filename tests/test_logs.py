"""Tests for L{tcpcomm.logs}: the JSON shape of log events."""

from __future__ import annotations

import json

from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tcpcomm.logs import eventAsRecord, formatJSONLine


class EventAsRecordTests(SynchronousTestCase):
    """
    Events become flat JSON objects with stable names.
    """

    def event(self, **fields: object) -> dict[str, object]:
        base: dict[str, object] = {
            "log_time": 0.0,
            "log_level": LogLevel.info,
            "log_namespace": "tcpcomm.conversation",
            "log_format": "message from {peer}: {text}",
        }
        base.update(fields)
        return base

    def test_fields(self) -> None:
        """The standard keys come first; a message's text is called message."""
        record = eventAsRecord(self.event(event="message", peer="127.0.0.1:1", text="hi"))
        self.assertEqual(
            record,
            {
                "time": "1970-01-01T00:00:00+00:00",
                "level": "info",
                "namespace": "tcpcomm.conversation",
                "event": "message",
                "text": "message from 127.0.0.1:1: hi",
                "peer": "127.0.0.1:1",
                "message": "hi",
            },
        )

    def test_unnamedEvent(self) -> None:
        """An event without a name (Twisted's own) is called log."""
        self.assertEqual(eventAsRecord(self.event(log_format="hello"))["event"], "log")

    def test_valuesMadeJSON(self) -> None:
        """Bytes become their repr and other objects their str, so every line is valid JSON."""
        line = formatJSONLine(self.event(data=b"\xff", address=object(), log_format="x"))
        record = json.loads(line)
        self.assertEqual(record["data"], "b'\\xff'")
        self.assertTrue(line.endswith("}\n"))
        self.assertEqual(line.count("\n"), 1)

    def test_failure(self) -> None:
        """A logged failure comes with its traceback."""
        failure = Failure(ZeroDivisionError("division by zero"))
        record = eventAsRecord(self.event(log_failure=failure, log_format="oops"))
        self.assertIn("ZeroDivisionError", record["traceback"])
