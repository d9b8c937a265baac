"""
Tests for L{tcpcomm.tokens}: which token files are taken, and how the
others are refused.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from tcpcomm.tokens import MAX_TOKEN_FILE, TokenFileError, readTokenFile

from .processes import scratch


class ReadTokenFileTests(SynchronousTestCase):
    """
    readTokenFile takes one printable-ASCII token and names the file when
    it refuses one.
    """

    def write(self, data: bytes) -> str:
        path = os.path.join(scratch(self), "token")
        with open(path, "wb") as f:
            f.write(data)
        return path

    def refused(self, data: bytes) -> TokenFileError:
        path = self.write(data)
        error = self.assertRaises(TokenFileError, readTokenFile, path)
        self.assertIsInstance(error, ValueError)
        self.assertEqual(error.path, path)
        self.assertTrue(str(error).startswith(f"bad token file {path!r}: "), str(error))
        return error

    def test_line(self) -> None:
        """The token is the file's one line, without the whitespace around it."""
        self.assertEqual(readTokenFile(self.write(b"  s3cret-token\r\n\n")), "s3cret-token")

    def test_byteOrderMark(self) -> None:
        """A UTF-8 byte order mark, as Windows editors write, is not part of the token."""
        self.assertEqual(readTokenFile(self.write(b"\xef\xbb\xbfs3cret\n")), "s3cret")

    def test_notPrintableASCII(self) -> None:
        """A token with a character that is not printable ASCII is refused, naming the character."""
        for token in ("secét", "tok€n", "tok\x00en", "tok\x7fen", "tok\u200ben"):
            error = self.refused(token.encode("utf-8"))
            self.assertIn("not printable ASCII", error.reason)
            self.assertIn(repr(token[3]), error.reason)

    def test_spaces(self) -> None:
        """A file with two words, or a tab inside, is refused."""
        for data in (b"two words\n", b"tab\there\n", b"one\ntwo\n"):
            self.assertIn("without spaces", self.refused(data).reason)

    def test_empty(self) -> None:
        """An empty or blank file is refused."""
        for data in (b"", b"\n  \n", b"\xef\xbb\xbf\n"):
            self.assertIn("empty", self.refused(data).reason)

    def test_notUTF8(self) -> None:
        """A file that is not UTF-8 text is refused."""
        self.assertIn("not UTF-8", self.refused(b"\xff\xfes\x00e\x00").reason)

    def test_tooLarge(self) -> None:
        """A file over 4 KiB (a log given by mistake) is refused without reading it all."""
        self.assertIn(str(MAX_TOKEN_FILE), self.refused(b"a" * (MAX_TOKEN_FILE + 1)).reason)

    def test_missing(self) -> None:
        """A file that cannot be read is refused with the system's reason."""
        path = os.path.join(scratch(self), "missing")
        error = self.assertRaises(TokenFileError, readTokenFile, path)
        self.assertEqual(error.reason, "cannot read it: No such file or directory")
