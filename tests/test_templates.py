"""Tests for L{tcpcomm.templates}."""

from __future__ import annotations

import time

from twisted.trial.unittest import SynchronousTestCase

from tcpcomm.templates import TIME_FORMAT, Template, TemplateError


class TemplateTests(SynchronousTestCase):
    """
    Templates fill in {time} and refuse anything else.
    """

    def test_time(self) -> None:
        """{time} is the local time in the original's format."""
        rendered = Template("at {time}!", "utf-8").render(1000.5)
        self.assertEqual(
            rendered, ("at " + time.strftime(TIME_FORMAT, time.localtime(1000)) + "!").encode()
        )

    def test_constant(self) -> None:
        """A template without {time} renders to its encoded text, braces unescaped."""
        self.assertEqual(
            Template("héllo {{x}}", "latin-1").render(0), "héllo {x}".encode("latin-1")
        )

    def test_cachedPerSecond(self) -> None:
        """Within one second the same bytes object is returned; the next second, new bytes."""
        template = Template("{time}", "utf-8")
        first = template.render(100.1)
        self.assertIs(template.render(100.9), first)
        self.assertNotEqual(template.render(101.0), first)

    def test_unknownField(self) -> None:
        """A field other than {time} is refused, named."""
        error = self.assertRaises(TemplateError, Template, "{name}", "utf-8")
        self.assertIn("{name}", str(error))

    def test_malformed(self) -> None:
        """An unbalanced brace is refused."""
        self.assertRaises(TemplateError, Template, "oops {", "utf-8")

    def test_unencodable(self) -> None:
        """Text the encoding cannot carry is refused."""
        self.assertRaises(TemplateError, Template, "héllo", "ascii")
